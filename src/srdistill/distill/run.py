"""One distillation run as stages: models, data and terms, optimiser, resume, validation, the step
loop, checkpoint/output, result. Each stage is a method that can be read alone; the state they
share is the :class:`Run` object. :func:`srdistill.distill.trainer.distill` checks the options and
the outputs, takes the lock, and calls :meth:`Run.execute`.

Test hooks (a NaN loss at a step, a SIGTERM after a step, each rank's final weights) are a
:class:`TrainHooks` value passed in, not environment reads: the CLI turns ``SRDISTILL_TEST_*``
variables into one (so subprocess tests can inject faults), the library never reads them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data.datasets import builtin_val_dir, load_eval_pairs
from ..errors import Interrupted, SrDistillError, TrainingError, UsageError, shown
from ..evaluate import BicubicBaseline, score_pairs
from ..fileio import atomic_path
from ..models.checkpoint import save_student
from ..models.families import get_family
from ..models.loading import load_model
from ..models.reparam import fold_checked, parse_branches, reparameterize
from ..models.students import build_student, compression
from ..models.teacher_init import can_init, check_supported, init_from_teacher
from ..progress import Reporter
from .config import DistillResult, argv_repr, loss_weights, needs_teacher
from .data_stage import prepare_data
from .loader import PlanStream, batches, default_workers
from .losses import PIXEL_NAMES, pixel_loss
from .resume import (check_against_models, check_inputs, damaged, input_fingerprints, read_checkpoint,
                     recorded_config, scheduler_state)
from .schedule import make_schedule
from .state import CKPT_FORMAT, EMA, Signals, finalize_reparam, lr_lambda, rng_state, set_rng_state
from .terms import StepOutputs, TermContext, WeightedSum

NAN_HOOK_ENV = "SRDISTILL_TEST_NAN_AT_STEP"  # the CLI's test hook: inject a NaN loss at this step
SIGNAL_HOOK_ENV = "SRDISTILL_TEST_SIGTERM_AT_STEP"  # ... behave as if SIGTERM arrived after this step
RANK_DUMP_ENV = "SRDISTILL_TEST_DUMP_RANK_WEIGHTS"  # ... every rank saves its final weights here


@dataclass(frozen=True)
class TrainHooks:
    """Faults and probes a test injects into a run."""

    nan_at_step: int | None = None  # the loss of this step (1-based) becomes NaN
    sigterm_at_step: int | None = None  # behave as if SIGTERM arrived after this step
    rank_dump: str | None = None  # folder where every rank leaves its final weights

    @classmethod
    def from_env(cls, env=os.environ) -> "TrainHooks":
        """The CLI's way in for subprocess tests (``SRDISTILL_TEST_*``)."""
        return cls(int(env.get(NAN_HOOK_ENV) or 0) or None, int(env.get(SIGNAL_HOOK_ENV) or 0) or None,
                   env.get(RANK_DUMP_ENV) or None)


