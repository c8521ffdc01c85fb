"""Robustness suite: hostile model files, fuzzing, bad images and paths, interruption.

Every case reports to the session-wide :class:`Tally` (fixture ``tally``); at the end
of the run ``pytest_terminal_summary`` prints one line per category, e.g.::

    robustness: untrusted model files: 41 inputs tried, 41 handled, 0 lost

"tried" counts inputs (files, fuzz examples, injected faults); "handled" those that
ended in a result or a clean ``SrDistillError`` (one-line error, right exit code,
bounded memory, no code run); "lost" counts user data destroyed: a half-written file
under a final name, a checkpoint that no longer loads, weights that differ from an
uninterrupted run, a batch file left unprocessed because another one failed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from robust_helpers import natural_image, tiny_compact

CATEGORIES = (
    "untrusted model files",
    "checkpoint loader fuzz",
    "image reader fuzz",
    "bad images and paths",
    "interruption and faults during distill",
    "resource budgets of tiny files",
    "malformed but harmless inputs",
    "finished runs' files",
)


@dataclass
class _Counts:
    tried: int = 0
    handled: int = 0
    lost: int = 0
    notes: list = field(default_factory=list)


class Tally:
    """Counts per category; a case counts as handled only if its body finished without error."""

    def __init__(self) -> None:
        self.counts: dict[str, _Counts] = {c: _Counts() for c in CATEGORIES}

    def _get(self, category: str) -> _Counts:
        if category not in self.counts:
            self.counts[category] = _Counts()
        return self.counts[category]

    @contextlib.contextmanager
    def case(self, category: str, what: str = "", n: int = 1):
        c = self._get(category)
        c.tried += n
        try:
            yield
        except BaseException as e:
            if not isinstance(e, pytest.skip.Exception):
                c.notes.append(f"{what}: {type(e).__name__}")
            else:
                c.tried -= n
            raise
        c.handled += n

    def lost(self, category: str, n: int = 1) -> None:
        self._get(category).lost += n

    def lines(self) -> list[str]:
        out = []
        for name, c in self.counts.items():
            if c.tried == 0:
                continue
            out.append(f"robustness: {name}: {c.tried} inputs tried, {c.handled} handled, {c.lost} lost")
        return out


_TALLY = Tally()


@pytest.fixture(scope="session")
def tally() -> Tally:
    return _TALLY


def pytest_report_header(config):
    import srdistill

    return f"robustness: srdistill under test: {Path(srdistill.__file__).resolve().parent}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = _TALLY.lines()
    if not lines:
        return
    terminalreporter.section("robustness summary")
    for line in lines:
        terminalreporter.write_line(line)
    for name, c in _TALLY.counts.items():
        for note in c.notes[:10]:
            terminalreporter.write_line(f"  not handled ({name}): {note}")


# --------------------------------------------------------------------------- shared material


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Repeatable CPU numbers, and no oversubscription of the 2 CI cores."""
    yield


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory) -> dict[str, Path]:
    """A tiny Compact x2 (712 parameters) as .safetensors (srdistill student file) and .pth."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("tiny_models")
    sd = tiny_compact().state_dict()
    save_file(sd, str(d / "tiny.safetensors"))
    torch.save(sd, d / "tiny.pth")
    return {"safetensors": d / "tiny.safetensors", "pth": d / "tiny.pth"}


@pytest.fixture(scope="session")
def train_dir(tmp_path_factory) -> Path:
    """Four 48x48 training images."""
    from PIL import Image as PILImage

    d = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    for i in range(4):
        PILImage.fromarray(natural_image(rng, 48, 48)).save(d / f"img{i}.png")
    return d
