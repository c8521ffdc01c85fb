"""``distill``'s options (:class:`DistillConfig`), their checks, and what a run returns
(:class:`DistillResult`): the values every stage reads, with no run machinery in them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.degrade import load_degradation
from ..errors import UsageError, nonempty, shown
from ..models.loading import check_model_path
from .data_stage import UPCYCLE_RATIO
from .losses import pixel_loss
from .schedule import make_schedule
from .terms import check_extra_terms, needs_of

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
    # train with re-parameterisable branches, folded at save (models.reparam); None: where the
    # student's family declares them (Compact, EDSR), as bench/reparam.py found it pays
    reparam: bool | None = None
    reparam_branches: str | None = None  # comma-separated branches; None: the student family's default
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
    plan: dict | None = None  # distill --budget: the plan that chose this student (recorded in its metadata)

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


@dataclass
class LossWeights:
    alpha: float  # weight of the teacher (soft target) term; 1 - alpha goes to ground truth
    feature: float
    adversarial: float
    pixel: str = "l1"
    has_hr: bool = True
    schedule: str | None = None  # description of a moving alpha (the formula then shows "a")
    extra: dict | None = None  # more registered terms by name -> weight (--term NAME=WEIGHT)

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha must be between 0 and 1, not {self.alpha}")
        if self.feature < 0:
            raise UsageError(f"--feature-weight must be >= 0, not {self.feature}")
        if self.adversarial < 0:
            raise UsageError(f"--adversarial-weight must be >= 0, not {self.adversarial}")
        pixel_loss(self.pixel)
        check_extra_terms(self.extra)

    def terms(self) -> dict[str, float]:
        """Weights of the active terms, by name."""
        out: dict[str, float] = {}
        kd = self.alpha if self.has_hr else 1.0
        if kd > 0:
            out["kd"] = kd
        if self.has_hr and self.alpha < 1:
            out["hr"] = 1.0 - self.alpha
        if self.feature > 0:
            out["feature"] = self.feature
        if self.adversarial > 0:
            out["adv"] = self.adversarial
        for name, w in (self.extra or {}).items():
            if w > 0:
                out[name] = float(w)
        return out

    def possible_terms(self) -> dict[str, float]:
        """Every term that is active at some step (a moving alpha brings in both pixel terms)."""
        out = self.terms()
        if self.schedule and self.has_hr:
            out.setdefault("kd", 0.0)
            out.setdefault("hr", 0.0)
            out = {k: out[k] for k in ("kd", "hr")} | {k: v for k, v in out.items() if k not in ("kd", "hr")}
        return out

    def formula(self, wsum) -> str:
        """The printed formula: the terms' own labels, with "a" for a scheduled alpha."""
        texts = {k: f"{w:g}" for k, w in self.possible_terms().items()}
        if self.schedule and self.has_hr:
            texts.update(kd="a", hr="(1-a)")
        return wsum.formula(texts) + (f", a = {self.schedule}" if self.schedule and self.has_hr else "")


def resolve_precision(name: str, device: torch.device) -> str:
    name = (nonempty("--precision", name, "auto, fp32, bf16 or fp16") or "auto").strip().lower()
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise UsageError(f"invalid --precision {name!r}", hint="use auto, fp32, bf16 or fp16")
    if device.type != "cuda":
        if name in ("bf16", "fp16"):
            raise UsageError(f"--precision {name} needs a CUDA device; CPU training runs in fp32")
        return "fp32"
    if name == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def loss_weights(cfg: DistillConfig) -> LossWeights:
    schedule = make_schedule(cfg.alpha_schedule, cfg.alpha, cfg.alpha_end, cfg.steps)
    return LossWeights(schedule.peak(), cfg.feature_weight, cfg.adversarial_weight, cfg.loss, has_hr=not cfg.lr_only,
                       schedule=schedule.describe() if schedule.varies() else None, extra=cfg.terms)


def needs_teacher(cfg: DistillConfig, weights: LossWeights) -> bool:
    """Whether any term reads the teacher (its output or features), so the teacher cache is wanted."""
    return bool({"teacher_output", "teacher_features"} & needs_of(weights.possible_terms())) or cfg.upcycle


#: the largest --seed: numpy's np.random.seed takes 32-bit seeds (torch and Python's random take more)
MAX_SEED = 2**32 - 1