class Run:
    """The state of one run and its stages (see the module docstring)."""

    def __init__(self, cfg, rep: Reporter, ctx, device: torch.device, precision: str, paths: dict[str, Path],
                 hooks: TrainHooks | None = None):
        self.cfg, self.rep, self.ctx, self.device, self.precision, self.paths = cfg, rep, ctx, device, precision, paths
        self.hooks = hooks or TrainHooks()
        self.t_start = time.monotonic()
        self.world = ctx.world_size
        self.global_batch = cfg.batch_size * self.world
        self.history: list[dict] = []
        self.best: dict | None = None
        self.log_f = None
        self.last_terms: dict[str, float] = {}
        self.start_step = self.step = self.steps_done = 0
        self._ck: dict | None = None  # the checkpoint being resumed, while it is needed

    # ------------------------------------------------------------------ set-up stages

    def setup_models(self) -> None:
        cfg = self.cfg
        self.teacher = teacher = load_model(cfg.teacher, device=self.device)
        teacher.module.eval()
        for p in teacher.module.parameters():
            p.requires_grad_(False)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.student = student = build_student(teacher, cfg.student_width, cfg.student_depth, cfg.student_arch,
                                               allow_wider=cfg.allow_wider, seed=cfg.seed, reporter=self.rep)
        student.module.to(self.device).train()
        if cfg.init == "teacher":  # refused before any data is read
            check_supported(student, teacher)
        self.init_from = cfg.init == "teacher" or (cfg.init == "auto" and can_init(student, teacher))
        self.comp = compression(teacher, student)  # before --reparam adds its training-only branches
        self.reparam_branches = None
        spec = get_family(student.architecture).reparam
        if cfg.reparam is None:  # the default: where the family declares it (or where branches are asked for)
            cfg.reparam = spec is not None or cfg.reparam_branches is not None
        if cfg.reparam:
            if spec is None:
                raise UsageError(f"--reparam: {student.architecture} students have no plain 3x3 convs to "
                                 "re-parameterise", hint="drop --reparam, or use --student-arch compact")
            self.reparam_branches = parse_branches(cfg.reparam_branches, spec.branches)
        if cfg.gt_size is not None:
            if cfg.gt_size % teacher.scale or not 4 <= cfg.gt_size // teacher.scale <= 4096:  # --patch-size's range
                raise UsageError(f"--gt-size {cfg.gt_size} must be a multiple of the scale ({teacher.scale}) "
                                 f"between {4 * teacher.scale} and {4096 * teacher.scale}")
            cfg.patch_size = cfg.gt_size // teacher.scale
        self.rep.info(f"teacher: {teacher.architecture} x{teacher.scale}, {teacher.params:,} params ({teacher.name})")
        self.rep.info(f"student: {student.architecture} x{student.scale}, {student.params:,} params "
                      f"({self.comp['ratio']:.1f}x smaller)")

    def setup_data_and_terms(self) -> None:
        cfg = self.cfg
        self.schedule = make_schedule(cfg.alpha_schedule, cfg.alpha, cfg.alpha_end, cfg.steps)
        self.weights = loss_weights(cfg)
        self.needs_teacher = needs_teacher(cfg, self.weights)
        self.data = prepare_data(cfg, self.teacher, self.device, self.rep, self.ctx, self.needs_teacher)
        p = cfg.patch_size
        probe = torch.stack([im.lr[:, :p, :p] for im in self.data.images[:4]]).float().div(255).to(self.device)
        if self.init_from and not cfg.resume:  # a resumed run's weights come from its checkpoint

            init_rep = init_from_teacher(self.student, self.teacher, probe)
            self.rep.info(init_rep.describe() + (" (--init auto: the student is the teacher's family)"
                                                 if cfg.init == "auto" else ""))
        self.probe = probe
        if self.reparam_branches:  # after --init: the teacher's weights go into the 3x3 branches
            n = reparameterize(self.student.module, get_family(self.student.architecture).reparam,
                               self.reparam_branches)
            self.rep.info(f"re-parameterised training: {n} convs train as 3x3 + "
                          + " + ".join(self.reparam_branches) + " branches, folded into plain 3x3 convs at save")
        self.wsum = WeightedSum.build(self.weights.possible_terms(), TermContext(
            self.student, self.teacher, self.device, cfg.seed, cfg.lr, pixel_loss(cfg.loss),
            PIXEL_NAMES[cfg.loss.lower()], probe, self.rep))
        self.rep.info(self.weights.formula(self.wsum))

    def setup_optimiser(self) -> None:
        cfg, student = self.cfg, self.student
        self.train_params = list(student.module.parameters()) + self.wsum.trainable_parameters()
        self.opt = torch.optim.AdamW(self.train_params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(500, max(1, cfg.steps // 20))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(warmup, cfg.steps))
        self.ema = EMA(student.module, cfg.ema_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=(self.precision == "fp16"))
        if self.device.type == "cuda":
            student.module.to(memory_format=torch.channels_last)
            self.teacher.module.to(memory_format=torch.channels_last)
        self.model_for_step: nn.Module = self.ctx.wrap(student.module) if self.ctx.enabled else student.module
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
                         if self.precision in ("bf16", "fp16") else contextlib.nullcontext())

    def checkpoint(self) -> dict:
        """The checkpoint being resumed, read (and its structure checked) once."""
        if self._ck is None:
            self._ck = read_checkpoint(self.paths["ckpt"], CKPT_FORMAT)
        return self._ck

    def fingerprint_inputs(self) -> None:
        """A key of the images the run reads, recorded with its options; on --resume it must be the
        run's (images added, removed or replaced in --data or --val would make it another run)."""
        self.inputs = input_fingerprints(self.cfg, self.teacher.scale)
        if self.cfg.resume:
            check_inputs(recorded_config(self.checkpoint()), self.inputs)

    def resume(self) -> None:
        """Weights, optimiser, EMA, terms, RNG and validation history from the checkpoint, each checked
        against this run's models before anything is loaded."""
        if not self.cfg.resume:
            return
        ck, path = self.checkpoint(), self.paths["ckpt"]
        self._ck = None
        student = self.student
        if ck["student_arch"] != student.architecture or ck["student_hp"] != json.loads(
                json.dumps(student.hyperparameters)):
            raise UsageError(f"--resume: {path.name} holds a different student "
                             f"({shown(ck['student_arch'])} {shown(ck['student_hp'])})",
                             hint="use the same --student-* options")
        check_against_models(ck, path, student=student.module, ema=self.ema.module, opt=self.opt, sched=self.sched,
                             wsum=self.wsum, scaler=self.scaler)
        try:
            student.module.load_state_dict(ck["student"])
            self.ema.load_state_dict(ck["ema"])
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(scheduler_state(ck["scheduler"], self.sched))
            self.wsum.load_state_dict(ck.get("terms") or {})
            if ck.get("scaler"):
                self.scaler.load_state_dict(ck["scaler"])
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise damaged(path, f"it does not load into this run ({shown(first, 160)})") from None
        set_rng_state(self.gen, ck["rng"])  # last: checked by read_checkpoint, so no generator is half set
        self.start_step = self.step = ck["step"]
        # validation so far: a later, worse score must not replace the best student
        self.history = list(ck.get("history") or [])
        self.best = ck.get("best")
        self.rep.info(f"resuming from step {self.start_step} ({path.name})")
        if self.start_step >= self.cfg.steps:
            self.rep.warn(f"the checkpoint is already at step {self.start_step} >= --steps {self.cfg.steps}")

    def setup_validation(self) -> None:
        cfg = self.cfg
        self.val_pairs = None
        self.bicubic: dict | None = None
        val_dirs = cfg.val if cfg.val is not None else [str(builtin_val_dir())]
        if val_dirs:
            self.val_pairs = []
            for v in val_dirs:
                self.val_pairs += load_eval_pairs(v, self.teacher.scale, reporter=self.rep)
            b = score_pairs(BicubicBaseline(self.teacher.scale), self.val_pairs, self.teacher.scale)
            self.bicubic = {"psnr": b["psnr"], "ssim": b["ssim"]}
            self.rep.info(f"validation: {len(self.val_pairs)} image(s) "
                          + ("(built-in photos; --val DIR for your own, --no-val to skip)" if cfg.val is None
                             else "from " + ", ".join(val_dirs))
                          + f", bicubic scores {b['psnr']:.3f} dB")
        self.val_every = cfg.val_every or max(1, min(1000, cfg.steps // 5))

    def config_meta(self) -> None:
        """The run's options as recorded in the checkpoint, the log and the student's metadata."""
        cfg, student = self.cfg, self.student
        meta = {k: v for k, v in cfg.to_dict().items()
                if k not in ("resume", "overwrite", "out", "explicit", "pack", "workers", "build_only")}
        meta["teacher"] = Path(cfg.teacher).name
        meta["teacher_sha256"] = self.teacher.sha256
        fam = get_family(student.architecture)
        meta["student_width_used"] = student.hyperparameters.get(fam.width) if fam else cfg.student_width
        if self.data.degradation is not None:
            meta["degradation_params"] = self.data.degradation.params
        meta["inputs"] = self.inputs  # names, sizes and times of the images: a resume must find the same
        meta["global_batch"] = self.global_batch
        meta["world_size"] = self.world
        self.meta = meta
        self.command = "srdistill distill " + " ".join(argv_repr(cfg))

    # ------------------------------------------------------------------ files

    def write_ckpt(self, step: int) -> None:
        if not self.ctx.is_main:
            return
        student = self.student
        state = {
            "format": CKPT_FORMAT, "version": __version__, "step": step,
            "student_arch": student.architecture, "student_hp": json.loads(json.dumps(student.hyperparameters)),
            "student": student.module.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "rng": rng_state(self.gen, self.stream.state_before(step)),
            "terms": self.wsum.state_dict(),  # each term's learned module (adapters, a discriminator), by name
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "config": json.dumps(self.meta),
            "best": self.best, "history": self.history,  # a resumed run keeps the best student
        }
        # serialise in memory, then write with Python file I/O: torch.save's own writer turns a full
        # disk into a RuntimeError ("unexpected pos ..."); this way it is an OSError that atomic_path
        # reports as such, and the previous checkpoint stays in place
        buf = io.BytesIO()
        torch.save(state, buf)
        with atomic_path(self.paths["ckpt"], overwrite=True) as tmp:
            with open(tmp, "wb") as f:
                f.write(buf.getbuffer())
                f.flush()
                os.fsync(f.fileno())

    def save_output(self, step: int, metrics: dict | None) -> None:
        if not self.ctx.is_main:
            return
        out_model = copy.copy(self.student)
        out_model.module = copy.deepcopy(self.ema.module).cpu().eval()
        out_model._params_cache = None
        finalize_reparam(out_model.module)
        if self.reparam_branches:  # the file holds the family's plain architecture
            check = fold_checked(out_model.module, self.probe.to(self.device).cpu())
            self.reparam_check = check.to_dict()
            if not getattr(self, "_fold_reported", False):
                self.rep.info(check.describe())
                self._fold_reported = True
            self.log({"event": "fold", "step": step, **self.reparam_check})
        save_student(self.paths["out"], out_model, overwrite=True, teacher=self.teacher,
                     config={**self.meta, "step": step, "command": self.command},
                     metrics=metrics, extra={"data": self.data.stats.to_dict()})

    def open_log(self) -> None:
        if not self.ctx.is_main:
            return
        try:
            self.paths["log"].parent.mkdir(parents=True, exist_ok=True)
            self.log_f = open(self.paths["log"], "a" if self.cfg.resume else "w", encoding="utf-8")
        except OSError as e:
            raise SrDistillError(f"cannot write the training log {str(self.paths['log'])!r}: "
                                 f"{e.strerror or e}") from None
        self.log({"event": "start", "step": self.step, "time": time.time(), "config": self.meta,
                  "formula": self.weights.formula(self.wsum), "srdistill": __version__})

    def log(self, rec: dict) -> None:
        """One JSON line, flushed. A failed write (disk full) must neither stop the run nor, in the
        ``finally`` of :meth:`loop`, replace the error on its way out: warn once and log no more."""
        if self.log_f is None:
            return
        try:
            self.log_f.write(json.dumps(rec) + "\n")
            self.log_f.flush()
        except OSError as e:
            self.rep.warn(f"cannot write the training log {self.paths['log']}: {e.strerror or e}; "
                          "continuing without it")
            with contextlib.suppress(OSError):
                self.log_f.close()
            self.log_f = None

    def close_log(self) -> None:
        if self.log_f:
            self.log({"event": "end", "step": self.step, "time": time.time()})
        if self.log_f:
            with contextlib.suppress(OSError):
                self.log_f.close()

    # ------------------------------------------------------------------ training

    def validate(self, step: int) -> dict:
        """Mean Y-PSNR/SSIM of the EMA student; under torchrun each rank scores a shard, then all-reduce."""
        ema_model = copy.copy(self.student)
        ema_model.module = self.ema.module
        mine = self.val_pairs[self.ctx.rank::self.world]
        res = score_pairs(ema_model, mine, self.teacher.scale, device=self.device) if mine else {"images": []}
        sums = [sum(r["psnr"] for r in res["images"]), sum(r["ssim"] for r in res["images"]),
                float(len(res["images"]))]
        if self.ctx.enabled:
            sums = self.ctx.sum(sums)
        return {"step": step, "psnr": sums[0] / sums[2], "ssim": sums[1] / sums[2]}

    def forward(self, plan, batch) -> tuple[StepOutputs, dict, torch.Tensor]:
        """The step's outputs and weighted terms (no backward yet)."""
        self.weights.alpha = self.schedule.at(self.step)
        try:
            with self.autocast:
                t_out = batch.target
                if t_out is None and self.needs_teacher:
                    t_out = self.data.sampler.live_targets(plan, self.teacher.module, self.device, lr=batch.lr)
                if self.wsum.needs("teacher_features"):  # teacher features on the same (augmented) input
                    with torch.no_grad():
                        self.teacher.module(batch.lr)
                s_out = self.model_for_step(batch.lr)
                out = StepOutputs(s_out.float(), t_out, batch.hr, batch.lr)
                terms = self.wsum.losses(out, self.weights.terms())
                loss = sum(terms.values())
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(f"out of GPU memory at batch {self.cfg.batch_size} x patch {self.cfg.patch_size}",
                                hint="use a smaller --batch-size or --patch-size") from None
        if self.hooks.nan_at_step and self.step + 1 == self.hooks.nan_at_step:
            loss = loss * float("nan")
        return out, terms, loss

    def check_finite(self, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()))
        if self.ctx.enabled:  # every rank stops together, none waits forever in the all-reduce
            finite = self.ctx.all_true(finite)
        if not finite:
            kept = (f"the last good checkpoint {self.paths['ckpt'].name} is intact"
                    if self.paths["ckpt"].exists() else "no checkpoint was written yet")
            raise TrainingError(f"the loss became non-finite ({loss.item()}) at step {self.step + 1}; "
                                f"stopping ({kept})", hint="lower --lr, or use --precision fp32")

    def update(self, out: StepOutputs, terms: dict, loss: torch.Tensor) -> None:
        """Backward, clip, optimiser and EMA; then the terms' own updates (a discriminator's)."""
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.train_params, self.cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.ema.update(self.student.module)
        terms.update(self.wsum.after_step(out, self.autocast))
        self.step += 1
        self.steps_done += 1
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        self.last_terms["loss"] = float(loss.detach())

    def after_step(self, task, sig) -> None:
        """Progress, log, validation (keeping the best student), checkpoint, stop on a signal."""
        cfg, step = self.cfg, self.step
        rate = self.steps_done / max(1e-9, time.monotonic() - self.t_loop)
        task.advance(1, **{k: round(v, 5) for k, v in self.last_terms.items()}, **{"it/s": round(rate, 2)})
        if self.log_f and (step % cfg.log_every == 0 or step == cfg.steps):
            self.log({"event": "step", "step": step, **self.last_terms, "alpha": self.weights.alpha,
                      "lr": self.sched.get_last_lr()[0], "steps_per_s": rate})
        if self.val_pairs and (step % self.val_every == 0 or step == cfg.steps):
            self.validation_point(step)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            self.write_ckpt(step)
        stop = sig.received
        if self.hooks.sigterm_at_step and step == self.hooks.sigterm_at_step:
            stop = signal.SIGTERM
        if self.ctx.enabled:
            stop = self.ctx.any_flag(stop)
        if stop:
            self.write_ckpt(step)
            raise Interrupted(f"stopped at step {step}; checkpoint saved to {self.paths['ckpt']} "
                              "(continue with --resume)", signum=int(stop))

    def validation_point(self, step: int) -> None:
        rec = self.validate(step)
        self.history.append(rec)
        self.log({"event": "val", **rec})
        if self.best is None or rec["psnr"] > self.best["psnr"]:
            self.best = rec
            self.save_output(step, {"val": {"psnr": rec["psnr"], "ssim": rec["ssim"], "step": step,
                                            "images": len(self.val_pairs), "y_channel": True,
                                            "crop_border": self.teacher.scale}})
        self.rep.info(f"step {step}: val PSNR {rec['psnr']:.3f} dB, SSIM {rec['ssim']:.4f}"
                      + (" (best)" if self.best is rec else ""))

    def loop(self) -> None:
        cfg = self.cfg
        workers = cfg.workers if cfg.workers is not None else default_workers(self.device)
        self.stream = PlanStream(self.data.sampler, self.gen, self.global_batch, cfg.batch_size, self.ctx.rank,
                                 self.start_step, cfg.steps)
        self.t_loop = time.monotonic()
        try:
            self.open_log()
            with Signals() as sig, self.rep.task("distilling", total=cfg.steps) as task:
                task.advance(self.step)
                it = batches(self.stream, self.device, workers)
                while self.step < cfg.steps:
                    plan, batch = next(it)
                    if self.device.type == "cuda":
                        batch.lr = batch.lr.contiguous(memory_format=torch.channels_last)
                    out, terms, loss = self.forward(plan, batch)
                    self.check_finite(loss)
                    self.update(out, terms, loss)
                    self.after_step(task, sig)
            self.finish()
        finally:
            self.close_log()
            self.wsum.close()

    def finish(self) -> None:
        if not self.val_pairs or self.best is None:
            self.save_output(self.step, None)
        if self.best is not None and self.bicubic is not None and self.best["psnr"] < self.bicubic["psnr"]:
            self.rep.warn(f"the student scores below bicubic on the validation images ({self.best['psnr']:.3f} < "
                          f"{self.bicubic['psnr']:.3f} dB): train longer (--steps), on more data, or check the teacher")
        if self.hooks.rank_dump:  # test hook: every rank leaves its final weights, to check that ranks agree
            Path(self.hooks.rank_dump).mkdir(parents=True, exist_ok=True)
            torch.save(self.student.module.state_dict(), Path(self.hooks.rank_dump) / f"rank{self.ctx.rank}.pt")
        if self.ctx.enabled:
            self.ctx.barrier()

    # ------------------------------------------------------------------ all of it

    def execute(self):
        self.setup_models()
        self.fingerprint_inputs()
        self.setup_data_and_terms()
        self.setup_optimiser()
        self.resume()
        self.setup_validation()
        self.config_meta()
        self.loop()
        return self.result()

    def result(self):
        loop_s = time.monotonic() - self.t_loop
        d = self.data
        return DistillResult(
            out=str(self.paths["out"]), checkpoint=str(self.paths["ckpt"]), log=str(self.paths["log"]),
            steps=self.step, resumed_from=self.start_step, seconds=round(time.monotonic() - self.t_start, 3),
            steps_per_second=round(self.steps_done / loop_s, 3) if loop_s > 0 else 0.0,
            device=str(self.device), precision=self.precision, world_size=self.world, global_batch=self.global_batch,
            loss_formula=self.weights.formula(self.wsum), final_losses=self.last_terms,
            teacher={"architecture": self.teacher.architecture, "params": self.teacher.params,
                     "file": str(self.cfg.teacher)},
            student={"architecture": self.student.architecture, "params": self.comp["student_params"],
                     "hyperparameters": self.student.hyperparameters},
            compression_ratio=round(self.comp["ratio"], 3), data=d.stats.to_dict(), teacher_cache=d.cache_info,
            validation=self.history, best=self.best, bicubic=self.bicubic,
            pack=d.pack.to_dict() if d.pack else None)
