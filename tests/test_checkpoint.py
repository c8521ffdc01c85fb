"""Reading model files safely: pickles that would run code are refused without running it, and
every kind of not-a-model file is a one-line srdistill error that names the file."""

from __future__ import annotations

import builtins
import json
import os
import pathlib
import pickle
import struct
import subprocess

import pytest
import torch

from srdistill.errors import ModelLoadError, SrDistillError, UnsafeModelError, UnsupportedModelError
from srdistill.info import model_info
from srdistill.models._compat import import_spandrel
from srdistill.models.checkpoint import save_student, tensor_hash
from srdistill.models.families import FAMILIES
from srdistill.models.loading import load_model, model_from_state_dict, read_checkpoint

spandrel = import_spandrel()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def compact(upscale: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return FAMILIES["Compact"].cls()(num_feat=8, num_conv=1, upscale=upscale)


def assert_one_line(err: SrDistillError, path: pathlib.Path) -> str:
    msg = str(err)
    assert isinstance(err, SrDistillError)
    assert msg and "\n" not in msg, msg
    assert path.name in msg, msg
    return msg


# --------------------------------------------------------------------------------------------
# pickles that run code


class WritesMarker:
    """Unpickling calls pathlib.Path.write_text(marker, ...): plain python, no shell."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "pwned"))


class OsSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class BuiltinsEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class SubprocessPopen:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


PAYLOADS = [WritesMarker, OsSystem, BuiltinsEval, SubprocessPopen]


def test_the_marker_payload_is_live(tmp_path):
    """Control: plain pickle.loads really runs the payload, so its absence below means something."""
    marker = tmp_path / "MARKER"
    pickle.loads(pickle.dumps({"w": WritesMarker(marker)}, protocol=2))
    assert marker.read_text() == "pwned"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("how", ["pickle-p2", "pickle-default", "torch.save", "torch.save-nested"])
def test_code_running_pickle_refused_and_not_run(payload, how, tmp_path):
    marker = tmp_path / "MARKER"
    evil = payload(marker)
    path = tmp_path / ("evil.pt" if how == "torch.save" else "evil.pth")
    if how == "pickle-p2":  # the legacy (non-zip) torch format is a protocol-2 pickle
        path.write_bytes(pickle.dumps({"params": {"conv.weight": evil}}, protocol=2))
    elif how == "pickle-default":
        path.write_bytes(pickle.dumps({"conv.weight": evil}))
    elif how == "torch.save":
        torch.save(evil, path)
    else:
        torch.save({"params": {"body.0.weight": torch.zeros(1), "body.0.bias": evil}}, path)
    with pytest.raises(UnsafeModelError) as e:
        load_model(path)
    assert isinstance(e.value, ModelLoadError)
    assert_one_line(e.value, path)
    with pytest.raises(UnsafeModelError):  # `info` reads files the same way
        model_info(path)
    assert not marker.exists(), "unpickling ran code"


def test_unsafe_message_names_the_culprit(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": OsSystem(tmp_path / "MARKER")}, path)
    with pytest.raises(UnsafeModelError, match="system"):
        load_model(path)


# --------------------------------------------------------------------------------------------
# files that are not models


def _saved(tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    m = compact()
    st = save_student(tmp_path / "good.safetensors", model_from_state_dict(m.state_dict()))
    pth = tmp_path / "good.pth"
    torch.save(m.state_dict(), pth)
    return st, pth


def test_good_files_load(tmp_path):
    st, pth = _saved(tmp_path)
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(load_model(st)(x), load_model(pth)(x))


NOT_MODELS = {
    "text.pth": lambda d, st, pth: (d / "text.pth").write_text("hello, I am not a model\n"),
    "truncated.pth": lambda d, st, pth: (d / "truncated.pth").write_bytes(pth.read_bytes()[: pth.stat().st_size // 2]),
    "truncated.safetensors": lambda d, st, pth: (d / "truncated.safetensors").write_bytes(
        st.read_bytes()[: st.stat().st_size // 2]),
    "huge_header.safetensors": lambda d, st, pth: (d / "huge_header.safetensors").write_bytes(
        struct.pack("<Q", 2**62) + b'{"a": 1}'),
    "header_past_end.safetensors": lambda d, st, pth: (d / "header_past_end.safetensors").write_bytes(
        struct.pack("<Q", 10_000) + b"{}"),
    "not_json.safetensors": lambda d, st, pth: (d / "not_json.safetensors").write_bytes(
        struct.pack("<Q", 16) + b"this is not json" + b"\0" * 32),
    "random.safetensors": lambda d, st, pth: (d / "random.safetensors").write_bytes(
        bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).tolist())),
    "random.pth": lambda d, st, pth: (d / "random.pth").write_bytes(
        bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8).tolist())),
    "offsets_outside.safetensors": lambda d, st, pth: (d / "offsets_outside.safetensors").write_bytes(
        _st_bytes({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 16)),
    "empty.pth": lambda d, st, pth: (d / "empty.pth").write_bytes(b""),
    "empty.safetensors": lambda d, st, pth: (d / "empty.safetensors").write_bytes(b""),
    "folder.pth": lambda d, st, pth: (d / "folder.pth").mkdir(),
    "missing.pth": lambda d, st, pth: None,
    "model.h5": lambda d, st, pth: (d / "model.h5").write_bytes(pth.read_bytes()),
    "list.pth": lambda d, st, pth: torch.save([torch.zeros(1)], d / "list.pth"),
    "no_tensors.pth": lambda d, st, pth: torch.save({"epoch": 3, "lr": 0.1}, d / "no_tensors.pth"),
    "empty_dict.pth": lambda d, st, pth: torch.save({}, d / "empty_dict.pth"),
}


def _st_bytes(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize("name", list(NOT_MODELS))
def test_not_a_model_is_a_one_line_error(name, tmp_path):
    st, pth = _saved(tmp_path)
    NOT_MODELS[name](tmp_path, st, pth)
    path = tmp_path / name
    with pytest.raises(ModelLoadError) as e:
        load_model(path)
    assert_one_line(e.value, path)
    with pytest.raises(ModelLoadError):
        model_info(path)


def test_messages_say_what_is_wrong(tmp_path):
    st, pth = _saved(tmp_path)
    for name in ("missing.pth", "folder.pth", "empty.pth", "model.h5", "huge_header.safetensors"):
        NOT_MODELS[name](tmp_path, st, pth)
    cases = {"missing.pth": "does not exist", "folder.pth": "folder", "empty.pth": "empty",
             "model.h5": "unsupported model file type", "huge_header.safetensors": "header claims"}
    for name, words in cases.items():
        with pytest.raises(ModelLoadError, match=words):
            load_model(tmp_path / name)


def test_unknown_architecture_lists_supported_families(tmp_path):
    path = tmp_path / "mystery.pth"
    torch.save({"encoder.0.weight": torch.zeros(8, 3, 3, 3), "encoder.0.bias": torch.zeros(8)}, path)
    with pytest.raises(UnsupportedModelError) as e:
        load_model(path)
    msg = assert_one_line(e.value, path)
    assert "unknown architecture" in msg
    for fid in FAMILIES:  # every family srdistill distills is among those listed
        assert fid.replace("RealPLKSR", "PLKSR") in msg


def test_nan_weights_refused(tmp_path):
    sd = compact().state_dict()
    sd["body.0.weight"][0, 0, 1, 1] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    with pytest.raises(ModelLoadError, match="NaN") as e:
        load_model(path)
    assert "body.0.weight" in assert_one_line(e.value, path)


def test_integer_weights_refused(tmp_path):
    sd = compact().state_dict()
    sd["body.0.weight"] = (sd["body.0.weight"] * 100).long()
    path = tmp_path / "int.safetensors"
    from safetensors.torch import save_file

    save_file(sd, str(path))
    with pytest.raises(ModelLoadError, match="int64") as e:
        load_model(path)
    assert "body.0.weight" in assert_one_line(e.value, path)


@pytest.mark.parametrize("kind", ["compact-x1", "dncnn"])
def test_scale_1_model_refused_for_sr_but_described_by_info(kind, tmp_path):
    if kind == "dncnn":
        from spandrel.architectures.DnCNN import DnCNN

        module, arch = DnCNN(in_nc=3, out_nc=3, nc=8, nb=17), "DnCNN"
    else:
        module, arch = compact(upscale=1), "Compact"
    path = tmp_path / f"{kind}.pth"
    torch.save(module.state_dict(), path)
    with pytest.raises(UnsupportedModelError, match="scale 1") as e:
        load_model(path)
    assert_one_line(e.value, path)
    m = load_model(path, require_sr=False)
    assert (m.architecture, m.scale) == (arch, 1)
    info = model_info(path)
    assert (info.architecture, info.scale, info.params) == (arch, 1, m.params)


def test_onnx_path_refused_by_the_checkpoint_reader(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07")
    with pytest.raises(UnsupportedModelError) as e:
        read_checkpoint(path)
    assert_one_line(e.value, path)


# --------------------------------------------------------------------------------------------
# what save_student writes


def test_saved_file_metadata_and_hash(tmp_path):
    teacher = model_from_state_dict(compact(upscale=4).state_dict(), name="teacher")
    teacher.path = tmp_path / "teacher.pth"
    from srdistill.models.students import build_student

    student = build_student(teacher, 4, 1, seed=0)
    path = save_student(tmp_path / "s.safetensors", student, teacher=teacher, config={"steps": 10},
                        metrics={"psnr": 30.5})
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["modelspec.architecture"] == "Compact"
    assert meta["modelspec.implementation"] == "https://github.com/chaiNNer-org/spandrel"
    assert meta["modelspec.hash_sha256"] == "0x" + tensor_hash(state)
    assert json.loads(meta["srdistill.scale"]) == 4
    assert json.loads(meta["srdistill.knobs"]) == {"width": 4, "depth": 1}
    assert json.loads(meta["srdistill.params"]) == student.params
    assert json.loads(meta["srdistill.teacher"])["file"] == "teacher.pth"
    assert json.loads(meta["srdistill.config"]) == {"steps": 10}
    assert json.loads(meta["srdistill.metrics"]) == {"psnr": 30.5}
    loaded = load_model(path)
    assert loaded.srdistill["teacher"]["params"] == teacher.params
    # the file is plain safetensors that spandrel reads with no srdistill code
    assert spandrel.ModelLoader().load_from_file(str(path)).architecture.id == "Compact"


def test_tensor_hash_handles_scalar_tensors():
    # BatchNorm's num_batches_tracked (in DCTLSA, for one) is a 0-dim int64 tensor
    a = {"n": torch.tensor(3), "w": torch.ones(2)}
    b = {"n": torch.tensor(4), "w": torch.ones(2)}
    assert tensor_hash(a) != tensor_hash(b)
    assert tensor_hash(a) == tensor_hash({"w": torch.ones(2), "n": torch.tensor(3)})


def test_save_refuses_to_overwrite(tmp_path):
    from srdistill.errors import OutputExistsError

    m = model_from_state_dict(compact().state_dict())
    path = save_student(tmp_path / "s.safetensors", m)
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        save_student(path, m)
    assert path.read_bytes() == before
    save_student(path, m, overwrite=True)
