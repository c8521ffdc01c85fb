"""Figures for ``srdistill eval``: efficiency measurements and the comparison grid image.

Efficiency (per model, on a fixed-size input so models are comparable):

* **latency**: milliseconds per output megapixel on the evaluation device; the median of
  timed runs after warm-up runs (CUDA is synchronised around every run). Bounded by a time
  budget on slow devices (at least ``min_repeats`` runs are always timed).
* **peak memory**: on CUDA, ``torch.cuda.max_memory_allocated`` during one run, minus what
  was allocated before it (the weights and the input are not counted). On the CPU a
  per-model figure cannot be measured reliably inside one process (``ru_maxrss`` is a
  process-lifetime high-water mark), so it is reported as ``None``.
* **MACs** per output megapixel, counted by ``torch.utils.flop_counter.FlopCounterMode`` on
  one run (MACs = FLOPs / 2, as the counter counts a multiply-add as two FLOPs). Only the
  operations the counter knows are counted (convolutions, matrix products, attention);
  element-wise work is not. ``None`` for ONNX models and the bicubic baseline.

The comparison grid: the same crop from several images side by side, each scaled up by an
integer nearest-neighbour zoom and labelled (Pillow's default scalable font, 14 px) with a name and a PSNR.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.flop_counter import FlopCounterMode

from .errors import SrDistillError
from .fileio import atomic_path

__all__ = [
    "BenchResult",
    "benchmark",
    "count_macs",
    "window_mse",
    "GRID_PAD",
    "GRID_LABEL_HEIGHT",
    "GRID_MAX_COLUMNS",
    "grid_zoom",
    "grid_size",
    "comparison_grid",
    "save_png",
]

# --------------------------------------------------------------------------- efficiency


@dataclass
class BenchResult:
    input_size: tuple[int, int]  # LR height, width
    output_megapixels: float
    runs: int = 0
    latency_ms: float | None = None  # median per run
    latency_ms_per_mp: float | None = None
    peak_memory_mib: float | None = None
    macs: float | None = None
    macs_per_mp: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_macs(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> float:
    """Multiply-accumulates of one call ``fn(x)``, counted by ``FlopCounterMode`` (FLOPs / 2)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(x)
    return counter.get_total_flops() / 2.0


