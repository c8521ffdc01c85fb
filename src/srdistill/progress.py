"""Progress and log events from library code.

Library functions never print. They accept a ``Reporter`` and call it; the CLI
passes one that renders with ``rich.progress`` on stderr, tests pass a
``RecordingReporter`` (or nothing: the default does nothing).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator


class Task:
    """A handle to one progress bar."""

    def advance(self, n: float = 1, **fields: Any) -> None:  # pragma: no cover - interface
        pass

    def update(self, **fields: Any) -> None:  # pragma: no cover - interface
        pass


class Reporter:
    """No-op reporter; subclass to render or record."""

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Task]:
        yield Task()


NULL = Reporter()


@dataclass
class _RecordingTask(Task):
    description: str
    total: float | None
    done: float = 0
    fields: dict = field(default_factory=dict)

    def advance(self, n: float = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)

    def update(self, **fields: Any) -> None:
        self.fields.update(fields)


class RecordingReporter(Reporter):
    """Keeps every event, for tests."""

    def __init__(self) -> None:
        self.infos: list[str] = []
        self.warnings: list[str] = []
        self.tasks: list[_RecordingTask] = []

    def info(self, message: str) -> None:
        self.infos.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Task]:
        t = _RecordingTask(description, total)
        self.tasks.append(t)
        yield t
