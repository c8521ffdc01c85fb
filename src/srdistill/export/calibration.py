"""Calibration and quality-check data for int8: HR images (or synthetic ones) and their LR inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import to_uint8_chw
from ..data.images import IMAGE_EXTENSIONS, read_image, scan_folder
from ..data.resize import downscale_for_sr, quantize_uint8
from ..errors import ImageError, SrDistillError, UsageError, first_line
from ..fileio import shown_path
from ..metrics import psnr, quantize_u8, to_uint8
from .verify import synthetic_batch


# --------------------------------------------------------------------------- calibration data


def _list_images(folder: Path) -> list[Path]:
    return sorted(scan_folder(folder, recursive=False))


def check_calibration(path) -> list[Path]:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"calibration folder {shown_path(p)} does not exist",
                             hint="give a folder of images, or leave out --calibration for dynamic int8")
    if not p.is_dir():
        raise UsageError(f"--calibration {shown_path(p)} is not a folder")
    imgs = _list_images(p)
    if not imgs:
        raise SrDistillError(f"calibration folder {shown_path(p)} holds no images ({', '.join(IMAGE_EXTENSIONS)})",
                             hint="add a few representative images, or leave out --calibration for dynamic int8")
    return imgs


def read_rgb(path: Path) -> np.ndarray:
    """A calibration image as H x W x 3 uint8 (the one image reader: 16-bit, gray, EXIF, alpha dropped)."""
    try:
        img = read_image(path)
    except SrDistillError as e:
        raise ImageError(f"cannot read calibration image {path.name}: {first_line(e)}") from None
    return np.ascontiguousarray(to_uint8_chw(img.rgb, 3).permute(1, 2, 0).numpy())


@dataclass
class _Pair:
    lr: np.ndarray  # (1, C, h, w) float32 in [0, 1], uint8-quantised
    hr: np.ndarray | None  # (H, W, 3) uint8, None when the image was too small to downscale


def make_pairs(images: list[np.ndarray], model, patch: tuple[int, int], static: bool) -> list[_Pair]:
    """Centre crops: an HR crop of ``scale * patch`` and its bicubic LR (paper protocol)."""
    s = model.scale
    m = max(1, model.multiple_of)
    lo = max(1, model.min_size)
    pairs = []
    for hr in images:
        if model.input_channels == 1:  # grayscale models: BT.601 luma
            hr = np.round(hr.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None].astype(np.uint8)
        H, W = hr.shape[:2]
        ph, pw = patch
        if not static:  # shrink to the image (keeping the size rules) if it is smaller
            ph = min(ph, (H // s) // m * m)
            pw = min(pw, (W // s) // m * m)
        if ph >= lo and pw >= lo and ph > 0 and pw > 0 and ph * s <= H and pw * s <= W:
            top, left = (H - ph * s) // 2, (W - pw * s) // 2
            crop = hr[top: top + ph * s, left: left + pw * s]
            lr = downscale_for_sr(torch.from_numpy(np.array(crop)).permute(2, 0, 1).contiguous(), s)
            lr = quantize_uint8(lr).to(torch.float32).numpy()[None]
            pairs.append(_Pair(np.ascontiguousarray(lr, dtype=np.float32), crop))
        else:  # too small to make an LR/HR pair: use the image itself as an LR input
            ph, pw = patch if static else (H // m * m, W // m * m)
            if ph < lo or pw < lo or ph < 1 or pw < 1 or ph > H or pw > W:
                continue
            top, left = (H - ph) // 2, (W - pw) // 2
            lr = hr[top: top + ph, left: left + pw].astype(np.float32).transpose(2, 0, 1)[None] / 255.0
            pairs.append(_Pair(np.ascontiguousarray(lr), None))
    return pairs


def _psnr(sr: np.ndarray, ref_uint8: np.ndarray, scale: int) -> float:
    return float(psnr(to_uint8(torch.from_numpy(sr)), ref_uint8, scale, test_y_channel=True))


def synthetic_hr(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    """Synthetic HR images (``H x W x 3`` uint8) for dynamic int8 quality checks."""
    imgs = []
    for i in range(n):
        x = synthetic_batch(1, 3, h, w, seed + i)[0]
        # smooth the noise a little so bicubic LR keeps structure a model can rebuild
        x = 0.5 * x + 0.25 * (np.roll(x, 1, axis=1) + np.roll(x, 1, axis=2))
        imgs.append(np.ascontiguousarray(quantize_u8(x.transpose(1, 2, 0))))
    return imgs
