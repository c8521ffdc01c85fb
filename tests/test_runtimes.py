"""The runtime layer (issue 22): every runtime reproduces PyTorch, auto measures and caches its choice,
a missing runtime is one line naming its extra; OpenVINO and ncnn exports are verified and run; int8
weights by VNNI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from typer.testing import CliRunner

from srdistill.cli import app
from srdistill.export import ExportOptions, export_model
from srdistill.export.options import cpu_has_vnni, int8_weight_range
from srdistill.progress import Reporter
from srdistill.runtimes import RuntimeMissingError, get_runtime
from srdistill.runtimes import select



class Lines(Reporter):
    def __init__(self):
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    def warn(self, message: str) -> None:
        self.lines.append(message)


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"




def _reference(path: Path, x: torch.Tensor) -> np.ndarray:
    model, _ = select.open_model(path, runtime="torch", device="cpu")
    return model(x).numpy()


@pytest.mark.native
@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino", "ncnn"])
def test_each_runtime_reproduces_torch_on_a_checkpoint(c2, runtime):
    rt = get_runtime(runtime)
    if not rt.installed():
        pytest.skip(f"the {runtime} runtime is not installed (pip install \"srdistill[{rt.extra}]\")")
    x = torch.rand(2, 3, 21, 34, generator=torch.Generator().manual_seed(1))
    model, desc = select.open_model(c2, runtime=runtime, device="cpu")
    assert desc["runtime"] == runtime and desc["device"] == "cpu" and model.scale == 2
    y = model(x)
    assert tuple(y.shape) == (2, 3, 42, 68)
    assert np.abs(y.numpy() - _reference(c2, x)).max() <= 1e-4


@pytest.mark.native
def test_auto_measures_caches_and_says_why(c2, cache_home):
    rep = Lines()
    model, desc = select.open_model(c2, runtime="auto", device="cpu", size=(24, 40), reporter=rep)
    assert len(rep.lines) == 1 and rep.lines[0].startswith(f"runtime: {desc['runtime']} (")
    assert "MP/s" in rep.lines[0] and "at 40x24; measured)" in rep.lines[0]
    cache = json.loads((cache_home / "srdistill" / "runtimes.json").read_text())
    (entry,) = cache.values()
    assert entry["runtime"] == desc["runtime"] and "torch" in entry["mp_per_s"]
    rep2 = Lines()
    _, desc2 = select.open_model(c2, runtime="auto", device="cpu", size=(30, 36), reporter=rep2)  # same bucket
    assert desc2["runtime"] == desc["runtime"] and rep2.lines[0].endswith("; cached)")
    x = torch.rand(1, 3, 16, 16)
    assert np.abs(model(x).numpy() - _reference(c2, x)).max() <= 1e-4


def test_a_missing_runtime_names_its_extra_and_auto_skips_it(c2, monkeypatch):
    ov = get_runtime("openvino")
    monkeypatch.setattr(type(ov), "installed", lambda self: self.name not in ("openvino", "ncnn"))
    with pytest.raises(RuntimeMissingError, match=r'pip install "srdistill\[openvino\]"'):
        select.open_model(c2, runtime="openvino")
    rep = Lines()
    _, desc = select.open_model(c2, runtime="auto", device="cpu", size=(16, 16), reporter=rep)
    assert desc["runtime"] in ("torch", "onnxruntime") and "openvino" not in rep.lines[0]
    r = CliRunner().invoke(app, ["upscale", str(c2), "--runtime", "ncnn"])
    assert r.exit_code != 0


def test_runtime_flag_on_upscale_and_eval(c2, tmp_path):
    src = tmp_path / "a.png"
    PILImage.fromarray((np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)).save(src)
    cli = CliRunner()
    r = cli.invoke(app, ["upscale", str(src), "-m", str(c2), "--runtime", "onnxruntime", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["model"]["runtime"] == "onnxruntime"
    r = cli.invoke(app, ["upscale", str(src), "-m", str(c2), "--runtime", "bogus"])
    assert r.exit_code == 2 and "--runtime" in r.stderr
    r = cli.invoke(app, ["eval", str(c2), "--data", str(tmp_path), "--runtime", "onnxruntime", "--json",
                         "--repeats", "1", "--bench-size", "16"])
    assert r.exit_code == 0, r.stderr


def test_vnni_decides_the_int8_weight_range(tmp_path):
    with_vnni = tmp_path / "a"
    with_vnni.write_text("processor: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    without = tmp_path / "b"
    without.write_text("flags\t\t: fpu sse avx2\n")
    assert cpu_has_vnni(str(with_vnni)) and not cpu_has_vnni(str(without)) and not cpu_has_vnni(str(tmp_path / "x"))
    assert int8_weight_range("auto", vnni=True) == ("full", True)
    assert int8_weight_range("auto", vnni=False) == ("reduced", False)
    assert int8_weight_range("reduced", vnni=True) == ("reduced", True)


@pytest.mark.parametrize("weights", ["full", "reduced"])
def test_int8_export_records_its_weight_range(c2, tmp_path, weights):
    out = tmp_path / "q.onnx"
    res = export_model("onnx", c2, out, ExportOptions(int8=True, simplify=False, force=True, int8_weights=weights))
    assert res.quantization.weights == weights and res.to_dict()["quantization"]["weights"] == weights
    from srdistill.info import model_info

    meta = model_info(out).srdistill
    assert meta["quantization"]["weights"] == weights


@pytest.mark.native
def test_openvino_export_verifies_runs_and_is_described(c2, tmp_path):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    out = tmp_path / "m.xml"
    r = CliRunner().invoke(app, ["export", str(c2), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert "verification: OpenVINO vs PyTorch fp32" in r.stdout
    assert out.is_file() and out.with_suffix(".bin").is_file()
    doc = json.loads(CliRunner().invoke(app, ["info", str(out), "--json"]).stdout)
    assert doc["format"] == "openvino" and doc["scale"] == 2 and doc["architecture"] == "Compact"
    x = torch.rand(1, 3, 19, 23)
    model, desc = select.open_model(out, runtime="native", device="cpu")
    assert desc["runtime"] == "openvino" and np.abs(model(x).numpy() - _reference(c2, x)).max() <= 1e-4
    src = tmp_path / "a.png"
    PILImage.fromarray((np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)).save(src)
    r = CliRunner().invoke(app, ["upscale", str(src), "-m", str(out), "--json"])
    assert r.exit_code == 0, r.stderr and json.loads(r.stdout)["model"]["runtime"] == "openvino"


@pytest.mark.native
def test_openvino_int8_through_nncf(c2, tmp_path):
    pytest.importorskip("nncf", reason="NNCF (the openvino extra) is not installed")
    res = export_model("openvino", c2, tmp_path / "q.xml", ExportOptions(int8=True, force=True))
    q = res.quantization
    assert res.int8 and q.mode == "nncf" and q.psnr_int8_vs_fp32 is not None
    assert q.weights == int8_weight_range()[0] and (tmp_path / "q.bin").is_file()


@pytest.mark.native
def test_ncnn_export_verifies_runs_and_is_described(c2, tmp_path):
    pytest.importorskip("pnnx", reason="the ncnn extra is not installed")
    pytest.importorskip("ncnn", reason="the ncnn extra is not installed")
    out = tmp_path / "m.param"
    r = CliRunner().invoke(app, ["export", str(c2), "--format", "ncnn", "-o", str(tmp_path) + "/"])
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "compact_x2.param"
    assert "verification: ncnn vs PyTorch fp32" in r.stdout and "ncnn fp16" in r.stdout
    assert out.is_file() and out.with_suffix(".bin").is_file()
    doc = json.loads(CliRunner().invoke(app, ["info", str(out), "--json"]).stdout)
    assert doc["format"] == "ncnn" and doc["scale"] == 2 and doc["runtime_file"]["inputs"] == ["in0"]
    x = torch.rand(1, 3, 19, 23)
    model, desc = select.open_model(out, runtime="native", device="cpu")
    assert desc["runtime"] == "ncnn" and np.abs(model(x).numpy() - _reference(c2, x)).max() <= 2e-2
    r = CliRunner().invoke(app, ["export", str(c2), "--format", "ncnn", "-o", str(tmp_path / "x.param"), "--int8"])
    assert r.exit_code == 2 and "not implemented for ncnn" in r.stderr


@pytest.mark.native
def test_pnnx_runs_as_its_own_process_and_its_failure_is_one_line(c2, tmp_path, monkeypatch):
    """pnnx's converter is called directly: its exit status is checked, and the Python model pnnx
    generates is never imported into this process."""
    import sys

    pnnx = pytest.importorskip("pnnx", reason="the ncnn extra is not installed")
    from srdistill.errors import ModelLoadError
    from srdistill.models.loading import load_model
    from srdistill.runtimes.ncnn_runtime import pnnx_convert

    module = load_model(c2).module.eval()
    x = [torch.rand(1, 3, 16, 16), torch.rand(1, 3, 24, 16)]
    with torch.no_grad():
        param = pnnx_convert(module, tmp_path, x, fp16=False)
    assert param.is_file() and param.with_suffix(".bin").is_file()
    assert not [m for m in sys.modules if m.endswith("_pnnx") or m.endswith("_ncnn")]
    monkeypatch.setattr(pnnx, "EXEC_PATH", "/bin/false")
    (tmp_path / "model.ncnn.param").unlink()
    with pytest.raises(ModelLoadError, match=r"pnnx could not convert .*exit 1") as ei:
        with torch.no_grad():
            pnnx_convert(module, tmp_path, x, fp16=False)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("value", ["", "  ", "onnx\nruntime"])
def test_a_runtime_name_that_is_empty_or_unknown_is_one_line(value):
    from srdistill.errors import UsageError
    from srdistill.runtimes.select import check_runtime_name

    with pytest.raises(UsageError) as ei:
        check_runtime_name(value)
    assert "\n" not in str(ei.value) and "--runtime" in str(ei.value)
