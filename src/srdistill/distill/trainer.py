"""``distill``: check the options, take the run lock, check the outputs, and hand over to
:class:`srdistill.distill.run.Run`. The options are :mod:`.config`, the pieces a run keeps (paths,
lock, EMA, schedule, signals, RNG state) :mod:`.state`.

The same code runs on CPU and CUDA and, under ``torchrun``, data-parallel with
DistributedDataParallel (see :mod:`srdistill.distill.distributed`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from ..devices import resolve_device
from ..errors import OutputExistsError, SrDistillError, TrainingError, UsageError
from ..fileio import check_path_length, check_writable
from ..models.loading import check_model_path, load_model, sha256_file
from ..progress import NULL, Reporter
from . import distributed as dist_util
from .config import (INITS, DistillConfig, DistillResult, loss_weights, needs_teacher,  # noqa: F401  (re-exported)
                     resolve_precision, validate)
from .data_stage import DEFAULT_VARIANTS, UPCYCLE_RATIO, open_training_pack  # noqa: F401  (the defaults, re-exported)
from .resume import apply_checkpoint_config, explicit_fields, read_checkpoint
from .run import NAN_HOOK_ENV, RANK_DUMP_ENV, SIGNAL_HOOK_ENV, Run, TrainHooks  # noqa: F401  (re-exported)
from .state import (CKPT_FORMAT, EMA, RunLock, finalize_reparam, lr_lambda, paths_for,  # noqa: F401  (re-exported)
                    existing_log, remove_stale_partials, unfinished_run_log)


def distill(cfg: DistillConfig, reporter: Reporter = NULL, hooks: TrainHooks | None = None) -> DistillResult:
    """Train a student to imitate ``cfg.teacher``; returns what was done and where it went.
    ``hooks``: faults a test injects (a NaN loss, a SIGTERM at a step); none in normal use."""
    ctx = dist_util.context()
    explicit = explicit_fields(cfg)
    ck = None
    if cfg.resume and not cfg.build_only:  # the run in the checkpoint, not a new one: its options first,
        check_model_path(cfg.teacher)  # so that checks between options see the run's (--degradation-variants
        ckpt = _out_paths(cfg)["ckpt"]  # given alone is told that it differs, not that it needs --degradation)
        if ckpt.exists():
            ck = read_checkpoint(ckpt, CKPT_FORMAT)
            apply_checkpoint_config(cfg, ck, explicit, sha256_file(cfg.teacher), ctx.world_size, ckpt)
    validate(cfg)
    device = ctx.device if ctx.enabled else resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    rep = reporter if ctx.is_main else NULL
    if cfg.teacher_cache_dir:  # one mechanism: the folder is a training pack now
        if cfg.pack and os.path.realpath(cfg.pack) != os.path.realpath(cfg.teacher_cache_dir):
            raise UsageError("--teacher-cache-dir is another name for --pack; give one of them")
        rep.info("--teacher-cache-dir is now --pack: the folder holds a training pack (inputs, ground truth and "
                 "teacher outputs, reused by later runs)")
        cfg.pack, cfg.teacher_cache_dir = cfg.teacher_cache_dir, None
    if cfg.build_only:
        if not cfg.pack:
            raise UsageError("--build-only builds a training pack", hint="add --pack DIR")
        return _build_pack_only(cfg, rep, ctx, device)
    paths = _out_paths(cfg)
    if ck is not None and ck["step"] >= cfg.steps:
        return _nothing_to_do(cfg, ck, paths, rep)

    lock = _claim_outputs(cfg, paths, ctx)
    try:
        return Run(cfg, rep, ctx, device, precision, paths, hooks).execute()
    finally:
        lock.release()


def _out_paths(cfg: DistillConfig) -> dict[str, Path]:
    paths = paths_for(cfg.out)
    if paths["out"].suffix.lower() != ".safetensors":
        raise UsageError(f"--out must end in .safetensors, not {paths['out'].name!r}")
    for p in paths.values():  # a name over 255 bytes: exit 2 here, not a lock file that "cannot be created"
        check_path_length(p, "--out")
    return paths


def _claim_outputs(cfg: DistillConfig, paths: dict[str, Path], ctx) -> RunLock:
    """Take the run lock and check the outputs (rank 0; every rank learns whether it worked).
    The lock first: a run started beside a live one is told so, not that its checkpoint exists."""
    lock = RunLock(paths["lock"])
    startup_error: SrDistillError | None = None
    if ctx.is_main:
        try:
            lock.acquire()
            remove_stale_partials(paths)  # temporaries of a run that was killed mid-write
            try:
                if cfg.resume:
                    existing_log(paths["log"])  # appended to: refused at once if a FIFO or a device
                    if not paths["ckpt"].exists():
                        raise UsageError(f"--resume: no checkpoint {str(paths['ckpt'])!r} to resume from",
                                         hint="run without --resume to start fresh")
                else:
                    check_writable(paths["out"], overwrite=cfg.overwrite)
                    if not unfinished_run_log(paths["log"]):  # a killed run's own log may be replaced
                        check_writable(paths["log"], overwrite=cfg.overwrite)
                    if paths["ckpt"].exists() and not cfg.overwrite:
                        raise OutputExistsError(f"a checkpoint of an earlier run exists: {str(paths['ckpt'])!r}",
                                                hint="pass --resume to continue it, or --overwrite to start over")
            except SrDistillError:
                lock.release()
                raise
        except SrDistillError as e:
            startup_error = e
    if ctx.enabled and not ctx.all_true(startup_error is None) and startup_error is None:
        raise TrainingError("rank 0 could not start the run; see its error")
    if startup_error is not None:
        raise startup_error
    return lock


def _build_pack_only(cfg: DistillConfig, rep: Reporter, ctx, device: torch.device) -> DistillResult:
    """``--pack DIR --build-only``: the data stage alone (a cluster job that prepares data once)."""
    t0 = time.monotonic()
    teacher = load_model(cfg.teacher, device=device)
    teacher.module.eval()
    use_cache = cfg.teacher_cache and needs_teacher(cfg, loss_weights(cfg))
    _, _, stats, info = open_training_pack(cfg, teacher, device, rep, ctx, use_cache)
    return DistillResult(
        out="", checkpoint="", log="", steps=0, resumed_from=0, seconds=round(time.monotonic() - t0, 3),
        steps_per_second=0.0, device=str(device), precision="none", world_size=ctx.world_size,
        global_batch=cfg.batch_size * ctx.world_size, loss_formula="", final_losses={},
        teacher={"architecture": teacher.architecture, "params": teacher.params, "file": str(cfg.teacher)},
        student={}, compression_ratio=0.0, data=stats.to_dict(), teacher_cache={"enabled": use_cache},
        pack=info.to_dict())


def _nothing_to_do(cfg: DistillConfig, ck: dict, paths: dict[str, Path], rep: Reporter) -> DistillResult:
    """A resumed run that is already finished: say so, change no file."""
    step = int(ck["step"])
    rep.info(f"nothing to do: {paths['ckpt'].name} is at step {step} of {cfg.steps}; no file was changed "
             "(give a larger --steps to train further)")
    best = ck.get("best")
    return DistillResult(
        out=str(paths["out"]), checkpoint=str(paths["ckpt"]), log=str(paths["log"]), steps=step, resumed_from=step,
        seconds=0.0, steps_per_second=0.0, device="none", precision="none", world_size=1,
        global_batch=cfg.batch_size, loss_formula="", final_losses={}, teacher={"file": str(cfg.teacher)},
        student={"architecture": ck.get("student_arch"), "hyperparameters": ck.get("student_hp")},
        compression_ratio=0.0, data={}, teacher_cache={"enabled": False}, best=best if isinstance(best, dict) else None,
        nothing_to_do=True)


