"""DCTLSA (the bundled teacher: six LSAB blocks with 5-head attention)."""

from .registry import Family, register_family, spandrel_module

register_family(Family(
    id="DCTLSA", module=spandrel_module("DCTLSA"), cls_name="DCTLSA", width="nf", depth=None, scale_kw="upscale",
    in_kw="in_nc", out_kw="out_nc", fixed_depth=6, width_multiple=5,
    blocks=lambda hp: [f"B{i}" for i in range(1, 7)], head="fea_conv", tail="in:upsampler",
    note="six LSAB blocks, fixed; width must divide by its 5 heads"))
