"""``srdistill distill``: train a small student to imitate a pretrained teacher."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import app
from ..models.families import family_names  # the registry: no torch import
from ..console import PlainTable, RichReporter, escape_control, print_json, run_cli, stdout_console


def _given(ctx: typer.Context) -> list[str]:
    """Config fields the user gave on the command line (``--resume`` takes the rest from the checkpoint)."""
    try:  # typer >= 0.2x vendors its own copy of click
        from typer._click.core import ParameterSource
    except ImportError:
        from click.core import ParameterSource

    names = {"no_val": "val", "out": "out"}
    out = []
    for p in ctx.command.params:
        src = ctx.get_parameter_source(p.name)
        if src not in (None, ParameterSource.DEFAULT):
            out.append(names.get(p.name, p.name))
    return out


def _terms(items: list[str]) -> dict[str, float]:
    from ..errors import UsageError

    out = {}
    for it in items:
        name, sep, w = it.partition("=")
        try:
            out[name.strip()] = float(w) if sep else 1.0
        except ValueError:
            raise UsageError(f"--term {it!r}: expected NAME=WEIGHT, e.g. --term feature=0.5") from None
    return out


@app.command("distill")
def distill_cmd(
    ctx: typer.Context,
    teacher: Path = typer.Argument(..., help="The pretrained teacher: .safetensors, .pth, .pt or .ckpt."),
    student_width: Optional[int] = typer.Option(None, "--student-width", "-w",
                                                help="Feature channels of the student (required unless "
                                                     "--budget/--max-params/--max-mb choose it)."),
    student_depth: Optional[int] = typer.Option(None, "--student-depth", "-d",
                                                help="Blocks/layers of the student (default: the teacher's, or "
                                                     "the family default for --student-arch)."),
    student_arch: Optional[str] = typer.Option(None, "--student-arch", "-a",
                                               help=f"Student family if not the teacher's: {family_names()}."),
    allow_wider: bool = typer.Option(False, "--allow-wider", help="Allow a student wider than the teacher."),
    data: List[Path] = typer.Option([], "--data", help="HR image folder (repeatable; recursive). DIV2K-style "
                                                       "X4/ LR folders next to the HR images are used as pairs. "
                                                       "Default: built-in sample images (for trying the tool)."),
    val: List[Path] = typer.Option([], "--val", help="HR folder for validation (Y-PSNR/SSIM, beside bicubic's); "
                                                     "the best step is kept. Default: the built-in val photos."),
    no_val: bool = typer.Option(False, "--no-val", help="Skip validation."),
    lr_only: bool = typer.Option(False, "--lr-only", help="--data holds unlabeled LR images: the teacher's "
                                                          "output is the only target."),
    steps: int = typer.Option(5000, "--steps", help="Optimiser steps."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Patches per step (per rank under torchrun)."),
    patch_size: int = typer.Option(32, "--patch-size", "-p", help="LR patch size in pixels (HR = x scale)."),
    gt_size: Optional[int] = typer.Option(None, "--gt-size", help="HR patch size instead of --patch-size "
                                                                  "(BasicSR/traiNNer gt_size; a multiple of the scale)."),
    lr: float = typer.Option(5e-4, "--lr", help="Peak learning rate (AdamW, warm-up then cosine decay)."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", help="AdamW weight decay."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Default: 5% of --steps, at most 500."),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Gradient norm clip (0: off)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Weight of the teacher term: "
                                                     "alpha*L(student, teacher) + (1-alpha)*L(student, HR); the "
                                                     "start value of a moving --alpha-schedule. Default: 0.5 "
                                                     "(constant), 1.0 (eco, linear)."),
    alpha_schedule: str = typer.Option("constant", "--alpha-schedule",
                                       help="constant, eco (teacher -> ground truth over the first half of the "
                                            "run, AAAI'24 ECO) or linear (over the whole run)."),
    alpha_end: Optional[float] = typer.Option(None, "--alpha-end", help="Final alpha of eco/linear (default 0)."),
    upcycle: bool = typer.Option(False, "--upcycle", help="Data upcycling (DUKD): zoom-in (HR crops as inputs) "
                                                          "and zoom-out (LR shrunk again) inputs labelled by the "
                                                          "teacher, mixed into each batch."),
    upcycle_ratio: Optional[float] = typer.Option(None, "--upcycle-ratio",
                                                  help="Share of each batch from upcycled inputs (default 0.25)."),
    init: str = typer.Option("auto", "--init", help="Student start: teacher (same family: the teacher's most "
                                                    "important channels and blocks), random, or auto (teacher "
                                                    "where the student is the teacher's family, else random)."),
    reparam: Optional[bool] = typer.Option(None, "--reparam/--no-reparam",
                                           help="Re-parameterised training (ECBSR/RepSR/SPAN): each 3x3 conv "
                                                "trains with parallel 1x1, expand-squeeze and edge branches, folded "
                                                "into the plain conv at save (same file, same inference cost). "
                                                "Default: on for Compact and EDSR students (+0.35 dB Set5 in "
                                                "bench/reparam.py), off for other families."),
    reparam_branches: Optional[str] = typer.Option(None, "--reparam-branches",
                                                   help="Branches beside each 3x3 when re-parameterised, comma "
                                                        "separated: 1x1, expand, sobel, laplacian, identity "
                                                        "(default: 1x1,expand,sobel,laplacian)."),
    degradation: str = typer.Option("bicubic", "--degradation",
                                    help="How LR inputs are made: bicubic (clean), realesrgan (Real-ESRGAN's "
                                         "second-order blur/resize/noise/JPEG), light (blur, mild noise, JPEG), "
                                         "none (--lr-only: the images as they are) or a .toml/.json file."),
    degradation_variants: Optional[int] = typer.Option(None, "--degradation-variants",
                                                       help="Degraded variants per image, made once and "
                                                            "labelled by the teacher cache (default 4)."),
    loss: str = typer.Option("l1", "--loss", help="Pixel loss: l1, charbonnier or mse."),
    feature_weight: float = typer.Option(0.0, "--feature-weight",
                                         help="Weight of feature distillation (FitNet, 1x1 adapters); 0 = off."),
    adversarial_weight: float = typer.Option(0.0, "--adversarial-weight",
                                             help="Weight of adversarial distillation vs the teacher's outputs "
                                                  "(for GAN teachers); 0 = off."),
    term: List[str] = typer.Option([], "--term", help="Another registered loss term, NAME=WEIGHT (repeatable)."),
    ema_decay: float = typer.Option(0.999, "--ema-decay", help="EMA of the student weights (the saved model)."),
    val_every: Optional[int] = typer.Option(None, "--val-every", help="Validate every N steps "
                                                                      "(default: steps/5, at most 1000)."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Write a resumable checkpoint every N steps."),
    out: Path = typer.Option(Path("student.safetensors"), "--output", "-o", "--out",
                              help="Where the student goes (--out is the same)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from <out stem>.ckpt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output and checkpoint."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, "
                                                              "bf16, fp16."),
    seed: int = typer.Option(0, "--seed", help="Random seed (CPU runs are repeatable)."),
    teacher_cache: bool = typer.Option(True, "--teacher-cache/--no-teacher-cache",
                                       help="Run the teacher once per image and reuse its output (default) or "
                                            "recompute it for every patch."),
    pack: Optional[Path] = typer.Option(None, "--pack", "--teacher-cache-dir",
                                        help="Training pack folder: inputs, HR and teacher outputs on disk, built "
                                             "once (resumable) and reused by every run with the same inputs; "
                                             "data larger than memory. --teacher-cache-dir is the same."),
    build_only: bool = typer.Option(False, "--build-only", help="With --pack: build the pack and stop (a job "
                                                                "that prepares data once)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers assembling patches "
                                                                  "(default: 0 on CPU, up to 4 with CUDA)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use at most N training images."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Let 'srdistill plan' choose the student: time "
                                                                "per output frame (33ms), frame rate (30fps), "
                                                                "file size (1.5MB) or parameters (250k params)."),
    max_params: Optional[str] = typer.Option(None, "--max-params", help="Plan for at most N parameters."),
    max_mb: Optional[float] = typer.Option(None, "--max-mb", help="Plan for at most X MB of fp32 weights."),
    size: str = typer.Option("1920x1080", "--size", help="With a budget: the OUTPUT size WIDTHxHEIGHT it is for."),
    runtime: str = typer.Option("auto", "--runtime", help="With a budget: the runtime latency is measured in."),
    families: Optional[List[str]] = typer.Option(None, "--families", help="With a budget: the families the "
                                                                          "plan considers (comma separated)."),
    json_out: bool = typer.Option(False, "--json", help="Print the final summary as one JSON document."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output (warnings and errors only)."),
) -> None:
    """Distill TEACHER into a smaller student; writes the student (.safetensors), a resumable
    checkpoint (.ckpt) and a JSON-lines training log next to --out."""

    def body():
        from ..distill.trainer import DistillConfig, distill
        from ..errors import UsageError

        if no_val and val:
            raise UsageError("--no-val and --val contradict each other", hint="give one of them")

        explicit = _given(ctx)
        cfg = DistillConfig(
            teacher=str(teacher), student_width=student_width, student_depth=student_depth,
            student_arch=student_arch, allow_wider=allow_wider, data=[str(d) for d in data],
            val=[] if no_val else ([str(v) for v in val] if val else None), lr_only=lr_only, steps=steps,
            batch_size=batch_size, patch_size=patch_size, gt_size=gt_size, lr=lr, weight_decay=weight_decay,
            warmup_steps=warmup_steps, grad_clip=grad_clip, alpha=alpha, alpha_schedule=alpha_schedule,
            alpha_end=alpha_end, upcycle=upcycle, upcycle_ratio=upcycle_ratio, init=init, reparam=reparam,
            reparam_branches=reparam_branches, degradation=degradation,
            degradation_variants=degradation_variants, loss=loss, feature_weight=feature_weight,
            adversarial_weight=adversarial_weight, terms=_terms(term) if term else None, ema_decay=ema_decay, val_every=val_every,
            checkpoint_every=checkpoint_every, out=str(out), resume=resume, overwrite=overwrite, device=device,
            precision=precision, seed=seed, teacher_cache=teacher_cache,
            pack=str(pack) if pack else None, build_only=build_only, workers=workers, threads=threads,
            max_images=max_images,
            explicit=explicit,
        )
        from ..distill import distributed

        planned = budget is not None or max_params is not None or max_mb is not None
        if student_width is None and not planned:
            raise UsageError("give --student-width, or a --budget (--max-params, --max-mb) to let the plan choose")
        try:
            from ..distill.run import TrainHooks

            # SRDISTILL_TEST_* variables: how subprocess tests inject faults; the library reads no env
            rep = RichReporter(quiet=quiet or json_out)
            if planned:
                from ..plan import plan_options  # lazy: only --budget runs the plan
                from ..plan.distill_pick import distill_within_budget  # lazy: as above

                opts = plan_options(teacher, budget=budget, max_params=max_params, max_mb=max_mb, size=size,
                                    device=device, runtime=runtime, families=families, threads=threads)
                res = distill_within_budget(cfg, opts, rep, set(explicit), TrainHooks.from_env()).distill
            else:
                res = distill(cfg, rep, TrainHooks.from_env())
        finally:
            distributed.shutdown()
        if distributed.launched_by_torchrun() and int(__import__("os").environ.get("RANK", "0")) != 0:
            return
        if json_out:
            print_json(res)
            return
        if build_only:
            p = res.pack
            stdout_console().print(escape_control(f"pack {p['path']}: {p['images']:,} images, {p['inputs']:,} inputs, "
                                   f"{p['bytes'] / 1e9:.2f} GB ({'reused' if p['reused'] else 'built'})"),
                                   markup=False, soft_wrap=True)
            return
        if res.nothing_to_do:  # the reporter said so; stdout keeps the facts
            stdout_console().print(escape_control(f"student {res.out}: unchanged, the run is at step {res.steps}"),
                                   markup=False,
                                   soft_wrap=True)
            return
        t = PlainTable(title="distillation", show_header=False, box=None)
        t.add_column(style="bold")
        t.add_column()
        t.add_row("student", f"{res.out}  ({res.student['architecture']}, {res.student['params']:,} params)")
        t.add_row("teacher", f"{res.teacher['architecture']}, {res.teacher['params']:,} params")
        t.add_row("compression", f"{res.compression_ratio:.1f}x fewer parameters")
        t.add_row("steps", f"{res.steps} ({res.steps_per_second:.2f} steps/s, {res.seconds:.0f} s in all)")
        t.add_row("batch", f"{res.global_batch} global ({res.world_size} process(es)) on {res.device}, "
                           f"{res.precision}")
        t.add_row("loss", res.loss_formula)
        t.add_row("final", ", ".join(f"{k}={v:.5f}" for k, v in res.final_losses.items()))
        if res.best:
            t.add_row("validation", f"best Y-PSNR {res.best['psnr']:.3f} dB / SSIM {res.best['ssim']:.4f} "
                                    f"at step {res.best['step']} (saved)"
                                    + (f"; bicubic {res.bicubic['psnr']:.3f} dB" if res.bicubic else ""))
        t.add_row("checkpoint", res.checkpoint)
        t.add_row("log", res.log)
        stdout_console().print(t)

    run_cli(body)
