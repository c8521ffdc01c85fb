"""MATLAB-compatible bicubic resize: hand-derived values, an independent slow reference,
and the published bicubic baselines on Set5 / Set14 (needs ../shared)."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from srdistill.data.resize import (
    downscale_for_sr,
    imresize,
    imresize_np,
    imresize_uint8,
    mod_crop,
    output_length,
    quantize_uint8,
    resize_matrix,
)
from srdistill.errors import UsageError
from srdistill.metrics import psnr, ssim

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# --------------------------------------------------------------------------------------------
# An independent, deliberately slow reference: a line-by-line transcription of MATLAB's
# imresize.m (`cubic`, `contributions` with its `aux` mirror indexing and column killing, and
# `imresizemex` as an explicit sum over the taps of each output index). 1-based like MATLAB.
# --------------------------------------------------------------------------------------------
def ref_cubic(x: float) -> float:
    absx = abs(x)
    if absx <= 1:
        return 1.5 * absx**3 - 2.5 * absx**2 + 1
    if absx <= 2:
        return -0.5 * absx**3 + 2.5 * absx**2 - 4 * absx + 2
    return 0.0


def ref_contributions(in_length: int, out_length: int, scale: float):
    kernel_width = 4.0
    if scale < 1:
        def h(x):
            return scale * ref_cubic(scale * x)

        kernel_width = kernel_width / scale
    else:
        h = ref_cubic
    P = math.ceil(kernel_width) + 2
    aux = list(range(1, in_length + 1)) + list(range(in_length, 0, -1))
    weights, indices = [], []
    for x in range(1, out_length + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - kernel_width / 2)
        idx = [left + j for j in range(P)]
        w = [h(u - k) for k in idx]
        total = sum(w)
        weights.append([v / total for v in w])
        indices.append([aux[(k - 1) % len(aux)] for k in idx])
    kill = {j for j in range(P) if all(row[j] == 0 for row in weights)}
    weights = [[v for j, v in enumerate(row) if j not in kill] for row in weights]
    indices = [[v for j, v in enumerate(row) if j not in kill] for row in indices]
    return weights, indices


def ref_resize_dim(img: np.ndarray, dim: int, out_length: int, scale: float) -> np.ndarray:
    """imresizemex along `dim` (0 = rows, 1 = cols) of an H x W [x C] float64 array."""
    a = np.moveaxis(np.asarray(img, dtype=np.float64), dim, 0)
    weights, indices = ref_contributions(a.shape[0], out_length, scale)
    out = np.zeros((out_length,) + a.shape[1:], dtype=np.float64)
    for i in range(out_length):
        for w, k in zip(weights[i], indices[i]):
            out[i] += w * a[k - 1]
    return np.moveaxis(out, 0, dim)


def ref_to_uint8(a: np.ndarray) -> np.ndarray:
    """MATLAB's double -> uint8: saturate, round half away from zero."""
    return np.floor(np.clip(a, 0, 255) + 0.5)


def ref_imresize(img: np.ndarray, scale=None, size=None, uint8: bool = False) -> np.ndarray:
    """MATLAB imresize(img, scale) / imresize(img, size), bicubic, for H x W [x C] float arrays.

    `scale` may be a Fraction so that the output size ceil(in * scale) is computed exactly.
    `uint8=True`: `img` holds 0..255 values of a uint8 image; like MATLAB (imresizemex keeps the
    input's class) each one-dimensional pass returns uint8, so the intermediate image is rounded.
    (The scales used in these tests are equal in both dimensions: rows first, as MATLAB.)
    """
    h, w = img.shape[:2]
    if size is not None:
        (oh, ow), (sh, sw) = size, (size[0] / h, size[1] / w)
    else:
        oh, ow = math.ceil(Fraction(scale) * h), math.ceil(Fraction(scale) * w)
        sh = sw = float(scale)
    q = ref_to_uint8 if uint8 else (lambda a: a)
    return q(ref_resize_dim(q(ref_resize_dim(img, 0, oh, sh)), 1, ow, sw))


