"""The loss functions the registered terms use: pixel losses, feature taps and adapters, the
patch discriminator (the terms themselves are :mod:`srdistill.distill.terms`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..models.families import tail_tap


def charbonnier(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((a - b) ** 2 + eps * eps).mean()


PIXEL_LOSSES = {
    "l1": lambda a, b: F.l1_loss(a, b),
    "mse": lambda a, b: F.mse_loss(a, b),
    "charbonnier": charbonnier,
}
PIXEL_NAMES = {"l1": "L1", "mse": "MSE", "charbonnier": "Charbonnier"}


def pixel_loss(name: str):
    try:
        return PIXEL_LOSSES[name.lower()]
    except KeyError:
        raise UsageError(f"unknown --loss {name!r}", hint="choose l1, charbonnier or mse") from None


class FeatureTaps:
    """Forward hooks that record the output (``path``) or input (``in:path``) of named modules."""

    def __init__(self, module: nn.Module, taps: list[str]):
        self.taps = taps
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        mods = dict(module.named_modules())
        for tap in taps:
            use_input = tap.startswith("in:")
            path = tap[3:] if use_input else tap
            if path not in mods:
                raise UsageError(f"cannot tap features at {path!r}: no such module")
            m = mods[path]
            if use_input:
                self._handles.append(m.register_forward_pre_hook(self._pre(tap)))
            else:
                self._handles.append(m.register_forward_hook(self._post(tap)))

    @staticmethod
    def _first(x):
        while isinstance(x, (tuple, list)):
            x = x[0]
        return x

    def _pre(self, tap):
        def hook(mod, args):
            self.features[tap] = self._first(args)
        return hook

    def _post(self, tap):
        def hook(mod, args, out):
            self.features[tap] = self._first(out)
        return hook

    def take(self) -> list[torch.Tensor]:
        out = [self.features.get(t) for t in self.taps]
        self.features = {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def pair_taps(student_family, student_hp: dict, teacher_family, teacher_hp: dict) -> tuple[list[str], list[str]]:
    """Corresponding tap points: evenly spaced blocks within a family, head/tail features across."""
    if student_family is None or teacher_family is None:
        raise UsageError("feature distillation needs a teacher family srdistill knows the layers of",
                         hint="use --feature-weight 0")
    sb, tb = student_family.blocks(student_hp), teacher_family.blocks(teacher_hp)
    if student_family.id == teacher_family.id and sb and tb:
        k = min(len(sb), len(tb), 4)
        s_idx = [round((i + 1) * len(sb) / k) - 1 for i in range(k)]
        t_idx = [round((i + 1) * len(tb) / k) - 1 for i in range(k)]
        return [sb[i] for i in s_idx], [tb[i] for i in t_idx]
    return ([student_family.head, tail_tap(student_family, student_hp)],
            [teacher_family.head, tail_tap(teacher_family, teacher_hp)])


class Adapters(nn.Module):
    """Learned 1x1 convolutions mapping student features to the teacher's channel count (FitNet)."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int]):
        super().__init__()
        self.maps = nn.ModuleList(
            nn.Conv2d(s, t, 1) if s != t else nn.Identity() for s, t in zip(student_channels, teacher_channels)
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [m(f) for m, f in zip(self.maps, feats)]


def feature_loss(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
    terms = []
    for s, t in zip(student_feats, teacher_feats):
        if s.shape[-2:] != t.shape[-2:]:
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        terms.append(F.l1_loss(s, t.detach()))
    return torch.stack(terms).mean()


class PatchDiscriminator(nn.Module):
    """A small spectral-normalised PatchGAN judging student vs teacher SR outputs."""

    def __init__(self, in_ch: int = 3, nf: int = 32):
        super().__init__()
        sn = nn.utils.spectral_norm
        self.net = nn.Sequential(
            sn(nn.Conv2d(in_ch, nf, 3, 1, 1)), nn.LeakyReLU(0.2, True),
            sn(nn.Conv2d(nf, nf * 2, 4, 2, 1)), nn.LeakyReLU(0.2, True),
            sn(nn.Conv2d(nf * 2, nf * 4, 4, 2, 1)), nn.LeakyReLU(0.2, True),
            sn(nn.Conv2d(nf * 4, nf * 4, 3, 1, 1)), nn.LeakyReLU(0.2, True),
            nn.Conv2d(nf * 4, 1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)
