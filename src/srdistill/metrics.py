"""PSNR and SSIM exactly as BasicSR computes them (``basicsr/metrics/psnr_ssim.py``).

These are the numbers SR papers report, and the only metric implementation srdistill uses
(``eval``, validation during ``distill``, benchmarks).

Conventions
-----------
* Inputs are numpy images in the uint8 range: ``H x W x 3`` **RGB** (or ``H x W`` /
  ``H x W x 1`` grayscale), uint8 or float in [0, 255]. They should already be quantised to
  the uint8 grid (a model output goes through :func:`to_uint8` first, as BasicSR's
  ``tensor2img`` does). All arithmetic is float64.
* ``crop_border`` pixels are removed from every side before scoring (papers use the scale).
* ``test_y_channel=True`` scores the BT.601 luma of studio range (MATLAB ``rgb2ycbcr``):
  ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` for R, G, B in [0, 255], so Y is in
  [16, 235] and is **not** rounded. (BasicSR reads BGR images with OpenCV and applies the same
  coefficients in BGR order; our images are RGB.) Grayscale inputs are scored as they are, as in
  BasicSR; convert a grayscale image to RGB first to score its Y like SR papers do.
* PSNR is ``10 log10(255^2 / MSE)`` over all pixels (and channels), ``inf`` when MSE is 0.
* SSIM is Wang et al.'s with BasicSR's constants: ``C1 = (0.01*255)^2``, ``C2 = (0.03*255)^2``,
  an 11x11 Gaussian window of sigma 1.5 (OpenCV ``getGaussianKernel(11, 1.5)`` outer product),
  statistics over the 'valid' region only (BasicSR filters with ``cv2.filter2D`` and drops 5
  pixels on each side), mean of the SSIM map; with several channels, the mean over channels.
  The Gaussian is separable, so it is applied as two 1-D passes in numpy (no OpenCV/SciPy).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .data.image_type import quantize_u8  # noqa: F401  (re-exported: the one quantiser lives with the image type)
from .errors import UsageError

__all__ = ["rgb_to_y", "psnr", "ssim", "to_uint8", "score", "gaussian_window_1d"]

_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64)  # R, G, B


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Y (BT.601, studio range [16, 235]) of an ``H x W x 3`` RGB image with values in [0, 255].

    Equal to BasicSR's ``bgr2ycbcr(bgr / 255., y_only=True) * 255`` on the same pixels. Returns
    an ``H x W`` float64 array, not rounded.
    """
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise UsageError(f"rgb_to_y expects an H x W x 3 RGB image, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    return (arr @ _Y_COEFFS) / 255.0 + 16.0


def _prepare(
    img1: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validate, crop, convert to Y if asked; returns two float64 ``H x W x C`` arrays."""
    if isinstance(img1, torch.Tensor) or isinstance(img2, torch.Tensor):
        raise UsageError(
            f"{what} expects numpy images in [0, 255]",
            hint="convert model outputs with srdistill.metrics.to_uint8",
        )
    a = np.asarray(img1)
    b = np.asarray(img2)
    if a.shape != b.shape:
        raise UsageError(f"{what}: images have different shapes {a.shape} and {b.shape}")
    if a.ndim == 2:
        a = a[..., None]
        b = b[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise UsageError(f"{what} expects H x W, H x W x 1 or H x W x 3 images, got shape {a.shape}")
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise UsageError(f"{what}: invalid crop_border {crop_border!r}: expected an integer >= 0")
    c = int(crop_border)
    h, w = a.shape[:2]
    if h - 2 * c < 1 or w - 2 * c < 1:
        raise UsageError(f"{what}: crop_border {c} leaves nothing of a {h}x{w} image")
    if c:
        a = a[c:-c, c:-c, :]
        b = b[c:-c, c:-c, :]
    if test_y_channel and a.shape[2] == 3:
        a = rgb_to_y(a)[..., None]
        b = rgb_to_y(b)[..., None]
    return a.astype(np.float64), b.astype(np.float64)


def psnr(img1: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool = True) -> float:
    """BasicSR ``calculate_psnr`` in dB (``inf`` for identical images)."""
    a, b = _prepare(img1, img2, crop_border, test_y_channel, "psnr")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return float(10.0 * math.log10(255.0 * 255.0 / mse))


def gaussian_window_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """OpenCV ``getGaussianKernel(size, sigma)`` (float64, sums to 1) as a 1-D array."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma * sigma))
    return g / g.sum()


_WINDOW = gaussian_window_1d(11, 1.5)


def _filter_valid(img: np.ndarray) -> np.ndarray:
    """2-D correlation with the 11x11 Gaussian over the 'valid' region (separable, float64)."""
    k = _WINDOW
    n = k.size
    h, w = img.shape
    rows = np.zeros((h - n + 1, w), dtype=np.float64)
    for i in range(n):
        rows += k[i] * img[i : i + h - n + 1, :]
    out = np.zeros((h - n + 1, w - n + 1), dtype=np.float64)
    for j in range(n):
        out += k[j] * rows[:, j : j + w - n + 1]
    return out


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    mu1 = _filter_valid(a)
    mu2 = _filter_valid(b)
    mu1_sq = mu1**2
    mu2_sq = mu2**2
    mu1_mu2 = mu1 * mu2
    sigma1_sq = _filter_valid(a * a) - mu1_sq
    sigma2_sq = _filter_valid(b * b) - mu2_sq
    sigma12 = _filter_valid(a * b) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / (
        (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2)
    )
    return float(ssim_map.mean())


def ssim(img1: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool = True) -> float:
    """BasicSR ``calculate_ssim`` (mean over channels when scoring RGB)."""
    a, b = _prepare(img1, img2, crop_border, test_y_channel, "ssim")
    if a.shape[0] < 11 or a.shape[1] < 11:
        raise UsageError(
            f"ssim needs at least 11x11 pixels after cropping, got {a.shape[0]}x{a.shape[1]}"
        )
    return float(np.mean([_ssim_channel(a[..., i], b[..., i]) for i in range(a.shape[2])]))


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """A ``(C, H, W)`` or ``(1, C, H, W)`` float tensor in [0, 1] -> ``H x W x C`` uint8 RGB.

    Clamp to [0, 1], multiply by 255, round half to even — BasicSR's ``tensor2img`` (float32
    math; float64 tensors stay float64) without its RGB->BGR swap.
    """
    if not isinstance(t, torch.Tensor):
        raise UsageError(f"to_uint8 expects a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise UsageError(f"to_uint8 expects a float tensor in [0, 1], got {t.dtype}")
    x = t.detach()
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise UsageError(f"to_uint8 expects one image, got a batch of shape {tuple(x.shape)}")
        x = x[0]
    if x.ndim != 3:
        raise UsageError(f"to_uint8 expects (C, H, W) or (1, C, H, W), got shape {tuple(t.shape)}")
    if x.dtype != torch.float64:
        x = x.to(torch.float32)
    return np.ascontiguousarray(quantize_u8(x.cpu()).permute(1, 2, 0).numpy())


def score(
    sr_uint8: np.ndarray,
    hr_uint8: np.ndarray,
    scale: int,
    *,
    y_channel: bool = True,
    crop_border: int | None = None,
) -> tuple[float, float]:
    """(PSNR, SSIM) of an SR result against its HR image, cropping ``scale`` pixels by default."""
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise UsageError(f"invalid scale {scale!r}: expected an integer >= 1")
    c = int(scale) if crop_border is None else crop_border
    return (
        psnr(sr_uint8, hr_uint8, c, test_y_channel=y_channel),
        ssim(sr_uint8, hr_uint8, c, test_y_channel=y_channel),
    )
