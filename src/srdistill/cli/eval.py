"""``srdistill eval``: score models on SR benchmarks the way papers do, and compare their cost."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer

from . import app
from rich.text import Text

from ..console import PlainTable, RichReporter, escape_control, plain, print_json, run_cli, stdout_console


def _db(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.2f}"


def _signed(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "+inf" if v > 0 else "-inf"
    return f"{v:+.2f}"


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _params(v) -> str:
    if v is None:
        return "-"
    if v >= 1_000_000:
        return f"{v / 1e6:.2f}M"
    if v >= 1000:
        return f"{v / 1e3:.1f}K"
    return str(v)


@app.command("eval")
def eval_cmd(
    models: Optional[List[Path]] = typer.Argument(
        None, help="Models to score: .safetensors, .pth, .pt, .ckpt, .onnx, OpenVINO .xml or ncnn .param. The "
                   "first is the teacher (unless "
                   "--teacher). None: only the bicubic baseline (needs --scale)."),
    data: List[Path] = typer.Option([], "--data", help="Benchmark folder (repeatable): HR images (LR made by MATLAB "
                                                       "bicubic downscale) or an HR/ + LR_bicubic/X4/ layout."),
    scale: Optional[int] = typer.Option(None, "--scale", help="Scale (default: the models'; they must agree)."),
    crop_border: Optional[int] = typer.Option(None, "--crop-border", help="Pixels cropped from each side before "
                                                                         "scoring (default: the scale)."),
    y_channel: bool = typer.Option(True, "--y-channel/--rgb", help="Score the Y channel of BT.601 (default, as "
                                                                   "papers) or R, G, B."),
    self_ensemble: bool = typer.Option(False, "--self-ensemble", help="x8 flip/rotate self-ensemble (models are "
                                                                      "marked '+')."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    save_images: Optional[Path] = typer.Option(None, "--save-images", help="Write every output as "
                                                                           "DIR/<model>/<dataset>/<image>.png."),
    comparison: Optional[Path] = typer.Option(None, "--comparison", help="Write a labelled grid of one crop "
                                                                         "(bicubic, teacher, students, HR) as PNG."),
    crop: Optional[str] = typer.Option(None, "--crop", help="x,y,w,h of the comparison crop in HR pixels of the "
                                                            "first image of the first dataset (default: where the "
                                                            "models differ most)."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="The reference model for compression and "
                                                                   "delta PSNR (default: the first model)."),
    fail_under_psnr: List[str] = typer.Option([], "--fail-under-psnr", help="Exit with code 3 if a student's mean "
                                                                            "PSNR is below X dB; DATASET=X for one "
                                                                            "dataset (repeatable)."),
    reference: str = typer.Option("hr", "--reference", help="What outputs are scored against: hr (ground truth) "
                                                            "or teacher (its outputs: fidelity to the teacher, for "
                                                            "real-world teachers and folders without HR)."),
    lr_only: bool = typer.Option(False, "--lr-only", help="--data holds inputs with no HR (your own photos); "
                                                          "needs --reference teacher."),
    degradation: Optional[str] = typer.Option(None, "--degradation", help="Make inputs by degrading the HR: "
                                                                         "realesrgan, light or a .toml/.json "
                                                                         "file (default: bicubic)."),
    seed: int = typer.Option(0, "--seed", help="Seed of --degradation (the same seed, the same inputs)."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Run models on tiles of N LR pixels (0: whole image)."),
    bench: bool = typer.Option(True, "--bench/--no-bench", help="Measure latency, peak memory and MACs."),
    bench_size: int = typer.Option(128, "--bench-size", help="LR side of the benchmark input (square)."),
    repeats: int = typer.Option(10, "--repeats", help="Timed benchmark runs (median; fewer on slow devices)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch and onnxruntime."),
    runtime: str = typer.Option("native", "--runtime", help="Runtime of every model: native (each file's own: "
                                                           "checkpoints torch, .onnx onnxruntime, .xml openvino, "
                                                           ".param ncnn), auto (the fastest installed, measured "
                                                           "at --bench-size and cached), torch, onnxruntime, "
                                                           "openvino or ncnn."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing images and comparison file."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output (warnings and errors only)."),
) -> None:
    """Score MODELs and a bicubic baseline on benchmark datasets (Y-PSNR/SSIM, as SR papers report
    them), with parameters, compression, latency, memory and MACs; optionally a comparison image,
    the outputs as PNG, and a quality gate for CI (exit code 3)."""

    def body():
        from ..evaluate import EvalOptions, evaluate

        opts = EvalOptions(
            models=[str(m) for m in (models or [])], data=[str(d) for d in data], scale=scale,
            crop_border=crop_border, y_channel=y_channel, self_ensemble=self_ensemble, device=device,
            tile=tile, teacher=str(teacher) if teacher is not None else None,
            save_images=str(save_images) if save_images is not None else None, overwrite=overwrite,
            comparison=str(comparison) if comparison is not None else None, crop=crop,
            fail_under_psnr=list(fail_under_psnr), benchmark=bench, bench_size=bench_size,
            bench_repeats=repeats, threads=threads, reference=reference, lr_only=lr_only,
            degradation=degradation, seed=seed, runtime=runtime,
        )
        report = evaluate(opts, RichReporter(quiet=quiet or json_out))
        if json_out:
            print_json(report)
        else:
            _render(report)
        report.check_quality_gate()
        if report.skipped:  # the rest was scored and printed; the run still says it was incomplete
            from ..errors import ImageError

            raise ImageError(f"{len(report.skipped)} image(s) could not be read or scored and were left out of the "
                             f"means: {'; '.join(report.skipped[:3])}" + (" ..." if len(report.skipped) > 3 else ""),
                             hint="fix or remove them")

    run_cli(body)


def _label(row) -> str:
    label = row.name + ("+" if row.self_ensemble else "")
    return label + (" (teacher)" if row.role == "teacher" else "")


def _render(r) -> None:
    con = stdout_console()
    title = f"x{r.scale} super-resolution, {'Y (BT.601)' if r.y_channel else 'RGB'}, {r.crop_border} px border"
    if r.self_ensemble:
        title += ", x8 self-ensemble (+)"
    t = PlainTable(title=title)
    labels = [_label(row) for row in r.models]
    t.add_column("model", overflow="fold", min_width=min(40, max(len(x) for x in labels)))
    t.add_column("arch")
    t.add_column("params", justify="right")
    t.add_column("compression", justify="right")
    ds_names = [d["name"] for d in r.datasets]
    deltas = bool(r.teacher) and r.reference != "teacher"
    for name in ds_names:
        # two-line headers: the dataset's name (escaped, as every cell) over what the column holds
        t.add_column(Text.assemble(plain(name), "\nPSNR / SSIM" + (" vs teacher" if r.reference == "teacher" else "")),
                     justify="right")
        if deltas:
            t.add_column(Text.assemble(plain(name), "\nΔ dB"), justify="right")
    if r.benchmark:
        t.add_column("ms / MP", justify="right")
        t.add_column("GMACs / MP", justify="right")
        t.add_column("peak MiB", justify="right")
    for row, label in zip(r.models, labels):
        cells = [label, row.architecture, _params(row.params),
                 "-" if row.compression is None else f"{row.compression:.1f}x"]
        for name in ds_names:
            d = row.datasets[name]
            cells.append("reference" if d.get("reference") else f"{_db(d['psnr'])} / {d['ssim']:.4f}")
            if deltas:
                cells.append(_signed(d["delta_psnr"]))
        if r.benchmark:
            cells += [_num(row.latency_ms_per_mp, ".1f"),
                      _num(None if row.macs_per_mp is None else row.macs_per_mp / 1e9, ".2f"),
                      _num(row.peak_memory_mib, ".1f")]
        t.add_row(*cells)
    con.print(t)
    lines = [f"metric: {r.metric}"]
    for d in r.datasets:
        lines.append(f"{d['name']}: {d['images']} images from {d['path']} (LR: {d['lr']})")
    if r.reference == "teacher":
        lines.append(f"reference: the outputs of the teacher {r.teacher}; these scores say how closely each model "
                     "follows it, not how close it is to ground truth")
    elif r.teacher:
        lines.append(f"teacher: {r.teacher} (compression = teacher params / model params; Δ = PSNR - teacher PSNR)")
    if r.benchmark:
        b = r.benchmark
        lines.append(f"benchmark: {b['input']}; {b['latency']}")
        lines.append(f"memory: {b['memory']}")
        lines.append(f"MACs: {b['macs']}")
        if b.get("self_ensemble"):
            lines.append(b["self_ensemble"])
    if r.comparison:
        c = r.comparison
        x, y, w, h = c["crop"]
        lines.append(f"comparison: {c['path']} ({c['dataset']}/{c['image']}, crop {x},{y} {w}x{h}: {c['chosen']})")
    if r.saved_images:
        lines.append(f"outputs: {r.saved_images}/<model>/<dataset>/<image>.png")
    g = r.quality_gate
    if g:
        thr = ", ".join(f"{k}: {v:g} dB" if k != "*" else f"{v:g} dB" for k, v in g["thresholds"].items())
        lines.append(f"quality gate ({thr}): " + ("passed" if g["passed"] else f"FAILED ({len(g['failures'])})"))
    for line in lines:
        con.print(escape_control(line), markup=False, highlight=False)
