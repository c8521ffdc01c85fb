"""BasicSR-compatible PSNR / SSIM / Y: closed-form golden values and independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from srdistill.errors import UsageError
from srdistill.metrics import gaussian_window_1d, psnr, rgb_to_y, score, ssim, to_uint8


# ---------------------------------------------------------------- Y channel
@pytest.mark.parametrize(
    "rgb,y",
    [
        ((0, 0, 0), 16.0),  # black
        ((255, 255, 255), 235.0),  # white: 16 + (65.481 + 128.553 + 24.966) = 16 + 219
        ((255, 0, 0), 16 + 65.481),  # pure red   -> 81.481
        ((0, 255, 0), 16 + 128.553),  # pure green -> 144.553
        ((0, 0, 255), 16 + 24.966),  # pure blue  -> 40.966
        ((128, 128, 128), 16 + 219 * 128 / 255),  # mid grey -> 125.929...
    ],
)
def test_y_of_pure_colours(rgb, y):
    img = np.array(rgb, dtype=np.uint8).reshape(1, 1, 3).repeat(2, 0)
    out = rgb_to_y(img)
    assert out.shape == (2, 1) and out.dtype == np.float64
    np.testing.assert_allclose(out, y, rtol=0, atol=1e-12)


def test_y_equals_basicsr_bgr2ycbcr_on_bgr_order():
    # BasicSR: bgr2ycbcr(img_bgr / 255., y_only=True) * 255
    #        = (np.dot(img_bgr / 255., [24.966, 128.553, 65.481]) + 16.0) / 255. * 255.
    rgb = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    bgr = rgb[..., ::-1].astype(np.float64)
    basicsr = (np.dot(bgr / 255.0, [24.966, 128.553, 65.481]) + 16.0) / 255.0 * 255.0
    np.testing.assert_allclose(rgb_to_y(rgb), basicsr, rtol=0, atol=1e-9)


# ---------------------------------------------------------------- PSNR
def test_psnr_identical_is_inf():
    img = np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    assert psnr(img, img, crop_border=4) == float("inf")
    assert psnr(img, img.copy(), crop_border=0, test_y_channel=False) == float("inf")


def test_psnr_offset_one_in_all_channels():
    # +1 in R, G and B changes Y by (65.481 + 128.553 + 24.966) / 255 = 219/255 = 0.858823...
    # everywhere, so MSE = (219/255)^2 and PSNR = 20 log10(255 * 255 / 219)
    #  = 20 log10(296.9178...) = 20 * 2.472636... = 49.4527... dB
    rng = np.random.default_rng(2)
    a = rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)
    b = a + 1
    expected = 20 * math.log10(255 * 255 / 219)
    assert expected == pytest.approx(49.4527, abs=1e-4)
    assert psnr(a, b, crop_border=2) == pytest.approx(expected, abs=1e-9)
    # on RGB directly: every channel differs by 1 -> MSE 1 -> 20 log10(255) = 48.1308 dB
    assert psnr(a, b, crop_border=2, test_y_channel=False) == pytest.approx(20 * math.log10(255), abs=1e-9)


def test_psnr_offset_only_green():
    # +2 in G only: dY = 2 * 128.553 / 255 -> PSNR = 20 log10(255 / dY)
    a = np.full((16, 16, 3), 100, np.uint8)
    b = a.copy()
    b[..., 1] += 2
    assert psnr(a, b, 0) == pytest.approx(20 * math.log10(255 / (2 * 128.553 / 255)), abs=1e-9)


def test_psnr_crop_border_ignores_border():
    a = np.random.default_rng(3).integers(0, 256, (20, 22, 3), dtype=np.uint8)
    b = a.copy()
    b[:3] = 0
    b[:, -3:] = 255
    assert psnr(a, b, crop_border=3) == float("inf")
    assert psnr(a, b, crop_border=2) < 60


def test_psnr_grayscale_inputs_used_as_is():
    a = np.full((10, 10), 50, np.uint8)
    b = np.full((10, 10), 54, np.uint8)  # MSE 16
    expected = 10 * math.log10(255**2 / 16)
    assert psnr(a, b, 1) == pytest.approx(expected, abs=1e-12)
    assert psnr(a[..., None], b[..., None], 1) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- SSIM
def ref_ssim_2d(a: np.ndarray, b: np.ndarray) -> float:
    """Independent SSIM: the full 11x11 window (cv2.getGaussianKernel(11, 1.5) outer product)
    applied at every 'valid' position with an explicit window sum (BasicSR's _ssim)."""
    g = np.array([math.exp(-((i - 5) ** 2) / (2 * 1.5**2)) for i in range(11)])
    g /= g.sum()
    win = np.outer(g, g)

    def filt(x):
        v = np.lib.stride_tricks.sliding_window_view(x, (11, 11))
        return np.einsum("ijkl,kl->ij", v, win)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = filt(a), filt(b)
    s1 = filt(a * a) - mu1**2
    s2 = filt(b * b) - mu2**2
    s12 = filt(a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return float(m.mean())


def test_gaussian_window_matches_opencv_definition():
    g = gaussian_window_1d(11, 1.5)
    assert g.sum() == pytest.approx(1.0, abs=1e-15)
    # centre tap = 1 / sum_k exp(-k^2 / 4.5), k = -5..5
    #            = 1 / (1 + 2 (0.800737 + 0.411112 + 0.135335 + 0.028566 + 0.003866)) = 0.2660117
    assert g[5] == pytest.approx(0.2660117, abs=1e-7)
    np.testing.assert_allclose(g, g[::-1])


def test_ssim_identical_is_one():
    img = np.random.default_rng(4).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    assert ssim(img, img, crop_border=4) == pytest.approx(1.0, abs=1e-12)
    assert ssim(img, img, crop_border=0, test_y_channel=False) == pytest.approx(1.0, abs=1e-12)


def test_ssim_constant_images_closed_form():
    # no variance anywhere: SSIM = (2 a b + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 255)^2 = 6.5025
    # a = 100, b = 110: (22000 + 6.5025) / (22100 + 6.5025) = 0.995476...
    a = np.full((20, 20), 100, np.uint8)
    b = np.full((20, 20), 110, np.uint8)
    expected = (2 * 100 * 110 + 6.5025) / (100**2 + 110**2 + 6.5025)
    assert expected == pytest.approx(0.995476, abs=1e-6)
    assert ssim(a, b, 0) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("hw", [(11, 11), (23, 31), (40, 33)])
def test_ssim_matches_full_window_reference(hw):
    rng = np.random.default_rng(hw[0] * 100 + hw[1])
    a = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
    noise = rng.normal(0, 12, hw + (3,))
    b = np.clip(a + noise, 0, 255).round().astype(np.uint8)
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    assert ssim(a, b, 0) == pytest.approx(ref_ssim_2d(ya, yb), abs=1e-12)
    # RGB: mean of the per-channel SSIMs
    per_channel = [ref_ssim_2d(a[..., c].astype(float), b[..., c].astype(float)) for c in range(3)]
    assert ssim(a, b, 0, test_y_channel=False) == pytest.approx(np.mean(per_channel), abs=1e-12)


# ---------------------------------------------------------------- to_uint8 / score
def test_to_uint8_rounds_like_tensor2img():
    t = torch.tensor([[[-0.1, 0.0, 0.4 / 255, 1.6 / 255], [0.5, 0.999, 1.0, 2.0]]])  # (1, 2, 4)
    out = to_uint8(t)
    assert out.shape == (2, 4, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], [[0, 0, 0, 2], [128, 255, 255, 255]])
    x = torch.rand(1, 3, 5, 6)
    hwc = to_uint8(x)
    assert hwc.shape == (5, 6, 3)
    np.testing.assert_array_equal(hwc, np.round(x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def test_score_defaults_to_scale_crop():
    rng = np.random.default_rng(5)
    hr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-3, 4, hr.shape), 0, 255).astype(np.uint8)
    p, s = score(sr, hr, 4)
    assert p == psnr(sr, hr, 4) and s == ssim(sr, hr, 4)
    p2, _ = score(sr, hr, 4, crop_border=0, y_channel=False)
    assert p2 == psnr(sr, hr, 0, test_y_channel=False)


@pytest.mark.parametrize(
    "call",
    [
        lambda: psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)), 0),
        lambda: psnr(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), -1),
        lambda: psnr(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), 4),
        lambda: psnr(np.zeros((8, 8, 4)), np.zeros((8, 8, 4)), 0),
        lambda: psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), 0),
        lambda: ssim(np.zeros((12, 12, 3)), np.zeros((12, 12, 3)), 1),  # 10x10 < window
        lambda: rgb_to_y(np.zeros((4, 4))),
        lambda: to_uint8(torch.zeros(2, 3, 4, 4)),
        lambda: to_uint8(torch.zeros(3, 4, 4, dtype=torch.uint8)),
        lambda: score(np.zeros((16, 16, 3)), np.zeros((16, 16, 3)), 0),
    ],
)
def test_invalid_arguments_raise_usage_error(call):
    with pytest.raises(UsageError):
        call()
