"""``distill``: options, outputs and the run lock; the run itself is :class:`srdistill.distill.run.Run`.

The same code runs on CPU and CUDA and, under ``torchrun``, data-parallel with
DistributedDataParallel (see :mod:`srdistill.distill.distributed`). Also here: the pieces a run
uses (EMA, learning-rate schedule, signals, RNG state, the lock).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..devices import resolve_device
from ..errors import OutputExistsError, SrDistillError, TrainingError, UsageError
from ..fileio import check_writable
from ..progress import NULL, Reporter
from . import distributed as dist_util
from .data_stage import DEFAULT_VARIANTS, UPCYCLE_RATIO  # noqa: F401  (the defaults, re-exported)
from .run import NAN_HOOK_ENV, RANK_DUMP_ENV, SIGNAL_HOOK_ENV, Run, TrainHooks  # noqa: F401  (re-exported)
from .schedule import make_schedule
from .losses import LossWeights
from .terms import needs_of

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


def distill(cfg: DistillConfig, reporter: Reporter = NULL, hooks: TrainHooks | None = None) -> DistillResult:
    """Train a student to imitate ``cfg.teacher``; returns what was done and where it went.
    ``hooks``: faults a test injects (a NaN loss, a SIGTERM at a step); none in normal use."""
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
        return Run(cfg, rep, ctx, device, precision, paths, hooks).execute()
    finally:
        lock.release()


def _build_pack_only(cfg: DistillConfig, rep: Reporter, ctx, device: torch.device) -> DistillResult:
    """``--pack DIR --build-only``: the data stage alone (a cluster job that prepares data once)."""
    from ..models.loading import load_model
    from .data_stage import open_training_pack

    t0 = time.monotonic()
    teacher = load_model(cfg.teacher, device=device)
    teacher.module.eval()
    use_cache = cfg.teacher_cache and _needs_teacher(cfg, _loss_weights(cfg))
    _, _, stats, info = open_training_pack(cfg, teacher, device, rep, ctx, use_cache)
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
