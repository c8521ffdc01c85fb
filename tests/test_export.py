"""ONNX export: parity with PyTorch at several sizes per family, window-attention detection,
metadata, fp16, int8 (static and dynamic, the PSNR gate), file safety and the CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from srdistill.cli import app
from srdistill.errors import ExportError, OutputExistsError, SrDistillError, UnsupportedModelError, UsageError
from srdistill.export import ExportOptions, Int8QualityError, export_onnx, parse_static_size
from srdistill.export.calibration import synthetic_hr
from srdistill.export.onnx import Exporter
from srdistill.models._compat import import_spandrel
from srdistill.models.checkpoint import save_student
from srdistill.models.loading import SRModel, model_from_state_dict
from srdistill.models.students import build_student
from srdistill.onnx_model import load_onnx
from srdistill.progress import RecordingReporter

import_spandrel()
from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402

# (arch, width, depth) of tiny students; SAFMN/PLKSR widths must be multiples of 4
FAMILIES = [("compact", 8, 2), ("span", 8, None), ("edsr", 8, 2), ("esrgan", 8, 1), ("plksr", 8, 2),
            ("safmn", 8, 2)]


@pytest.fixture(scope="module")
def teacher() -> SRModel:
    torch.manual_seed(0)
    return model_from_state_dict(Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=2).state_dict())


@pytest.fixture(scope="module")
def teacher_file(teacher, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ckpt") / "compact_x2.safetensors"
    save_student(p, teacher)
    return p


@pytest.fixture(scope="module")
def exported(teacher, tmp_path_factory):
    """One default export per family, shared by the tests that inspect it."""
    folder = tmp_path_factory.mktemp("onnx")
    cache: dict = {}

    def get(arch: str):
        if arch not in cache:
            _, width, depth = next(f for f in FAMILIES if f[0] == arch)
            torch.manual_seed(1)
            student = build_student(teacher, width, depth, arch=arch)
            out = folder / f"{arch}.onnx"
            cache[arch] = (student, out, export_onnx(student, out, ExportOptions(), RecordingReporter()))
        return cache[arch]

    return get


def _tiny_swinir() -> SRModel:
    torch.manual_seed(0)
    return model_from_state_dict(SwinIR(img_size=16, embed_dim=8, depths=[1], num_heads=[2], window_size=4,
                                        mlp_ratio=1.0, upscale=2, upsampler="pixelshuffledirect").state_dict())


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x})[0]


def _torch(model: SRModel, x: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(x)).numpy()


def _calibration_dir(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(synthetic_hr(n, 150, 170, seed=5)):
        Image.fromarray(im).save(folder / f"img{i}.png")
    return folder


def _no_leftovers(folder: Path, name: str) -> None:
    assert not (folder / name).exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".partial")]


# --------------------------------------------------------------------------- parity per family


@pytest.mark.parametrize("arch", [f[0] for f in FAMILIES])
def test_parity_at_several_sizes(exported, arch):
    student, out, res = exported(arch)
    assert out.is_file() and res.path == out and res.sha256 and res.size_bytes == out.stat().st_size
    assert res.static_size is None and res.simplified
    stages = {v.stage for v in res.verification}
    assert stages == {"export", "simplified"}
    assert all(v.ok and v.max_abs_diff is not None and v.max_abs_diff <= 1e-4 for v in res.verification)
    sizes = {(v.size, v.batch) for v in res.verification if v.stage == "export"}
    assert len(sizes) == 3
    assert any(h != w for (h, w), _ in sizes), "one verification size must be non-square"
    assert any(b > 1 for _, b in sizes), "one verification input must be a batch"
    if student.multiple_of == 1:
        assert any(h % 8 and w % 8 for (h, w), _ in sizes), "one size must not be a multiple of 8"
    # an independent check at yet another size through the written file
    x = np.random.default_rng(3).random((1, 3, 24, 40), dtype=np.float32)
    np.testing.assert_allclose(_run(out, x), _torch(student, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", [f[0] for f in FAMILIES])
def test_contract_and_metadata(exported, arch):
    student, out, res = exported(arch)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    (inp,), (outp,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and outp.name == "output"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    odims = [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim]
    assert odims[0] == "batch" and odims[1] == 3 and all(isinstance(d, str) for d in odims[2:])
    meta = {p.key: p.value for p in proto.metadata_props}
    for key in ("srdistill.scale", "srdistill.architecture", "srdistill.hyperparameters", "srdistill.version",
                "srdistill.source_sha256", "srdistill.params", "srdistill.min_size", "srdistill.multiple_of"):
        assert key in meta, key
        json.loads(meta[key])  # every value is JSON
    assert json.loads(meta["srdistill.scale"]) == 2
    assert json.loads(meta["srdistill.architecture"]) == student.architecture
    assert json.loads(meta["srdistill.params"]) == student.params
    assert json.loads(meta["srdistill.multiple_of"]) == student.multiple_of
    assert isinstance(json.loads(meta["srdistill.hyperparameters"]), dict)
    assert "srdistill.static_size" not in meta
    om = load_onnx(out)
    assert om.scale == 2 and om.architecture == student.architecture and om.static_size is None
    assert om.params == student.params and om.multiple_of == student.multiple_of


def test_span_graph_has_no_training_branches(exported):
    student, out, res = exported("span")
    assert res.reparameterized == 20  # conv_1, conv_2 and 3 per SPAB x 6
    proto = onnx.load(str(out))
    names = {i.name for i in proto.graph.initializer} | {i for n in proto.graph.node for i in n.input}
    assert not [n for n in names if ".sk." in n or ".conv.0." in n or ".conv.1." in n or ".conv.2." in n]
    convs = Counter(n.op_type for n in proto.graph.node)["Conv"]
    assert convs == 22  # 20 deploy convs + conv_cat + upsampler: one Conv per Conv3XC
    # the student itself was left untouched (still trainable, same forward)
    assert all(p.requires_grad for p in student.module.parameters())


# --------------------------------------------------------------------------- size-dependent graphs


@pytest.mark.filterwarnings("ignore::UserWarning")  # spandrel's SwinIR calls torch.meshgrid without indexing
def test_window_attention_refused_without_static_size(tmp_path):
    model = _tiny_swinir()
    with pytest.raises(ExportError, match="--static-size") as e:
        export_onnx(model, tmp_path / "swin.onnx", ExportOptions())
    assert "window attention" in str(e.value) and "\n" not in str(e.value)
    _no_leftovers(tmp_path, "swin.onnx")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_window_attention_static_size(tmp_path):
    model = _tiny_swinir()
    out = tmp_path / "swin.onnx"
    res = export_onnx(model, out, ExportOptions(static_size=(24, 20), simplify=False))
    assert res.static_size == (24, 20) and res.to_dict()["dynamic"] is False
    assert all(v.ok and v.size == (24, 20) for v in res.verification)
    om = load_onnx(out)
    assert om.static_size == (24, 20)
    assert json.loads(om.metadata["srdistill.static_size"]) == [24, 20]
    x = np.random.default_rng(0).random((1, 3, 24, 20), dtype=np.float32)
    np.testing.assert_allclose(_run(out, x), _torch(model, x), atol=1e-4, rtol=0)


class _ShapeBaking(nn.Module):
    """Not a window model, but its traced graph bakes the size in (int() of a shape)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.up = nn.PixelShuffle(2)

    def forward(self, x):
        h, w = int(x.shape[2]), int(x.shape[3])
        return self.up(self.conv(x)) + F.interpolate(x, size=(2 * h, 2 * w), mode="nearest")


