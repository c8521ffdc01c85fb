"""Helpers shared by the robustness tests (imported by name: this folder is on sys.path)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable


def tiny_compact(num_feat: int = 4, num_conv: int = 1, upscale: int = 2, seed: int = 0):
    from srdistill.models._compat import import_spandrel

    import_spandrel()
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    return Compact(num_feat=num_feat, num_conv=num_conv, upscale=upscale)


def natural_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Textured uint8 RGB: gradients, hard-edged discs and noise (as tests/test_distill.py)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(6 * xx + rng.uniform(0, 6)), np.cos(5 * yy + rng.uniform(0, 6)),
                    np.sin(4 * (xx + yy) + rng.uniform(0, 6))], -1) * 0.25 + 0.5
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, h / 4)
        mask = (np.mgrid[0:h, 0:w][0] - cy) ** 2 + (np.mgrid[0:h, 0:w][1] - cx) ** 2 < r * r
        img[mask] = rng.uniform(0, 1, 3)
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def python_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: one thread, no colour, srdistill importable."""
    env = dict(os.environ)
    for k in ("SRDISTILL_TEST_NAN_AT_STEP", "SRDISTILL_TEST_SIGTERM_AT_STEP", "SRDISTILL_DEBUG"):
        env.pop(k, None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NO_COLOR="1", PYTHONDONTWRITEBYTECODE="1")
    import srdistill  # children run the very srdistill this process imported (editable install or not)

    src = str(Path(srdistill.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env

