"""Data upcycling (DUKD, Zhang et al.; AugKD, ICLR'25): extra training inputs labelled by the teacher.

From each training image two kinds of input are made once, before training:

* **zoom-in**: a random region of the HR image fed to the teacher as if it were an
  LR image (``ZOOM_IN`` x the LR patch size per side, one region per image: a whole
  HR image would cost the teacher ``scale**2`` times its LR pixels);
* **zoom-out**: the LR image downscaled again by ``ZOOM_OUT`` (MATLAB bicubic, uint8).

Their targets are the teacher's outputs, computed through the teacher cache like the
rest (once per image, reused from ``--teacher-cache-dir``). An upcycled patch has no
ground truth: its "HR" is the teacher's output, so the pixel loss on it is
``L(student, teacher)`` whatever ``--alpha`` says.
"""

from __future__ import annotations

import torch

from ..metrics import quantize_u8
from .datasets import Batch, PatchSampler, TrainImage
from .resize import downscale_for_sr

ZOOM_IN = 2  # side of a zoom-in region, in LR patches
ZOOM_OUT = 2  # factor by which zoom-out shrinks the LR image


def make_upcycled(images: list[TrainImage], scale: int, patch_size: int, seed: int) -> list[TrainImage]:
    """The zoom-in and zoom-out inputs of ``images`` (targets not yet filled); seeded, so repeatable."""
    gen = torch.Generator().manual_seed(seed + 7919)
    out: list[TrainImage] = []
    side = ZOOM_IN * patch_size
    for img in images:
        if img.hr is not None:
            h, w = img.hr.shape[1:]
            rh, rw = min(side, h), min(side, w)
            if rh >= patch_size and rw >= patch_size:
                y = int(torch.randint(h - rh + 1, (1,), generator=gen))
                x = int(torch.randint(w - rw + 1, (1,), generator=gen))
                out.append(TrainImage(f"{img.name}#zoom-in", img.hr[:, y:y + rh, x:x + rw].contiguous(), None))
        h, w = img.lr.shape[1:]
        if h // ZOOM_OUT >= patch_size and w // ZOOM_OUT >= patch_size:
            small = img.lr[:, : h - h % ZOOM_OUT, : w - w % ZOOM_OUT]
            lr = downscale_for_sr(small.unsqueeze(0), ZOOM_OUT)[0]
            out.append(TrainImage(f"{img.name}#zoom-out", quantize_u8(lr), None))
    return out


def label_with_targets(upcycled: list[TrainImage]) -> None:
    """After the cache fill: the teacher's output is the only label of an upcycled image."""
    for img in upcycled:
        img.hr = img.target


class MixedSampler:
    """Patches from the training images and, for a fixed share of each batch, from the upcycled ones.

    Same interface as :class:`PatchSampler`: ``plan`` draws the global batch from one
    generator (every rank draws the same), ``crop`` materialises a rank's slice.
    """

    def __init__(self, main: PatchSampler, extra: PatchSampler, extra_per_rank: int, batch_per_rank: int):
        self.main, self.extra = main, extra
        self.k, self.b = extra_per_rank, batch_per_rank

    def plan(self, global_batch: int, gen: torch.Generator) -> list[tuple]:
        world = global_batch // self.b
        main = self.main.plan((self.b - self.k) * world, gen)
        extra = self.extra.plan(self.k * world, gen)
        out: list[tuple] = []
        for r in range(world):  # rank r's slice: its main patches, then its upcycled ones
            out += [(0, *p) for p in main[r * (self.b - self.k):(r + 1) * (self.b - self.k)]]
            out += [(1, *p) for p in extra[r * self.k:(r + 1) * self.k]]
        return out

    def crop(self, plan: list[tuple], device: torch.device) -> Batch:
        parts = [s.crop([p[1:] for p in plan if p[0] == k], device)
                 for k, s in ((0, self.main), (1, self.extra)) if any(p[0] == k for p in plan)]

        def cat(ts):
            return None if any(t is None for t in ts) else torch.cat(ts)

        return Batch(cat([b.lr for b in parts]), cat([b.hr for b in parts]), cat([b.target for b in parts]))