def test_size_dependent_graph_detected_by_verification(tmp_path):
    torch.manual_seed(0)
    model = SRModel(module=_ShapeBaking().eval(), architecture="Baked", scale=2)
    with pytest.raises(ExportError, match="--static-size") as e:
        export_onnx(model, tmp_path / "b.onnx", ExportOptions())
    assert "only right at the size it was traced at" in str(e.value)
    _no_leftovers(tmp_path, "b.onnx")
    res = export_onnx(model, tmp_path / "b.onnx", ExportOptions(static_size=(32, 32)))
    assert res.static_size == (32, 32) and all(v.ok for v in res.verification)
    # no file for a model known by sha256: the tensor hash stands in
    assert len(res.source_sha256) == 64


# --------------------------------------------------------------------------- fp16


def test_fp16_within_tolerance(teacher, tmp_path):
    out = tmp_path / "c16.onnx"
    res = export_onnx(teacher, out, ExportOptions(fp16=True))
    assert res.fp16 and res.precision == "fp16" and not res.int8
    rows = [v for v in res.verification if v.stage == "fp16"]
    assert len(rows) == 3 and all(v.ok and v.max_abs_diff <= 2e-2 and v.tolerance == 2e-2 for v in rows)
    assert res.size_bytes < res.fp32_size_bytes
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O contract
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    assert json.loads({p.key: p.value for p in proto.metadata_props}["srdistill.precision"]) == "fp16"
    x = np.random.default_rng(1).random((1, 3, 30, 22), dtype=np.float32)
    np.testing.assert_allclose(_run(out, x), _torch(teacher, x), atol=2e-2, rtol=0)
    assert load_onnx(out).scale == 2


