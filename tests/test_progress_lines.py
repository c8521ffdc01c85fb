"""Progress in logs: with stderr not a terminal, plain lines every 10% of the work or 30 s."""

from __future__ import annotations

import os
import subprocess
import sys

from srdistill.console import LineTask

from test_distill import data_dir, teacher_path  # noqa: F401  (fixtures)


def test_a_line_every_tenth_of_the_work():
    lines: list[str] = []
    t = LineTask(lines.append, "distilling", 50, clock=lambda: 0.0)
    for _ in range(50):
        t.advance(1, loss=0.25)
    assert len(lines) == 9  # 10%, 20%, ... 90%; the end is the "done in" line
    assert lines[0].startswith("distilling 5/50 (10%)") and "loss=0.25" in lines[0]


def test_a_line_every_30_seconds_when_the_work_is_slow():
    now = [0.0]
    lines: list[str] = []
    t = LineTask(lines.append, "teacher cache", 1000, clock=lambda: now[0])
    for _ in range(5):
        now[0] += 31.0
        t.advance(1)
    assert len(lines) == 5
    assert lines[-1].startswith("teacher cache 5/1000 (0%)") and "eta" in lines[-1]


def test_a_resumed_run_counts_its_rate_from_where_it_resumed():
    now = [0.0]
    lines: list[str] = []
    t = LineTask(lines.append, "distilling", 100, clock=lambda: now[0])
    t.advance(60)
    for _ in range(10):
        now[0] += 1.0
        t.advance(1)
    assert lines and lines[0].startswith("distilling 70/100 (70%) 1 it/s"), lines


def test_distill_with_stderr_to_a_file_shows_progress(teacher_path, data_dir, tmp_path):
    log = tmp_path / "stderr.log"
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    env.pop("SRDISTILL_DEBUG", None)
    with open(log, "w") as err:
        r = subprocess.run([sys.executable, "-m", "srdistill", "distill", str(teacher_path), "-w", "8", "-d", "2",
                            "--data", str(data_dir), "--steps", "30", "-b", "2", "-p", "16", "--no-val",
                            "-o", str(tmp_path / "s.safetensors")], stdout=subprocess.PIPE, stderr=err,
                           stdin=subprocess.DEVNULL, env=env, timeout=300)
    text = log.read_text()
    assert r.returncode == 0, text
    steps = [line for line in text.splitlines() if line.startswith("distilling ")]
    assert len(steps) >= 8, text  # every 10% (3 steps) of 30
    assert all("loss=" in line for line in steps)
    # a rate (and so an eta) once 50 ms of work are behind it
    assert any("it/s" in line and "eta" in line for line in steps), steps
    assert "Warning" not in text  # third-party warnings stay out of the user's log
