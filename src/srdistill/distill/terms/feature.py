"""Feature distillation (FitNet): student features, through learned 1x1 adapters, against the teacher's."""

from __future__ import annotations

import torch

from ...errors import UsageError
from ...models.families import get_family
from ..losses import Adapters, FeatureTaps, feature_loss, pair_taps
from .registry import StepOutputs, Term, TermContext, register_term


class FeatureTerm(Term):
    name = "feature"
    needs = frozenset({"teacher_features"})

    def __init__(self, ctx: TermContext):
        super().__init__()
        s, t = ctx.student, ctx.teacher
        s_names, t_names = pair_taps(get_family(s.architecture), s.hyperparameters, get_family(t.architecture),
                                     t.hyperparameters)
        self.s_taps, self.t_taps = FeatureTaps(s.module, s_names), FeatureTaps(t.module, t_names)
        with torch.no_grad():
            s.module(ctx.probe[:1])
            t.module(ctx.probe[:1])
        sf, tf = self.s_taps.take(), self.t_taps.take()
        if any(f is None or f.ndim != 4 for f in sf + tf):
            self.close()
            raise UsageError("feature distillation: these layers do not give image-shaped features",
                             hint="use --feature-weight 0")
        torch.manual_seed(ctx.seed + 1)
        self.module = Adapters([f.shape[1] for f in sf], [f.shape[1] for f in tf]).to(ctx.device)
        if ctx.reporter is not None:
            ctx.reporter.info(f"feature taps: student {s_names} -> teacher {t_names}")

    def label(self) -> str:
        return "feature(student, teacher)"

    def loss(self, out: StepOutputs):
        sf = self.module(self.s_taps.take())
        tf = self.t_taps.take()
        return feature_loss([f.float() for f in sf], [f.float() for f in tf])

    def close(self) -> None:
        for taps in (self.s_taps, self.t_taps):
            taps.remove()


register_term("feature", FeatureTerm, needs={"teacher_features"},
              about="FitNet feature distillation with 1x1 adapters")
