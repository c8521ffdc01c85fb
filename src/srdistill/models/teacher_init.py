"""``--init teacher``: start a same-family student from the teacher's weights instead of random ones.

Pruning-then-distilling (DIPNet, CDISM, DSCLoRA): the student keeps the teacher's most
important feature channels and an evenly spread subset of its blocks.

* **Channels**: one set of trunk channels for the whole network, so that every layer
  that reads or writes the trunk (residual sums, concatenations) agrees on it. A
  channel's importance is the L1 norm of the filters that write it, summed over every
  layer (each layer's norms divided by their mean, so no layer dominates).
* **Blocks**: with a probe batch (a few training patches), blocks are dropped greedily,
  one at a time, the one whose removal changes the teacher's output least (layer
  pruning by output reconstruction); without one, an evenly spread subset is kept.
* Dimensions that are a multiple of the trunk (SPAN's 2x / 4x) take the same channels
  in each group; dense concatenations (RRDB: trunk then growth channels) take the
  trunk channels and then the growth channels unchanged. A teacher kept whole where the
  shapes agree; anything else is a :class:`UsageError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import UsageError
from .families import FAMILIES, get_family
from .loading import SRModel


@dataclass
class InitReport:
    channels: int
    teacher_channels: int
    blocks: list[int] | None  # teacher blocks kept, in student order (None: fixed depth)
    tensors: int

    def describe(self) -> str:
        s = f"init from the teacher: {self.channels} of {self.teacher_channels} channels by L1 norm"
        if self.blocks is not None:
            s += ", blocks " + ",".join(str(b) for b in self.blocks)
        return s


def supported_families() -> list[str]:
    return [f.id for f in FAMILIES.values() if f.teacher_init is not None]


def spread(ns: int, nt: int) -> list[int]:
    if ns >= nt:
        return list(range(ns))
    if ns == 1:
        return [nt - 1]
    return [round(i * (nt - 1) / (ns - 1)) for i in range(ns)]


def check_supported(student: SRModel, teacher: SRModel):
    fam = get_family(teacher.architecture)
    names = ", ".join(supported_families())
    if student.architecture != teacher.architecture:
        raise UsageError(f"--init teacher needs a student of the teacher's family ({teacher.architecture}), "
                         f"not {student.architecture}", hint=f"drop --student-arch; supported families: {names}")
    if fam is None or fam.teacher_init is None:
        raise UsageError(f"--init teacher does not support {teacher.architecture}",
                         hint=f"supported families: {names}; or use --init random")
    return fam


def can_init(student: SRModel, teacher: SRModel) -> bool:
    """Whether ``--init auto`` starts ``student`` from ``teacher``: same, supported family, and a
    student no wider and no deeper than the teacher."""
    fam = get_family(teacher.architecture)
    if student.architecture != teacher.architecture or fam is None or fam.teacher_init is None:
        return False
    if fam.get_width(student.hyperparameters) > fam.get_width(teacher.hyperparameters):
        return False
    ds, dt = fam.get_depth(student.hyperparameters), fam.get_depth(teacher.hyperparameters)
    return ds is None or dt is None or ds <= dt


def _importance(t_sd: dict[str, torch.Tensor], width: int) -> torch.Tensor:
    score = torch.zeros(width, dtype=torch.float64)
    for v in t_sd.values():
        if v.ndim >= 2 and v.shape[0] == width:
            n = v.detach().double().abs().flatten(1).sum(1)
            score += n / n.mean().clamp_min(1e-12)
    return score


def _dim_index(t: int, s: int, ct: int, cs: int, idx: torch.Tensor) -> torch.Tensor | None:
    if t == s:
        return None
    if t == ct and s == cs:
        return idx
    if t % ct == 0 and s % cs == 0 and t // ct == s // cs:
        return torch.cat([idx + g * ct for g in range(t // ct)])
    if t - ct == s - cs > 0:
        return torch.cat([idx, torch.arange(ct, t)])
    if s < t:
        return torch.arange(s)
    return False  # type: ignore[return-value]  # cannot map


def _teacher_key(key: str, rx, remap, ds: int, dt: int, sel: list[int] | None) -> str:
    """The teacher's state-dict key for a student key (block index mapped through ``remap``)."""
    m = rx.match(key) if rx is not None else None
    if not m:
        return key
    return key[: m.start(1)] + str(remap(int(m.group(1)), ds, dt, sel)) + key[m.end(1):]