# --------------------------------------------------------------------------------------------
# Hand-derived values
# --------------------------------------------------------------------------------------------
# Downscale by 1/2 (antialiased): h(d) = 0.5 * cubic(d / 2), support |d| < 4, u = 2x - 0.5.
# cubic(0.25) = 1.5/64 - 2.5/16 + 1 = 0.8671875      cubic(0.75) = 0.6328125 - 1.40625 + 1 = 0.2265625
# cubic(1.25) = -0.9765625 + 3.90625 - 5 + 2 = -0.0703125
# cubic(1.75) = -2.6796875 + 7.65625 - 7 + 2 = -0.0234375
# -> the 8 taps at distances ±0.5, ±1.5, ±2.5, ±3.5 are (they already sum to 1):
HALF_TAPS = [-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875]
# Upscale by 2: u = x/2 + 0.25; even outputs sit 0.25 past an input sample, taps at distances
# -1.75 .. 1.25: cubic(1.25), cubic(0.25), cubic(0.75), cubic(1.75) (they sum to 1):
UP_TAPS = [-0.0703125, 0.8671875, 0.2265625, -0.0234375]


def test_hand_derived_taps_sum_to_one():
    assert sum(HALF_TAPS) == 1.0
    assert sum(UP_TAPS) == 1.0


def test_downscale_half_hand_values():
    v = np.array([1, 4, 9, 16, 25, 36, 49, 64], dtype=np.float64)  # squares, along the width
    img = np.tile(v, (6, 1))  # constant along the height
    out = imresize_np(img, 0.5)
    assert out.shape == (3, 4)
    # Output 1 (u = 1.5) uses inputs k = -2..5; MATLAB mirrors k=0,-1,-2 to 1,2,3:
    #   0.546875 v1 + 0.3984375 v2 + 0.1015625 v3 - 0.03515625 v4 - 0.01171875 v5
    #   = 0.546875 + 1.59375 + 0.9140625 - 0.5625 - 0.29296875 = 2.19921875
    assert out[0, 0] == pytest.approx(2.19921875, abs=1e-12)
    # Output 2 (u = 3.5) uses inputs k = 0..7 (k=0 mirrored to 1)
    ks = [1, 1, 2, 3, 4, 5, 6, 7]
    expected = sum(t * v[k - 1] for t, k in zip(HALF_TAPS, ks))
    np.testing.assert_allclose(out[:, 1], expected, atol=1e-12)


def test_downscale_half_linear_ramp_interior_is_exact():
    # The cubic reproduces linear functions, so away from the borders output x equals the
    # ramp evaluated at u = 2x - 0.5 (1-based).
    v = np.arange(1, 25, dtype=np.float64)  # v_k = k
    out = imresize_np(v[None, :].repeat(4, 0), 0.5)[0]
    for x in range(3, 11):  # taps stay inside 1..24
        assert out[x - 1] == pytest.approx(2 * x - 0.5, abs=1e-12)


def test_upscale_x2_hand_values():
    v = np.array([3.0, 7.0, 1.0, 8.0, 2.0, 5.0])
    out = imresize_np(v[None, :], 2)[0]
    assert out.shape == (12,)
    # output 4 (u = 2.25) uses inputs 1..4 at distances 1.25, 0.25, -0.75, -1.75
    assert out[3] == pytest.approx(sum(t * x for t, x in zip(UP_TAPS, v[0:4])), abs=1e-12)
    # output 5 (u = 2.75) is the mirror image: inputs 1..4 with the taps reversed
    assert out[4] == pytest.approx(sum(t * x for t, x in zip(UP_TAPS[::-1], v[0:4])), abs=1e-12)


@pytest.mark.parametrize("scale", [2, 3, 4, 1 / 2, 1 / 3, 1 / 4, 0.7, 1.5])
@pytest.mark.parametrize("hw", [(12, 12), (13, 17), (7, 5)])
def test_constant_image_stays_constant(scale, hw):
    x = torch.full((2, 3) + hw, 0.3712, dtype=torch.float64)
    y = imresize(x, scale=scale)
    assert y.shape[-2:] == (output_length(hw[0], scale), output_length(hw[1], scale))
    torch.testing.assert_close(y, torch.full_like(y, 0.3712), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "scale", [Fraction(2), Fraction(3), Fraction(4), Fraction(1, 2), Fraction(1, 3), Fraction(1, 4)]
)
@pytest.mark.parametrize("hw", [(12, 12), (13, 17), (7, 5), (31, 24), (3, 2)])
def test_matches_slow_matlab_reference(scale, hw):
    rng = np.random.default_rng(hash(hw) % 1000)
    img = rng.random(hw + (3,))
    ref = ref_imresize(img, scale=scale)
    out = imresize_np(img, float(scale))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("hw,size", [((13, 17), (10, 7)), ((8, 9), (20, 21)), ((16, 16), (5, 30))])
