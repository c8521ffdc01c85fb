"""PLKSR and RealPLKSR (large-kernel convolutions)."""

from .registry import Family, register_family, spandrel_module

for _id in ("PLKSR", "RealPLKSR"):
    register_family(Family(
        id=_id, module=spandrel_module("PLKSR"), cls_name=_id, width="dim", depth="n_blocks",
        scale_kw="upscaling_factor", default_depth=12, width_multiple=4,
        blocks=lambda hp: [f"feats.{i}" for i in range(1, hp["n_blocks"] + 1)], head="feats.0", tail=None,
        note="width must be a multiple of 4"))
