"""Start-up: describing an .onnx file needs onnxruntime, not torch (torch costs seconds to import)."""

from __future__ import annotations

import subprocess
import sys


def test_info_on_an_onnx_file_does_not_import_torch():
    code = ("import sys; from srdistill.cli import app; from typer.testing import CliRunner; "
            "from srdistill.assets import ASSETS; "
            "r = CliRunner().invoke(app, ['info', str(ASSETS / 'models' / 'default_x4.onnx'), '--json']); "
            "assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules, 'spandrel' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"], out.stdout


def test_help_does_not_import_torch():
    code = ("import sys; from srdistill.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['distill', '--help']); assert r.exit_code == 0; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
