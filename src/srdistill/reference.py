"""Scoring against the teacher instead of ground truth (``eval --reference teacher``).

A real-world teacher (Real-ESRGAN, animevideov3, OpenModelDB models) is not trying to
reproduce the HR image of a benchmark, and the user's own photos have no HR at all. What a
student of such a teacher should be judged on is how closely it follows the teacher: the
PSNR/SSIM of the student's output against the teacher's output on the same input. These
helpers make the input/reference pairs that :func:`srdistill.evaluate.score_pairs` scores:

* :func:`degrade_pairs` replaces the LR of HR/LR pairs by a seeded degradation of the HR;
* :func:`lr_only_pairs` reads a folder of inputs (no HR);
* :func:`teacher_reference` sets each pair's reference to the teacher's uint8 output.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .data.datasets import EvalPair, load_eval_pairs
from .data.degrade import Degradation, variant_rng
from .metrics import to_uint8
from .progress import NULL, Reporter, Task
from .runner import run_sr

#: variant index of evaluation degradations: training variants use 0 .. K-1 of the training seed
EVAL_VARIANT = 0


def degrade_pairs(pairs: list[EvalPair], deg: Degradation, scale: int, seed: int, draws: int = 1) -> list[EvalPair]:
    """The same pairs with LR inputs degraded from the HR (seeded per image: repeatable); with
    ``draws`` > 1, that many independently degraded inputs per image (``name#k``)."""
    out = []
    for i, p in enumerate(pairs):
        hr = torch.from_numpy(np.ascontiguousarray(p.hr.transpose(2, 0, 1)))
        for k in range(draws):
            lr = deg.degrade(hr, scale, variant_rng(seed, i, EVAL_VARIANT + k), training=False)
            out.append(EvalPair(p.name if draws == 1 else f"{p.name}#{k}", lr, p.hr))
    return out


def lr_only_pairs(folder: str | os.PathLike, *, reporter: Reporter = NULL,
                  skipped: list[str] | None = None) -> list[EvalPair]:
    """Every image of ``folder`` as an input; references are filled by :func:`teacher_reference`."""
    return load_eval_pairs(folder, 1, reporter=reporter, skipped=skipped, inputs_only=True)


def teacher_reference(pairs: list[EvalPair], teacher, scale: int, *, device: torch.device | str = "cpu",
                      tile: int | None = None, task: Task | None = None) -> list[EvalPair]:
    """The pairs with the teacher's output (uint8 H x W x 3) as the reference image."""
    out = []
    for p in pairs:
        ref = to_uint8(run_sr(teacher, p.lr, scale, device=device, tile=tile))
        out.append(EvalPair(p.name, p.lr, np.ascontiguousarray(ref)))
        if task is not None:
            task.advance(1)
    return out
