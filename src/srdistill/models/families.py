"""Per-architecture knobs: which keyword is the width, which the depth, where to tap features.

A *tap* names a module whose output (``"path"``) or input (``"in:path"``) is a
4-D feature map at LR resolution. ``blocks`` lists the repeated blocks of a
model, evenly sampled for same-family feature distillation; ``head`` and
``tail`` are the first and the last LR feature maps, used across families.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UsageError


@dataclass(frozen=True)
class Family:
    id: str  # spandrel architecture id
    module: str  # python module holding the class
    cls_name: str
    width: str  # keyword of the feature-channel count
    depth: str | None  # keyword of the block count (None: fixed by the architecture)
    scale_kw: str
    in_kw: str | None
    out_kw: str | None
    default_depth: int | None  # depth of a student of this family built for a teacher of another family
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

    def cls(self):
        if self.module.startswith("srdistill"):
            return getattr(importlib.import_module(self.module), self.cls_name)
        from ._compat import import_spandrel

        import_spandrel()
        return getattr(importlib.import_module(self.module), self.cls_name)

    def get_width(self, hp: dict) -> int:
        return int(hp[self.width])

    def get_depth(self, hp: dict) -> int | None:
        if self.depth is None:
            return self.fixed_depth
        v = hp[self.depth]
        return len(v) if isinstance(v, (list, tuple)) else int(v)


def _compact_block(i: int, ns: int, nt: int, sel: list[int]) -> int:
    """Compact's ``body`` is conv, act, (conv, act) x num_conv, conv: map a student index to the teacher's."""
    if i < 2:
        return i
    if i == 2 * ns + 2:
        return 2 * nt + 2
    k, off = divmod(i - 2, 2)
    return 2 * sel[k] + 2 + off


def _spandrel(arch: str) -> str:
    return f"spandrel.architectures.{arch}"


FAMILIES: dict[str, Family] = {}


def _add(f: Family) -> None:
    FAMILIES[f.id] = f


_add(Family("EDSR", "srdistill.models.archs.edsr", "EDSR", "num_feat", "num_block", "upscale", "num_in_ch",
            "num_out_ch", 16, blocks=lambda hp: [f"body.{i}" for i in range(hp["num_block"])],
            head="conv_first", tail="in:upsample",
            teacher_init=(r"^body\.(\d+)\.", lambda i, ns, nt, sel: sel[i] if i < ns else nt)))
_add(Family("ESRGAN", _spandrel("ESRGAN"), "ESRGAN", "num_filters", "num_blocks", "scale", "in_nc", "out_nc", 6,
            min_width=2, blocks=lambda hp: [f"model.1.sub.{i}" for i in range(hp["num_blocks"])],
            head="model.0", tail="model.1", note="RRDBNet (grow channels fixed at 32)",
            teacher_init=(r"^model\.1\.sub\.(\d+)\.", lambda i, ns, nt, sel: sel[i] if i < ns else nt)))
_add(Family("RCAN", _spandrel("RCAN"), "RCAN", "n_feats", "n_resgroups", "scale", "n_colors", None, 10,
            min_width=16, extra={"n_resblocks": 20}, blocks=lambda hp: [f"body.{i}" for i in range(hp["n_resgroups"])],
            head="head", tail="in:tail", note="channel attention reduces by 16: width >= 16"))
_add(Family("SwinIR", _spandrel("SwinIR"), "SwinIR", "embed_dim", "depths", "upscale", "in_chans", None, 4,
            extra={"depths": [6], "num_heads": [6], "window_size": 8, "upsampler": "pixelshuffledirect",
                   "img_size": 64, "mlp_ratio": 2.0, "resi_connection": "1conv"},
            blocks=lambda hp: [], head="conv_first", tail="in:conv_after_body",
            note="depth = number of residual Swin stages; width must divide by the heads"))
_add(Family("SPAN", _spandrel("SPAN"), "SPAN", "feature_channels", None, "upscale", "num_in_ch", "num_out_ch", None,
            fixed_depth=6, blocks=lambda hp: [f"block_{i}" for i in range(1, 7)], head="conv_1", tail="in:conv_cat",
            note="six SPAB blocks, fixed by the architecture", teacher_init=("", None)))
_add(Family("Compact", _spandrel("Compact"), "Compact", "num_feat", "num_conv", "upscale", "num_in_ch", "num_out_ch",
            16, blocks=lambda hp: [f"body.{2 * i + 1}" for i in range(1, hp["num_conv"] + 1)], head="body.1",
            tail=None, note="SRVGGNetCompact; depth = number of 3x3 convs",
            teacher_init=(r"^body\.(\d+)\.", lambda i, ns, nt, sel: _compact_block(i, ns, nt, sel))))
_add(Family("PLKSR", _spandrel("PLKSR"), "PLKSR", "dim", "n_blocks", "upscaling_factor", None, None, 12,
            width_multiple=4, blocks=lambda hp: [f"feats.{i}" for i in range(1, hp["n_blocks"] + 1)], head="feats.0",
            tail=None, note="width must be a multiple of 4"))
_add(Family("RealPLKSR", _spandrel("PLKSR"), "RealPLKSR", "dim", "n_blocks", "upscaling_factor", None, None, 12,
            width_multiple=4, blocks=lambda hp: [f"feats.{i}" for i in range(1, hp["n_blocks"] + 1)],
            head="feats.0", tail=None, note="width must be a multiple of 4"))
_add(Family("SAFMN", _spandrel("SAFMN"), "SAFMN", "dim", "n_blocks", "upscaling_factor", None, None, 8,
            width_multiple=4, blocks=lambda hp: [f"feats.{i}" for i in range(hp["n_blocks"])], head="to_feat",
            tail="in:to_img", note="width must be a multiple of 4 (four frequency levels)"))
_add(Family("OmniSR", _spandrel("OmniSR"), "OmniSR", "num_feat", "res_num", "up_scale", "num_in_ch", "num_out_ch", 1,
            width_multiple=4, blocks=lambda hp: [f"residual_layer.{i}" for i in range(hp["res_num"])], head="input",
            tail="in:up", note="depth = number of OSAG groups"))
_add(Family("DCTLSA", _spandrel("DCTLSA"), "DCTLSA", "nf", None, "upscale", "in_nc", "out_nc", None, fixed_depth=6,
            width_multiple=5, blocks=lambda hp: [f"B{i}" for i in range(1, 7)], head="fea_conv", tail="in:upsampler",
            note="six LSAB blocks, fixed; width must divide by its 5 heads"))

# Names accepted by --student-arch (case-insensitive), mapped to family ids.
ALIASES = {f.id.lower(): f.id for f in FAMILIES.values()}
ALIASES.update({"rrdbnet": "ESRGAN", "realesrgan": "ESRGAN", "srvggnetcompact": "Compact", "swinir": "SwinIR"})


def get_family(arch_id: str) -> Family | None:
    return FAMILIES.get(arch_id)


def resolve_arch(name: str) -> Family:
    key = name.strip().lower().replace("-", "").replace("_", "")
    fid = ALIASES.get(key)
    if fid is None:
        raise UsageError(f"unknown student architecture {name!r}",
                         hint="choose one of: " + ", ".join(sorted(a.lower() for a in FAMILIES)))
    return FAMILIES[fid]


def tail_tap(family: Family, hp: dict) -> str:
    """The module (or ``in:module``) whose output is the last LR-resolution feature map."""
    if family.tail:
        return family.tail
    blocks = family.blocks(hp)
    if family.id == "Compact":
        return f"body.{2 * hp['num_conv'] + 1}"
    return blocks[-1] if blocks else family.head
