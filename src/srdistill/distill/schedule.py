"""Alpha schedules: how the teacher's share of the pixel target moves over a run.

``alpha`` weighs ``L(student, teacher)`` against ``L(student, HR)``. A schedule maps
the step to alpha; each is one small class registered in :data:`SCHEDULES`.

* ``constant``: ``--alpha`` throughout (plain output distillation).
* ``linear``: from ``--alpha`` to ``--alpha-end`` in a straight line over the run.
* ``eco``: the easy-to-hard curriculum of ECO (Noise-free Optimization in Early
  Training Steps, AAAI'24): the student first follows the teacher's noise-free output,
  then the target moves to the ground truth -- a cosine ease from ``--alpha`` to
  ``--alpha-end`` over the first ``ECO_SHARE`` of the steps, then ``--alpha-end``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError

ECO_SHARE = 0.5  # share of the run over which eco moves alpha


@dataclass(frozen=True)
class AlphaSchedule:
    start: float
    end: float
    total: int

    name = "constant"

    def at(self, step: int) -> float:
        """Alpha for the step about to run (0-based)."""
        return self.start

    def describe(self) -> str:
        return f"alpha {self.start:g}"

    def varies(self) -> bool:
        return False

    def peak(self) -> float:
        return max(self.start, self.end) if self.varies() else self.start


class LinearSchedule(AlphaSchedule):
    name = "linear"

    def at(self, step: int) -> float:
        t = min(1.0, max(0.0, step / max(1, self.total - 1)))
        return self.start + (self.end - self.start) * t

    def describe(self) -> str:
        return f"alpha {self.start:g} -> {self.end:g} linearly over {self.total} steps"

    def varies(self) -> bool:
        return self.start != self.end


class EcoSchedule(LinearSchedule):
    name = "eco"

    def at(self, step: int) -> float:
        span = max(1, round(self.total * ECO_SHARE))
        t = min(1.0, max(0.0, step / span))
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t))

    def describe(self) -> str:
        span = max(1, round(self.total * ECO_SHARE))
        return f"alpha {self.start:g} -> {self.end:g} (eco: cosine over steps 1-{span}, then {self.end:g})"


SCHEDULES: dict[str, type[AlphaSchedule]] = {"constant": AlphaSchedule, "linear": LinearSchedule, "eco": EcoSchedule}
DEFAULT_START = {"constant": 0.5, "linear": 1.0, "eco": 1.0}
DEFAULT_END = 0.0


def make_schedule(name: str, start: float | None, end: float | None, total: int) -> AlphaSchedule:
    """Validate and build ``--alpha-schedule NAME`` with ``--alpha`` (start) and ``--alpha-end``."""
    key = (name or "constant").strip().lower()
    if key not in SCHEDULES:
        raise UsageError(f"unknown --alpha-schedule {name!r}", hint="use " + ", ".join(SCHEDULES))
    start = DEFAULT_START[key] if start is None else float(start)
    end = (start if key == "constant" else DEFAULT_END) if end is None else float(end)
    for flag, v in (("--alpha", start), ("--alpha-end", end)):
        if not 0.0 <= v <= 1.0:  # also refuses nan
            raise UsageError(f"{flag} must be between 0 and 1, not {v}")
    if key == "constant" and end != start:
        raise UsageError("--alpha-end needs a moving schedule", hint="add --alpha-schedule eco or linear")
    return SCHEDULES[key](start, end, int(total))
