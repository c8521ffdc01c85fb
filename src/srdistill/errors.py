"""srdistill's own error types.

Library code raises these with a one-line message that says what is wrong and
what to do; the CLI maps them to exit codes and prints ``error: <message>``.
"""

from __future__ import annotations

import os


class SrDistillError(Exception):
    """Base class of every error srdistill reports to a user (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        message = " ".join(str(message).split())  # always one line
        if hint:
            message = f"{message} ({' '.join(hint.split())})"
        super().__init__(message)


class UsageError(SrDistillError):
    """A wrong option value or combination (exit code 2)."""

    exit_code = 2


class ModelLoadError(SrDistillError):
    """A model file could not be loaded: unknown, corrupt, truncated, not a model."""


class BadPathError(UsageError, ModelLoadError):
    """A model path that does not exist, is a folder or is not a model file type: a usage error
    (exit code 2), still a :class:`ModelLoadError` for callers that catch those. A file that
    exists but fails to load is 1."""


class UnsafeModelError(ModelLoadError):
    """A checkpoint tried to run code or reference something unsafe while unpickling."""


class UnsupportedModelError(ModelLoadError):
    """A model was recognised but cannot be used for the requested job."""


class ImageError(SrDistillError):
    """An image could not be read, decoded or written."""


class OutputExistsError(SrDistillError):
    """Writing would overwrite a file the user owns."""


class TrainingError(SrDistillError):
    """Distillation failed (non-finite loss, out of memory, ...)."""


class ExportError(SrDistillError):
    """ONNX export or its verification failed."""


class QualityGateError(SrDistillError):
    """A quality gate (``--fail-under-psnr``) was not met (exit code 3)."""

    exit_code = 3


class Interrupted(SrDistillError):
    """A run was stopped by a signal after saving its state (exit code 130/143)."""

    def __init__(self, message: str, *, signum: int = 2):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop: unwinds like Ctrl-C (temporaries are removed on the way
    out), and the command exits 143. A BaseException, so no per-file ``except Exception`` eats it."""

    signum = 15


_terminated = False  # a SIGTERM arrived in this command (set by the CLI's handler as it raises Terminated)


def note_terminated(pending: bool = True) -> None:
    """Record (or, with False, forget) a SIGTERM: the CLI's handler calls this before it raises
    :class:`Terminated`, and the CLI forgets it when a command starts."""
    global _terminated
    _terminated = pending


def terminated_pending() -> bool:
    """Whether a SIGTERM arrived in this command, whatever became of its exception."""
    return _terminated


def raise_if_terminated() -> None:
    """Raise :class:`Terminated` again if a SIGTERM arrived. The handler's exception can be lost when it
    is raised inside Python code that C++ called (torch's exporter, onnxruntime, onnxslim): the C++
    side turns it into its own error, a broad ``except Exception`` reports that, or it is dropped.
    Code around such calls asks here after them and in their ``except`` clauses."""
    if _terminated:
        raise Terminated()


SHOWN_LIMIT = 100  # characters of a user's value echoed in a message


def shown(value, limit: int = SHOWN_LIMIT) -> str:
    """A user's value as a message quotes it: ``repr`` (so newlines and escapes show as ``\\n``,
    ``\\x1b``), cut to about ``limit`` characters with the length said (a 15 MB list or a
    400-digit number makes a short line, not a 15 MB one)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails (huge int, broken object)
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text):,} characters)"
    return text


def nonempty(flag: str, value, choices: str | None = None):
    """``value`` of a text option, refused when it was given empty or blank (``--init ''``): an empty
    value is a mistake (an unset shell variable, a stray quote), never the option's default."""
    if isinstance(value, str) and not value.strip():
        raise UsageError(f"{flag} cannot be empty", hint=f"use {choices}" if choices else None)
    return value


def debug_enabled() -> bool:
    """``SRDISTILL_DEBUG=1``: tracebacks instead of one-line errors (library and CLI alike)."""
    return os.environ.get("SRDISTILL_DEBUG", "") not in ("", "0")


def first_line(e: BaseException, limit: int = 240) -> str:
    """The first line of an exception's message (its type when it has none), cut to ``limit`` characters."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0].strip() or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
