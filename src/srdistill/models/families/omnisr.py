"""OmniSR (omni self-attention groups)."""

from .registry import Family, register_family, spandrel_module

register_family(Family(
    id="OmniSR", module=spandrel_module("OmniSR"), cls_name="OmniSR", width="num_feat", depth="res_num",
    scale_kw="up_scale", in_kw="num_in_ch", out_kw="num_out_ch", default_depth=1, width_multiple=4,
    blocks=lambda hp: [f"residual_layer.{i}" for i in range(hp["res_num"])], head="input", tail="in:up",
    note="depth = number of OSAG groups"))