def _remapped(module_sd: dict, t_sd: dict, rx, remap, ds: int, dt: int, sel: list[int]) -> dict:
    return {key: t_sd.get(_teacher_key(key, rx, remap, ds, dt, sel)) for key in module_sd}


@torch.no_grad()
def choose_blocks(teacher: SRModel, fam, ds: int, probe: torch.Tensor) -> list[int]:
    """Greedy layer pruning at full width: drop, one at a time, the block whose removal keeps the
    teacher's output on ``probe`` closest (MSE) to the whole teacher's."""
    rx, remap = re.compile(fam.teacher_init[0]), fam.teacher_init[1]
    t_sd = teacher.module.state_dict()
    dt = fam.get_depth(teacher.hyperparameters)
    ref = teacher.module(probe).float()
    cls, hp = fam.cls(), dict(teacher.hyperparameters)
    sel = list(range(dt))
    while len(sel) > ds:
        best = None
        hp[fam.depth] = len(sel) - 1
        m = cls(**hp).eval()
        for drop in range(len(sel)):
            cand = sel[:drop] + sel[drop + 1:]
            m.load_state_dict(_remapped(m.state_dict(), t_sd, rx, remap, len(cand), dt, cand))
            err = float(((m(probe).float() - ref) ** 2).mean())
            if best is None or err < best[0]:
                best = (err, cand)
        sel = best[1]
    return sel


def init_from_teacher(student: SRModel, teacher: SRModel, probe: torch.Tensor | None = None) -> InitReport:
    """Overwrite ``student``'s weights in place with a slice of ``teacher``'s; returns what was kept.
    ``probe``: a small N x C x h x w batch of LR inputs for choosing the blocks (see the module doc)."""
    fam = check_supported(student, teacher)
    pattern, remap = fam.teacher_init
    ct, cs = fam.get_width(teacher.hyperparameters), fam.get_width(student.hyperparameters)
    if cs > ct:
        raise UsageError(f"--init teacher: the student ({cs} channels) is wider than the teacher ({ct})",
                         hint="use --init random for a wider student")
    ds, dt = fam.get_depth(student.hyperparameters), fam.get_depth(teacher.hyperparameters)
    sel = None
    if remap is not None:
        if ds > dt:
            raise UsageError(f"--init teacher: the student ({ds} blocks) is deeper than the teacher ({dt})",
                             hint="use --init random for a deeper student")
        sel = spread(ds, dt) if probe is None or ds == dt else choose_blocks(teacher, fam, ds, probe)
    t_sd = teacher.module.state_dict()
    idx = torch.argsort(_importance(t_sd, ct), descending=True)[:cs].sort().values
    rx = re.compile(pattern) if remap is not None else None
    new = {}
    for key, sv in student.module.state_dict().items():
        tkey = _teacher_key(key, rx, remap, ds, dt, sel)
        tv = t_sd.get(tkey)
        if tv is None or tv.ndim != sv.ndim:
            raise UsageError(f"--init teacher: no teacher weight matches the student's {key!r}",
                             hint="use --init random")
        out = tv.detach().clone()
        for d in range(sv.ndim):
            ix = _dim_index(out.shape[d], sv.shape[d], ct, cs, idx)
            if ix is False:
                raise UsageError(f"--init teacher: cannot map {tkey!r} {tuple(tv.shape)} onto {tuple(sv.shape)}",
                                 hint="use --init random")
            if ix is not None:
                out = out.index_select(d, ix)
        new[key] = out.to(sv.dtype)
    student.module.load_state_dict(new)
    student._params_cache = None
    return InitReport(cs, ct, sel, len(new))