def test_fp16_refused_when_it_overflows(tmp_path):
    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    with torch.no_grad():  # same function in fp32 (PReLU commutes with scaling), but the hidden
        net.body[0].weight.mul_(1e5)  # activations go beyond float16's 65504
        net.body[0].bias.mul_(1e5)
        net.body[2].weight.mul_(1e-5)
    model = model_from_state_dict(net.state_dict())
    # onnxruntime's CPU provider upcasts fp16 convs, so its output alone would look fine here
    with pytest.raises(ExportError, match="fp16 is not safe.*float16 overflows"):
        export_onnx(model, tmp_path / "x.onnx", ExportOptions(fp16=True, simplify=False))
    _no_leftovers(tmp_path, "x.onnx")


# --------------------------------------------------------------------------- int8


def test_int8_static_reports_psnr_and_speed(teacher, tmp_path):
    calib = _calibration_dir(tmp_path / "calib")
    out = tmp_path / "c8.onnx"
    res = export_onnx(teacher, out, ExportOptions(int8=True, calibration=calib, force=True))
    q = res.quantization
    assert res.int8 and q is not None and q.mode == "static" and q.image_source == "calibration"
    assert q.psnr_reference == "hr" and q.images == 3 and q.calibration_images == 3
    assert np.isfinite(q.psnr_fp32) and np.isfinite(q.psnr_int8)
    assert q.psnr_drop == pytest.approx(q.psnr_fp32 - q.psnr_int8)
    assert q.fp32_ms > 0 and q.int8_ms > 0 and q.speedup == pytest.approx(q.fp32_ms / q.int8_ms)
    assert q.speed_size == (128, 128)
    d = res.to_dict()
    assert d["psnr_drop"] == q.psnr_drop and d["speedup"] == q.speedup and d["int8"] is True
    proto = onnx.load(str(out))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["srdistill.precision"]) == "int8"
    assert json.loads(meta["srdistill.quantization"])["mode"] == "static"
    assert load_onnx(out).scale == 2
    assert [v for v in res.verification if v.stage == "int8"] and res.size_bytes < res.fp32_size_bytes


def test_int8_dynamic_without_calibration(teacher, tmp_path):
    res = export_onnx(teacher, tmp_path / "d8.onnx", ExportOptions(int8=True, force=True, simplify=False))
    q = res.quantization
    assert q.mode == "dynamic" and q.image_source == "synthetic" and q.calibration_images == 0
    assert q.psnr_drop is not None and q.speedup > 0


def test_int8_psnr_gate(teacher, tmp_path, monkeypatch):
    calib = _calibration_dir(tmp_path / "calib", n=2)
    real = Exporter.quantize

    def lossy(self, *a, **k):  # pretend int8 costs 1 dB
        data, rep = real(self, *a, **k)
        rep.psnr_int8 = rep.psnr_fp32 - 1.0
        rep.psnr_drop = 1.0
        return data, rep

    monkeypatch.setattr(Exporter, "quantize", lossy)
    out = tmp_path / "g.onnx"
    with pytest.raises(Int8QualityError, match="more than --max-psnr-drop 0.3") as e:
        export_onnx(teacher, out, ExportOptions(int8=True, calibration=calib, simplify=False))
    assert e.value.exit_code == 3
    _no_leftovers(tmp_path, "g.onnx")
    r = CliRunner().invoke(app, ["export", str(_save(teacher, tmp_path)), "-o", str(out), "--int8",
                                 "--calibration", str(calib), "--no-simplify"])
    assert r.exit_code == 3 and r.stderr.strip().splitlines()[-1].startswith("error: int8 loses 1.00 dB")
    rep = RecordingReporter()
    res = export_onnx(teacher, out, ExportOptions(int8=True, calibration=calib, simplify=False, force=True), rep)
    assert out.is_file() and res.quantization.psnr_drop == 1.0 and any("--force" in w for w in rep.warnings)


def _save(model: SRModel, folder: Path) -> Path:
    p = folder / "model.safetensors"
    if not p.exists():
        save_student(p, model)
    return p


# --------------------------------------------------------------------------- file safety


def test_no_overwrite_without_flag(teacher, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError):
        export_onnx(teacher, out, ExportOptions(simplify=False))
    assert out.read_bytes() == b"precious"
    res = export_onnx(teacher, out, ExportOptions(simplify=False, overwrite=True))
    assert out.read_bytes() != b"precious" and res.size_bytes == out.stat().st_size


def test_parse_static_size():
    assert parse_static_size("64x96") == (64, 96)
    assert parse_static_size("48") == (48, 48)
    assert parse_static_size(None) is None
    for bad in ("abc", "0x5", "5x0", "x5", "-3x4", "1.5x2"):
        with pytest.raises(UsageError):
            parse_static_size(bad)


