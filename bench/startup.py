"""Start-up: seconds from launching ``srdistill`` to its first output, for the commands a new user
types first. Run alone on a quiet machine: another CPU-heavy process makes every figure meaningless.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import save


def _first_output(cmd: list[str]) -> float:
    """Seconds until the process writes its first byte (stdout or stderr), then wait for it to end."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    p.stdout.read(1)
    first = time.monotonic() - t0
    p.communicate(timeout=300)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {p.returncode}")
    return first


def _imports_torch(args: list[str]) -> bool:
    code = ("import sys; from srdistill.cli import app; from typer.testing import CliRunner; "
            f"CliRunner().invoke(app, {args!r}); print('torch' in sys.modules)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "True"


def run(quick: bool = False, repeats: int | None = None) -> dict:
    from srdistill.assets import ASSETS

    onnx = str(ASSETS / "models" / "default_x4.onnx")
    sample = str(ASSETS / "images" / "sample.png")
    repeats = repeats or (1 if quick else 5)
    exe = [sys.executable, "-m", "srdistill"]
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "srdistill --help": ["--help"],
            "srdistill info default_x4.onnx": ["info", onnx],
            "srdistill upscale sample.png -m default_x4.onnx": ["upscale", sample, "-m", onnx, "-o",
                                                                str(Path(tmp) / "out.png"), "--overwrite"],
        }
        results = {}
        for name, args in cases.items():
            _first_output(exe + args)  # warm the file cache
            times = [_first_output(exe + args) for _ in range(repeats)]
            results[name] = {"median_s": statistics.median(times), "runs": repeats, "times": times,
                             "torch": _imports_torch(args)}
    doc = {"settings": {"note": "Time from starting `python -m srdistill ...` to its first byte of output "
                                 "(stdout or stderr), median of the runs after one warm-up run.",
                        "quick": quick},
           "results": results}
    save("startup" + ("_quick" if quick else ""), doc)
    return doc


if __name__ == "__main__":
    print(run("--quick" in sys.argv))
