"""SAFMN (spatially-adaptive feature modulation)."""

from .registry import Family, register_family, spandrel_module

register_family(Family(
    id="SAFMN", module=spandrel_module("SAFMN"), cls_name="SAFMN", width="dim", depth="n_blocks",
    scale_kw="upscaling_factor", default_depth=8, width_multiple=4,
    blocks=lambda hp: [f"feats.{i}" for i in range(hp["n_blocks"])], head="to_feat", tail="in:to_img",
    note="width must be a multiple of 4 (four frequency levels)"))
