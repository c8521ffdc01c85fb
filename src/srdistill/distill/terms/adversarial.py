"""Adversarial distillation: a PatchGAN learns to tell the student's outputs from the teacher's."""

from __future__ import annotations

import torch

from ..losses import PatchDiscriminator, gan_loss
from .registry import StepOutputs, Term, TermContext, register_term


class AdversarialTerm(Term):
    name = "adv"
    needs = frozenset({"teacher_output"})
    trains_with_student = False  # the discriminator has its own optimiser and step

    def __init__(self, ctx: TermContext):
        super().__init__()
        torch.manual_seed(ctx.seed + 2)
        self.module = PatchDiscriminator(ctx.teacher.output_channels).to(ctx.device)
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=ctx.lr, betas=(0.9, 0.99))

    def label(self) -> str:
        return "GAN(student vs teacher)"

    def loss(self, out: StepOutputs):
        return gan_loss(self.module(out.student), real=True)

    def after_step(self, out: StepOutputs, autocast) -> dict[str, torch.Tensor]:
        self.opt.zero_grad(set_to_none=True)
        with autocast:
            d_loss = 0.5 * (gan_loss(self.module(out.teacher.detach().float()), True)
                            + gan_loss(self.module(out.student.detach().float()), False))
        d_loss.backward()
        self.opt.step()
        return {"disc": d_loss.detach()}

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.module.load_state_dict(sd["module"])
        self.opt.load_state_dict(sd["opt"])


register_term("adv", AdversarialTerm, needs={"teacher_output"},
              about="adversarial distillation against the teacher's outputs (for GAN teachers)")
