"""Students: a teacher's family (or another, fast one) with the width/depth knobs replaced."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ..errors import UsageError
from ..progress import NULL, Reporter
from .families import FAMILIES, Family, get_family, resolve_arch
from .loading import SRModel, construction_budget, model_from_state_dict


@dataclass
class StudentSpec:
    family: Family
    kwargs: dict
    width: int
    depth: int | None
    cross_family: bool
    notes: list[str] = field(default_factory=list)  # adjustments the user should hear about

    def describe(self) -> str:
        d = f", depth {self.depth}" if self.depth is not None else ""
        return f"{self.family.id} width {self.width}{d}"


def student_spec(teacher: SRModel, width: int, depth: int | None = None, arch: str | None = None,
                 *, allow_wider: bool = False) -> StudentSpec:
    """Work out (and validate) the constructor arguments of a student for ``teacher``."""
    if width is None or int(width) < 1:
        raise UsageError(f"--student-width must be a positive number of channels, not {width}")
    if depth is not None and int(depth) < 1:
        raise UsageError(f"--student-depth must be at least 1, not {depth}")
    width = int(width)
    depth = None if depth is None else int(depth)
    teacher_family = get_family(teacher.architecture)
    if arch:
        family = resolve_arch(arch)
    elif teacher_family is None:
        raise UsageError(
            f"no width/depth knobs are known for the teacher's architecture {teacher.architecture}",
            hint="pick a student family with --student-arch, e.g. compact or span",
        )
    else:
        family = teacher_family
    same = teacher_family is not None and family.id == teacher_family.id

    if family.depth is None and depth is not None and depth != family.fixed_depth:
        raise UsageError(f"{family.id} has a fixed depth of {family.fixed_depth} blocks",
                         hint="drop --student-depth or choose another --student-arch")
    notes: list[str] = []
    m = family.width_multiple
    if width % m:  # the design card's `--student-width 32` on a DCTLSA teacher: round, say so
        rounded = max(m, int(width / m + 0.5) * m)  # nearest; a tie goes up
        notes.append(f"{family.id} widths are multiples of {m}: using {rounded}")
        width = rounded
    if width < family.min_width:
        raise UsageError(f"{family.id} width must be at least {family.min_width}, not {width}",
                         hint=f"use --student-width {family.min_width} or more, or --student-arch compact")

    if same:
        kwargs = copy.deepcopy(teacher.hyperparameters)
        t_width = family.get_width(kwargs)
        if width > t_width and not allow_wider:
            raise UsageError(f"student width {width} is wider than the teacher's {t_width}",
                             hint="a student is meant to be smaller; pass --allow-wider to do it anyway")
        if depth is None:
            depth = family.get_depth(kwargs)
    else:
        if teacher.input_channels != 3 and family.in_kw is None:
            raise UsageError(f"{family.id} students only take RGB input; the teacher has "
                             f"{teacher.input_channels} channels")
        kwargs = copy.deepcopy(family.extra)
        kwargs[family.scale_kw] = teacher.scale
        if family.in_kw:
            kwargs[family.in_kw] = teacher.input_channels
        if family.out_kw:
            kwargs[family.out_kw] = teacher.output_channels
        if depth is None:
            depth = family.default_depth if family.depth else family.fixed_depth

    kwargs[family.width] = width
    if family.id == "SwinIR":
        per_stage = int(kwargs["depths"][0])
        heads = int(kwargs["num_heads"][0])
        if width % heads:
            rounded = max(heads, int(width / heads + 0.5) * heads)
            notes.append(f"SwinIR widths are multiples of its {heads} attention heads: using {rounded}")
            width = kwargs[family.width] = rounded
        kwargs["depths"] = [per_stage] * depth
        kwargs["num_heads"] = [heads] * depth
    elif family.depth is not None:
        kwargs[family.depth] = depth
    if family.id == "RCAN" and width // int(kwargs.get("reduction", 16)) < 1:
        # spandrel reads reduction as n_feats // (channel-attention width), so a narrow teacher
        # (24 features -> 1 channel) yields reduction 24: keep the student's attention at 1 channel
        kwargs["reduction"] = width
    return StudentSpec(family, kwargs, width, depth, cross_family=not same, notes=notes)


STUDENT_MAX_PARAMS = 64 * 1024**2  # a student above max(this, 4x the teacher) is refused before it is built


def build_student(teacher: SRModel, width: int, depth: int | None = None, arch: str | None = None,
                  *, allow_wider: bool = False, seed: int | None = None, reporter: Reporter = NULL) -> SRModel:
    """A freshly initialised student whose weights load back in spandrel unchanged."""
    spec = student_spec(teacher, width, depth, arch, allow_wider=allow_wider)
    for note in spec.notes:
        reporter.info(note)
    budget = max(STUDENT_MAX_PARAMS, 4 * teacher.params)  # before seeding: counting may probe the teacher
    if seed is not None:
        torch.manual_seed(seed)
    with construction_budget(f"a {spec.describe()} student", budget,
                             f"more than srdistill builds (at most {budget:,}: 4x the teacher or "
                             f"{STUDENT_MAX_PARAMS:,}); choose a smaller --student-width/--student-depth"):
        module = spec.family.cls()(**spec.kwargs)
    # Round trip through the loader: proves the student is detected (so it loads in spandrel,
    # chaiNNer, ComfyUI) and gives the same description a saved file will get.
    model = model_from_state_dict(module.state_dict(), name=f"{spec.family.id} student")
    if model.architecture != spec.family.id:
        raise UsageError(f"a {spec.describe()} student is detected as {model.architecture}; choose another spec")
    model.module.train()
    return model


def compression(teacher: SRModel, student: SRModel) -> dict:
    tp, sp = teacher.params, student.params
    return {"teacher_params": tp, "student_params": sp, "ratio": tp / sp if sp else float("inf")}


def family_table() -> list[dict]:
    """Rows for documentation and ``srdistill info --families``."""
    return [
        {"id": f.id, "width": f.width, "depth": f.depth or f"fixed {f.fixed_depth}", "note": f.note}
        for f in FAMILIES.values()
    ]
