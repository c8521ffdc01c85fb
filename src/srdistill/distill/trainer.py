"""The distillation loop: data, teacher cache, losses, optimiser, EMA, checkpoints, resume, signals.

The same code runs on CPU and CUDA and, under ``torchrun``, data-parallel with
DistributedDataParallel (see :mod:`srdistill.distill.distributed`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..devices import resolve_device
from ..errors import Interrupted, OutputExistsError, SrDistillError, TrainingError, UsageError
from ..fileio import atomic_path, check_writable
from ..progress import NULL, Reporter
from . import distributed as dist_util
from .data_stage import DEFAULT_VARIANTS, UPCYCLE_RATIO  # noqa: F401  (the defaults, re-exported)
from .loader import PlanStream, batches, default_workers
from .schedule import make_schedule
from .losses import PIXEL_NAMES, LossWeights, pixel_loss
from .terms import StepOutputs, TermContext, WeightedSum, needs_of

NAN_HOOK_ENV = "SRDISTILL_TEST_NAN_AT_STEP"  # test hook: inject a NaN loss at this step
SIGNAL_HOOK_ENV = "SRDISTILL_TEST_SIGTERM_AT_STEP"
RANK_DUMP_ENV = "SRDISTILL_TEST_DUMP_RANK_WEIGHTS"  # test hook: each rank saves its final weights here  # test hook: behave as if SIGTERM arrived after this step
CKPT_FORMAT = 1
INITS = ("auto", "random", "teacher")


@dataclass
class DistillConfig:
    teacher: str
    student_width: int
    student_depth: int | None = None
    student_arch: str | None = None
    allow_wider: bool = False
    data: list[str] = field(default_factory=list)  # empty: built-in sample images
    val: list[str] | None = None  # None: built-in val images when data is built-in, else no validation
    lr_only: bool = False
    steps: int = 5000
    batch_size: int = 16
    patch_size: int = 32  # LR pixels
    gt_size: int | None = None  # HR patch size (BasicSR's gt_size); overrides patch_size once the scale is known
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int | None = None
    grad_clip: float = 1.0
    alpha: float | None = None  # None: the schedule's default start (0.5 constant, 1.0 eco/linear)
    alpha_schedule: str = "constant"
    alpha_end: float | None = None
    upcycle: bool = False
    upcycle_ratio: float | None = None  # None: UPCYCLE_RATIO
    init: str = "auto"  # auto: from the teacher where the student can be (same family), else random
    degradation: str = "bicubic"  # bicubic (clean LR), realesrgan, light, none (with --lr-only) or a file
    degradation_variants: int | None = None  # None: DEFAULT_VARIANTS with a degradation
    terms: dict | None = None  # more registered loss terms, name -> weight (--term NAME=WEIGHT)
    loss: str = "l1"
    feature_weight: float = 0.0
    adversarial_weight: float = 0.0
    ema_decay: float = 0.999
    val_every: int | None = None
    checkpoint_every: int = 500
    log_every: int = 50
    out: str = "student.safetensors"
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    teacher_cache: bool = True
    teacher_cache_dir: str | None = None
    cache_tile: int = 256
    pack: str | None = None  # a training pack folder (data.pack): inputs, HR and targets on disk
    build_only: bool = False  # with pack: build it and stop
    workers: int | None = None  # DataLoader workers for patch assembly; None: loader.default_workers
    threads: int | None = None
    max_images: int | None = None
    explicit: list[str] | None = None  # options the user gave (the CLI fills it in); see distill.resume

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DistillResult:
    out: str
    checkpoint: str
    log: str
    steps: int
    resumed_from: int
    seconds: float
    steps_per_second: float
    device: str
    precision: str
    world_size: int
    global_batch: int
    loss_formula: str
    final_losses: dict
    teacher: dict
    student: dict
    compression_ratio: float
    data: dict
    teacher_cache: dict
    validation: list = field(default_factory=list)
    best: dict | None = None
    bicubic: dict | None = None  # bicubic's mean Y-PSNR/SSIM on the validation images
    nothing_to_do: bool = False  # a resumed run that was already finished: no file changed
    pack: dict | None = None  # the training pack used (or built, with build_only)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- helpers


def resolve_precision(name: str, device: torch.device) -> str:
    name = (name or "auto").lower()
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise UsageError(f"invalid --precision {name!r}", hint="use auto, fp32, bf16 or fp16")
    if device.type != "cuda":
        if name in ("bf16", "fp16"):
            raise UsageError(f"--precision {name} needs a CUDA device; CPU training runs in fp32")
        return "fp32"
    if name == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def paths_for(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return {
        "out": out,
        "ckpt": out.with_name(stem + ".ckpt"),
        "log": out.with_name(stem + ".train.jsonl"),
        "lock": out.with_name(stem + ".lock"),  # the stem: what the checkpoint and the log share
    }


def _remove_stale_partials(paths: dict[str, Path]) -> None:
    """Delete ``.<name>.*.partial`` files atomic_path left when a run was killed (SIGKILL, power loss).
    Only called with the run lock held, so no live writer owns them."""
    import glob

    for key in ("out", "ckpt"):
        p = paths[key]
        for tmp in p.parent.glob(f".{glob.escape(p.name)}.*.partial"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _unfinished_run_log(log: Path) -> bool:
    """True if ``log`` is a training log srdistill started (its first line is our start event) for a run
    that never finished (killed, or stopped before its last step): only such a log may be replaced
    without --overwrite. A finished run's log is the record of a model that may live elsewhere now."""
    try:
        with open(log, encoding="utf-8") as f:
            first = json.loads(f.readline() or "null")
            if not (isinstance(first, dict) and first.get("event") == "start" and "srdistill" in first):
                return False
            steps, finished = (first.get("config") or {}).get("steps"), False
            for line in f:
                if '"start"' not in line and '"end"' not in line:
                    continue
                rec = json.loads(line)
                if rec.get("event") == "start":  # a resumed run: its own --steps
                    steps, finished = (rec.get("config") or {}).get("steps"), False
                elif rec.get("event") == "end":
                    finished = isinstance(steps, int) and rec.get("step", 0) >= steps
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return False
    return not finished


