"""The family registry: what a family says (:class:`Family`), registering one, and finding one by name."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from ...errors import UsageError


@dataclass(frozen=True)
class ReparamSpec:
    """A family's ``distill --reparam``: which convs train with parallel branches (a regex on module
    names; each must be a plain 3x3, stride 1, padding 1, ungrouped conv) and which branches by
    default (see :mod:`srdistill.models.reparam`)."""

    convs: str
    # ECBSR's set, the best of the designs bench/reparam.py compared (2 seeds each)
    branches: tuple[str, ...] = ("1x1", "expand", "sobel", "laplacian")


@dataclass(frozen=True, kw_only=True)
class Family:
    """Everything srdistill knows about one architecture, built with keyword arguments in its own
    module (``families/compact.py`` ...) and added with :func:`register_family`."""

    id: str  # spandrel architecture id
    module: str = ""  # python module holding the class
    cls_name: str = ""
    width: str  # keyword of the feature-channel count
    depth: str | None  # keyword of the block count (None: fixed by the architecture)
    scale_kw: str
    in_kw: str | None = None
    out_kw: str | None = None
    default_depth: int | None = None  # depth of a student of this family built for another family's teacher
    fixed_depth: int | None = None  # number of blocks when the architecture does not expose a knob
    width_multiple: int = 1
    min_width: int = 1
    extra: dict = field(default_factory=dict)  # kwargs for a student built for another family's teacher
    blocks: Callable[[Any], list[str]] = lambda hp: []
    head: str = ""
    tail: str = ""
    note: str = ""
    # --init teacher: a regex whose group 1 is the block index in a state-dict key, and a map
    # (student index, student depth, teacher depth, chosen teacher blocks) -> teacher index;
    # ("", None) for a family with a fixed depth; None: not supported
    teacher_init: tuple[str, Callable[[int, int, int, list[int]], int] | None] | None = None
    model_class: Any = None  # the class itself, instead of module + cls_name (a family defined in a test)
    reparam: ReparamSpec | None = None  # distill --reparam; None: no plain 3x3 convs to re-parameterise

    def cls(self):
        if self.model_class is not None:
            return self.model_class
        if self.module.startswith("srdistill"):
            return getattr(importlib.import_module(self.module), self.cls_name)
        from .._compat import import_spandrel  # lazy: the registry is on the torch-free --help path

        import_spandrel()
        return getattr(importlib.import_module(self.module), self.cls_name)

    def get_width(self, hp: dict) -> int:
        return int(hp[self.width])

    def get_depth(self, hp: dict) -> int | None:
        if self.depth is None:
            return self.fixed_depth
        v = hp[self.depth]
        return len(v) if isinstance(v, (list, tuple)) else int(v)


FAMILIES: dict[str, Family] = {}
ALIASES: dict[str, str] = {}  # names accepted by --student-arch (lower case, no - or _) -> family id


def spandrel_module(arch: str) -> str:
    return f"spandrel.architectures.{arch}"


def register_family(family: Family, *, aliases: tuple[str, ...] = (), detect: Any = None) -> Family:
    """Add ``family`` to what srdistill can build, size and distill (one call per family module).

    ``detect``: a spandrel ``Architecture`` that recognises this family's state dicts, for a family
    spandrel does not know (srdistill's EDSR; a test's toy model): added to the model loader, so saved
    students load back. ``aliases``: more names for ``--student-arch``."""
    if not family.id or not family.width:
        raise ValueError("a family needs an id and a width keyword")
    FAMILIES[family.id] = family
    for name in (family.id, *aliases):
        ALIASES[_norm(name)] = family.id
    if detect is not None:
        from ..loading import add_architecture  # lazy: torch (the registry feeds --help, which must not load it)

        add_architecture(detect)
    return family


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def family_names() -> str:
    """The --student-arch choices, for help texts."""
    return ", ".join(f.id.lower() for f in FAMILIES.values())


def family_table() -> list[str]:
    """The README's family table (markdown lines), from the registry."""
    out = ["| family | width knob | depth knob | default depth | note |", "|---|---|---|---|---|"]
    for f in FAMILIES.values():
        depth = f"`{f.depth}`" if f.depth else f"fixed ({f.fixed_depth} blocks)"
        out.append(f"| {f.id} | `{f.width}`" + (f" (multiple of {f.width_multiple})" if f.width_multiple > 1 else "")
                   + (f" (>= {f.min_width})" if f.min_width > 1 else "")
                   + f" | {depth} | {f.default_depth or f.fixed_depth} | {f.note} |")
    return out




def get_family(arch_id: str) -> Family | None:
    return FAMILIES.get(arch_id)


def resolve_arch(name: str) -> Family:
    fid = ALIASES.get(_norm(name))
    if fid is None:
        raise UsageError(f"unknown student architecture {name!r}",
                         hint="choose one of: " + ", ".join(sorted(a.lower() for a in FAMILIES)))
    return FAMILIES[fid]


def tail_tap(family: Family, hp: dict) -> str:
    """The module (or ``in:module``) whose output is the last LR-resolution feature map."""
    if family.tail:
        return family.tail
    blocks = family.blocks(hp)
    return blocks[-1] if blocks else family.head
