"""EDSR (Lim et al., 2017) -- the classic distillation teacher, which spandrel lacks.

Registered as a spandrel ``Architecture`` (detected from keys, hyperparameters
read from tensor shapes) so there is one way to load anything. Two key layouts
are in circulation and both load:

* EDSR-PyTorch (sanghyun-son): ``sub_mean``, ``head.0``, ``body.N.body.0/2``,
  ``body.{n}`` (conv after body), ``tail.0.{0,2}`` (upsampler), ``tail.1``;
  the model works on [0, rgb_range] and its mean shift is stored as weights.
* BasicSR: ``conv_first``, ``body.N.conv1/conv2``, ``conv_after_body``,
  ``upsample.{0,2}``, ``conv_last``; works on [0, 1] with ``img_range`` 255.

Both are converted to the BasicSR layout, which is what this module computes on
[0, 1] input. A model whose normalisation is not BasicSR's (img_range 255, DIV2K
mean) -- an EDSR-PyTorch model trained with ``--rgb_range 1``, say -- also keeps
``mean`` and ``img_range`` in its state dict, so that it saves and reloads as itself.
``res_scale`` is not stored in checkpoints: the official large models (256
features) use 0.1, the baselines 1.0; we follow that convention.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from .._compat import import_spandrel

spandrel = import_spandrel()
from spandrel import Architecture, ImageModelDescriptor  # noqa: E402
from spandrel.util import KeyCondition, store_hyperparameters  # noqa: E402

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class ResidualBlockNoBN(nn.Module):
    def __init__(self, num_feat: int, res_scale: float):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


def _upsampler(scale: int, num_feat: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    if scale & (scale - 1) == 0:  # power of two
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"EDSR supports scales 2^n and 3, not {scale}")
    return nn.Sequential(*layers)


@store_hyperparameters()
class EDSR(nn.Module):
    hyperparameters = {}

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 16,
        upscale: int = 4,
        res_scale: float = 1.0,
        img_range: float = 255.0,
        rgb_mean: tuple[float, float, float] = DIV2K_MEAN,
    ):
        super().__init__()
        mean = torch.tensor(rgb_mean[:num_in_ch] if num_in_ch <= 3 else [0.0] * num_in_ch,
                            dtype=torch.float32).view(1, -1, 1, 1)
        # The usual normalisation (255, DIV2K mean) is implied, as in BasicSR's files; any other is
        # stored in the state dict, so that a saved model reloads with the normalisation it computes with.
        standard = _is_standard(img_range, rgb_mean, num_in_ch)
        self.register_buffer("mean", mean, persistent=not standard)
        if standard:
            self.img_range = img_range
        else:
            self.register_buffer("img_range", torch.tensor(float(img_range)))
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block)])
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = _upsampler(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        x = self.conv_first(x)
        res = self.conv_after_body(self.body(x))
        res = res + x
        x = self.conv_last(self.upsample(res))
        return x / self.img_range + mean


def _is_standard(img_range: float, rgb_mean, num_in_ch: int) -> bool:
    return float(img_range) == 255.0 and (
        num_in_ch > 3 or all(abs(a - b) < 1e-6 for a, b in zip(rgb_mean, DIV2K_MEAN[:num_in_ch])))


_EDSR_PYTORCH = re.compile(r"^body\.(\d+)\.body\.([02])\.(weight|bias)$")


def convert_edsr_pytorch(state: dict) -> tuple[dict, float, tuple]:
    """EDSR-PyTorch keys -> BasicSR keys; returns (state, rgb_range, rgb_mean)."""
    n_blocks = 1 + max(int(m.group(1)) for k in state if (m := _EDSR_PYTORCH.match(k)))
    out: dict = {}
    for k, v in state.items():
        if k.startswith(("sub_mean.", "add_mean.")):
            continue
        if m := _EDSR_PYTORCH.match(k):
            out[f"body.{m.group(1)}.conv{1 if m.group(2) == '0' else 2}.{m.group(3)}"] = v
        elif k.startswith(f"body.{n_blocks}."):
            out["conv_after_body." + k.split(".", 2)[2]] = v
        elif k.startswith("head.0."):
            out["conv_first." + k[len("head.0."):]] = v
        elif k.startswith("tail.0."):
            out["upsample." + k[len("tail.0."):]] = v
        elif k.startswith("tail.1."):
            out["conv_last." + k[len("tail.1."):]] = v
        else:
            out[k] = v  # unexpected: load_state_dict reports it as an extra key
    rgb_range, rgb_mean = 255.0, DIV2K_MEAN
    if "sub_mean.bias" in state and "sub_mean.weight" in state:
        # MeanShift: weight = I / std, bias = -rgb_range * mean / std (std = 1 in every released model)
        w = state["sub_mean.weight"].float().reshape(state["sub_mean.weight"].shape[0], -1)
        b = state["sub_mean.bias"].float()
        std = 1.0 / torch.diagonal(w[:, : w.shape[0]])
        mean_times_range = (-b * std).tolist()
        if mean_times_range[0] > 0:
            # the DIV2K mean is what every EDSR-PyTorch model uses; it pins down rgb_range
            rgb_range = float(round(mean_times_range[0] / DIV2K_MEAN[0], 3))
            rgb_mean = tuple(float(v) / rgb_range for v in mean_times_range)
    return out, rgb_range, rgb_mean


class EDSRArch(Architecture[EDSR]):
    def __init__(self) -> None:
        super().__init__(
            id="EDSR",
            name="EDSR",
            detect=KeyCondition.has_any(
                KeyCondition.has_all(
                    "head.0.weight", "body.0.body.0.weight", "body.0.body.2.weight", "tail.0.0.weight", "tail.1.weight"
                ),
                KeyCondition.has_all(
                    "conv_first.weight", "body.0.conv1.weight", "body.0.conv2.weight", "conv_after_body.weight",
                    "upsample.0.weight", "conv_last.weight",
                ),
            ),
        )

    def load(self, state_dict: dict) -> ImageModelDescriptor[EDSR]:
        img_range, rgb_mean = 255.0, DIV2K_MEAN
        if "head.0.weight" in state_dict:
            converted, img_range, rgb_mean = convert_edsr_pytorch(state_dict)
            state_dict.clear()
            state_dict.update(converted)
        if "img_range" in state_dict:  # a non-standard normalisation saved by our EDSR
            img_range = float(state_dict["img_range"])
        if "mean" in state_dict:
            rgb_mean = tuple(float(v) for v in state_dict["mean"].flatten())
        num_feat, num_in_ch = state_dict["conv_first.weight"].shape[:2]
        num_out_ch = state_dict["conv_last.weight"].shape[0]
        if _is_standard(img_range, rgb_mean, int(num_in_ch)):
            img_range, rgb_mean = 255.0, DIV2K_MEAN  # exact values, not their float32 round-off
            state_dict.pop("img_range", None)
            state_dict.pop("mean", None)
        num_block = 0
        while f"body.{num_block}.conv1.weight" in state_dict:
            num_block += 1
        up0 = state_dict["upsample.0.weight"].shape[0] // num_feat
        if up0 == 9:
            scale = 3
        else:
            n = 0
            while f"upsample.{2 * n}.weight" in state_dict:
                n += 1
            scale = 2**n
        res_scale = 0.1 if num_feat >= 256 else 1.0
        model = EDSR(
            num_in_ch=int(num_in_ch),
            num_out_ch=int(num_out_ch),
            num_feat=int(num_feat),
            num_block=num_block,
            upscale=scale,
            res_scale=res_scale,
            img_range=img_range,
            rgb_mean=tuple(rgb_mean),
        )
        for k, v in model.state_dict().items():  # the normalisation an EDSR-PyTorch file held in sub_mean
            if k in ("mean", "img_range"):
                state_dict.setdefault(k, v)
        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="SR",
            tags=[f"{num_feat}nf", f"{num_block}nb"],
            supports_half=True,
            supports_bfloat16=True,
            scale=scale,
            input_channels=int(num_in_ch),
            output_channels=int(num_out_ch),
        )