def test_size_matches_slow_reference(hw, size):
    img = np.random.default_rng(0).random(hw)
    np.testing.assert_allclose(imresize_np(img, size=size), ref_imresize(img, size=size), atol=1e-12)


def test_output_size_rule():
    assert output_length(13, 0.5) == 7  # ceil(6.5)
    assert output_length(10, 1 / 3) == 4  # ceil(3.33)
    assert output_length(255, 1 / 3) == 85  # no float-noise ceil to 86
    assert output_length(7, 4) == 28
    assert imresize(torch.zeros(1, 3, 13, 10), scale=1 / 3).shape == (1, 3, 5, 4)


def test_matrix_cached_and_normalised():
    m = resize_matrix(40, 10, 0.25)
    assert m is resize_matrix(40, 10, 0.25)
    assert m.shape == (10, 40)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-14)
    with pytest.raises(ValueError):
        m[0, 0] = 1.0  # read-only: a cached matrix cannot be corrupted


def test_batch_layouts_and_dtypes():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((2, 4, 3, 13, 17)))
    y = imresize(x, scale=0.5)
    assert y.shape == (2, 4, 3, 7, 9) and y.dtype == torch.float64
    # every image equals the numpy path on its own
    ref = imresize_np(x[1, 2].permute(1, 2, 0).numpy(), 0.5)
    np.testing.assert_allclose(y[1, 2].permute(1, 2, 0).numpy(), ref, atol=1e-12)
    y32 = imresize(x.float(), scale=0.5)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y, rtol=0, atol=1e-5)
    for dt in (torch.float16, torch.bfloat16):
        yh = imresize(x.to(dt), scale=2)
        assert yh.dtype == dt and yh.shape == (2, 4, 3, 26, 34)
    assert imresize(x[0, 0, 0], scale=2).shape == (26, 34)  # plain (H, W)
    z = imresize(x, scale=1)
    assert torch.equal(z, x) and z is not x


def test_no_grad_and_differentiable():
    x = torch.rand(1, 3, 12, 12, requires_grad=True)
    with torch.no_grad():
        assert not imresize(x, scale=0.5).requires_grad
    imresize(x, scale=0.5).sum().backward()
    # each output row/col of weights sums to 1 -> d(sum)/dx sums to the number of outputs
    assert x.grad is not None and x.grad.sum().item() == pytest.approx(3 * 6 * 6, rel=1e-5)


def test_downscale_for_sr_and_mod_crop():
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (27, 30, 3), dtype=np.uint8)
    assert mod_crop(hr, 4).shape == (24, 28, 3)
    # uint8 HR: MATLAB's uint8 imresize (rounded after each pass), returned / 255
    lr = downscale_for_sr(hr, 4)
    assert lr.dtype == np.float64 and lr.shape == (6, 7, 3)
    ref_u8 = ref_imresize(hr[:24, :28].astype(np.float64), scale=Fraction(1, 4), uint8=True)
    np.testing.assert_array_equal(np.round(lr * 255), ref_u8)
    np.testing.assert_allclose(lr, ref_u8 / 255, atol=1e-12)
    # float HR: linear, unquantised
    lr_f = downscale_for_sr(hr.astype(np.float64) / 255, 4)
    np.testing.assert_allclose(lr_f, ref_imresize(hr[:24, :28].astype(np.float64) / 255, scale=Fraction(1, 4)), atol=1e-12)
    assert np.abs(lr_f - lr).max() <= 1.0 / 255  # the two differ by the rounding only
    # torch path: (C, H, W) uint8 -> float32, same numbers
    t = torch.from_numpy(hr.copy()).permute(2, 0, 1)
    assert mod_crop(t, 4).shape == (3, 24, 28)
    lr_t = downscale_for_sr(t, 4)
    assert lr_t.dtype == torch.float32 and lr_t.shape == (3, 6, 7)
    np.testing.assert_allclose(lr_t.permute(1, 2, 0).numpy(), lr, atol=1e-6)


