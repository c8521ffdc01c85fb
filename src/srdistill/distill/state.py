"""What a run keeps besides its models: the output paths and the run lock, the EMA of the student,
the learning-rate schedule, signal handling, and the RNG state a checkpoint saves and restores."""

from __future__ import annotations

import contextlib
import copy
import glob
import io
import math
import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import OutputExistsError, SrDistillError
from ..fileio import MAX_LOG_BYTES, check_input_file, open_input_file
from ..metadata import loads_bounded

try:
    import fcntl
except ImportError:  # no POSIX locks (Windows): RunLock falls back to the lock file's pid
    fcntl = None

CKPT_FORMAT = 1  # the checkpoint layout this version reads and writes


def paths_for(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return {
        "out": out,
        "ckpt": out.with_name(stem + ".ckpt"),
        "log": out.with_name(stem + ".train.jsonl"),
        "lock": out.with_name(stem + ".lock"),  # the stem: what the checkpoint and the log share
    }


def remove_stale_partials(paths: dict[str, Path]) -> None:
    """Delete ``.<name>.*.partial`` files atomic_path left when a run was killed (SIGKILL, power loss).
    Only called with the run lock held, so no live writer owns them."""
    for key in ("out", "ckpt"):
        p = paths[key]
        for tmp in p.parent.glob(f".{glob.escape(p.name)}.*.partial"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def existing_log(log: Path) -> bool:
    """Whether the training log exists; a usage error, at once, if it is there but not a regular file
    of at most MAX_LOG_BYTES (a FIFO would hang the run when it opens the log, a device take its lines)."""
    try:
        os.lstat(log)
    except OSError:
        return False
    check_input_file(log, "training log", MAX_LOG_BYTES)
    return True


def unfinished_run_log(log: Path) -> bool:
    """True if ``log`` is a training log srdistill started (its first line is our start event) for a run
    that never finished (killed, or stopped before its last step): only such a log may be replaced
    without --overwrite. A finished run's log is the record of a model that may live elsewhere now."""
    if not existing_log(log):
        return False
    try:
        with io.TextIOWrapper(open_input_file(log, "training log", MAX_LOG_BYTES), encoding="utf-8") as f:
            first = loads_bounded(f.readline() or "null")
            if not (isinstance(first, dict) and first.get("event") == "start" and "srdistill" in first):
                return False
            steps, finished = (first.get("config") or {}).get("steps"), False
            for line in f:
                if '"start"' not in line and '"end"' not in line:
                    continue
                rec = loads_bounded(line)
                if rec.get("event") == "start":  # a resumed run: its own --steps
                    steps, finished = (rec.get("config") or {}).get("steps"), False
                elif rec.get("event") == "end":
                    finished = isinstance(steps, int) and rec.get("step", 0) >= steps
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return False
    return not finished


class RunLock:
    """``<stem>.lock`` next to the output, held with an OS lock (``flock``) for the run's life.

    The OS drops the lock when the process dies however it dies (SIGKILL, OOM), so a stale lock
    file never blocks a later run, also in a container where the restarted job has the same pid.
    The lock is named after the stem, which the checkpoint and the log share: ``-o s.SAFETENSORS``
    beside a live ``-o s.safetensors`` is refused instead of clobbering its checkpoint.
    """

    def __init__(self, path: Path):
        self.path = path
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a parent that is a file, a read-only folder, ...
            raise SrDistillError(f"cannot write to folder {str(self.path.parent)!r}: {e.strerror or e}") from None
        if fcntl is None:  # no POSIX locks (Windows): the lock file's pid decides
            return self._acquire_by_pid()
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as e:
                raise SrDistillError(f"cannot create the lock file {str(self.path)!r}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = self._owner()
                os.close(fd)
                raise OutputExistsError(
                    f"another srdistill run (pid {pid or '?'}) is writing {self.path.stem!r}",
                    hint="wait for it, or give another --output") from None
            try:  # the previous holder may have removed the file between our open and our lock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._fd, self.held = fd, True
            return
        raise OutputExistsError(f"cannot take the lock {str(self.path)!r}")

    def _acquire_by_pid(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self._owner()
                if pid is not None and _alive(pid):
                    raise OutputExistsError(
                        f"another srdistill run (pid {pid}) is writing {self.path.stem!r}",
                        hint=f"wait for it, or remove {str(self.path)!r} if that run is gone") from None
                with contextlib.suppress(OSError):
                    self.path.unlink()  # stale lock of a dead run
                continue
            except OSError as e:
                raise SrDistillError(f"cannot create the lock file {str(self.path)!r}: {e.strerror or e}") from None
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return
        raise OutputExistsError(f"cannot take the lock {str(self.path)!r}")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or "0") or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(OSError):
                self.path.unlink()
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EMA:
    """Exponential moving average of the student's weights (the saved model)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))  # warm-up for short runs
        ema_p = list(self.module.parameters())
        src_p = list(module.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in src_p], 1.0 - d)
        for eb, b in zip(self.module.buffers(), module.buffers()):
            eb.copy_(b)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, sd: dict) -> None:
        self.module.load_state_dict(sd["module"])
        self.updates = int(sd["updates"])


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))) * 0.99 + 0.01
    return f


def finalize_reparam(module: nn.Module) -> None:
    """Refresh deploy weights of re-parameterisable blocks (SPAN's Conv3XC) before saving."""
    for m in module.modules():
        fn = getattr(m, "update_params", None)
        if callable(fn):
            with torch.no_grad():
                fn()


class Signals:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and stops with 130/143."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        # only a user's second Ctrl-C skips the checkpoint: SIGTERMs come in bursts (systemd,
        # Kubernetes, CI runners) and must all end in a saved checkpoint
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def rng_state(gen: torch.Generator, gen_state: torch.Tensor | None = None) -> dict:
    return {"gen": gen.get_state() if gen_state is None else gen_state, "torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
            "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def check_rng_state(st) -> str | None:
    """What is wrong with a checkpoint's RNG state (as :func:`rng_state` writes it), or None. Checked
    before :func:`set_rng_state` touches any generator: a bad state must not leave half of them set."""
    if not isinstance(st, dict):
        return f"its RNG state is a {type(st).__name__}, not a dict"
    for key, like in (("gen", torch.Generator().get_state()), ("torch", torch.get_rng_state())):
        t = st.get(key)
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.shape != like.shape:
            return (f"its {key!r} RNG state is not a uint8 tensor of {like.numel()} bytes"
                    + (f" ({t.dtype}, shape {list(t.shape)})" if isinstance(t, torch.Tensor) else ""))
    words = st.get("numpy")
    if not _words(words, 624, 624):
        return "its numpy RNG state is not 624 32-bit words"
    py = st.get("python")
    if not _words(py, 625, 624) or not 0 <= py[-1] <= 624:  # 624 words and the position in them
        return "its Python RNG state is not 624 32-bit words and a position"
    cuda = st.get("cuda", [])
    if not isinstance(cuda, (list, tuple)) or not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8
                                                       for t in cuda):
        return "its CUDA RNG state is not a list of uint8 tensors"
    return None


def _words(v, n: int, first: int) -> bool:
    """``v`` is a list of ``n`` ints whose ``first`` ones are 32-bit words."""
    return (isinstance(v, (list, tuple)) and len(v) == n and all(type(x) is int for x in v)
            and all(0 <= x < 2**32 for x in v[:first]))


def set_rng_state(gen: torch.Generator, st: dict) -> None:
    gen.set_state(st["gen"])
    torch.set_rng_state(st["torch"])
    np.random.set_state(("MT19937", np.array(st["numpy"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(st["python"]), None))
    if st.get("cuda") and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(st["cuda"])
