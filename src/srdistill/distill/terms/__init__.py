"""Loss terms: named, weighted objects the trainer sums (torchdistill's ``WeightedSumLoss`` idea).

A term says what it ``needs`` (``teacher_output``, ``hr``, ``teacher_features``), how it reads in the
printed formula, and computes its unweighted loss from one step's :class:`StepOutputs`. A term may
own a learned module: trained with the student (``trains_with_student``, e.g. feature adapters) or
by the term itself after each step (``after_step``, e.g. a discriminator). Its state goes into the
checkpoint under its name, generically. The trainer never names a term: it sums what the config
asks for (:func:`term_weights`) and prints :meth:`WeightedSum.formula`.

``register_term(name, factory)`` adds one; ``factory(ctx: TermContext) -> Term``. The built-in
terms live in ``pixel.py`` (``kd``, ``hr``), ``feature.py`` and ``adversarial.py``.
"""

from __future__ import annotations

from .registry import (NEEDS, TERMS, check_extra_terms, needs_of, register_term, StepOutputs, Term,  # noqa: F401  (the package's API)
                       TermContext, TermSpec, WeightedSum)

# the built-in terms (importing a module registers its terms)
from . import pixel, feature, adversarial  # noqa: F401
