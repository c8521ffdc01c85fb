"""Format-neutral verification: test inputs, the sizes a model is checked at, the quiet context an export runs in."""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

import numpy as np

from .options import ExportOptions


# --------------------------------------------------------------------------- small helpers


def round_up(v: int, m: int) -> int:
    return ((int(v) + m - 1) // m) * m


def synthetic_batch(batch: int, channels: int, h: int, w: int, seed: int) -> np.ndarray:
    """A deterministic image-like batch in [0, 1]: gradients, edges, texture and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.empty((batch, channels, h, w), dtype=np.float32)
    for b in range(batch):
        for c in range(channels):
            f1, f2 = rng.uniform(2, 9, size=2)
            ph = rng.uniform(0, 2 * np.pi)
            img = 0.35 * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))
            img += 0.2 * np.sin(2 * np.pi * (f1 * xx + f2 * yy) + ph)
            img += 0.25 * ((xx + 0.3 * yy) > rng.uniform(0.3, 0.7))
            img += 0.12 * rng.standard_normal((h, w))
            out[b, c] = img - img.min()
            out[b, c] /= max(float(out[b, c].max()), 1e-6)
    return out


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence tracer/deprecation warnings and onnxruntime.quantization's root-logger chatter."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003
            return False

    root = logging.getLogger()
    flt = _Drop()
    root.addFilter(flt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(flt)


# --------------------------------------------------------------------------- verification plan


def _pick(start: int, lo: int, m: int, avoid8: bool, exclude: set[int]) -> int:
    """The first size >= max(start, lo) that is a multiple of m (and, if possible, not of 8)."""
    v = round_up(max(start, lo, 1), m)
    for _ in range(64):
        if v not in exclude and (not avoid8 or v % 8):
            return v
        v += m
    return round_up(max(start, lo, 1), m)


def plan_sizes(model, opts: ExportOptions) -> tuple[tuple[int, int], list[tuple[int, int, int]]]:
    """(trace size, [(batch, h, w), ...]) for the verification."""
    if opts.static_size:
        h, w = opts.static_size
        return (h, w), [(1, h, w), (1, h, w)]  # two different images at the one size
    m = max(1, int(model.multiple_of))
    lo = max(1, int(model.min_size))
    s = round_up(max(opts.export_size, lo), m)
    sizes = [(1, s, s)]
    can_avoid8 = m % 8 != 0
    if model.square:
        a = _pick(40, lo, m, False, {s})
        b = _pick(29, lo, m, can_avoid8, {s, a})
        sizes += [(2, a, a), (1, b, b)]
    else:
        a = _pick(40, lo, m, False, {s})
        b = _pick(56, lo, m, False, {a})
        h3 = _pick(29, lo, m, can_avoid8, {s})
        w3 = _pick(43, lo, m, can_avoid8, {s, h3})
        sizes += [(2, a, b), (1, h3, w3)]
    return (s, s), sizes
