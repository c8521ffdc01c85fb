"""scripts/device_check.sh (the GPU check) without a GPU: its dry run prints every step and the CLI
parses each srdistill command line it would run; a command that does not parse fails the dry run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.sh"


def _dry_run(script: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE_CHECK_OUT": str(tmp_path / "out")}
    return subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, env=env, timeout=300)


def test_dry_run_lists_the_gpu_steps_and_they_parse(tmp_path):
    r = _dry_run(SCRIPT, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    cmds = [ln for ln in lines if ln.startswith("+ srdistill ")]
    assert [c.split()[2] for c in cmds] == ["distill", "distill", "eval", "export", "export", "upscale", "upscale"]
    assert all("--device cuda" in c for c in cmds if c.split()[2] != "export")
    assert "--alpha 0" in cmds[1] and "--fp16" in cmds[4]
    assert any("model_timing.py" in ln for ln in lines) and any("collect.py" in ln for ln in lines)
    assert lines[-1] == "dry run: 7 of 7 srdistill commands parse"


def test_a_command_that_does_not_parse_fails_the_dry_run(tmp_path):
    copy = tmp_path / "repo" / "scripts" / "device_check.sh"
    copy.parent.mkdir(parents=True)
    shutil.copy(SCRIPT, copy)
    copy.write_text(SCRIPT.read_text().replace("--repeats 5", "--repeats five"))
    r = _dry_run(copy, tmp_path)
    assert r.returncode == 1
    assert "does not parse: srdistill eval" in r.stderr and "dry run: 6 of 7" in r.stdout
