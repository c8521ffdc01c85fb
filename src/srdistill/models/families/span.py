"""SPAN (re-parameterised convolutions, six fixed blocks)."""

from .registry import Family, register_family, spandrel_module

register_family(Family(
    id="SPAN", module=spandrel_module("SPAN"), cls_name="SPAN", width="feature_channels", depth=None,
    scale_kw="upscale", in_kw="num_in_ch", out_kw="num_out_ch", fixed_depth=6,
    blocks=lambda hp: [f"block_{i}" for i in range(1, 7)], head="conv_1", tail="in:conv_cat",
    note="six SPAB blocks, fixed by the architecture", teacher_init=("", None)))
