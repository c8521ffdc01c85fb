"""SIGTERM outside distill: upscale and export clean up their temporaries and exit 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from robust_helpers import python_env

CATEGORY = "signals outside distill"


def _wait(pred, proc, timeout=120.0):
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"the command ended first ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_sigterm_during_upscale_of_a_folder_leaves_no_partial_files(tiny_model_files, tmp_path, tally):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(src / f"{i:02d}.png")
    out = tmp_path / "out"
    model = next(iter(tiny_model_files.values()))
    with tally.case(CATEGORY, "SIGTERM during upscale DIR -o OUT/"):
        p = subprocess.Popen([sys.executable, "-m", "srdistill", "upscale", str(src), "-m", str(model), "-o",
                              f"{out}/", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=python_env())
        _wait(lambda: out.is_dir() and any(out.iterdir()), p)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 143, err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: terminated")
        left = [f.name for f in out.iterdir() if f.name.startswith(".") or f.name.endswith(".partial")]
        assert left == [], left
        for f in out.iterdir():  # every file that is there is a whole image
            with Image.open(f) as im:
                im.load()


def test_two_sigterms_in_a_burst_still_save_the_checkpoint(tiny_model_files, train_dir, tmp_path, tally):
    teacher = next(iter(tiny_model_files.values()))
    out = tmp_path / "s.safetensors"
    with tally.case(CATEGORY, "two SIGTERMs 1 ms apart during distill"):
        p = subprocess.Popen([sys.executable, "-m", "srdistill", "distill", str(teacher), "-w", "4", "-d", "1",
                              "--data", str(train_dir), "--steps", "100000", "-b", "2", "-p", "16", "--no-val",
                              "--threads", "1", "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=python_env())
        log = out.with_name("s.train.jsonl")
        _wait(lambda: log.exists() and log.stat().st_size > 0, p)
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        time.sleep(0.001)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 143, err
        assert out.with_suffix(".ckpt").exists(), err
