"""ESRGAN / Real-ESRGAN (RRDBNet)."""

from .registry import Family, register_family, spandrel_module

register_family(Family(
    id="ESRGAN", module=spandrel_module("ESRGAN"), cls_name="ESRGAN", width="num_filters", depth="num_blocks",
    scale_kw="scale", in_kw="in_nc", out_kw="out_nc", default_depth=6, min_width=2,
    blocks=lambda hp: [f"model.1.sub.{i}" for i in range(hp["num_blocks"])], head="model.0", tail="model.1",
    note="RRDBNet (grow channels fixed at 32)",
    teacher_init=(r"^model\.1\.sub\.(\d+)\.", lambda i, ns, nt, sel: sel[i] if i < ns else nt)),
    aliases=("rrdbnet", "realesrgan"))