def benchmark(
    fn: Callable[[torch.Tensor], Any],
    *,
    scale: int,
    device: torch.device | str,
    size: int = 128,
    min_size: int = 0,
    multiple_of: int = 1,
    channels: int = 3,
    warmup: int = 2,
    repeats: int = 10,
    min_repeats: int = 3,
    time_budget_s: float = 10.0,
    macs: bool = True,
    memory: bool = True,
    seed: int = 0,
) -> BenchResult:
    """Latency, peak memory and MACs of ``fn`` on one random ``size x size`` LR input.

    The input side is raised to the model's ``min_size`` and rounded up to ``multiple_of``.
    ``repeats`` timed runs follow ``warmup`` untimed ones; once at least ``min_repeats`` runs
    are timed, timing stops when ``time_budget_s`` is spent. Errors (out of memory, a model
    that cannot take the input) are reported in ``notes``, with the figures left ``None``.
    """
    dev = torch.device(device)
    side = max(int(size), int(min_size), 1)
    m = max(1, int(multiple_of))
    side = -(-side // m) * m
    out_mp = (side * scale) ** 2 / 1e6
    res = BenchResult(input_size=(side, side), output_megapixels=out_mp)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, channels, side, side, generator=gen).to(dev)

    def call() -> Any:
        with torch.no_grad():
            return fn(x)

    try:
        for _ in range(max(0, warmup)):
            call()
        _sync(dev)
        times: list[float] = []
        spent = 0.0
        n = max(1, int(repeats))
        for i in range(n):
            _sync(dev)
            t0 = time.perf_counter()
            call()
            _sync(dev)
            dt = time.perf_counter() - t0
            times.append(dt)
            spent += dt
            if i + 1 >= min(min_repeats, n) and spent >= time_budget_s:
                break
        res.runs = len(times)
        res.latency_ms = statistics.median(times) * 1000.0
        res.latency_ms_per_mp = res.latency_ms / out_mp
        if memory and dev.type == "cuda":
            _sync(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            call()
            _sync(dev)
            res.peak_memory_mib = max(0, torch.cuda.max_memory_allocated(dev) - base) / 2**20
        if macs:
            res.macs = count_macs(fn, x)
            res.macs_per_mp = res.macs / out_mp
    except Exception as e:  # noqa: BLE001 - a benchmark failure must not lose the scores
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        res.notes.append(f"benchmark failed on a {side}x{side} input: {first}")
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return res


# --------------------------------------------------------------------------- crop choice


def window_mse(err: np.ndarray, win: tuple[int, int], stride: int, region: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of ``err`` (an ``H x W`` map of squared errors) over ``win = (h, w)`` windows.

    Windows start every ``stride`` pixels and lie inside ``region = (y0, x0, y1, x1)``.
    Returns ``(ys, xs, mse)`` with ``mse[i, j]`` the mean over the window at ``(ys[i], xs[j])``.
    Uses a summed-area table (float64).
    """
    wh, ww = win
    y0, x0, y1, x1 = region
    if y1 - y0 < wh or x1 - x0 < ww:
        raise ValueError("window larger than the region")
    ys = np.arange(y0, y1 - wh + 1, max(1, stride))
    xs = np.arange(x0, x1 - ww + 1, max(1, stride))
    if ys[-1] != y1 - wh:
        ys = np.append(ys, y1 - wh)
    if xs[-1] != x1 - ww:
        xs = np.append(xs, x1 - ww)
    sat = np.zeros((err.shape[0] + 1, err.shape[1] + 1), dtype=np.float64)
    sat[1:, 1:] = np.cumsum(np.cumsum(err.astype(np.float64), axis=0), axis=1)
    a = sat[np.ix_(ys + wh, xs + ww)]
    b = sat[np.ix_(ys, xs + ww)]
    c = sat[np.ix_(ys + wh, xs)]
    d = sat[np.ix_(ys, xs)]
    return ys, xs, (a - b - c + d) / float(wh * ww)


# --------------------------------------------------------------------------- grid image

#: Pixels between panels and around the grid.
GRID_PAD = 4
#: Size in pixels of the label text (Pillow's default scalable font).
GRID_FONT_SIZE = 14
#: Height of the label strip under each panel (two lines of GRID_FONT_SIZE text).
GRID_LABEL_HEIGHT = 40
#: Panels per row; more panels wrap onto further rows.
GRID_MAX_COLUMNS = 6
#: Panels are zoomed (nearest neighbour, integer factor) to about this many pixels on their longer side.
GRID_TARGET = 256


def grid_zoom(w: int, h: int) -> int:
    """Integer zoom of a ``w x h`` crop: ``max(1, 256 // max(w, h))``."""
    return max(1, GRID_TARGET // max(1, w, h))


def grid_size(n_panels: int, w: int, h: int) -> tuple[int, int]:
    """Pixel size (width, height) of the grid of ``n_panels`` crops of ``w x h``.

    ``columns = min(n, 6)``, ``rows = ceil(n / columns)``, zoom ``z = max(1, 256 // max(w, h))``:
    width ``4 + columns * (w*z + 4)``, height ``4 + rows * (h*z + 30 + 4)``.
    """
    z = grid_zoom(w, h)
    cols = max(1, min(n_panels, GRID_MAX_COLUMNS))
    rows = max(1, math.ceil(n_panels / cols))
    return GRID_PAD + cols * (w * z + GRID_PAD), GRID_PAD + rows * (h * z + GRID_LABEL_HEIGHT + GRID_PAD)


def _fit(draw: Any, font: Any, text: str, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def comparison_grid(panels: Sequence[tuple[str, np.ndarray, str]]):
    """A PIL image: each panel is ``(title, H x W x 3 uint8 crop, subtitle)``, all crops the same size."""
    if not panels:
        raise SrDistillError("nothing to put in the comparison grid")
    h, w = panels[0][1].shape[:2]
    z = grid_zoom(w, h)
    gw, gh = grid_size(len(panels), w, h)
    cols = max(1, min(len(panels), GRID_MAX_COLUMNS))
    canvas = Image.new("RGB", (gw, gh), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    try:  # Pillow >= 10.1 with FreeType: a real, scalable font
        font = ImageFont.load_default(size=GRID_FONT_SIZE)
    except TypeError:  # older Pillow: the small bitmap font
        font = ImageFont.load_default()
    for i, (title, crop, subtitle) in enumerate(panels):
        if crop.shape[:2] != (h, w):
            raise SrDistillError(f"comparison panel {title!r} has size {crop.shape[:2]}, expected {(h, w)}")
        r, c = divmod(i, cols)
        x0 = GRID_PAD + c * (w * z + GRID_PAD)
        y0 = GRID_PAD + r * (h * z + GRID_LABEL_HEIGHT + GRID_PAD)
        tile = np.repeat(np.repeat(np.asarray(crop, dtype=np.uint8), z, axis=0), z, axis=1)
        canvas.paste(Image.fromarray(np.ascontiguousarray(tile)), (x0, y0))
        ty = y0 + h * z + 2
        draw.text((x0 + 1, ty), _fit(draw, font, title, w * z - 2), fill=(0, 0, 0), font=font)
        if subtitle:
            draw.text((x0 + 1, ty + GRID_LABEL_HEIGHT // 2), _fit(draw, font, subtitle, w * z - 2),
                      fill=(60, 60, 60), font=font)
    return canvas


def save_png(path: str | Path, image: Any, *, overwrite: bool = False) -> Path:
    """Write a PIL image or an ``H x W [x C]`` uint8 array as PNG, atomically (never clobbering
    an existing file unless ``overwrite``)."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            im.save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
    return Path(path)
