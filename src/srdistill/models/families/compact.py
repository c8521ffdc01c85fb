"""Compact (SRVGGNetCompact: realesr-animevideov3, the bundled default model)."""

from .registry import Family, ReparamSpec, register_family, spandrel_module


def _compact_block(i: int, ns: int, nt: int, sel: list[int]) -> int:
    """Compact's ``body`` is conv, act, (conv, act) x num_conv, conv: map a student index to the teacher's."""
    if i < 2:
        return i
    if i == 2 * ns + 2:
        return 2 * nt + 2
    k, off = divmod(i - 2, 2)
    return 2 * sel[k] + 2 + off


register_family(Family(
    id="Compact", module=spandrel_module("Compact"), cls_name="Compact", width="num_feat", depth="num_conv",
    scale_kw="upscale", in_kw="num_in_ch", out_kw="num_out_ch", default_depth=16,
    blocks=lambda hp: [f"body.{2 * i + 1}" for i in range(1, hp["num_conv"] + 1)], head="body.1", tail=None,
    note="SRVGGNetCompact; depth = number of 3x3 convs",
    teacher_init=(r"^body\.(\d+)\.", _compact_block),
    reparam=ReparamSpec(convs=r"body\.\d+")),
    aliases=("srvggnetcompact",))
