"""Interruptions and faults during ``srdistill distill``: nothing a run has saved is ever lost.

Real ``python -m srdistill distill`` subprocesses (a tiny Compact teacher, four 48x48
images, CPU, one thread, fixed seed) are killed with SIGKILL at random moments,
interrupted with SIGINT/SIGTERM, raced by a second run on the same output; in-process
runs get a NaN loss, a full disk under the checkpoint, a write refused by the kernel and
a full disk under the training log. After each: the checkpoint on disk loads with
``torch.load(weights_only=True)``, ``--resume`` finishes, and the final weights equal
those of an uninterrupted run bit for bit.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from robust_helpers import PYTHON, python_env, tiny_compact
from srdistill.cli import app
from srdistill.distill import run as run_module  # where a run writes its checkpoint and log
from srdistill.distill import trainer

CATEGORY = "interruption and faults during distill"
STEPS = 300
EVERY = 5
KILL_TRIALS = int(os.environ.get("SRDISTILL_KILL_TRIALS", "3"))  # more for a soak run


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("teacher") / "teacher x2.pth"
    torch.save(tiny_compact(num_feat=8, num_conv=2, seed=5).state_dict(), p)
    return p


def _args(teacher: Path, data: Path, out: Path, steps: int = STEPS, *extra: str) -> list[str]:
    return ["distill", str(teacher), "--student-width", "4", "--student-depth", "1", "--data", str(data),
            "--no-val", "--steps", str(steps), "--batch-size", "2", "--patch-size", "8",
            "--checkpoint-every", str(EVERY), "--seed", "1", "--threads", "1", "--device", "cpu",
            "-o", str(out), "--quiet", *extra]


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _ckpt_step(path: Path) -> int:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ck["student"].values() if v.is_floating_point())
    return int(ck["step"])


def _junk(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith((".partial", ".lock")))


@pytest.fixture(scope="module")
def reference(teacher, train_dir, tmp_path_factory):
    """The uninterrupted run (in-process, same options): its final weights and loop time."""
    out = tmp_path_factory.mktemp("réf run") / "dossier été" / "student ✓.safetensors"
    r = _invoke(_args(teacher, train_dir, out))
    assert r.exit_code == 0, r.output
    events = [json.loads(line) for line in out.with_name("student ✓.train.jsonl").read_text().splitlines()]
    loop = events[-1]["time"] - next(e["time"] for e in events if e["event"] == "start")
    return {"weights": _tensors(out), "loop_seconds": loop}


def _spawn(args: list[str], **env) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "srdistill", *args], env=python_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 90.0) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return cond()
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the run")


def _log_started(log: Path) -> bool:
    try:
        return '"event": "start"' in log.read_text()
    except OSError:
        return False


# --------------------------------------------------------------------------- SIGKILL


@pytest.mark.parametrize("trial", range(KILL_TRIALS))
def test_sigkill_at_a_random_moment_then_resume_gives_the_same_weights(trial, teacher, train_dir, reference,
                                                                       tmp_path, tally):
    out = tmp_path / "s.safetensors"
    ckpt, log = out.with_suffix(".ckpt"), out.with_name("s.train.jsonl")
    delay = random.Random().uniform(0, 0.9 * reference["loop_seconds"])  # from the start of the training loop
    with tally.case(CATEGORY, f"SIGKILL trial {trial}"):
        proc = _spawn(_args(teacher, train_dir, out))
        try:
            _wait_for(lambda: _log_started(log), proc)
            time.sleep(delay)
            proc.kill()
        finally:
            proc.communicate(timeout=60)
        step = None
        if ckpt.exists():
            try:
                step = _ckpt_step(ckpt)
            except Exception:
                tally.lost(CATEGORY)
                raise
        print(f"\nSIGKILL {delay:.3f} s into training: exit {proc.returncode}, checkpoint at step {step}, "
              f"left behind: {_junk(tmp_path)}")
        if out.exists():  # killed after its last step: the student must then be complete
            assert step == STEPS, "a student file from a run that did not finish"
            assert _same(_tensors(out), reference["weights"])
        r = _invoke(_args(teacher, train_dir, out, STEPS, *(["--resume"] if step is not None else [])))
        assert r.exit_code == 0, r.output
        assert _ckpt_step(ckpt) == STEPS
        if not _same(_tensors(out), reference["weights"]):
            tally.lost(CATEGORY)
            raise AssertionError("resumed weights differ from the uninterrupted run")
        assert _junk(tmp_path) == [], _junk(tmp_path)


# --------------------------------------------------------------------------- SIGINT / SIGTERM


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_save_a_checkpoint_and_exit_128_plus_signal(sig, code, teacher, train_dir, tmp_path,
                                                                        tally):
    out = tmp_path / "s.safetensors"
    ckpt = out.with_suffix(".ckpt")
    with tally.case(CATEGORY, f"{sig.name} to a real run"):
        proc = _spawn(_args(teacher, train_dir, out, 20000))
        try:
            _wait_for(ckpt.exists, proc)  # in the training loop: the first checkpoint is written
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == code, err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: stopped at step"), err
        stopped = int(lines[0].split("step ")[1].split(";")[0])
        assert _ckpt_step(ckpt) == stopped  # the checkpoint holds the step it stopped at
        assert not out.exists() and _junk(tmp_path) == []


# --------------------------------------------------------------------------- a second run on the same output


def test_a_second_run_on_the_same_output_is_refused_by_the_lock(teacher, train_dir, reference, tmp_path, tally):
    out = tmp_path / "s.safetensors"
    lock = out.with_name("s.lock")
    with tally.case(CATEGORY, "second run while the first is running"):
        first = _spawn(_args(teacher, train_dir, out))
        try:
            _wait_for(lock.exists, first)
            for extra in ([], ["--overwrite"], ["--resume"]):
                r = _invoke(_args(teacher, train_dir, out, STEPS, *extra))
                assert first.poll() is None, "the first run ended before the second was tried"
                assert r.exit_code == 1, r.output
                assert r.stderr.startswith("error: another srdistill run (pid ") and r.stderr.count("\n") == 1, \
                    r.stderr
        finally:
            _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        if not _same(_tensors(out), reference["weights"]):
            tally.lost(CATEGORY)
            raise AssertionError("the first run's result was changed by the second")
        assert _ckpt_step(out.with_suffix(".ckpt")) == STEPS and not lock.exists()


# --------------------------------------------------------------------------- faults inside the run


def test_nan_loss_is_a_clear_error_and_the_last_good_checkpoint_is_intact(teacher, train_dir, tmp_path, tally,
                                                                         monkeypatch):
    out = tmp_path / "s.safetensors"
    monkeypatch.setenv(trainer.NAN_HOOK_ENV, "13")
    with tally.case(CATEGORY, "NaN loss at step 13"):
        r = _invoke(_args(teacher, train_dir, out, 40))
        assert r.exit_code == 1, r.output
        assert r.stderr.count("\n") == 1 and "step 13" in r.stderr and "s.ckpt is intact" in r.stderr, r.stderr
        assert _ckpt_step(out.with_suffix(".ckpt")) == 10
        assert not out.exists() and _junk(tmp_path) == []


class _FullDisk:
    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, b):
        n = len(b)
        if n > self._room:
            self._f.write(b[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= n
        return self._f.write(b)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self._f.close()
        return False


def _open_failing(kind: str, nth: int, room: int):
    """An ``open`` for the run module: the nth open of ``kind`` ("wb": checkpoint, "text": log) fills up."""
    real = open
    calls = {"n": 0}

    def fake(path, mode="r", *a, **k):
        f = real(path, mode, *a, **k)
        if (kind == "wb") == ("b" in mode) and ("w" in mode or "a" in mode):
            calls["n"] += 1
            if calls["n"] == nth:
                return _FullDisk(f, room)
        return f

    return fake


def test_disk_full_while_writing_a_checkpoint(teacher, train_dir, tmp_path, tally, monkeypatch):
    out = tmp_path / "s.safetensors"
    monkeypatch.setattr(run_module, "open", _open_failing("wb", 3, 1000), raising=False)
    with tally.case(CATEGORY, "disk full during the 3rd checkpoint write"):
        r = _invoke(_args(teacher, train_dir, out, 40))
        assert r.exit_code == 1, r.output
        assert r.stderr.startswith("error: no space left on device while writing") and \
            r.stderr.count("\n") == 1, r.stderr
        assert _ckpt_step(out.with_suffix(".ckpt")) == 2 * EVERY
        assert not out.exists() and _junk(tmp_path) == [], _junk(tmp_path)


def test_write_refused_by_the_kernel_while_writing_a_checkpoint(teacher, train_dir, tmp_path, tally, monkeypatch):
    """A real EFBIG from the kernel (file-size limit) under the checkpoint, not a simulated exception."""
    out = tmp_path / "s.safetensors"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the checkpoint is ~40 KB, the log a few KB
            resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    try:
        with tally.case(CATEGORY, "kernel refuses the 3rd checkpoint write"):
            r = _invoke(_args(teacher, train_dir, out, 40))
            assert r.exit_code == 1, r.output
            assert r.stderr.startswith("error: cannot write") and "s.ckpt" in r.stderr and \
                r.stderr.count("\n") == 1, r.stderr
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert _ckpt_step(out.with_suffix(".ckpt")) == 2 * EVERY
    assert not out.exists() and _junk(tmp_path) == [], _junk(tmp_path)


def test_disk_full_under_the_training_log_does_not_stop_or_change_the_run(teacher, train_dir, reference,
                                                                          tmp_path, tally, monkeypatch):
    out = tmp_path / "s.safetensors"
    monkeypatch.setattr(run_module, "open", _open_failing("text", 1, 300), raising=False)
    with tally.case(CATEGORY, "disk full under the training log"):
        r = _invoke(_args(teacher, train_dir, out))
        assert r.exit_code == 0, r.output
        assert "warning: cannot write the training log" in r.stderr and "Traceback" not in r.output
        if not _same(_tensors(out), reference["weights"]):
            tally.lost(CATEGORY)
            raise AssertionError("weights differ from the uninterrupted run")
        assert _junk(tmp_path) == []
