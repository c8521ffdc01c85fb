"""Terminal output: results on stdout, everything else on stderr, errors as one line."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import SrDistillError
from .progress import Reporter, Task


def _no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def stdout_console() -> Console:
    """Results. Piped into a file or a CI log there is no terminal width to respect, and rich's
    fallback of 80 columns would cut table cells: use a wide fixed width instead."""
    console = Console(no_color=_no_color(), soft_wrap=False, highlight=False)
    if not console.is_terminal:
        console = Console(no_color=_no_color(), soft_wrap=False, highlight=False, width=250)
    return console


def stderr_console() -> Console:
    return Console(stderr=True, no_color=_no_color(), highlight=False)


def debug_enabled() -> bool:
    return os.environ.get("SRDISTILL_DEBUG", "") not in ("", "0")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def print_json(doc: Any) -> None:
    """Exactly one JSON document on stdout (inf written as the string "inf")."""
    sys.stdout.write(json.dumps(_jsonable(doc), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


class _RichTask(Task):
    def __init__(self, progress: Progress, task_id: int):
        self._p = progress
        self._id = task_id

    def advance(self, n: float = 1, **fields: Any) -> None:
        if fields:
            self._p.update(self._id, advance=n, info=_fmt_fields(fields))
        else:
            self._p.update(self._id, advance=n)

    def update(self, **fields: Any) -> None:
        self._p.update(self._id, info=_fmt_fields(fields))


def _fmt_fields(fields: dict) -> str:
    parts = []
    for k, v in fields.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


class RichReporter(Reporter):
    """Renders progress bars and messages on stderr; silent apart from warnings when quiet."""

    def __init__(self, quiet: bool = False):
        self.console = stderr_console()
        self.quiet = quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.console.print(f"warning: {message}", style="yellow", markup=False, soft_wrap=True)

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Task]:
        if self.quiet:
            yield Task()
            return
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
            disable=not self.console.is_terminal and os.environ.get("SRDISTILL_PROGRESS") != "1",
        )
        with progress:
            tid = progress.add_task(description, total=total, info="")
            start = time.monotonic()
            yield _RichTask(progress, tid)
        if not self.console.is_terminal:
            self.console.print(f"{description}: done in {time.monotonic() - start:.1f} s", markup=False,
                               soft_wrap=True)


def run_cli(fn: Callable[[], Any]) -> Any:
    """Run a command body: map SrDistillError to ``error: ...`` and its exit code."""
    import typer

    try:
        return fn()
    except SrDistillError as e:
        if debug_enabled():
            raise
        stderr_console().print(f"error: {e}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        stderr_console().print("error: interrupted", style="red", markup=False)
        raise typer.Exit(128 + signal.SIGINT) from None
    except MemoryError:
        if debug_enabled():
            raise
        stderr_console().print("error: out of memory; use smaller inputs or tiles (--tile)", style="red")
        raise typer.Exit(1) from None
