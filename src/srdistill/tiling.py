"""Tiled inference: run any super-resolution function over an image of any size.

Pure torch and model-agnostic: ``fn`` maps an LR batch (N, C, h, w) to its SR batch
(N, C', h*scale, w*scale). This module pads inputs to the model's size requirements
(``min_size``, ``multiple_of``, ``square``; reflect padding, replicate where the image
is too small to reflect) and crops the output back, splits large images into tiles
and blends the SR tiles without seams, and (``tile="auto"``) finds a tile size that
fits in memory.

Tiling scheme. The image is split into a grid of *core* tiles of at most ``tile`` LR
pixels a side. Each tile is run with ``overlap`` extra LR pixels of context on every
side that is not an image border. Along each axis, neighbouring tiles cross-fade with
a raised-cosine ramp over a window of ``overlap`` pixels centred on their shared core
boundary; outside that window a tile's weight is 1 inside its core and 0 beyond it.
So the ``overlap/2`` pixels nearest each tile's cut edge (the only ones a convolution
with zero padding gets wrong) never contribute, and a convolutional model whose
receptive-field radius is at most ``overlap/2`` gives the same result tiled as
untiled. Image borders get no ramp. Weights are separable and the output is divided
by the accumulated weight, so they need not sum to one.

Tile outputs are moved to ``out_device`` (default: the input's device) as float32
and accumulated there, so with ``x`` on the CPU and ``device="cuda"`` only one tile
at a time needs to fit in GPU memory.
"""

from __future__ import annotations

import contextlib
import gc
import math
from typing import Any, Callable, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SrDistillError, UsageError
from .progress import NULL, Reporter

__all__ = [
    "TILE_FLOOR",
    "CPU_WHOLE_IMAGE_MAX",
    "upscale_tensor",
    "auto_tile",
    "initial_tile_size",
    "pad_to_requirements",
    "tile_spans",
    "is_oom_error",
]

SrFn = Callable[[torch.Tensor], torch.Tensor]
TileArg = Union[int, str, None]

#: ``tile="auto"`` halves the tile on out-of-memory down to this size, then gives up.
TILE_FLOOR = 32
#: On CPU, ``tile="auto"`` runs images up to this many LR pixels a side in one piece.
CPU_WHOLE_IMAGE_MAX = 1024
#: Show a progress bar when an image is split into more tiles than this.
PROGRESS_MIN_TILES = 4

_OOM_MARKERS = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")


def is_oom_error(e: BaseException) -> bool:
    """True for out-of-memory errors from CUDA, MPS, the CPU allocator or Python."""
    if isinstance(e, MemoryError):
        return True
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    if isinstance(e, RuntimeError):
        msg = str(e).lower()
        return any(m in msg for m in _OOM_MARKERS)
    return False


