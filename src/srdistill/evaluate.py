"""Scoring models on image sets, the way SR papers do (one implementation for eval and distill)."""

from __future__ import annotations

import numpy as np
import torch

from .metrics import psnr, ssim, to_uint8


def run_sr(model, lr_u8: torch.Tensor, scale: int, *, device: torch.device | str = "cpu",
           tile: int | None = None, self_ensemble: bool = False) -> torch.Tensor:
    """uint8 C x h x w LR -> float 1 x C x H x W SR output (clamped to [0, 1]) on the CPU."""
    from .tiling import upscale_tensor

    x = lr_u8.to(device=device, dtype=torch.float32).unsqueeze(0) / 255.0
    min_size = getattr(model, "min_size", 0)
    mult = getattr(model, "multiple_of", 1)

    def fn(t: torch.Tensor) -> torch.Tensor:
        return model(t)

    def once(t: torch.Tensor) -> torch.Tensor:
        return upscale_tensor(fn, t, scale, tile=tile, min_size=min_size, multiple_of=mult)

    with torch.no_grad():
        if not self_ensemble:
            y = once(x)
        else:
            from .data.datasets import augment

            acc = None
            for code in range(8):
                out = once(augment(x, code))
                # undo: transpose, then vertical flip, then horizontal flip (reverse order)
                if code & 4:
                    out = out.transpose(-1, -2)
                if code & 2:
                    out = out.flip(-2)
                if code & 1:
                    out = out.flip(-1)
                acc = out if acc is None else acc + out
            y = acc / 8
    return y.clamp(0, 1).float().cpu()


def score_pairs(model, pairs, scale: int, *, device: torch.device | str = "cpu", crop_border: int | None = None,
                y_channel: bool = True, tile: int | None = None, self_ensemble: bool = False,
                keep_outputs: bool = False) -> dict:
    """Mean PSNR/SSIM of ``model`` over ``pairs`` (uint8-quantised output, BT.601 Y, crop = scale)."""
    crop = scale if crop_border is None else crop_border
    per = []
    outputs = []
    for p in pairs:
        sr = to_uint8(run_sr(model, p.lr, scale, device=device, tile=tile, self_ensemble=self_ensemble))
        hr = p.hr
        if sr.shape != hr.shape:
            h, w = min(sr.shape[0], hr.shape[0]), min(sr.shape[1], hr.shape[1])
            sr, hr = sr[:h, :w], hr[:h, :w]
        per.append({"image": p.name, "psnr": psnr(sr, hr, crop, test_y_channel=y_channel),
                    "ssim": ssim(sr, hr, crop, test_y_channel=y_channel)})
        if keep_outputs:
            outputs.append(sr)
    out = {
        "psnr": float(np.mean([r["psnr"] for r in per])) if per else float("nan"),
        "ssim": float(np.mean([r["ssim"] for r in per])) if per else float("nan"),
        "images": per,
    }
    if keep_outputs:
        out["outputs"] = outputs
    return out
