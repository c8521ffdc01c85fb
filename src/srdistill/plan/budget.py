"""What ``plan`` is asked for: a budget (time per frame, frame rate, parameters, megabytes) and the
output size, parsed from the command line's words into numbers, every bad value one line (exit 2)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import UsageError, shown

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_TIME = re.compile(rf"^{_NUMBER}\s*(ms|s|fps)$")
_PARAMS = re.compile(rf"^{_NUMBER}\s*([km]?)\s*(params?|parameters?)?$")
_MB = re.compile(rf"^{_NUMBER}\s*(mb|mib|kb)$")
_SIZE = re.compile(r"^(\d{1,6})\s*[x×*]\s*(\d{1,6})$")
MAX_SIDE = 16384  # an output side beyond this is a typo, not a frame


@dataclass
class Budget:
    """Every limit given; a candidate fits when it meets all of them (None: no such limit)."""

    ms: float | None = None  # per output frame at the plan's size
    max_params: int | None = None
    max_mb: float | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.ms, self.max_params, self.max_mb))

    def describe(self) -> str:
        parts = []
        if self.ms is not None:
            parts.append(f"{self.ms:g} ms per frame ({1000 / self.ms:.1f} fps)")
        if self.max_params is not None:
            parts.append(f"<= {self.max_params:,} params")
        if self.max_mb is not None:
            parts.append(f"<= {self.max_mb:g} MB")
        return ", ".join(parts) or "none"

    def to_dict(self) -> dict:
        return {"ms": self.ms, "fps": None if self.ms is None else 1000 / self.ms, "max_params": self.max_params,
                "max_mb": self.max_mb}


def _positive(value: float, what: str, text) -> float:
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{what} must be positive, not {shown(text)}")
    return value


def parse_budget(text: str | None, *, max_params: str | int | None = None, max_mb: float | str | None = None
                 ) -> Budget:
    """``--budget 33ms | 0.033s | 30fps | 1.5MB | 250k params`` plus ``--max-params``/``--max-mb``."""
    b = Budget()
    if text is not None:
        _apply_budget_word(b, str(text))
    if max_params is not None:
        b.max_params = parse_params(max_params, "--max-params")
    if max_mb is not None:
        try:
            b.max_mb = _positive(float(max_mb), "--max-mb", max_mb)
        except (TypeError, ValueError):
            raise UsageError(f"--max-mb must be a number of megabytes, not {shown(max_mb)}") from None
    if not b.any():
        raise UsageError("give a budget", hint="--budget 33ms, --budget 30fps, --max-params N or --max-mb N")
    return b


def _apply_budget_word(b: Budget, text: str) -> None:
    word = text.strip().lower()
    if m := _TIME.match(word):
        v = _positive(float(m.group(1)), "--budget", text)
        b.ms = {"ms": v, "s": v * 1000, "fps": 1000 / v}[m.group(2)]
    elif m := _MB.match(word):
        v = _positive(float(m.group(1)), "--budget", text)
        b.max_mb = v / 1000 if m.group(2) == "kb" else v * (1.048576 if m.group(2) == "mib" else 1)
    elif (m := _PARAMS.match(word)) and (m.group(2) or m.group(3)):
        b.max_params = parse_params(word, "--budget")
    else:
        raise UsageError(f"invalid --budget {shown(text)}",
                         hint="use a time per frame (33ms), a frame rate (30fps), a size (1.5MB) or a "
                              "parameter count (250k params)")


def parse_params(value, flag: str) -> int:
    """``250000``, ``250k``, ``1.5M``, ``250k params``."""
    m = _PARAMS.match(str(value).strip().lower())
    if not m:
        raise UsageError(f"{flag} must be a parameter count (250000, 250k, 1.5M), not {shown(value)}")
    n = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2)]
    return int(_positive(n, flag, value))


def parse_size(text: str | None) -> tuple[int, int]:
    """``--size WIDTHxHEIGHT`` (the output size) -> (width, height)."""
    m = _SIZE.match(str(text or "").strip().lower())
    if not m:
        raise UsageError(f"invalid --size {shown(text)}", hint="use WIDTHxHEIGHT of the output, e.g. 1920x1080")
    w, h = int(m.group(1)), int(m.group(2))
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        raise UsageError(f"--size {shown(text)}: each side must be between 1 and {MAX_SIDE} pixels")
    return w, h


def input_size(size: tuple[int, int], scale: int) -> tuple[int, int]:
    """The LR (width, height) a model of ``scale`` sees for the output ``size`` (rounded up)."""
    w, h = size
    iw, ih = -(-w // scale), -(-h // scale)
    if iw < 4 or ih < 4:
        raise UsageError(f"--size {w}x{h} is too small for a x{scale} model (its input would be {iw}x{ih})",
                         hint=f"give an output of at least {4 * scale}x{4 * scale}")
    return iw, ih
