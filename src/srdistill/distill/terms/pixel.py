"""The pixel terms: the teacher's output (``kd``) and the ground truth (``hr``) as targets."""

from __future__ import annotations

from .registry import StepOutputs, Term, TermContext, register_term


class _Pixel(Term):
    def __init__(self, ctx: TermContext, target: str, label: str):
        super().__init__()
        self.crit, self.target, self._label = ctx.pixel, target, f"{ctx.pixel_name}({label})"

    def label(self) -> str:
        return self._label

    def applies(self, out: StepOutputs) -> bool:
        return getattr(out, self.target) is not None

    def loss(self, out: StepOutputs):
        return self.crit(out.student, getattr(out, self.target))


register_term("kd", lambda ctx: _Pixel(ctx, "teacher", "student, teacher"), needs={"teacher_output"},
              about="output distillation: the pixel loss against the teacher's output")
register_term("hr", lambda ctx: _Pixel(ctx, "hr", "student, HR"), needs={"hr"},
              about="the pixel loss against the ground truth")
