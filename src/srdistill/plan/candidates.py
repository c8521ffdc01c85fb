"""The students ``plan`` considers: every registered family that can be built for the teacher, over a
grid of widths and depths inside the family's constraints, plus the teacher's own family shrunk (which
``--init auto`` starts from the teacher). Each is built with random weights, its parameters and the
FLOPs of one frame counted (``torch.utils.flop_counter``, at a small input and scaled by the pixel
count: every family here costs the same per LR pixel at any size)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..errors import SrDistillError, UsageError
from ..models.families import FAMILIES, get_family, resolve_arch
from ..models.loading import SRModel
from ..models.students import build_student

#: widths tried for a family other than the teacher's (rounded to the family's constraints)
WIDTHS = (16, 24, 32, 48, 64)
#: depths tried where a family has a depth knob
DEPTHS = (4, 8, 16)
#: widths of the teacher's own family, as fractions of the teacher's width
SAME_WIDTHS = (0.25, 0.375, 0.5, 0.75)
FLOP_PROBE = 64  # LR side the FLOPs are counted at


@dataclass
class Candidate:
    family: str
    width: int
    depth: int | None
    same_family: bool  # the teacher's family: --init auto starts it from the teacher
    params: int = 0
    mb: float = 0.0  # fp32 weights, as the safetensors student holds them
    gflops: float = 0.0  # per output frame at the plan's size
    ms: float | None = None  # measured, median
    fps: float | None = None
    runtime: str | None = None
    proxy_psnr: float | None = None
    fits: bool = False
    status: str = "listed"  # measured, pruned (flops), over budget, not measured, failed, proxy
    reason: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.family} {self.width}" + (f"/{self.depth}" if self.depth is not None else "")

    def student_args(self) -> list[str]:
        """The --student-* options that build this candidate."""
        args = [] if self.same_family else ["--student-arch", self.family.lower()]
        args += ["--student-width", str(self.width)]
        if self.depth is not None:
            args += ["--student-depth", str(self.depth)]
        return args

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


def _round(width: float, family) -> int:
    m = family.width_multiple
    return max(family.min_width, m, int(round(width / m)) * m)


def _grid(teacher: SRModel, family, same: bool) -> list[tuple[int, int | None]]:
    if same:
        tw = family.get_width(teacher.hyperparameters)
        td = family.get_depth(teacher.hyperparameters)
        widths = sorted({_round(tw * f, family) for f in SAME_WIDTHS} - {tw} or {tw})
        widths = [w for w in widths if w < tw] or [tw]
        depths = [td] if family.depth is None or td is None else sorted({max(1, td // 2), td})
    else:
        widths = sorted({_round(w, family) for w in WIDTHS})
        depths = [family.fixed_depth] if family.depth is None else list(DEPTHS)
    return [(w, d) for d in depths for w in widths]


def list_candidates(teacher: SRModel, families: list[str] | None) -> list[Candidate]:
    """Every (family, width, depth) to consider, in the registry's order; ``families``: names
    (``--families``), None for every registered family and the teacher's own."""
    own = get_family(teacher.architecture)
    if families:
        chosen = [resolve_arch(name) for name in families]  # an unknown name: one line, exit 2
    else:
        chosen = list(FAMILIES.values())
    seen, out = set(), []
    for fam in chosen:
        same = own is not None and fam.id == own.id
        for w, d in _grid(teacher, fam, same):
            key = (fam.id, w, d)
            if key not in seen:
                seen.add(key)
                out.append(Candidate(fam.id, w, d if fam.depth is not None else None, same))
    return out


def count(c: Candidate, teacher: SRModel, lr_size: tuple[int, int], seed: int = 0) -> SRModel | None:
    """Build ``c`` with random weights and fill its params, MB and GFLOPs; None when the family cannot
    be built for this teacher (the reason is kept on the candidate)."""
    try:
        model = build_student(teacher, c.width, c.depth, None if c.same_family else c.family, seed=seed)
    except (SrDistillError, RuntimeError, ValueError, TypeError, KeyError) as e:
        c.status, c.reason = "failed", _first_line(e)
        return None
    model.module.eval()
    c.params = int(model.params)
    c.mb = round(c.params * 4 / 1e6, 4)
    side = max(FLOP_PROBE, model.min_size, model.multiple_of)
    side = -(-side // max(1, model.multiple_of)) * max(1, model.multiple_of)
    x = torch.rand(1, model.input_channels, side, side)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model.module(x)
    except (RuntimeError, ValueError) as e:
        c.status, c.reason = "failed", _first_line(e)
        return None
    w, h = lr_size
    c.gflops = round(fc.get_total_flops() * (w * h) / (side * side) / 1e9, 3)
    return model


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def check_families(names: list[str] | None) -> list[str] | None:
    """``--families a,b``: each a registered family (one line, exit 2, otherwise)."""
    if names is None:
        return None
    flat = [n.strip() for item in names for n in str(item).split(",") if n.strip()]
    if not flat:
        raise UsageError("--families is empty", hint="e.g. --families compact,span, or leave it out for all")
    for n in flat:
        resolve_arch(n)
    return flat
