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

from .datasets import Batch, PatchSampler, augment
from .degrade import Degradation


class OnTheFlySampler(PatchSampler):
    """A :class:`PatchSampler` whose LR patches are degraded HR patches (or, without HR, degraded
    LR patches at scale 1). Each patch's degradation seed is drawn with the plan, from the run's
    generator, so a resumed run degrades exactly as an uninterrupted one."""

    def __init__(self, images, scale: int, patch_size: int, deg: Degradation):
        super().__init__(images, scale, patch_size)
        self.deg = deg
        self._last: tuple[list, list[torch.Tensor]] | None = None

    def plan(self, batch_size: int, gen: torch.Generator) -> list[tuple]:
        base = super().plan(batch_size, gen)
        seeds = torch.randint(2**62, (batch_size,), generator=gen).tolist()
        return [(*b, s) for b, s in zip(base, seeds)]

    def _degraded(self, plan: list[tuple]) -> list[torch.Tensor]:
        if self._last is not None and self._last[0] is plan:
            return self._last[1]
        p, s = self.p, self.scale
        out = []
        for i, y, x, _, seed in plan:
            img = self.images[i]
            if img.hr is not None:
                out.append(self.deg.degrade(img.hr[:, y * s:(y + p) * s, x * s:(x + p) * s], s,
                                            np.random.default_rng(seed)))
            else:
                out.append(self.deg.degrade(img.lr[:, y:y + p, x:x + p], 1, np.random.default_rng(seed)))
        self._last = (plan, out)
        return out

    def crop(self, plan: list[tuple], device: torch.device) -> Batch:
        p, s = self.p, self.scale
        lrs = [augment(t, a) for t, (_, _, _, a, _) in zip(self._degraded(plan), plan)]
        hrs = [augment(self.images[i].hr[:, y * s:(y + p) * s, x * s:(x + p) * s], a)
               for i, y, x, a, _ in plan if self.images[i].hr is not None]

        def stack(ts):
            if not ts or len(ts) != len(plan):
                return None
            return torch.stack(ts).to(device=device).float().div_(255.0)

        return Batch(stack(lrs), stack(hrs), None)

    def live_targets(self, plan: list[tuple], teacher_fn, device: torch.device) -> torch.Tensor:
        x = torch.stack(self._degraded(plan)).to(device=device).float().div_(255.0)
        with torch.no_grad():
            y = teacher_fn(x).float().clamp_(0, 1)
        return torch.stack([augment(y[k], item[3]) for k, item in enumerate(plan)])
