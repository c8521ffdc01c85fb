"""The proxy of a candidate's quality: a short distillation, scored on the validation images.

The teacher labels the training images once for all candidates: the first step builds a training
pack (``distill --pack DIR --build-only``), and every proxy run reads it ("pack: reused").

The defaults were fixed before any measurement, not tuned on Set5/Set14 (which the proxy never
sees): the recipe of the 2,000-step runs in ``bench/kd_methods.py`` (output KD, alpha 0.5, LR patch
32, batch 16, AdamW lr 1e-3, EMA), cut to 300 steps so that six candidates with the bundled DCTLSA
teacher fit the ten-minute plan on a 2-core CPU; validation on the built-in photos once, at the end.
``bench/plan.py`` checks the ranking it gives against 2,000-step runs (Kendall tau); a proxy that
ranks badly is changed there (steps, learning rate, patch size), with the figures.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..distill.trainer import DistillConfig, distill
from ..progress import NULL, Reporter

PROXY_STEPS = 300
PROXY_BATCH = 16
PROXY_PATCH = 32
PROXY_LR = 1e-3


@dataclass
class ProxySettings:
    steps: int = PROXY_STEPS
    batch_size: int = PROXY_BATCH
    patch_size: int = PROXY_PATCH
    lr: float = PROXY_LR
    data: list[str] = field(default_factory=list)  # empty: the built-in training photos
    val: list[str] | None = None  # None: the built-in validation photos
    pack: str | None = None  # None: a temporary folder, removed after the plan
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    max_images: int | None = None

    def to_dict(self) -> dict:
        return {"steps": self.steps, "batch_size": self.batch_size, "patch_size": self.patch_size, "lr": self.lr,
                "data": list(self.data) or "built-in", "val": self.val if self.val is not None else "built-in",
                "seed": self.seed}


class Quiet(Reporter):
    """Passes a proxy run's warnings on, none of its start-up lines or bars (the plan reports the run)."""

    def __init__(self, rep: Reporter):
        self.rep = rep

    def warn(self, message: str) -> None:
        if "scores below bicubic" not in message:  # expected after a few hundred steps: it is a proxy
            self.rep.warn(message)


def _config(teacher: str, s: ProxySettings, pack: str, out: str, args: dict) -> DistillConfig:
    return DistillConfig(teacher=teacher, data=list(s.data), val=s.val, steps=s.steps, batch_size=s.batch_size,
                         patch_size=s.patch_size, lr=s.lr, val_every=s.steps, checkpoint_every=s.steps, out=out,
                         overwrite=True, device=s.device, seed=s.seed, pack=pack, threads=s.threads,
                         max_images=s.max_images, **args)


class ProxyRunner:
    """Labels the data once (:meth:`label`), then scores candidates one by one (:meth:`score`)."""

    def __init__(self, teacher: str, settings: ProxySettings, reporter: Reporter = NULL):
        self.teacher, self.s, self.rep = teacher, settings, reporter
        self._tmp = tempfile.TemporaryDirectory(prefix="srdistill-plan-")
        self.work = Path(self._tmp.name)
        self.pack = settings.pack or str(self.work / "pack")

    def label(self) -> dict:
        """Build (or reuse) the pack: the teacher's outputs for every training image, once."""
        self.rep.info("proxy: labelling the training images with the teacher (once, for every candidate)")
        res = distill(_config(self.teacher, self.s, self.pack, str(self.work / "pack.safetensors"),
                              {"student_width": 1, "build_only": True}), Quiet(self.rep))
        return res.pack or {}

    def score(self, student_args: dict, name: str) -> float:
        """The candidate's validation Y-PSNR after the short distillation."""
        out = self.work / f"{name}.safetensors"
        res = distill(_config(self.teacher, self.s, self.pack, str(out), student_args), Quiet(self.rep))
        for p in (out, Path(res.checkpoint), Path(res.log)):
            p.unlink(missing_ok=True)
        if not res.best:
            return float("nan")
        return float(res.best["psnr"])

    def close(self) -> None:
        self._tmp.cleanup()