@pytest.mark.parametrize("scale", [Fraction(2), Fraction(3), Fraction(4), Fraction(1, 2), Fraction(1, 3), Fraction(1, 4)])
@pytest.mark.parametrize("hw", [(12, 12), (13, 17), (7, 5), (31, 24)])
def test_imresize_uint8_matches_slow_matlab_reference(scale, hw):
    rng = np.random.default_rng(hash(hw) % 1000 + 7)
    img = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
    ref = ref_imresize(img.astype(np.float64), scale=scale, uint8=True)
    out = imresize_uint8(img, float(scale))
    assert out.dtype == np.uint8 and out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)
    # torch layout (..., C, H, W), same pixels
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    out_t = imresize_uint8(t, float(scale))
    assert out_t.dtype == torch.uint8
    np.testing.assert_array_equal(out_t[0].permute(1, 2, 0).numpy(), ref)


def test_imresize_uint8_rounds_between_passes():
    """Worked by hand: x2 upscale of one bright pixel (201) at (2, 2) on black.

    Along each axis the outputs 3 and 4 (0-based) sit 0.75 and 0.25 from that pixel: weights
    cubic(0.75) = 0.2265625 and cubic(0.25) = 0.8671875 (UP_TAPS). Output (3, 4), rows first:
    201 * 0.2265625 = 45.5390625 -> uint8 46, then 46 * 0.8671875 = 39.890625 -> 40.
    Without the intermediate rounding: 201 * 0.2265625 * 0.8671875 = 39.4913... -> 39.
    Output (4, 3) takes the same weights in the other order: 201 * 0.8671875 = 174.3046875 -> 174,
    then 174 * 0.2265625 = 39.421875 -> 39; the result is no longer symmetric (rows go first).
    Output (4, 4): 174 * 0.8671875 = 150.890625 -> 151 (unrounded 151.155... -> 151 too).
    """
    img = np.zeros((6, 6), np.uint8)
    img[2, 2] = 201
    out = imresize_uint8(img, 2)
    assert out.dtype == np.uint8 and out.shape == (12, 12)
    assert out[3, 4] == 40 and out[4, 3] == 39
    assert out[4, 4] == 151
    unrounded = np.floor(np.clip(imresize_np(img, 2), 0, 255) + 0.5)
    assert unrounded[3, 4] == 39
    np.testing.assert_array_equal(out, ref_imresize(img.astype(np.float64), scale=2, uint8=True))


@pytest.mark.parametrize(
    "call",
    [
        lambda: imresize(torch.zeros(1, 3, 8, 8), scale=0),
        lambda: imresize(torch.zeros(1, 3, 8, 8), scale=-2),
        lambda: imresize(torch.zeros(1, 3, 8, 8), scale=float("nan")),
        lambda: imresize(torch.zeros(1, 3, 8, 8)),
        lambda: imresize(torch.zeros(1, 3, 8, 8), scale=2, size=(16, 16)),
        lambda: imresize(torch.zeros(1, 3, 8, 8), size=(0, 4)),
        lambda: imresize(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), scale=2),
        lambda: imresize(torch.zeros(8), scale=2),
        lambda: imresize(torch.zeros(1, 3, 0, 2), scale=2),
        lambda: downscale_for_sr(np.zeros((8, 8, 3), np.uint8), 0),
        lambda: downscale_for_sr(np.zeros((8, 8, 3), np.uint8), 2.5),
        lambda: mod_crop(np.zeros((8, 8, 3)), -1),
        lambda: imresize_np(np.zeros((2, 2, 2, 2)), 2),
        lambda: imresize_uint8(np.zeros((8, 8), np.float32), 2),
        lambda: imresize_uint8(torch.zeros(1, 3, 8, 8), 2),
        lambda: imresize_uint8(np.zeros((8, 8), np.uint8)),
    ],
)
def test_invalid_arguments_raise_usage_error(call):
    with pytest.raises(UsageError):
        call()


# --------------------------------------------------------------------------------------------
# Published bicubic baselines (../shared/data)
# --------------------------------------------------------------------------------------------
def _hr_images(name: str) -> list[np.ndarray]:
    folder = SHARED / "data" / name / "HR"
    if not folder.is_dir():
        pytest.skip(f"../shared/data not found: {folder} is absent (benchmark images live outside the repo)")
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]


def _to_uint8(x01: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x01, 0, 1) * 255).astype(np.uint8)


