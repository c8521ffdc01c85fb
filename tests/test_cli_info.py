"""``srdistill info`` through the real CLI: one JSON document on stdout, a table for people,
one-line errors on stderr with the documented exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from srdistill import __version__
from srdistill.cli import app
from srdistill.models.checkpoint import save_student
from srdistill.models.families import FAMILIES
from srdistill.models.loading import model_from_state_dict

# third-party noise from spandrel's OmniSR / SwinIR code
pytestmark = [
    pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning"),
]

# tiny instances of every family (constructor arguments of the family's class)
TINY = {
    "EDSR": dict(num_feat=8, num_block=1, upscale=2),
    "ESRGAN": dict(num_filters=8, num_blocks=1, scale=4),
    "RCAN": dict(n_feats=16, n_resgroups=1, n_resblocks=1, scale=2),
    "SwinIR": dict(embed_dim=8, depths=[1], num_heads=[2], window_size=8, mlp_ratio=2.0,
                   upsampler="pixelshuffledirect", upscale=3, img_size=16),
    "SPAN": dict(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2),
    "Compact": dict(num_feat=8, num_conv=2, upscale=4),
    "PLKSR": dict(dim=8, n_blocks=1, upscaling_factor=2, kernel_size=7),
    "RealPLKSR": dict(dim=8, n_blocks=2, upscaling_factor=2, kernel_size=7),
    "SAFMN": dict(dim=8, n_blocks=1, upscaling_factor=2),
    "OmniSR": dict(num_feat=8, res_num=1, up_scale=2),
    "DCTLSA": dict(nf=10, upscale=4),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def saved(fid: str, path):
    torch.manual_seed(0)
    module = FAMILIES[fid].cls()(**TINY[fid])
    model = model_from_state_dict(module.state_dict(), name=fid)
    save_student(path, model)
    return model


def test_every_family_covered():
    assert set(TINY) == set(FAMILIES)


@pytest.mark.parametrize("fid", list(FAMILIES))
def test_info_json_for_each_family(fid, runner, tmp_path):
    path = tmp_path / f"{fid}.safetensors"
    model = saved(fid, path)
    fam = FAMILIES[fid]
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    doc = json.loads(result.stdout)  # exactly one JSON document
    assert doc["architecture"] == fid
    assert doc["scale"] == model.scale == TINY[fid].get(fam.scale_kw)
    assert doc["format"] == "safetensors"
    assert doc["params"] == model.params > 0
    assert doc["knobs"]["width"] == {"name": fam.width, "value": fam.get_width(model.hyperparameters)}
    assert doc["knobs"]["depth"]["value"] == fam.get_depth(model.hyperparameters)
    assert doc["knobs"]["depth"]["value"] == (fam.fixed_depth if fam.depth is None else
                                              fam.get_depth(TINY[fid]))
    assert doc["hyperparameters"][fam.width] == TINY[fid][fam.width]
    assert doc["input_channels"] == doc["output_channels"] == 3
    assert doc["srdistill"]["architecture"] == fid
    assert doc["modelspec"]["architecture"] == fid
    assert len(doc["sha256"]) == 64
    assert result.stderr == ""


def test_info_table(runner, tmp_path):
    path = tmp_path / "student.safetensors"
    model = saved("DCTLSA", path)
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for words in ("DCTLSA", "x4", f"{model.params:,}", "nf", "safetensors"):
        assert words in out
    # the hash is printed whole (wrapped, never cut with an ellipsis)
    assert "…" not in out
    sha = json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout)["sha256"]
    assert sha in "".join(out.split())


def test_info_on_a_plain_pth(runner, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.pth"
    torch.save({"params": FAMILIES["Compact"].cls()(num_feat=8, num_conv=2, upscale=2).state_dict()}, path)
    doc = json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout)
    assert (doc["architecture"], doc["scale"], doc["format"]) == ("Compact", 2, "pth")
    assert doc["srdistill"] == {}


def test_info_on_a_scale_1_model(runner, tmp_path):
    path = tmp_path / "denoise.pth"
    torch.save(FAMILIES["Compact"].cls()(num_feat=8, num_conv=1, upscale=1).state_dict(), path)
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["scale"] == 1


def _one_error_line(result) -> str:
    assert result.stdout == ""
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip("\n").splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    return lines[0]


def test_info_missing_file(runner, tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path / "nope.pth")])
    assert result.exit_code == 2  # a missing path is a usage error
    assert "nope.pth" in _one_error_line(result)


def test_info_missing_file_json(runner, tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path / "nope.pth"), "--json"])
    assert result.exit_code == 2
    _one_error_line(result)


def test_info_unsafe_pickle(runner, tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch '{tmp_path / 'MARKER'}'",))

    path = tmp_path / "evil.pth"
    torch.save({"w": Evil()}, path)
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 1
    assert "evil.pth" in _one_error_line(result)
    assert not (tmp_path / "MARKER").exists()


def test_info_unknown_option(runner, tmp_path):
    result = runner.invoke(app, ["info", "--bogus", str(tmp_path / "x.pth")])
    assert result.exit_code == 2
    assert "--bogus" in _one_error_line(result)


def test_info_without_argument_is_a_usage_error(runner):
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 2
    _one_error_line(result)


def test_version_subprocess():
    proc = subprocess.run([sys.executable, "-m", "srdistill", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"srdistill {__version__}"