# numeric options: (field, lowest, highest or None); a value outside, or nan, is a usage error. Each
# range is what every consumer of the value accepts (numpy's seeding, torch.set_num_threads, ...)
_RANGES = (("seed", 0, MAX_SEED), ("threads", 1, 4096), ("batch_size", 1, 65536), ("patch_size", 4, 4096),
           ("student_width", 1, 4096), ("student_depth", 1, 1024), ("steps", 1, 10**9),
           ("warmup_steps", 0, 10**9), ("weight_decay", 0.0, None), ("grad_clip", 0.0, None),
           ("feature_weight", 0.0, None), ("adversarial_weight", 0.0, None), ("max_images", 1, None),
           ("log_every", 1, None), ("degradation_variants", 1, 256), ("workers", 0, 64),
           ("gt_size", 4, 4096 * 16))  # gt_size: HR pixels; the run checks it against the teacher's scale

#: the largest --lr: far above any rate that trains, far below what AdamW's float32 step overflows at
#: (lr / (1 - beta1) past 3.4e38 is a RuntimeError inside torch, not a non-finite loss)
MAX_LR = 1e3


def _check_ranges(cfg: DistillConfig) -> None:
    for name, lo, hi in _RANGES:
        v = getattr(cfg, name)
        if v is None:
            continue
        bad = isinstance(v, float) and not math.isfinite(v)
        if bad or v < lo or (hi is not None and v > hi):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} must be " + (f"between {lo} and {hi}" if hi is not None else f"at least {lo}")
                             + f", not {shown(v)}")


# text options: (field, what to use); given empty ('' or blank) each is refused, never read as its default
_TEXTS = (("init", "auto, random or teacher"), ("student_arch", "a family name, or leave it out for the teacher's"),
          ("degradation", "bicubic, realesrgan, light, none or a file"), ("alpha_schedule", "constant, eco or linear"),
          ("reparam_branches", "1x1, expand, sobel, laplacian, identity, comma separated, or leave it out"),
          ("loss", "l1, charbonnier or mse"), ("device", "auto, cpu, cuda or cuda:N"),
          ("precision", "auto, fp32, bf16 or fp16"))


def validate(cfg: DistillConfig) -> None:
    check_model_path(cfg.teacher)  # inputs before outputs: `distill photo.jpg` is told about the photo
    for name, choices in _TEXTS:
        nonempty("--" + name.replace("_", "-"), getattr(cfg, name), choices)
    _check_ranges(cfg)
    if not 0 < cfg.lr <= MAX_LR:  # nan and inf too
        raise UsageError(f"--lr must be positive and at most {MAX_LR:g}, not {shown(cfg.lr)}")
    if not 0 <= cfg.ema_decay < 1:
        raise UsageError(f"--ema-decay must be in [0, 1), not {shown(cfg.ema_decay)}")
    if cfg.checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be at least 1, not {shown(cfg.checkpoint_every)}")
    if cfg.val_every is not None and cfg.val_every < 1:
        raise UsageError(f"--val-every must be at least 1, not {shown(cfg.val_every)}")
    if cfg.max_images is not None and cfg.max_images < 1:
        raise UsageError(f"--max-images must be at least 1, not {shown(cfg.max_images)}")
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
        raise UsageError(f"--upcycle-ratio must be between 0 and 1 (exclusive), not {shown(cfg.upcycle_ratio)}",
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
    if cfg.reparam_branches is not None and cfg.reparam is False:
        raise UsageError("--reparam-branches contradicts --no-reparam", hint="give one of them")
    cfg.init = (cfg.init or "auto").strip().lower()  # None: auto; an empty --init was refused above
    if cfg.init not in INITS:
        raise UsageError(f"unknown --init {cfg.init!r}", hint="use auto, random or teacher")
    LossWeights(cfg.alpha, cfg.feature_weight, cfg.adversarial_weight, cfg.loss, extra=cfg.terms).validate()


def _validate_degradation(cfg: DistillConfig) -> None:
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


def argv_repr(cfg: DistillConfig) -> list[str]:
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
    if cfg.reparam is False:
        out.append("--no-reparam")
    elif cfg.reparam_branches:
        out.append(f"--reparam-branches {cfg.reparam_branches}")
    if cfg.degradation != "bicubic":
        out.append(f"--degradation {cfg.degradation}")
        if cfg.degradation_variants is not None:
            out.append(f"--degradation-variants {cfg.degradation_variants}")
    return out
