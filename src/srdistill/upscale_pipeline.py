"""Upscaling many files as a pipeline: decode ahead, the model in the caller's thread, encode behind.

For a folder, ``upscale`` spends as much time in Pillow's decoder and PNG encoder (zlib) as in the
model. Both release the GIL, so :func:`run_pipeline` overlaps them with the model:

* one thread decodes the next files (at most ``prefetch`` decoded images wait in a queue);
* the calling thread runs the model, file after file (torch and onnxruntime use their own threads);
* a pool of ``workers`` threads encodes and writes the results (at most ``workers + 1`` upscaled
  images wait for a writer, so memory stays bounded whatever the folder's size).

What stays as in a loop over the files: each file's outcome and messages are handed to ``finish``
in input order, on the calling thread, so the per-file lines and warnings come out in the same
order every run; one file's exception is that file's outcome and never stops the others. On
KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one) the decoder stops, writes not yet started are
cancelled and the ones under way end as they would have (``write`` goes through
:func:`srdistill.fileio.atomic_path`, so a file is either whole under its name or not there at all);
then the interrupt goes on up. ``workers=0`` runs every stage in the calling thread, one file at a
time: the sequential path the pipeline must match byte for byte.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .progress import Reporter

__all__ = ["BufferedReporter", "Outcome", "run_pipeline"]

_END = object()


class BufferedReporter(Reporter):
    """Keeps a file's messages until its outcome is handed on, so they come out in file order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.messages.append(("info", message))

    def warn(self, message: str) -> None:
        self.messages.append(("warn", message))

    def replay(self, rep: Reporter) -> None:
        for kind, message in self.messages:
            (rep.warn if kind == "warn" else rep.info)(message)
        self.messages.clear()


@dataclass
class Outcome:
    """One file's end: ``error`` is None when it was written; ``seconds`` from its decode to its write."""

    item: Any
    error: BaseException | None
    seconds: float
    messages: BufferedReporter = field(repr=False)


@dataclass
class _Job:
    item: Any
    rep: BufferedReporter
    t0: float
    value: Any = None
    error: BaseException | None = None
    future: Future | None = None
    t_end: float = 0.0


def _read(item: Any, read: Callable) -> _Job:
    job = _Job(item, BufferedReporter(), time.monotonic())
    try:
        job.value = read(item, job.rep)
    except Exception as e:  # noqa: BLE001 - the file's outcome, reported in order
        job.error = e
    return job


def _model(job: _Job, model: Callable) -> Any:
    """The model stage; returns what to write (None when the file already failed)."""
    if job.error is not None:
        return None
    try:
        return model(job.item, job.value, job.rep)
    except Exception as e:  # noqa: BLE001
        job.error = e
        return None
    finally:
        job.value = None  # the decoded image can go now


def _write(job: _Job, write: Callable, out: Any) -> None:
    try:
        write(job.item, out, job.rep)
    finally:
        job.t_end = time.monotonic()


def _hand_on(job: _Job, finish: Callable[[Outcome], None]) -> None:
    if job.future is not None:
        try:
            job.future.result()
        except Exception as e:  # noqa: BLE001
            job.error = e
    end = job.t_end if job.future is not None else time.monotonic()
    finish(Outcome(job.item, job.error, end - job.t0, job.rep))


def _sequential(items: Sequence[Any], read: Callable, model: Callable, write: Callable,
                finish: Callable[[Outcome], None]) -> None:
    for item in items:
        job = _read(item, read)
        out = _model(job, model)
        if job.error is None:
            try:
                _write(job, write, out)
            except Exception as e:  # noqa: BLE001
                job.error = e
        finish(Outcome(job.item, job.error, time.monotonic() - job.t0, job.rep))


def _decoder(items: Sequence[Any], read: Callable, q: queue.Queue, stop: threading.Event) -> None:
    def put(x: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in items:
            if stop.is_set() or not put(_read(item, read)):
                return
    finally:
        put(_END)


def run_pipeline(items: Sequence[Any], *, read: Callable[[Any, Reporter], Any],
                 model: Callable[[Any, Any, Reporter], Any], write: Callable[[Any, Any, Reporter], None],
                 finish: Callable[[Outcome], None], workers: int = 2, prefetch: int = 2) -> None:
    """Run ``read`` -> ``model`` -> ``write`` over ``items`` (see the module docstring).

    ``read(item, rep)`` runs in the decoder thread, ``model(item, decoded, rep)`` in this one,
    ``write(item, upscaled, rep)`` in a writer; each may raise for its file. ``finish(outcome)``
    is called here, once per item, in ``items`` order.
    """
    if workers <= 0:
        _sequential(items, read, model, write, finish)
        return
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    decoder = threading.Thread(target=_decoder, args=(items, read, q, stop), name="srdistill-decode", daemon=True)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="srdistill-write")
    pending: deque[_Job] = deque()
    decoder.start()
    try:
        while (job := q.get()) is not _END:
            out = _model(job, model)
            if job.error is None:
                job.future = pool.submit(_write, job, write, out)
            del out
            pending.append(job)
            while pending and (len(pending) > workers + 1 or pending[0].future is None
                               or pending[0].future.done()):
                _hand_on(pending.popleft(), finish)
        while pending:
            _hand_on(pending.popleft(), finish)
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:  # unblock the decoder if it waits on a full queue
                q.get_nowait()
        decoder.join()
        pool.shutdown(wait=True, cancel_futures=True)
