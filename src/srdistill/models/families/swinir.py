"""SwinIR (window attention: exported at a static size)."""

from .registry import Family, register_family, spandrel_module

register_family(Family(
    id="SwinIR", module=spandrel_module("SwinIR"), cls_name="SwinIR", width="embed_dim", depth="depths",
    scale_kw="upscale", in_kw="in_chans", default_depth=4,
    extra={"depths": [6], "num_heads": [6], "window_size": 8, "upsampler": "pixelshuffledirect", "img_size": 64,
           "mlp_ratio": 2.0, "resi_connection": "1conv"},
    blocks=lambda hp: [], head="conv_first", tail="in:conv_after_body",
    note="depth = number of residual Swin stages; width must divide by the heads"))
