"""On-the-fly degradation: every patch degraded afresh, the teacher run live on it.

This is what ``--degradation NAME --no-teacher-cache`` does (traiNNer-redux's OTF
pipeline with a live teacher): no two steps see the same degraded input, at the cost
of a teacher forward pass and a degradation per patch in every step. With the teacher
cache (the default), :func:`srdistill.data.degrade.make_variants` degrades each image
K times once instead, and the teacher runs once per variant.
"""

from __future__ import annotations

import numpy as np
import torch

from ..runner import augment
from .datasets import Batch, PatchSampler
from .degrade import Degradation


class OnTheFlySampler(PatchSampler):
    """A :class:`PatchSampler` whose LR patches are degraded HR patches (or, without HR, degraded
    LR patches at scale 1). Each patch's degradation seed is drawn with the plan, from the run's
    generator, so a resumed run degrades exactly as an uninterrupted one."""

    def __init__(self, images, scale: int, patch_size: int, deg: Degradation):
        super().__init__(images, scale, patch_size)
        self.deg = deg

    def plan(self, batch_size: int, gen: torch.Generator) -> list[tuple]:
        base = super().plan(batch_size, gen)
        seeds = torch.randint(2**62, (batch_size,), generator=gen).tolist()
        return [(*b, s) for b, s in zip(base, seeds)]

    def _degraded(self, plan: list[tuple]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(degraded LR patch, HR patch or None) per plan item; each HR patch is read once."""
        p, s = self.p, self.scale
        out = []
        for i, y, x, _, seed in plan:
            img = self.images[i]
            if img.hr is not None:
                hr = img.hr[:, y * s:(y + p) * s, x * s:(x + p) * s]
                out.append((self.deg.degrade(hr, s, np.random.default_rng(seed)), hr))
            else:
                out.append((self.deg.degrade(img.lr[:, y:y + p, x:x + p], 1, np.random.default_rng(seed)), None))
        return out

    def crop(self, plan: list[tuple], device: torch.device) -> Batch:
        pairs = self._degraded(plan)
        lrs = [augment(lr, item[3]) for (lr, _), item in zip(pairs, plan)]
        hrs = [augment(hr, item[3]) for (_, hr), item in zip(pairs, plan) if hr is not None]

        def stack(ts):
            if not ts or len(ts) != len(plan):
                return None
            return torch.stack(ts).to(device=device).float().div_(255.0)

        return Batch(stack(lrs), stack(hrs), None)

    def _unaugmented_inputs(self, plan: list[tuple]) -> torch.Tensor:
        """Without the batch's inputs at hand, the same degradations again (seeded per patch)."""
        return torch.stack([lr for lr, _ in self._degraded(plan)])