class RunLock:
    """``<stem>.lock`` next to the output, held with an OS lock (``flock``) for the run's life.

    The OS drops the lock when the process dies however it dies (SIGKILL, OOM), so a stale lock
    file never blocks a later run, also in a container where the restarted job has the same pid.
    The lock is named after the stem, which the checkpoint and the log share: ``-o s.SAFETENSORS``
    beside a live ``-o s.safetensors`` is refused instead of clobbering its checkpoint.
    """

    def __init__(self, path: Path):
        self.path = path
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a parent that is a file, a read-only folder, ...
            raise SrDistillError(f"cannot write to folder {str(self.path.parent)!r}: {e.strerror or e}") from None
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): the lock file's pid decides
            return self._acquire_by_pid()
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as e:
                raise SrDistillError(f"cannot create the lock file {str(self.path)!r}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = self._owner()
                os.close(fd)
                raise OutputExistsError(
                    f"another srdistill run (pid {pid or '?'}) is writing {self.path.stem!r}",
                    hint="wait for it, or give another --output") from None
            try:  # the previous holder may have removed the file between our open and our lock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._fd, self.held = fd, True
            return
        raise OutputExistsError(f"cannot take the lock {str(self.path)!r}")

    def _acquire_by_pid(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self._owner()
                if pid is not None and _alive(pid):
                    raise OutputExistsError(
                        f"another srdistill run (pid {pid}) is writing {self.path.stem!r}",
                        hint=f"wait for it, or remove {str(self.path)!r} if that run is gone") from None
                with contextlib.suppress(OSError):
                    self.path.unlink()  # stale lock of a dead run
                continue
            except OSError as e:
                raise SrDistillError(f"cannot create the lock file {str(self.path)!r}: {e.strerror or e}") from None
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return
        raise OutputExistsError(f"cannot take the lock {str(self.path)!r}")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or "0") or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(OSError):
                self.path.unlink()
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EMA:
    """Exponential moving average of the student's weights (the saved model)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))  # warm-up for short runs
        ema_p = list(self.module.parameters())
        src_p = list(module.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in src_p], 1.0 - d)
        for eb, b in zip(self.module.buffers(), module.buffers()):
            eb.copy_(b)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, sd: dict) -> None:
        self.module.load_state_dict(sd["module"])
        self.updates = int(sd["updates"])


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))) * 0.99 + 0.01
    return f


def finalize_reparam(module: nn.Module) -> None:
    """Refresh deploy weights of re-parameterisable blocks (SPAN's Conv3XC) before saving."""
    for m in module.modules():
        fn = getattr(m, "update_params", None)
        if callable(fn):
            with torch.no_grad():
                fn()


class _Signals:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and stops with 130/143."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        # only a user's second Ctrl-C skips the checkpoint: SIGTERMs come in bursts (systemd,
        # Kubernetes, CI runners) and must all end in a saved checkpoint
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def _rng_state(gen: torch.Generator, gen_state: torch.Tensor | None = None) -> dict:
    return {"gen": gen.get_state() if gen_state is None else gen_state, "torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
            "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(gen: torch.Generator, st: dict) -> None:
    gen.set_state(st["gen"])
    torch.set_rng_state(st["torch"])
    np.random.set_state(("MT19937", np.array(st["numpy"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(st["python"]), None))
    if st.get("cuda") and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(st["cuda"])


# --------------------------------------------------------------------------- the run


def distill(cfg: DistillConfig, reporter: Reporter = NULL) -> DistillResult:
    """Train a student to imitate ``cfg.teacher``; returns what was done and where it went."""
    from .resume import apply_checkpoint_config, explicit_fields, read_checkpoint

    ctx = dist_util.context()
    explicit = explicit_fields(cfg)
    _validate(cfg)
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
    paths = paths_for(cfg.out)
    if paths["out"].suffix.lower() != ".safetensors":
        raise UsageError(f"--out must end in .safetensors, not {paths['out'].name!r}")

    if cfg.resume and paths["ckpt"].exists():  # the run in the checkpoint, not a new one
        from ..models.loading import sha256_file

        ck = read_checkpoint(paths["ckpt"], CKPT_FORMAT)
        apply_checkpoint_config(cfg, ck, explicit, sha256_file(cfg.teacher), ctx.world_size)
        _validate(cfg)
        if ck["step"] >= cfg.steps:
            return _nothing_to_do(cfg, ck, paths, rep)

    lock = RunLock(paths["lock"])
    startup_error: SrDistillError | None = None
    if ctx.is_main:
        try:
            # the lock first: a run started beside a live one is told so, not that its checkpoint exists
            lock.acquire()
            _remove_stale_partials(paths)  # temporaries of a run that was killed mid-write
            try:
                if cfg.resume:
                    if not paths["ckpt"].exists():
                        raise UsageError(f"--resume: no checkpoint {str(paths['ckpt'])!r} to resume from",
                                         hint="run without --resume to start fresh")
                else:
                    check_writable(paths["out"], overwrite=cfg.overwrite)
                    if not _unfinished_run_log(paths["log"]):  # a killed run's own log may be replaced
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
    try:
        return _run(cfg, rep, ctx, device, precision, paths)
    finally:
        lock.release()


def _build_pack_only(cfg: DistillConfig, rep: Reporter, ctx, device: torch.device) -> DistillResult:
    """``--pack DIR --build-only``: the data stage alone (a cluster job that prepares data once)."""
    from ..models.loading import load_model
    from .data_stage import pack_request
    from ..data.degrade import load_degradation
    from ..data.pack import open_pack

    t0 = time.monotonic()
    teacher = load_model(cfg.teacher, device=device)
    teacher.module.eval()
    use_cache = cfg.teacher_cache and _needs_teacher(cfg, _loss_weights(cfg))
    req = pack_request(cfg, teacher, load_degradation(cfg.degradation), use_cache)
    _, _, stats, info = open_pack(req, teacher if use_cache else None, device=device, reporter=rep, rank=ctx.rank,
                                  world=ctx.world_size, barrier=ctx.barrier if ctx.enabled else None)
    rep.info(info.describe())
    return DistillResult(
        out="", checkpoint="", log="", steps=0, resumed_from=0, seconds=round(time.monotonic() - t0, 3),
        steps_per_second=0.0, device=str(device), precision="none", world_size=ctx.world_size,
        global_batch=cfg.batch_size * ctx.world_size, loss_formula="", final_losses={},
        teacher={"architecture": teacher.architecture, "params": teacher.params, "file": str(cfg.teacher)},
        student={}, compression_ratio=0.0, data=stats.to_dict(), teacher_cache={"enabled": use_cache},
        pack=info.to_dict())


def _loss_weights(cfg: DistillConfig) -> LossWeights:
    schedule = make_schedule(cfg.alpha_schedule, cfg.alpha, cfg.alpha_end, cfg.steps)
    return LossWeights(schedule.peak(), cfg.feature_weight, cfg.adversarial_weight, cfg.loss, has_hr=not cfg.lr_only,
                       schedule=schedule.describe() if schedule.varies() else None, extra=cfg.terms)


def _needs_teacher(cfg: DistillConfig, weights: LossWeights) -> bool:
    """Whether any term reads the teacher (its output or features), so the teacher cache is wanted."""
    return bool({"teacher_output", "teacher_features"} & needs_of(weights.possible_terms())) or cfg.upcycle


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


# numeric options: (field, lowest, highest or None); a value outside, or nan, is a usage error
_RANGES = (("seed", 0, 2**63 - 1), ("threads", 1, 4096), ("batch_size", 1, 65536), ("patch_size", 4, 4096),
           ("student_width", 1, 4096), ("student_depth", 1, 1024), ("steps", 1, 10**9),
           ("warmup_steps", 0, 10**9), ("weight_decay", 0.0, None), ("grad_clip", 0.0, None),
           ("feature_weight", 0.0, None), ("adversarial_weight", 0.0, None), ("max_images", 1, None),
           ("log_every", 1, None), ("degradation_variants", 1, 256), ("workers", 0, 64))


def _check_ranges(cfg: DistillConfig) -> None:
    for name, lo, hi in _RANGES:
        v = getattr(cfg, name)
        if v is None:
            continue
        bad = isinstance(v, float) and not math.isfinite(v)
        if bad or v < lo or (hi is not None and v > hi):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} must be " + (f"between {lo} and {hi}" if hi is not None else f"at least {lo}")
                             + f", not {v}")


def _validate(cfg: DistillConfig) -> None:
    from ..models.loading import check_model_path

    check_model_path(cfg.teacher)  # inputs before outputs: `distill photo.jpg` is told about the photo
    _check_ranges(cfg)
    if not cfg.lr > 0:
        raise UsageError(f"--lr must be positive, not {cfg.lr}")
    if not 0 <= cfg.ema_decay < 1:
        raise UsageError(f"--ema-decay must be in [0, 1), not {cfg.ema_decay}")
    if cfg.checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be at least 1, not {cfg.checkpoint_every}")
    if cfg.val_every is not None and cfg.val_every < 1:
        raise UsageError(f"--val-every must be at least 1, not {cfg.val_every}")
    if cfg.max_images is not None and cfg.max_images < 1:
        raise UsageError(f"--max-images must be at least 1, not {cfg.max_images}")
    for flag, folders in (("--data", cfg.data), ("--val", cfg.val or [])):
        for f in folders:
            if not Path(f).exists():
                raise UsageError(f"{flag} {str(f)!r} does not exist")
    for flag, folder in (("--teacher-cache-dir", cfg.teacher_cache_dir), ("--pack", cfg.pack)):
        if folder and Path(folder).exists() and not Path(folder).is_dir():
            raise UsageError(f"cannot use {flag} folder {folder!r}: it is a file",
                             hint="give a folder (it is created if missing)")
    sched = make_schedule(cfg.alpha_schedule, cfg.alpha, cfg.alpha_end, cfg.steps)
    cfg.alpha, cfg.alpha_end, cfg.alpha_schedule = sched.start, sched.end, sched.name
    if cfg.upcycle_ratio is not None and not 0 < cfg.upcycle_ratio < 1:
        raise UsageError(f"--upcycle-ratio must be between 0 and 1 (exclusive), not {cfg.upcycle_ratio}",
                         hint=f"e.g. {UPCYCLE_RATIO}: that share of each batch comes from upcycled inputs")
    if cfg.upcycle_ratio is not None and not cfg.upcycle:
        raise UsageError("--upcycle-ratio needs --upcycle")
    if cfg.upcycle and not cfg.teacher_cache:
        raise UsageError("--upcycle labels its inputs through the teacher cache",
                         hint="drop --no-teacher-cache or --upcycle")
    if cfg.upcycle and cfg.lr_only:
        raise UsageError("--upcycle needs HR images (zoom-in crops them)", hint="drop --lr-only or --upcycle")
    if cfg.upcycle and cfg.batch_size < 2:
        raise UsageError("--upcycle needs --batch-size 2 or more (each batch mixes both kinds of patch)")
    _validate_degradation(cfg)
    cfg.init = (cfg.init or "auto").strip().lower()
    if cfg.init not in INITS:
        raise UsageError(f"unknown --init {cfg.init!r}", hint="use auto, random or teacher")
    LossWeights(cfg.alpha, cfg.feature_weight, cfg.adversarial_weight, cfg.loss, extra=cfg.terms).validate()


def _validate_degradation(cfg: DistillConfig) -> None:
    from ..data.degrade import load_degradation

    deg = load_degradation(cfg.degradation)  # a bad preset file is refused before anything is loaded
    if deg is None:
        if cfg.degradation_variants is not None:
            raise UsageError("--degradation-variants needs a --degradation (realesrgan, light or a file)")
        if cfg.degradation.strip().lower() == "none" and not cfg.lr_only:
            raise UsageError("--degradation none is for --lr-only data (the images are the inputs)",
                             hint="use bicubic (the default) to make LR from HR images")
        return
    if cfg.upcycle:
        raise UsageError("--upcycle and --degradation cannot be combined yet", hint="drop one of them")
    if cfg.degradation_variants is not None and not cfg.teacher_cache:
        raise UsageError("--degradation-variants counts the cached variants; --no-teacher-cache degrades every "
                         "patch afresh", hint="drop one of them")


def _run(cfg: DistillConfig, rep: Reporter, ctx, device: torch.device, precision: str, paths: dict[str, Path]):
    from ..models.checkpoint import save_student
    from ..models.families import get_family
    from ..models.loading import load_model
    from ..models.students import build_student, compression
    from ..data.datasets import builtin_val_dir, load_eval_pairs

    t_start = time.monotonic()
    teacher = load_model(cfg.teacher, device=device)
    teacher.module.eval()
    for p in teacher.module.parameters():
        p.requires_grad_(False)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    student = build_student(teacher, cfg.student_width, cfg.student_depth, cfg.student_arch,
                            allow_wider=cfg.allow_wider, seed=cfg.seed, reporter=rep)
    student.module.to(device).train()
    from ..models.teacher_init import can_init, check_supported

    if cfg.init == "teacher":  # refused before any data is read
        check_supported(student, teacher)
    init_from = cfg.init == "teacher" or (cfg.init == "auto" and can_init(student, teacher))
    comp = compression(teacher, student)
    if cfg.gt_size is not None:
        if cfg.gt_size % teacher.scale or cfg.gt_size // teacher.scale < 4:
            raise UsageError(f"--gt-size {cfg.gt_size} must be a multiple of the scale ({teacher.scale}) and at "
                             f"least {4 * teacher.scale}")
        cfg.patch_size = cfg.gt_size // teacher.scale
    rep.info(f"teacher: {teacher.architecture} x{teacher.scale}, {teacher.params:,} params ({teacher.name})")
    rep.info(f"student: {student.architecture} x{student.scale}, {student.params:,} params "
             f"({comp['ratio']:.1f}x smaller)")

    schedule = make_schedule(cfg.alpha_schedule, cfg.alpha, cfg.alpha_end, cfg.steps)
    weights = _loss_weights(cfg)
    needs_teacher = _needs_teacher(cfg, weights)
    from .data_stage import prepare_data

    data = prepare_data(cfg, teacher, device, rep, ctx, needs_teacher)
    images, stats, cache_info, sampler = data.images, data.stats, data.cache_info, data.sampler
    if init_from and not cfg.resume:  # a resumed run's weights come from its checkpoint
        from ..models.teacher_init import init_from_teacher

        p = cfg.patch_size
        probe = torch.stack([im.lr[:, :p, :p] for im in images[:4]]).float().div(255).to(device)
        init_rep = init_from_teacher(student, teacher, probe)
        rep.info(init_rep.describe() + (" (--init auto: the student is the teacher's family)"
                                         if cfg.init == "auto" else ""))
    p = cfg.patch_size
    probe = torch.stack([im.lr[:, :p, :p] for im in images[:4]]).float().div(255).to(device)
    wsum = WeightedSum.build(weights.possible_terms(), TermContext(
        student, teacher, device, cfg.seed, cfg.lr, pixel_loss(cfg.loss), PIXEL_NAMES[cfg.loss.lower()], probe, rep))
    rep.info(weights.formula(wsum))

    train_params = list(student.module.parameters()) + wsum.trainable_parameters()
    opt = torch.optim.AdamW(train_params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(500, max(1, cfg.steps // 20))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, cfg.steps))
    ema = EMA(student.module, cfg.ema_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=(precision == "fp16"))
    if device.type == "cuda":
        student.module.to(memory_format=torch.channels_last)
        teacher.module.to(memory_format=torch.channels_last)
    model_for_step: nn.Module = student.module
    if ctx.enabled:
        model_for_step = ctx.wrap(student.module)

    gen = torch.Generator().manual_seed(cfg.seed)
    start_step = 0
    if cfg.resume:
        from .resume import read_checkpoint

        ck = read_checkpoint(paths["ckpt"], CKPT_FORMAT)
        if ck["student_arch"] != student.architecture or ck["student_hp"] != json.loads(
                json.dumps(student.hyperparameters)):
            raise UsageError(f"--resume: {paths['ckpt'].name} holds a different student "
                             f"({ck['student_arch']} {ck['student_hp']})", hint="use the same --student-* options")
        student.module.load_state_dict(ck["student"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        wsum.load_state_dict(ck.get("terms") or {})
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        _set_rng_state(gen, ck["rng"])
        start_step = int(ck["step"])
        rep.info(f"resuming from step {start_step} ({paths['ckpt'].name})")
        if start_step >= cfg.steps:
            rep.warn(f"the checkpoint is already at step {start_step} >= --steps {cfg.steps}")

    val_pairs = None
    val_dirs = cfg.val if cfg.val is not None else [str(builtin_val_dir())]
    bicubic: dict | None = None
    if val_dirs:
        from ..evaluate import BicubicBaseline, score_pairs

        val_pairs = []
        for v in val_dirs:
            val_pairs += load_eval_pairs(v, teacher.scale, reporter=rep)
        b = score_pairs(BicubicBaseline(teacher.scale), val_pairs, teacher.scale)
        bicubic = {"psnr": b["psnr"], "ssim": b["ssim"]}
        rep.info(f"validation: {len(val_pairs)} image(s) "
                 + ("(built-in photos; --val DIR for your own, --no-val to skip)" if cfg.val is None
                    else "from " + ", ".join(val_dirs))
                 + f", bicubic scores {b['psnr']:.3f} dB")
    val_every = cfg.val_every or max(1, min(1000, cfg.steps // 5))

    world = ctx.world_size
    global_batch = cfg.batch_size * world
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if precision in ("bf16", "fp16") else contextlib.nullcontext())
    nan_at = int(os.environ.get(NAN_HOOK_ENV, "0") or 0)
    term_at = int(os.environ.get(SIGNAL_HOOK_ENV, "0") or 0)

    log_f = None
    history: list[dict] = []
    best: dict | None = None
    if cfg.resume:  # validation so far: a later, worse score must not replace the best student
        history = list(ck.get("history") or [])
        best = ck.get("best") if isinstance(ck.get("best"), dict) else None
    last_terms: dict[str, float] = {}
    config_meta = {k: v for k, v in cfg.to_dict().items() if k not in ("resume", "overwrite", "out", "explicit")}
    config_meta["teacher"] = Path(cfg.teacher).name
    config_meta["teacher_sha256"] = teacher.sha256
    config_meta["student_width_used"] = student.hyperparameters.get(get_family(student.architecture).width) \
        if get_family(student.architecture) else cfg.student_width
    if data.degradation is not None:
        config_meta["degradation_params"] = data.degradation.params
    for k in ("pack", "workers", "build_only"):  # where the data lives / how it is read: not what the run is
        config_meta.pop(k, None)
    config_meta["global_batch"] = global_batch
    config_meta["world_size"] = world
    command = "srdistill distill " + " ".join(_argv_repr(cfg))

    def write_ckpt(step: int) -> None:
        if not ctx.is_main:
            return
        state = {
            "format": CKPT_FORMAT, "version": __version__, "step": step,
            "student_arch": student.architecture, "student_hp": json.loads(json.dumps(student.hyperparameters)),
            "student": student.module.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": _rng_state(gen, stream.state_before(step)),
            "terms": wsum.state_dict(),  # each term's learned module (adapters, a discriminator), by name
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "config": json.dumps(config_meta),
            "best": best, "history": history,  # a resumed run keeps the best student, not a later worse one
        }
        # serialise in memory, then write with Python file I/O: torch.save's own writer turns a full
        # disk into a RuntimeError ("unexpected pos ..."); this way it is an OSError that atomic_path
        # reports as such, and the previous checkpoint stays in place
        buf = io.BytesIO()
        torch.save(state, buf)
        with atomic_path(paths["ckpt"], overwrite=True) as tmp:
            with open(tmp, "wb") as f:
                f.write(buf.getbuffer())
                f.flush()
                os.fsync(f.fileno())

    def save_output(step: int, metrics: dict | None) -> None:
        if not ctx.is_main:
            return
        out_model = copy.copy(student)
        out_model.module = copy.deepcopy(ema.module).cpu().eval()
        out_model._params_cache = None
        finalize_reparam(out_model.module)
        save_student(paths["out"], out_model, overwrite=True, teacher=teacher,
                     config={**config_meta, "step": step, "command": command},
                     metrics=metrics, extra={"data": stats.to_dict()})

    def validate(step: int) -> dict:
        """Mean Y-PSNR/SSIM of the EMA student; under torchrun each rank scores a shard, then all-reduce."""
        from ..evaluate import score_pairs

        ema_model = copy.copy(student)
        ema_model.module = ema.module
        mine = val_pairs[ctx.rank::world]
        res = score_pairs(ema_model, mine, teacher.scale, device=device) if mine else {"images": []}
        sums = [sum(r["psnr"] for r in res["images"]), sum(r["ssim"] for r in res["images"]),
                float(len(res["images"]))]
        if ctx.enabled:
            sums = ctx.sum(sums)
        return {"step": step, "psnr": sums[0] / sums[2], "ssim": sums[1] / sums[2]}

    def log(rec: dict) -> None:
        """One JSON line, flushed. A failed write (disk full) must neither stop the run nor, in the
        ``finally`` below, replace the error that is on its way out: warn once and log no more."""
        nonlocal log_f
        if log_f is None:
            return
        try:
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()
        except OSError as e:
            rep.warn(f"cannot write the training log {paths['log']}: {e.strerror or e}; continuing without it")
            with contextlib.suppress(OSError):
                log_f.close()
            log_f = None

    step = start_step
    steps_done = 0
    workers = cfg.workers if cfg.workers is not None else default_workers(device)
    stream = PlanStream(sampler, gen, global_batch, cfg.batch_size, ctx.rank, start_step, cfg.steps)
    t_loop = time.monotonic()
    try:
        if ctx.is_main:
            try:
                paths["log"].parent.mkdir(parents=True, exist_ok=True)
                log_f = open(paths["log"], "a" if cfg.resume else "w", encoding="utf-8")
            except OSError as e:
                raise SrDistillError(f"cannot write the training log {str(paths['log'])!r}: "
                                     f"{e.strerror or e}") from None
            log({"event": "start", "step": step, "time": time.time(), "config": config_meta,
                 "formula": weights.formula(wsum), "srdistill": __version__})
        with _Signals() as sig, rep.task("distilling", total=cfg.steps) as task:
            task.advance(step)
            it = batches(stream, device, workers)
            while step < cfg.steps:
                mine, batch = next(it)
                if device.type == "cuda":
                    batch.lr = batch.lr.contiguous(memory_format=torch.channels_last)
                terms: dict[str, torch.Tensor] = {}
                try:
                    weights.alpha = schedule.at(step)
                    with autocast:
                        t_out = batch.target
                        if t_out is None and needs_teacher:
                            t_out = sampler.live_targets(mine, teacher.module, device)
                        if wsum.needs("teacher_features"):  # teacher features on the same (augmented) input
                            with torch.no_grad():
                                teacher.module(batch.lr)
                        s_out = model_for_step(batch.lr)
                        out = StepOutputs(s_out.float(), t_out, batch.hr, batch.lr)
                        terms = wsum.losses(out, weights.terms())
                        loss = sum(terms.values())
                except torch.cuda.OutOfMemoryError:
                    raise TrainingError(
                        f"out of GPU memory at batch {cfg.batch_size} x patch {cfg.patch_size}",
                        hint="use a smaller --batch-size or --patch-size") from None
                if nan_at and step + 1 == nan_at:
                    loss = loss * float("nan")
                finite = bool(torch.isfinite(loss.detach()))
                if ctx.enabled:  # every rank stops together, none waits forever in the all-reduce
                    finite = ctx.all_true(finite)
                if not finite:
                    kept = (f"the last good checkpoint {paths['ckpt'].name} is intact"
                            if paths["ckpt"].exists() else "no checkpoint was written yet")
                    raise TrainingError(f"the loss became non-finite ({loss.item()}) at step {step + 1}; "
                                        f"stopping ({kept})",
                                        hint="lower --lr, or use --precision fp32")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(train_params, cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                ema.update(student.module)
                terms.update(wsum.after_step(out, autocast))
                step += 1
                steps_done += 1
                last_terms = {k: float(v.detach()) for k, v in terms.items()}
                last_terms["loss"] = float(loss.detach())
                rate = steps_done / max(1e-9, time.monotonic() - t_loop)
                task.advance(1, **{k: round(v, 5) for k, v in last_terms.items()}, **{"it/s": round(rate, 2)})
                if log_f and (step % cfg.log_every == 0 or step == cfg.steps):
                    log({"event": "step", "step": step, **last_terms, "alpha": weights.alpha,
                         "lr": sched.get_last_lr()[0],
                         "steps_per_s": rate})
                if val_pairs and (step % val_every == 0 or step == cfg.steps):
                    rec = validate(step)
                    history.append(rec)
                    log({"event": "val", **rec})
                    if best is None or rec["psnr"] > best["psnr"]:
                        best = rec
                        save_output(step, {"val": {"psnr": rec["psnr"], "ssim": rec["ssim"], "step": step,
                                                   "images": len(val_pairs), "y_channel": True,
                                                   "crop_border": teacher.scale}})
                    rep.info(f"step {step}: val PSNR {rec['psnr']:.3f} dB, SSIM {rec['ssim']:.4f}"
                             + (" (best)" if best is rec else ""))
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    write_ckpt(step)
                stop = sig.received
                if term_at and step == term_at:
                    stop = signal.SIGTERM
                if ctx.enabled:
                    stop = ctx.any_flag(stop)
                if stop:
                    write_ckpt(step)
                    raise Interrupted(f"stopped at step {step}; checkpoint saved to {paths['ckpt']} "
                                      "(continue with --resume)", signum=int(stop))
        if not val_pairs or best is None:
            save_output(step, None)
        if best is not None and bicubic is not None and best["psnr"] < bicubic["psnr"]:
            rep.warn(f"the student scores below bicubic on the validation images ({best['psnr']:.3f} < "
                     f"{bicubic['psnr']:.3f} dB): train longer (--steps), on more data, or check the teacher")
        dump = os.environ.get(RANK_DUMP_ENV)
        if dump:  # test hook: every rank leaves its final weights, to check that ranks agree
            Path(dump).mkdir(parents=True, exist_ok=True)
            torch.save(student.module.state_dict(), Path(dump) / f"rank{ctx.rank}.pt")
        if ctx.enabled:
            ctx.barrier()
    finally:
        if log_f:
            log({"event": "end", "step": step, "time": time.time()})
        if log_f:
            with contextlib.suppress(OSError):
                log_f.close()
        wsum.close()
    seconds = time.monotonic() - t_start
    loop_s = time.monotonic() - t_loop
    return DistillResult(
        out=str(paths["out"]), checkpoint=str(paths["ckpt"]), log=str(paths["log"]), steps=step,
        resumed_from=start_step, seconds=round(seconds, 3),
        steps_per_second=round(steps_done / loop_s, 3) if loop_s > 0 else 0.0,
        device=str(device), precision=precision, world_size=world, global_batch=global_batch,
        loss_formula=weights.formula(wsum), final_losses=last_terms,
        teacher={"architecture": teacher.architecture, "params": teacher.params, "file": str(cfg.teacher)},
        student={"architecture": student.architecture, "params": student.params,
                 "hyperparameters": student.hyperparameters},
        compression_ratio=round(comp["ratio"], 3), data=stats.to_dict(), teacher_cache=cache_info,
        validation=history, best=best, bicubic=bicubic, pack=data.pack.to_dict() if data.pack else None,
    )


def _argv_repr(cfg: DistillConfig) -> list[str]:
    out = [Path(cfg.teacher).name, f"--student-width {cfg.student_width}"]
    if cfg.student_depth:
        out.append(f"--student-depth {cfg.student_depth}")
    if cfg.student_arch:
        out.append(f"--student-arch {cfg.student_arch}")
    for d in cfg.data:
        out.append(f"--data {d}")
    for k in ("steps", "batch_size", "patch_size", "lr", "alpha", "seed"):
        out.append(f"--{k.replace('_', '-')} {getattr(cfg, k)}")
    if cfg.alpha_schedule != "constant":
        out.append(f"--alpha-schedule {cfg.alpha_schedule} --alpha-end {cfg.alpha_end}")
    if cfg.upcycle:
        out.append("--upcycle" + (f" --upcycle-ratio {cfg.upcycle_ratio}" if cfg.upcycle_ratio is not None else ""))
    if cfg.init != "auto":
        out.append(f"--init {cfg.init}")
    if cfg.degradation != "bicubic":
        out.append(f"--degradation {cfg.degradation}")
        if cfg.degradation_variants is not None:
            out.append(f"--degradation-variants {cfg.degradation_variants}")
    return out
