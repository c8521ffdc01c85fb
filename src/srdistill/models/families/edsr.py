"""EDSR (srdistill's own implementation: spandrel has none)."""

from .registry import Family, ReparamSpec, register_family

register_family(Family(
    id="EDSR", module="srdistill.models.archs.edsr", cls_name="EDSR", width="num_feat", depth="num_block",
    scale_kw="upscale", in_kw="num_in_ch", out_kw="num_out_ch", default_depth=16,
    blocks=lambda hp: [f"body.{i}" for i in range(hp["num_block"])], head="conv_first", tail="in:upsample",
    teacher_init=(r"^body\.(\d+)\.", lambda i, ns, nt, sel: sel[i] if i < ns else nt),
    reparam=ReparamSpec(convs=r"conv_first|body\.\d+\.conv[12]|conv_after_body|conv_last")))