def test_option_checks(teacher, tmp_path):
    for opts in (ExportOptions(opset=12), ExportOptions(opset=99), ExportOptions(fp16=True, int8=True),
                 ExportOptions(calibration=tmp_path), ExportOptions(int8=True, max_psnr_drop=-1)):
        with pytest.raises(UsageError):
            export_onnx(teacher, tmp_path / "o.onnx", opts)
    with pytest.raises(UnsupportedModelError, match="already an ONNX model"):
        p = tmp_path / "m.onnx"
        p.write_bytes(b"x")
        export_onnx(p, tmp_path / "o.onnx")
    with pytest.raises(SrDistillError, match="does not exist"):
        export_onnx(teacher, tmp_path / "o.onnx", ExportOptions(int8=True, calibration=tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SrDistillError, match="holds no images"):
        export_onnx(teacher, tmp_path / "o.onnx", ExportOptions(int8=True, calibration=tmp_path / "empty"))
    _no_leftovers(tmp_path, "o.onnx")


# --------------------------------------------------------------------------- CLI


def test_cli_json(teacher_file, tmp_path):
    out = tmp_path / "cli.onnx"
    r = CliRunner().invoke(app, ["export", str(teacher_file), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["path"] == str(out) and doc["architecture"] == "Compact" and doc["scale"] == 2
    assert doc["opset"] == 17 and doc["simplified"] is True and doc["dynamic"] is True
    assert doc["fp16"] is False and doc["int8"] is False and doc["static_size"] is None
    assert doc["size_bytes"] == out.stat().st_size and len(doc["sha256"]) == 64
    assert all(v["ok"] for v in doc["verification"]) and {"size", "max_abs_diff", "ok"} <= set(doc["verification"][0])
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["srdistill.source_sha256"]) == doc["source_sha256"]
    # the same file again: refused, exit 1, one line
    r2 = CliRunner().invoke(app, ["export", str(teacher_file), "-o", str(out), "--json"])
    assert r2.exit_code == 1 and r2.stdout == ""
    assert r2.stderr.strip().startswith("error:") and "--overwrite" in r2.stderr and len(r2.stderr.strip().splitlines()) == 1


def test_cli_table(teacher_file, tmp_path):
    calib = _calibration_dir(tmp_path / "calib", n=2)
    r = CliRunner().invoke(app, ["export", str(teacher_file), "-o", str(tmp_path / "t.onnx"), "--int8",
                                 "--calibration", str(calib), "--force", "--no-simplify", "--opset", "16"])
    assert r.exit_code == 0, r.output
    for word in ("verification", "64x64", "int8", "PSNR", "CPU speed", "file size"):
        assert word in r.stdout


@pytest.mark.parametrize("args, code, needle", [
    (["{missing}", "-o", "{out}"], 2, "does not exist"),  # a missing path is a usage error
    (["{onnx}", "-o", "{out}"], 1, "already an ONNX model"),
    (["{model}", "-o", "{out}.pt"], 2, "must end in .onnx"),
    (["{model}", "-o", "{exists}"], 1, "already exists"),
    (["{model}", "-o", "{out}", "--static-size", "abc"], 2, "--static-size"),
    (["{model}", "-o", "{out}", "--static-size", "0x5"], 2, "--static-size"),
    (["{model}", "-o", "{out}", "--opset", "12"], 2, "--opset 12"),
    (["{model}", "-o", "{out}", "--int8", "--calibration", "{missing}"], 2, "does not exist"),
    (["{model}", "-o", "{out}", "--int8", "--calibration", "{dir}"], 1, "holds no images"),
    (["{model}", "-o", "{out}", "--fp16", "--int8"], 2, "exclude each other"),
    (["{model}"], 2, "-o"),
])
def test_cli_bad_inputs(teacher_file, tmp_path, args, code, needle):
    (tmp_path / "folder").mkdir()
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    (tmp_path / "exists.onnx").write_bytes(b"x")
    subst = {"{missing}": str(tmp_path / "nope"), "{out}": str(tmp_path / "out.onnx"), "{onnx}": str(tmp_path / "m.onnx"),
             "{model}": str(teacher_file), "{dir}": str(tmp_path / "folder"), "{exists}": str(tmp_path / "exists.onnx")}
    r = CliRunner().invoke(app, ["export", *[subst.get(a, a) for a in args]])
    assert r.exit_code == code, r.output
    err = r.stderr.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in r.output and r.stdout == ""
    assert not (tmp_path / "out.onnx").exists()


def test_cli_output_folder_receives_model_stem_onnx(tmp_path, teacher_file):
    from typer.testing import CliRunner

    from srdistill.cli import app

    folder = tmp_path / "exports"
    r = CliRunner().invoke(app, ["export", str(teacher_file), "-o", f"{folder}/", "--no-simplify"])
    assert r.exit_code == 0, r.output
    assert (folder / (teacher_file.stem + ".onnx")).is_file()
