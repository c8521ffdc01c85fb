"""RCAN (residual channel attention)."""

from .registry import Family, register_family, spandrel_module

register_family(Family(
    id="RCAN", module=spandrel_module("RCAN"), cls_name="RCAN", width="n_feats", depth="n_resgroups",
    scale_kw="scale", in_kw="n_colors", default_depth=10, min_width=16, extra={"n_resblocks": 20},
    blocks=lambda hp: [f"body.{i}" for i in range(hp["n_resgroups"])], head="head", tail="in:tail",
    note="channel attention reduces by 16: width >= 16"))