def _padded_size(h: int, w: int, min_size: int, multiple_of: int, square: bool) -> tuple[int, int]:
    m = max(1, int(multiple_of))
    ph = -(-max(h, min_size) // m) * m
    pw = -(-max(w, min_size) // m) * m
    if square:
        ph = pw = max(ph, pw)
    return ph, pw


def pad_to_requirements(
    x: torch.Tensor, *, min_size: int = 0, multiple_of: int = 1, square: bool = False
) -> torch.Tensor:
    """Pad (N,C,H,W) on the bottom/right to the size requirements: reflect as far as
    the image allows, replicate beyond (like spandrel's ``pad_tensor``)."""
    h, w = x.shape[-2:]
    return pad_bottom_right(x, *_padded_size(h, w, min_size, multiple_of, square))


def pad_bottom_right(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """Pad (..., H, W) to (..., th, tw) at the bottom/right: reflect as far as the image allows
    (like spandrel's ``pad_tensor``), then replicate for the rest."""
    h, w = x.shape[-2:]
    pad_h, pad_w = th - h, tw - w
    if pad_h == 0 and pad_w == 0:
        return x
    rh, rw = min(pad_h, h - 1), min(pad_w, w - 1)
    if rh > 0 or rw > 0:
        x = F.pad(x, (0, rw, 0, rh), mode="reflect")
    if pad_h - rh > 0 or pad_w - rw > 0:
        x = F.pad(x, (0, pad_w - rw, 0, pad_h - rh), mode="replicate")
    return x


def tile_spans(length: int, tile: int) -> list[tuple[int, int]]:
    """Split ``range(length)`` into the fewest near-equal core spans of at most ``tile``."""
    n = max(1, -(-length // max(1, tile)))
    bounds = [round(i * length / n) for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n)]


def _run(
    fn: SrFn,
    x: torch.Tensor,
    scale: int,
    min_size: int,
    multiple_of: int,
    square: bool,
    device: Any,
) -> torch.Tensor:
    """One call of ``fn`` on ``x`` padded to the requirements; output cropped to ``x``×scale."""
    h, w = x.shape[-2:]
    xp = pad_to_requirements(x, min_size=min_size, multiple_of=multiple_of, square=square)
    if device is not None:
        xp = xp.to(device)
    with torch.no_grad():
        y = fn(xp)
    want = (xp.shape[-2] * scale, xp.shape[-1] * scale)
    if not isinstance(y, torch.Tensor) or y.ndim != 4 or y.shape[0] != xp.shape[0] or tuple(y.shape[-2:]) != want:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise SrDistillError(
            f"the model returned {got} for an input of {tuple(xp.shape)}; expected "
            f"{xp.shape[0]}x?x{want[0]}x{want[1]} for scale {scale}",
            hint="check the model's scale",
        )
    return y[..., : h * scale, : w * scale]


def axis_weights(start: int, end: int, length: int, overlap: int, scale: int) -> tuple[int, int, torch.Tensor]:
    """LR input span [lo, hi) of a tile with core [start, end), and its weight per SR pixel."""
    lo, hi = max(0, start - overlap), min(length, end + overlap)
    q = (torch.arange(lo * scale, hi * scale, dtype=torch.float64) + 0.5) / scale  # SR pixel centres, LR units
    wgt = torch.ones_like(q)
    half = overlap / 2.0
    if start > 0:
        if half > 0:
            t = ((q - (start - half)) / (2 * half)).clamp(0, 1)
            wgt *= 0.5 - 0.5 * torch.cos(math.pi * t)
        else:
            wgt *= (q >= start).double()
    if end < length:
        if half > 0:
            t = ((q - (end - half)) / (2 * half)).clamp(0, 1)
            wgt *= 0.5 + 0.5 * torch.cos(math.pi * t)
        else:
            wgt *= (q < end).double()
    return lo, hi, wgt.float()


def _tiled(
    fn: SrFn,
    x: torch.Tensor,
    scale: int,
    tile: int,
    overlap: int,
    min_size: int,
    multiple_of: int,
    square: bool,
    reporter: Reporter,
    device: Any,
    out_device: torch.device,
) -> torch.Tensor:
    n, _, h, w = x.shape
    rows, cols = tile_spans(h, tile), tile_spans(w, tile)
    if len(rows) == 1 and len(cols) == 1:
        y = _run(fn, x, scale, min_size, multiple_of, square, device)
        return y.to(out_device, torch.float32).contiguous()
    wy = [(lo, hi, wt.to(out_device)) for lo, hi, wt in (axis_weights(a, b, h, overlap, scale) for a, b in rows)]
    wx = [(lo, hi, wt.to(out_device)) for lo, hi, wt in (axis_weights(a, b, w, overlap, scale) for a, b in cols)]
    sum_y = torch.zeros(h * scale, device=out_device)
    sum_x = torch.zeros(w * scale, device=out_device)
    for lo, hi, wt in wy:
        sum_y[lo * scale : hi * scale] += wt
    for lo, hi, wt in wx:
        sum_x[lo * scale : hi * scale] += wt

    total = len(rows) * len(cols)
    ctx: contextlib.AbstractContextManager[Any]
    if total > PROGRESS_MIN_TILES:
        ctx = reporter.task(f"upscaling {total} tiles", total=total)
    else:
        ctx = contextlib.nullcontext(None)
    out: torch.Tensor | None = None
    with ctx as task:
        for y0, y1, wty in wy:
            for x0, x1, wtx in wx:
                sr = _run(fn, x[..., y0:y1, x0:x1], scale, min_size, multiple_of, square, device)
                sr = sr.to(out_device, torch.float32)
                if out is None:
                    out = torch.zeros(n, sr.shape[1], h * scale, w * scale, dtype=torch.float32, device=out_device)
                wgt = wty[:, None] * wtx[None, :]
                out[..., y0 * scale : y1 * scale, x0 * scale : x1 * scale].addcmul_(sr, wgt)
                del sr
                if task is not None:
                    task.advance(1)
    assert out is not None
    out.div_(sum_y.view(1, 1, -1, 1)).div_(sum_x.view(1, 1, 1, -1))
    return out


def _check_args(x: torch.Tensor, scale: int, overlap: int, min_size: int, multiple_of: int) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"expected an (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"empty image {tuple(x.shape)}")
    if int(scale) != scale or scale < 1:
        raise UsageError(f"scale must be a positive integer, got {scale!r}")
    if overlap < 0:
        raise UsageError(f"tile overlap must be 0 or more, got {overlap}")
    if min_size < 0 or multiple_of < 1:
        raise ValueError(f"bad size requirements: min_size={min_size}, multiple_of={multiple_of}")


def parse_tile(tile: TileArg, *, min_tile: int = 1, allow_auto: bool = True) -> int | str | None:
    """The one reader of a tile option: ``"auto"``, None (no tiling: ``0`` or None) or a size of at
    least ``min_tile`` pixels; anything else is a one-line :class:`UsageError` about ``--tile``."""
    choices = "a number of pixels, 0 (no tiling)" + (" or auto" if allow_auto else "")
    if tile is None:
        return None
    if isinstance(tile, str):
        s = tile.strip().lower()
        if s == "auto" and allow_auto:
            return "auto"
        try:
            tile = int(s)
        except ValueError:
            raise UsageError(f"invalid --tile {tile!r}", hint=f"use {choices}") from None
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)):
        raise UsageError(f"invalid --tile {tile!r}", hint=f"use {choices}")
    tile = int(tile)
    if tile < 0:
        raise UsageError(f"--tile must be 0 (no tiling){', auto' if allow_auto else ''} or a positive size, "
                         f"got {tile}")
    if 0 < tile < min_tile:
        raise UsageError(f"--tile {tile} is too small", hint=f"use at least {min_tile} pixels, 0 (no tiling)"
                         + (" or auto" if allow_auto else ""))
    return tile or None


def upscale_tensor(
    fn: SrFn,
    x: torch.Tensor,
    scale: int,
    *,
    tile: TileArg = None,
    overlap: int = 16,
    min_size: int = 0,
    multiple_of: int = 1,
    square: bool = False,
    reporter: Reporter | None = None,
    device: Any = None,
    out_device: Any = None,
) -> torch.Tensor:
    """Super-resolve ``x`` (N,C,H,W) with ``fn``; returns float32 (N,C',H*scale,W*scale).

    ``tile``: None or 0: the whole image in one call; an int: tiles of that many LR
    pixels plus ``overlap`` of context per side, blended without seams; ``"auto"``:
    see :func:`auto_tile`. ``device``: where each (padded) input is sent before
    ``fn`` (default: left where it is). ``out_device``: where the output is
    accumulated (default: ``x.device``). ``fn`` runs under ``torch.no_grad()``.

    Out-of-memory with a fixed tile size becomes an :class:`SrDistillError` with a hint.
    """
    _check_args(x, scale, overlap, min_size, multiple_of)
    t = parse_tile(tile)
    if t == "auto":
        return auto_tile(
            fn, x, scale, overlap=overlap, min_size=min_size, multiple_of=multiple_of, square=square,
            reporter=reporter, device=device, out_device=out_device,
        )[0]
    try:
        return _upscale(fn, x, scale, t, overlap, min_size, multiple_of, square, reporter, device, out_device)
    except Exception as e:
        if not is_oom_error(e):
            raise
        h, w = x.shape[-2:]
        how = f"with {t}px tiles" if t else "in one piece"
        raise SrDistillError(
            f"out of memory upscaling a {w}x{h} image {how}", hint="use a smaller --tile, or --tile auto"
        ) from e


def _upscale(
    fn: SrFn,
    x: torch.Tensor,
    scale: int,
    tile: int | None,
    overlap: int,
    min_size: int,
    multiple_of: int,
    square: bool,
    reporter: Reporter | None,
    device: Any,
    out_device: Any,
) -> torch.Tensor:
    scale = int(scale)
    od = torch.device(out_device) if out_device is not None else x.device
    with torch.no_grad():
        if not tile:
            y = _run(fn, x, scale, min_size, multiple_of, square, device)
            return y.to(od, torch.float32).contiguous()
        return _tiled(fn, x, scale, int(tile), int(overlap), min_size, multiple_of, square, reporter or NULL, device, od)


def _bytes_per_lr_pixel(scale: int, channels: int) -> float:
    """A coarse guess of a typical SR network's peak memory per LR pixel (fp32):
    ~64 feature maps at LR resolution a few times over, plus the upsampler and
    output at HR resolution. Only the first guess of ``auto``; OOM retries fix it."""
    return 4.0 * (64 * 8 + (64 + channels) * 2 * scale * scale)


def initial_tile_size(
    x: torch.Tensor,
    scale: int,
    *,
    device: Any = None,
    start: int = 512,
    floor: int = TILE_FLOOR,
    cpu_whole_max: int = CPU_WHOLE_IMAGE_MAX,
) -> int | None:
    """First tile size ``auto`` tries (None: the whole image in one piece).

    CUDA: from ``torch.cuda.mem_get_info`` (half of the free memory over a per-pixel
    estimate): the whole image when it fits, else that size capped at ``start``.
    CPU and other devices: the whole image up to ``cpu_whole_max`` LR pixels a side,
    else ``start``.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    dev = torch.device(device) if device is not None else x.device
    if dev.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(dev)
        except Exception:
            free = 0
        if free > 0:
            max_px = 0.5 * free / _bytes_per_lr_pixel(scale, int(x.shape[1]))
            if h * w * x.shape[0] <= max_px:
                return None
            side = int(math.sqrt(max_px / max(1, x.shape[0])))
            return max(floor, min(start, side // 32 * 32 or floor))
        return None if max(h, w) <= start else start
    if max(h, w) <= cpu_whole_max:
        return None
    return start


def _empty_cache(x: torch.Tensor, device: Any) -> None:
    """Give a failed attempt's memory back to the device before retrying."""
    dev = torch.device(device) if device is not None else x.device
    if dev.type == "cpu":
        return  # reference counting already freed it; gc.collect() would cost ~0.1 s
    gc.collect()
    if dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif dev.type == "mps":  # pragma: no cover - hardware specific
        with contextlib.suppress(Exception):
            torch.mps.empty_cache()


def auto_tile(
    fn: SrFn,
    x: torch.Tensor,
    scale: int,
    *,
    start: int = 512,
    floor: int = TILE_FLOOR,
    overlap: int = 16,
    min_size: int = 0,
    multiple_of: int = 1,
    square: bool = False,
    reporter: Reporter | None = None,
    device: Any = None,
    out_device: Any = None,
    initial: int | None | str = "guess",
) -> tuple[torch.Tensor, int | None]:
    """Upscale with a tile size that fits in memory; returns ``(output, tile_used)``.

    Starts from :func:`initial_tile_size` (None = whole image); on out-of-memory
    (``torch.OutOfMemoryError``, a RuntimeError saying so, MemoryError) halves the
    tile and retries, down to ``floor`` pixels, then raises :class:`SrDistillError`.
    ``tile_used`` lets a caller reuse the size for the next image of a batch: pass it
    back as ``initial`` (a tile size, or None for the whole image) to start from it
    instead of the :func:`initial_tile_size` guess.
    """
    _check_args(x, scale, overlap, min_size, multiple_of)
    rep = reporter or NULL
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if isinstance(initial, str):
        if initial != "guess":
            raise ValueError(f"initial must be a tile size, None or 'guess', got {initial!r}")
        tile = initial_tile_size(x, scale, device=device, start=start, floor=floor)
    else:
        tile = None if not initial else max(1, int(initial))
    while True:
        failed: int | None
        try:
            out = _upscale(fn, x, scale, tile, overlap, min_size, multiple_of, square, rep, device, out_device)
            return out, tile
        except Exception as e:
            if not is_oom_error(e):
                raise
            failed = tile
        # Outside the except block, so the failed attempt's tensors (held by the
        # traceback) are released before we retry.
        _empty_cache(x, device)
        size = max(h, w) if failed is None else min(failed, max(h, w))
        nxt = size // 2
        if nxt < floor:
            if size > floor:
                nxt = floor
            else:
                raise SrDistillError(
                    f"out of memory upscaling a {w}x{h} image, even with {size}px tiles",
                    hint="free device memory, use a smaller model, or run on the CPU",
                )
        what = "the whole image" if failed is None else f"{failed}px tiles"
        rep.warn(f"out of memory with {what}; retrying with {nxt}px tiles")
        tile = nxt