def _matlab_bicubic_baseline(images, scale):
    """Paper protocol, as MATLAB computes it on uint8 images: mod-crop, LR = imresize(HR, 1/s),
    SR = imresize(LR, s), both uint8 in and out (so rounded after each 1-D pass)."""
    ps, ss = [], []
    for img in images:
        hr = mod_crop(img, scale)
        lr = imresize_uint8(hr, 1 / scale)
        np.testing.assert_array_equal(lr, np.round(downscale_for_sr(hr, scale) * 255))  # the LR training/eval use
        sr = imresize_uint8(lr, scale)
        assert sr.shape == hr.shape
        ps.append(psnr(sr, hr, crop_border=scale))
        ss.append(ssim(sr, hr, crop_border=scale))
    return float(np.mean(ps)), float(np.mean(ss))


def _linear_bicubic_baseline(images, scale, resize_up):
    """Float variant (BasicSR's): the resize itself is linear, only LR and SR are quantised."""
    ps, ss = [], []
    for img in images:
        hr = mod_crop(img, scale)
        lr = quantize_uint8(downscale_for_sr(hr.astype(np.float64) / 255, scale))
        sr = _to_uint8(resize_up(lr, scale))
        assert sr.shape == hr.shape
        ps.append(psnr(sr, hr, crop_border=scale))
        ss.append(ssim(sr, hr, crop_border=scale))
    return float(np.mean(ps)), float(np.mean(ss))


# Measured on ../shared/data (uint8 MATLAB imresize for both resizes, unrounded BT.601 Y, crop = scale):
#   Set5  x2 33.6734 / 0.9303   x4 28.4290 / 0.8111      Set14 x2 30.3246 / 0.8699   x4 26.0884 / 0.7048
# Published: Set5 x2 33.66 / 0.9299, x4 28.42 / 0.8104: both within 0.02 dB / 0.002.
# (The float computation without MATLAB's rounding between the two passes of each resize gives
# Set5 x2 33.6818, 0.022 dB off, and x4 28.4314.)
@pytest.mark.shared
@pytest.mark.parametrize(
    "scale,published,measured",
    [(4, (28.42, 0.8104), (28.4290, 0.8111)), (2, (33.66, 0.9299), (33.6734, 0.9303))],
)
def test_set5_bicubic_matches_published(scale, published, measured):
    images = _hr_images("Set5")
    assert len(images) == 5
    p, s = _matlab_bicubic_baseline(images, scale)
    assert abs(p - published[0]) <= 0.02, (p, s)
    assert abs(s - published[1]) <= 0.002, (p, s)
    assert abs(p - measured[0]) <= 0.001 and abs(s - measured[1]) <= 0.0001, (p, s)


@pytest.mark.shared
def test_set5_bicubic_float32_torch_path_agrees():
    """Training resizes float32 tensors: the linear protocol in float32 gives the float64 scores."""
    images = _hr_images("Set5")

    def up(lr, scale):
        t = torch.from_numpy(lr).permute(2, 0, 1).float()[None]
        return imresize(t, scale=scale)[0].permute(1, 2, 0).double().numpy()

    p64, s64 = _linear_bicubic_baseline(images, 4, imresize_np)
    p32, s32 = _linear_bicubic_baseline(images, 4, up)
    assert abs(p64 - p32) < 1e-3 and abs(s64 - s32) < 1e-4
    assert abs(p64 - 28.4314) < 1e-3  # and the per-pass rounding moves it by only 0.002 dB
    assert abs(p64 - _matlab_bicubic_baseline(images, 4)[0]) < 0.005


@pytest.mark.shared
def test_set14_x4_bicubic_matches_slow_reference():
    """Set14 x4 (bridge.png is grayscale -> RGB). The published 26.00 was measured on another
    copy of Set14; these files give 26.09 with any correct implementation, so the fast resize is
    checked against the slow MATLAB transcription above, image by image."""
    images = _hr_images("Set14")
    assert len(images) == 14
    scale = 4
    p_fast, s_fast = _matlab_bicubic_baseline(images, scale)

    ref_ps = []
    for img in images:
        hr = mod_crop(img, scale)
        lr = ref_imresize(hr.astype(np.float64), scale=Fraction(1, scale), uint8=True)
        sr = ref_imresize(lr, scale=scale, uint8=True).astype(np.uint8)
        ref_ps.append(psnr(sr, hr, crop_border=scale))
    p_ref = float(np.mean(ref_ps))
    assert abs(p_fast - p_ref) <= 1e-9, (p_fast, p_ref)
    assert abs(p_fast - 26.0884) <= 0.001, p_fast
    assert abs(s_fast - 0.7048) <= 0.0002, s_fast
