"""srdistill.tiling: padding, seamless tiles, automatic tile size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from srdistill.errors import SrDistillError, UsageError
from srdistill.progress import RecordingReporter
from srdistill.tiling import (
    auto_tile,
    axis_weights,
    initial_tile_size,
    is_oom_error,
    pad_to_requirements,
    tile_spans,
    upscale_tensor,
)


def conv_net(scale: int, seed: int = 0, channels: int = 3) -> torch.nn.Module:
    """A random SR net with a receptive-field radius of 3 LR pixels."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, channels * scale * scale, 3, padding=1),
        torch.nn.PixelShuffle(scale),
    ).eval()


def nearest(x: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="nearest")


# ----------------------------------------------------------------- tiled == untiled


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("size", [(37, 53), (61, 29)])
@pytest.mark.parametrize("tile,overlap", [(16, 8), (20, 8), (7, 6), (23, 16)])
def test_tiled_equals_untiled_for_a_conv_net(scale, size, tile, overlap):
    net = conv_net(scale)
    torch.manual_seed(1)
    x = torch.rand(1, 3, *size)
    ref = upscale_tensor(net, x, scale)
    assert ref.shape == (1, 3, size[0] * scale, size[1] * scale)
    out = upscale_tensor(net, x, scale, tile=tile, overlap=overlap)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out - ref).abs().max().item() < 1 / 255
    with torch.no_grad():
        assert (ref - net(x)).abs().max().item() < 1e-6


def test_batch_and_channel_change_are_supported():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3 * 4, 3, padding=1), torch.nn.PixelShuffle(2)).eval()
    x = torch.rand(2, 1, 33, 27)
    ref = upscale_tensor(net, x, 2)
    out = upscale_tensor(net, x, 2, tile=10, overlap=4)
    assert out.shape == (2, 3, 66, 54)
    assert (out - ref).abs().max().item() < 1e-5


def test_zero_overlap_is_exact_for_a_pointwise_model():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 1), torch.nn.PixelShuffle(2)).eval()
    x = torch.rand(1, 3, 19, 22)
    assert torch.allclose(upscale_tensor(net, x, 2, tile=5, overlap=0), upscale_tensor(net, x, 2), atol=1e-6)


def test_no_seams_on_a_constant_image():
    x = torch.full((1, 3, 50, 70), 0.3)
    out = upscale_tensor(lambda t: nearest(t, 3), x, 3, tile=16, overlap=10)
    assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-6)


