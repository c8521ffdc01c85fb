"""The term registry: what a loss term is (:class:`Term`), registering one, and the weighted sum the trainer runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ...errors import UsageError

NEEDS = frozenset({"teacher_output", "hr", "teacher_features"})


@dataclass
class StepOutputs:
    """What one training step produced, as the terms see it."""

    student: torch.Tensor  # the student's output (float)
    teacher: torch.Tensor | None  # the teacher's output on the same input (cached or live)
    hr: torch.Tensor | None  # ground truth, when there is one
    lr: torch.Tensor  # the input


@dataclass
class TermContext:
    """What a term factory may use to set itself up."""

    student: Any  # SRModel
    teacher: Any  # SRModel
    device: torch.device
    seed: int
    lr: float  # the student's learning rate (a term with its own optimiser may use it)
    pixel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # the --loss criterion
    pixel_name: str  # its name in the formula ("L1")
    probe: torch.Tensor | None  # a few training inputs (N x C x p x p), e.g. to size adapters
    reporter: Any = None


class Term:
    """One loss term. Subclasses set ``name``, ``needs`` and ``label`` and implement ``loss``."""

    name = ""
    needs: frozenset = frozenset()
    trains_with_student = True  # a learned ``module`` gets the student's optimiser

    def __init__(self):
        self.module: nn.Module | None = None

    def label(self) -> str:
        return self.name

    def loss(self, out: StepOutputs) -> torch.Tensor:
        raise NotImplementedError

    def applies(self, out: StepOutputs) -> bool:
        """False skips the term for this step (an HR term on a batch without HR)."""
        return True

    def after_step(self, out: StepOutputs, autocast) -> dict[str, torch.Tensor]:
        """Work after the student's optimiser step (a discriminator's own step); values are logged."""
        return {}

    def state_dict(self) -> dict | None:
        return {"module": self.module.state_dict()} if self.module is not None else None

    def load_state_dict(self, sd: dict) -> None:
        if self.module is not None and sd and "module" in sd:
            self.module.load_state_dict(sd["module"])

    def close(self) -> None:
        """Release what the term holds on the models (hooks)."""


@dataclass(frozen=True)
class TermSpec:
    name: str
    factory: Callable[[TermContext], Term]
    needs: frozenset
    about: str = ""


TERMS: dict[str, TermSpec] = {}


def register_term(name: str, factory: Callable[[TermContext], Term], *, needs: set[str] | frozenset = frozenset(),
                  about: str = "") -> TermSpec:
    """Make the term ``name`` available to configs (``--term NAME=WEIGHT``); ``needs`` is what it reads
    from a step besides the student's output (a subset of NEEDS)."""
    unknown = set(needs) - NEEDS
    if unknown:
        raise ValueError(f"term {name!r} needs unknown inputs {sorted(unknown)}; known: {sorted(NEEDS)}")
    spec = TermSpec(name, factory, frozenset(needs), about)
    TERMS[name] = spec
    return spec


def needs_of(weights: dict[str, float]) -> frozenset:
    """Everything the terms with these weights need (known before any term is built)."""
    out: set[str] = set()
    for name in weights:
        out |= TERMS[name].needs
    return frozenset(out)


def check_extra_terms(extra: dict[str, float] | None) -> None:
    for name, w in (extra or {}).items():
        if name not in TERMS:
            raise UsageError(f"unknown loss term {name!r}", hint="known terms: " + ", ".join(sorted(TERMS)))
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise UsageError(f"--term {name}: the weight must be a number >= 0, not {w!r}")


class WeightedSum:
    """The active terms and their weights: the step's loss is sum(weight * term)."""

    def __init__(self, terms: dict[str, Term]):
        self.terms = terms

    @classmethod
    def build(cls, weights: dict[str, float], ctx: TermContext) -> "WeightedSum":
        return cls({name: TERMS[name].factory(ctx) for name in weights})

    def needs(self, what: str) -> bool:
        return any(what in t.needs for t in self.terms.values())

    def losses(self, out: StepOutputs, weights: dict[str, float]) -> dict[str, torch.Tensor]:
        return {name: weights[name] * t.loss(out) for name, t in self.terms.items()
                if name in weights and t.applies(out)}

    def after_step(self, out: StepOutputs, autocast) -> dict[str, torch.Tensor]:
        extra: dict[str, torch.Tensor] = {}
        for t in self.terms.values():
            extra.update(t.after_step(out, autocast))
        return extra

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for t in self.terms.values() if t.module is not None and t.trains_with_student
                for p in t.module.parameters()]

    def formula(self, weights: dict[str, str]) -> str:
        """``weights``: each term's weight as text (a number, or "a" / "(1-a)" for a schedule)."""
        return "loss = " + " + ".join(f"{weights[n]}*{t.label()}" for n, t in self.terms.items() if n in weights)

    def state_dict(self) -> dict:
        return {n: sd for n, t in self.terms.items() if (sd := t.state_dict()) is not None}

    def load_state_dict(self, sd: dict) -> None:
        for n, t in self.terms.items():
            if n in (sd or {}):
                t.load_state_dict(sd[n])

    def close(self) -> None:
        for t in self.terms.values():
            t.close()
