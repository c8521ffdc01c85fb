"""Terminal output: results on stdout, everything else on stderr, errors as one line."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import (Interrupted, SrDistillError, Terminated, debug_enabled,  # noqa: F401  (debug_enabled: re-exported)
                     note_terminated, terminated_pending)
from .fileio import too_long
from .progress import Reporter, Task


def _no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_control(text: str) -> str:
    """Control characters as visible escapes: terminal escape sequences as ``\\xNN``, and newline,
    carriage return and tab as ``\\n``, ``\\r``, ``\\t``. Every caller prints one line (a message,
    a table cell, a per-file line): a file named ``a\\nb.png`` must not split it."""
    return _CONTROL.sub(_escape_one, str(text))


def _escape_one(m: re.Match) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def plain(text: Any) -> Text:
    """A string from a path, a file or metadata as rich text that is never read as markup
    (``[/x].png`` or ``[link=...]`` print as they are) and cannot drive the terminal."""
    return Text(escape_control(text))


class PlainTable(Table):
    """A rich Table whose string title, headers and cells are plain text (see :func:`plain`)."""

    def __init__(self, *args: Any, title: Any = None, **kw: Any):
        super().__init__(*args, title=plain(title) if isinstance(title, str) else title, **kw)

    def add_column(self, header: Any = "", *args: Any, **kw: Any) -> None:
        super().add_column(plain(header) if isinstance(header, str) else header, *args, **kw)

    def add_row(self, *cells: Any, **kw: Any) -> None:
        super().add_row(*(plain(c) if isinstance(c, str) else c for c in cells), **kw)


PIPED_WIDTH = 100  # columns of results written to a file or a pipe


class _TrimmedLines:
    """A text stream that drops the spaces rich pads table lines with."""

    def __init__(self, stream):
        self._s = stream
        self._pending = ""

    def write(self, text: str) -> int:
        text = self._pending + text
        lines = text.split("\n")
        self._pending = lines.pop()
        if lines:
            self._s.write("\n".join(line.rstrip() for line in lines) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._s.write(self._pending.rstrip())
            self._pending = ""
        self._s.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return getattr(self._s, "encoding", "utf-8")


def stdout_console() -> Console:
    """Results: the terminal's width on a terminal; piped into a file or a CI log, plain lines of
    at most PIPED_WIDTH columns without padding (rich folds wide cells)."""
    console = Console(no_color=_no_color(), soft_wrap=False, highlight=False)
    if not console.is_terminal:
        console = Console(file=_TrimmedLines(sys.stdout), no_color=_no_color(), soft_wrap=False,
                          highlight=False, width=PIPED_WIDTH)
    return console


def stderr_console() -> Console:
    return Console(stderr=True, no_color=_no_color(), highlight=False)


def print_json(doc: Any) -> None:
    """Exactly one JSON document on stdout (inf written as the string "inf")."""
    from .metadata import json_safe  # lazy: only --json runs need it

    sys.stdout.write(json.dumps(json_safe(doc, nonfinite="string"), indent=2, allow_nan=False) + "\n")
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


def _fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class LineTask(Task):
    """Progress for logs (stderr not a terminal: CI, nohup, ``2>log``): one plain line whenever
    another 10% of the work is done or 30 s have passed, whichever comes first.

    ``distilling 1200/5000 (24%) 7.1 it/s loss=0.0277 eta 8m55s``
    """

    EVERY_FRACTION = 0.1
    EVERY_SECONDS = 30.0

    def __init__(self, write: Callable[[str], None], description: str, total: float | None,
                 clock: Callable[[], float] = time.monotonic):
        self._write, self._desc, self._total, self._clock = write, description, total, clock
        self.done = 0.0
        self._fields: dict = {}
        self._last_t = self._rate_t = clock()
        self._last_done = self._rate_done = 0.0

    def advance(self, n: float = 1, **fields: Any) -> None:
        if self.done == 0 and n > 1 and self._total and n < self._total:  # a resumed run's head start
            self._last_done = self._rate_done = n
        self.done += n
        self._fields.update(fields)
        now = self._clock()
        total = self._total
        due = now - self._last_t >= self.EVERY_SECONDS
        if total:
            due = due or (self.done - self._last_done) >= self.EVERY_FRACTION * total
            if self.done >= total:
                return  # the "done in" line says the rest
        if due:
            self._emit(now)

    def update(self, **fields: Any) -> None:
        self._fields.update(fields)

    def _emit(self, now: float) -> None:
        elapsed = max(1e-9, now - self._rate_t)
        rate = (self.done - self._rate_done) / elapsed
        total = self._total
        pos = f"{self.done:g}/{total:g} ({100 * self.done / total:.0f}%)" if total else f"{self.done:g}"
        if now - self._rate_t < 0.05:  # too soon for a meaningful rate
            rate = 0.0
        parts = [self._desc, pos] + ([f"{rate:.3g} it/s"] if rate > 0 else [])
        fields = {k: v for k, v in self._fields.items() if k != "it/s"}
        if fields:
            parts.append(_fmt_fields(fields))
        if total and rate > 0:
            parts.append(f"eta {_fmt_duration((total - self.done) / rate)}")
        self._write(" ".join(parts))
        self._last_t, self._last_done = now, self.done


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
            self.console.print(escape_control(message), markup=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.console.print(f"warning: {escape_control(message)}", style="yellow", markup=False, soft_wrap=True)

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
        start = time.monotonic()
        if progress.disable:  # a log, not a terminal: plain lines
            yield LineTask(lambda line: self.console.print(escape_control(line), markup=False, soft_wrap=True),
                           description, total)
        else:
            with progress:
                tid = progress.add_task(description, total=total, info="")
                yield _RichTask(progress, tid)
        if not self.console.is_terminal:
            self.console.print(f"{description}: done in {time.monotonic() - start:.1f} s", markup=False,
                               soft_wrap=True)


class StdoutError(SrDistillError):
    """Results could not be written: standard output is closed, full or a broken pipe."""


class _GuardedStdout:
    """sys.stdout that turns a failed write (``> /dev/full``, a closed pipe) into one ``error:`` line,
    and that never fails on a character the output encoding lacks (ASCII-only terminals and logs)."""

    def __init__(self, stream):
        self._s = stream
        self.failed = False
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")

    def _guard(self, fn, *args):
        if self.failed:
            return 0
        try:
            return fn(*args)
        except OSError as e:
            self.failed = True
            raise StdoutError(f"cannot write the results to standard output: {e.strerror or e}",
                              hint="check the disk or the pipe the output goes to") from None

    def write(self, text: str) -> int:
        return self._guard(self._s.write, text)

    def flush(self) -> None:
        self._guard(self._s.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s, name)


def _guard_streams() -> None:
    if sys.stdout is None:  # `srdistill ... >&-`: nowhere to put the results; say so before any work
        raise StdoutError("standard output is closed: the results have nowhere to go",
                          hint="redirect it to a file or /dev/null instead of closing it")
    if not isinstance(sys.stdout, _GuardedStdout):
        sys.stdout = _GuardedStdout(sys.stdout)
    if sys.stderr is not None:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            sys.stderr.reconfigure(errors="backslashreplace")


def run_cli(fn: Callable[[], Any]) -> Any:
    """Run a command body: map SrDistillError to ``error: ...`` and its exit code."""
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _raise_terminated)  # distill installs its own for its loop
    note_terminated(False)
    try:
        _guard_streams()
        return fn()
    except SrDistillError as e:
        if debug_enabled():
            raise
        if terminated_pending() and not isinstance(e, Interrupted):  # a SIGTERM some library reported as its error
            _exit_on_signal(signal.SIGTERM)
        if sys.stderr is not None:
            stderr_console().print(f"error: {escape_control(e)}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:
        if debug_enabled():
            raise
        _exit_on_signal(getattr(e, "signum", signal.SIGINT))
    except MemoryError:
        if debug_enabled():
            raise
        stderr_console().print("error: out of memory; use smaller inputs or tiles (--tile)", style="red")
        raise typer.Exit(1) from None
    except OSError as e:  # a path no check saw: a name over 255 bytes or a path over PATH_MAX
        if e.errno != errno.ENAMETOOLONG or debug_enabled():
            raise
        stderr_console().print(f"error: {escape_control(too_long(e.filename or '?'))}", style="red", markup=False,
                               soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _exit_on_signal(signum: int):
    what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    stderr_console().print(f"error: {what}; partial outputs were removed", style="red", markup=False)
    raise typer.Exit(128 + signum) from None


def _raise_terminated(signum, frame):
    note_terminated()  # remembered: C++ code that calls back into Python may swallow the exception
    raise Terminated()