# ----------------------------------------------------------------- weights


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 120),
    tile=st.integers(1, 50),
    overlap=st.integers(0, 20),
    scale=st.integers(1, 4),
)
def test_tile_weights_cover_the_image_and_ignore_cut_edges(length, tile, overlap, scale):
    spans = tile_spans(length, tile)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(a < b <= a + tile for a, b in spans) and all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
    total = torch.zeros(length * scale)
    for a, b in spans:
        lo, hi, w = axis_weights(a, b, length, overlap, scale)
        assert lo == max(0, a - overlap) and hi == min(length, b + overlap)
        assert w.shape == ((hi - lo) * scale,) and (w >= 0).all() and (w <= 1).all()
        total[lo * scale : hi * scale] += w
        # every SR pixel of the core has weight; the outer overlap/2 of a cut edge has none
        assert (w[(a - lo) * scale : (b - lo) * scale] > 0).all()
        margin = (overlap // 2) * scale
        if lo > 0 and margin:
            assert (w[:margin] == 0).all()
        if hi < length and margin:
            assert (w[len(w) - margin :] == 0).all()
        # no ramp towards an image border (unless the core is so small that the
        # cross-fade at its other end reaches the border)
        if a == 0 and (b == length or b - overlap / 2 >= 1):
            assert w[0] == 1
        if b == length and (a == 0 or a + overlap / 2 <= length - 1):
            assert w[-1] == 1
    assert (total > 0).all()


# ----------------------------------------------------------------- size requirements


@pytest.mark.parametrize("tile", [None, 10])
def test_min_size_and_multiple_of_padding_crops_back_exactly(tile):
    seen = []

    def fn(t):
        h, w = t.shape[-2:]
        seen.append((h, w))
        assert h % 8 == 0 and w % 8 == 0 and h >= 32 and w >= 32
        return nearest(t, 2)

    x = torch.rand(1, 3, 13, 21)
    out = upscale_tensor(fn, x, 2, tile=tile, overlap=4, min_size=32, multiple_of=8)
    assert out.shape == (1, 3, 26, 42)
    assert torch.equal(out, nearest(x, 2)) if tile is None else torch.allclose(out, nearest(x, 2), atol=1e-6)
    assert seen


def test_square_requirement():
    def fn(t):
        assert t.shape[-1] == t.shape[-2]
        return nearest(t, 2)

    x = torch.rand(1, 3, 5, 12)
    assert torch.equal(upscale_tensor(fn, x, 2, square=True), nearest(x, 2))


def test_padding_reflects_then_replicates():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    p = pad_to_requirements(x, multiple_of=8)
    assert p.shape == (1, 1, 8, 8)
    assert p[0, 0, 0].tolist() == [0, 1, 2, 1, 0, 0, 0, 0]  # reflect 2, then replicate
    assert p[0, 0, :, 0].tolist() == [0, 3, 0, 0, 0, 0, 0, 0]
    one = pad_to_requirements(torch.ones(1, 3, 1, 1), min_size=4)  # too small to reflect at all
    assert one.shape == (1, 3, 4, 4) and one.eq(1).all()
    assert pad_to_requirements(x) is x


def test_tiny_image_with_large_requirements():
    x = torch.rand(1, 3, 3, 2)
    out = upscale_tensor(lambda t: nearest(t, 4), x, 4, multiple_of=16, min_size=64)
    assert torch.equal(out, nearest(x, 4))


# ----------------------------------------------------------------- auto tile / OOM


class FakeOOM:
    """Runs ``net`` but raises an out-of-memory error for inputs larger than ``limit``."""

    def __init__(self, net, limit, error=lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")):
        self.net, self.limit, self.error, self.sizes = net, limit, error, []

    def __call__(self, t):
        self.sizes.append(max(t.shape[-2:]))
        if max(t.shape[-2:]) > self.limit:
            raise self.error()
        return self.net(t)


def test_auto_tile_halves_on_simulated_oom():
    net = lambda t: nearest(t, 2)  # noqa: E731 - cheap; conv nets are covered above and below
    x = torch.rand(1, 3, 200, 150)
    ref = nearest(x, 2)
    fn = FakeOOM(net, limit=40)
    rep = RecordingReporter()
    out, used = auto_tile(fn, x, 2, overlap=4, reporter=rep)
    assert used == 32  # whole image (200) -> 100 -> 50 -> 32 (the floor)
    # the first (corner) tile has overlap on one side per axis: 100+4, 50+4, round(200/7)+4 / 30+4
    assert fn.sizes[:4] == [200, 104, 54, 34]
    assert [w.split(";")[0] for w in rep.warnings] == [
        "out of memory with the whole image",
        "out of memory with 100px tiles",
        "out of memory with 50px tiles",
    ]
    assert (out - ref).abs().max().item() < 1e-6
    assert rep.tasks and rep.tasks[-1].done == rep.tasks[-1].total  # progress for the many tiles
    # the same through upscale_tensor(tile="auto")
    assert torch.allclose(upscale_tensor(FakeOOM(net, 40), x, 2, tile="auto", overlap=4), out)


@pytest.mark.parametrize(
    "error",
    [
        lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory"),
        lambda: RuntimeError("MPS backend out of memory"),
        MemoryError,
    ],
)
def test_auto_tile_treats_cpu_and_python_oom_alike(error):
    net = conv_net(2)
    x = torch.rand(1, 3, 70, 66)
    out, used = auto_tile(FakeOOM(net, 60, error), x, 2, overlap=4)
    assert used == 35
    assert (out - upscale_tensor(net, x, 2)).abs().max().item() < 1 / 255


def test_auto_tile_gives_up_at_the_floor_with_one_line():
    fn = FakeOOM(conv_net(2), limit=10)
    rep = RecordingReporter()
    with pytest.raises(SrDistillError) as exc:
        upscale_tensor(fn, torch.rand(1, 3, 100, 100), 2, tile="auto", overlap=4, reporter=rep)
    assert "out of memory" in str(exc.value) and "32px" in str(exc.value) and "\n" not in str(exc.value)
    assert rep.warnings[-1].endswith("retrying with 32px tiles")


def test_other_errors_are_not_retried():
    calls = []

    def fn(t):
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        upscale_tensor(fn, torch.rand(1, 3, 8, 8), 2, tile="auto")
    assert len(calls) == 1


def test_fixed_tile_oom_becomes_our_error():
    with pytest.raises(SrDistillError, match="--tile"):
        upscale_tensor(FakeOOM(conv_net(2), 10), torch.rand(1, 3, 64, 64), 2, tile=48)


def test_initial_tile_size_on_cpu():
    assert initial_tile_size(torch.zeros(1, 3, 500, 1000), 4) is None
    assert initial_tile_size(torch.zeros(1, 3, 500, 1500), 4, start=256) == 256
    assert is_oom_error(torch.cuda.OutOfMemoryError("x")) and not is_oom_error(RuntimeError("shape mismatch"))


# ----------------------------------------------------------------- misc


def test_progress_only_for_many_tiles():
    net = conv_net(2)
    rep = RecordingReporter()
    upscale_tensor(net, torch.rand(1, 3, 30, 30), 2, tile=16, overlap=4, reporter=rep)  # 2x2 tiles
    assert rep.tasks == []
    upscale_tensor(net, torch.rand(1, 3, 50, 50), 2, tile=16, overlap=4, reporter=rep)  # 4x4 tiles
    assert len(rep.tasks) == 1 and rep.tasks[0].total == 16 and rep.tasks[0].done == 16


def test_wrong_model_scale_is_reported():
    with pytest.raises(SrDistillError, match="scale 4"):
        upscale_tensor(lambda t: nearest(t, 2), torch.rand(1, 3, 8, 8), 4)


def test_arguments_are_checked():
    x = torch.rand(1, 3, 8, 8)
    f = lambda t: nearest(t, 2)  # noqa: E731
    assert upscale_tensor(f, x, 2, tile="4", overlap=2).shape == (1, 3, 16, 16)
    assert upscale_tensor(f, x, 2, tile=0).shape == (1, 3, 16, 16)
    for bad in ("big", -1, 1.5):
        with pytest.raises(UsageError):
            upscale_tensor(f, x, 2, tile=bad)
    with pytest.raises(UsageError):
        upscale_tensor(f, x, 2, overlap=-1)
    with pytest.raises(ValueError):
        upscale_tensor(f, torch.rand(3, 8, 8), 2)


def test_no_autograd_graph_and_output_device():
    net = conv_net(2)
    out = upscale_tensor(net, torch.rand(1, 3, 20, 20), 2, tile=8, overlap=4, device="cpu", out_device="cpu")
    assert not out.requires_grad and out.device.type == "cpu"
