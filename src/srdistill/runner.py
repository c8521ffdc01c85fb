"""One adapter from any runnable model to a tiled function, and the size contract models state.

A runnable is anything called on an N x C x H x W float tensor in [0, 1] that returns the
upscaled tensor: :class:`srdistill.models.loading.SRModel`, :class:`srdistill.onnx_model.OnnxModel`,
or a function. What it needs of its input is one :class:`SizeRequirements` value (minimum side,
multiple of, square, a fixed static size), read by :func:`size_requirements` from the model's
attributes (``min_size``, ``multiple_of``, ``square``, ``static_size``).

:func:`run_sr` is the one way of running a model on a uint8 LR image (eval, validation, the
teacher reference, comparison pictures); :func:`augment`/:func:`unaugment` are the 8 flip/rotate
transforms its self-ensemble and the training patches share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from .errors import SrDistillError
from .progress import NULL, Reporter
from .tiling import auto_tile, initial_tile_size, pad_bottom_right, parse_tile, upscale_tensor


@dataclass(frozen=True)
class SizeRequirements:
    minimum: int = 0  # smallest side the model accepts (inputs are padded up to it)
    multiple_of: int = 1  # sides must be multiples of this (padded up)
    square: bool = False  # height must equal width (padded)
    static: tuple[int, int] | None = None  # the model takes exactly this (height, width): tiles of that size


def size_requirements(model: Any) -> SizeRequirements:
    """The :class:`SizeRequirements` a runnable states through its attributes (SRModel, OnnxModel or
    any object with them; none for a plain function)."""
    static = tuple(getattr(model, "static_size", None) or ()) or None
    return SizeRequirements(int(getattr(model, "min_size", 0) or 0), int(getattr(model, "multiple_of", 1) or 1),
                            bool(getattr(model, "square", False)), static)


def time_frames(model: Any, hw: tuple[int, int], *, runs: int, seconds: float | None = None
                ) -> tuple[list[float], tuple[int, int]]:
    """Seconds of each of ``runs`` forward passes of one random (1, C, h, w) frame, after a warm-up
    (fewer once ``seconds`` have passed), and the (h, w) timed: ``hw`` raised to the model's size
    needs. The one timing loop of ``--runtime auto`` and ``plan``."""
    req = size_requirements(model)
    h, w = req.static or tuple(max(v, req.minimum) for v in hw)
    m = max(1, req.multiple_of)
    h, w = -(-h // m) * m, -(-w // m) * m
    if req.square:
        h = w = max(h, w)
    cin = int(getattr(model, "input_channels", 3) or 3)
    x = torch.rand((1, cin, h, w), generator=torch.Generator().manual_seed(0))
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device) or (isinstance(dev, str) and dev.startswith("cuda")):
        x = x.to(dev)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times: list[float] = []
    with torch.no_grad():
        model(x)  # warm-up
        sync()
        while len(times) < max(1, runs) and (seconds is None or not times or sum(times) < seconds):
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
    return times, (h, w)


class Runner:
    """Any runnable (an SRModel, an OnnxModel, a function with ``scale``) as one tiled function.

    The model's :class:`SizeRequirements` are honoured wherever it runs: padded to its minimum,
    multiple and squareness, and a fixed-size model sees tiles of exactly its size. ``upscale``,
    ``eval``, validation and the teacher cache all run models through this."""

    def __init__(self, model: Any, *, device: Any = None, tile: Any = "auto", overlap: int = 16,
                 reporter: Reporter | None = None, scale: int | None = None):
        self.model = model
        self.scale = int(scale if scale is not None else model.scale)
        self.rep = reporter or NULL
        self.tile = parse_tile(tile)
        self.overlap = int(overlap)
        req = size_requirements(model)
        self.min_size, self.multiple_of, self.square = req.minimum, req.multiple_of, req.square
        self.onnx = hasattr(model, "session")
        if device is None and not self.onnx:
            device = getattr(model, "device", None)
        self.device = None if self.onnx else (torch.device(device) if device is not None else None)
        self._learned: Any = _UNSET  # the tile ``auto`` settled on after running out of memory
        self.last_tile: Any = None
        self.static = req.static
        fn = self._call
        if int(getattr(model, "input_channels", 3) or 3) == 1:
            fn = self._per_channel
        if self.static:
            self._plan_static()
            inner = fn
            sh, sw = self.static

            def fn(x: torch.Tensor) -> torch.Tensor:  # noqa: F811 - pad every tile to the fixed size
                h, w = x.shape[-2:]
                y = inner(_pad_to(x, sh, sw))
                return y[..., : h * self.scale, : w * self.scale]

        self.fn = fn

    def _plan_static(self) -> None:
        """A fixed-size ONNX model sees tiles of exactly that size: core + context <= size."""
        sh, sw = self.static
        side = min(sh, sw)
        overlap = min(self.overlap, side // 4)
        core = side - 2 * overlap
        if isinstance(self.tile, int) and self.tile < core:
            core = self.tile
        if overlap < self.overlap:
            self.rep.warn(f"the model takes fixed {sw}x{sh} inputs: tile overlap reduced to {overlap}px "
                          f"(from {self.overlap})")
        if self.tile is None:
            self.rep.info(f"the model takes fixed {sw}x{sh} inputs: larger images are tiled anyway")
        self.tile, self.overlap = core, overlap
        # the padding to the fixed size happens in ``fn``; the engine must not pad further
        self.min_size, self.multiple_of, self.square = 0, 1, False

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.model(x)
        except Exception as e:
            if self.onnx and not isinstance(e, MemoryError) and "allocat" in str(e).lower():
                raise MemoryError(" ".join(str(e).split())[:200]) from e  # onnxruntime's OOM -> retry smaller
            raise

    def _per_channel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._call(x[:, i : i + 1]) for i in range(x.shape[1])], dim=1)

    def sr(self, x: torch.Tensor, reporter: Reporter | None = None, out_device: Any = "cpu") -> torch.Tensor:
        """(1, C, H, W) float32 on the CPU -> (1, C', H*scale, W*scale) float32 on ``out_device``."""
        rep = reporter or self.rep
        kw = dict(overlap=self.overlap, min_size=self.min_size, multiple_of=self.multiple_of, square=self.square,
                  reporter=rep, device=self.device, out_device=out_device)
        if self.tile != "auto":
            self.last_tile = self.tile
            return upscale_tensor(self.fn, x, self.scale, tile=self.tile, **kw)
        if self._learned is _UNSET:
            guess = initial_tile_size(x, self.scale, device=self.device)
            y, used = auto_tile(self.fn, x, self.scale, initial=guess, **kw)
            if used != guess:  # ran out of memory: start from what worked next time
                self._learned = used
        else:
            y, used = auto_tile(self.fn, x, self.scale, initial=self._learned, **kw)
            self._learned = used
        self.last_tile = used
        return y


_UNSET = object()


def _pad_to(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """Pad (N,C,h,w) on the bottom/right to exactly (th, tw)."""
    h, w = x.shape[-2:]
    ph, pw = th - h, tw - w
    if ph < 0 or pw < 0:
        raise SrDistillError(f"internal error: a {w}x{h} tile does not fit the model's fixed {tw}x{th} input")
    return pad_bottom_right(x, th, tw)


def augment(t: torch.Tensor, code: int) -> torch.Tensor:
    """Apply one of the 8 flip/rotate transforms (dihedral group) to C x H x W or N x C x H x W."""
    if code & 1:
        t = t.flip(-1)
    if code & 2:
        t = t.flip(-2)
    if code & 4:
        t = t.transpose(-1, -2)
    return t


def unaugment(t: torch.Tensor, code: int) -> torch.Tensor:
    """The inverse of :func:`augment` (the same steps in reverse order)."""
    if code & 4:
        t = t.transpose(-1, -2)
    if code & 2:
        t = t.flip(-2)
    if code & 1:
        t = t.flip(-1)
    return t


def run_sr(model, lr_u8: torch.Tensor, scale: int, *, device: torch.device | str = "cpu",
           tile: int | None = None, overlap: int = 16, self_ensemble: bool = False) -> torch.Tensor:
    """uint8 C x h x w LR -> float 1 x C x H x W SR output (clamped to [0, 1]) on the CPU.

    The model runs through :class:`srdistill.runner.Runner`, so its size requirements (minimum,
    multiple, square, a fixed ONNX size) are met as in ``upscale``."""
    runner = Runner(model, device=device, tile=tile, overlap=overlap, scale=scale)
    x = lr_u8.to(dtype=torch.float32).unsqueeze(0) / 255.0
    with torch.no_grad():
        if not self_ensemble:
            y = runner.sr(x)
        else:
            acc, dev = None, runner.device or "cpu"  # the 8 outputs are summed where the model ran
            for code in range(8):
                out = unaugment(runner.sr(augment(x, code), out_device=dev), code)
                acc = out if acc is None else acc + out
            y = acc / 8
    return y.clamp(0, 1).float().cpu()
