"""A new user's first hour: the design card's command on the bundled teacher, widths a family
cannot take, and the like."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from srdistill.assets import BUNDLED_TEACHER
from srdistill.cli import app
from srdistill.models.loading import load_model
from srdistill.models.students import student_spec


@pytest.fixture(scope="module")
def dctlsa():
    return load_model(BUNDLED_TEACHER)


@pytest.mark.parametrize("asked, used", [(32, 30), (33, 35), (2, 5), (30, 30)])
def test_a_width_the_family_cannot_take_is_rounded_with_a_notice(dctlsa, asked, used):
    spec = student_spec(dctlsa, asked)
    assert spec.width == used and spec.kwargs["nf"] == used
    if asked != used:
        assert spec.notes == [f"DCTLSA widths are multiples of 5: using {used}"]
    else:
        assert spec.notes == []


def test_the_design_card_command_works_on_the_bundled_teacher(tmp_path, monkeypatch):
    """`srdistill distill teacher.safetensors --student-width 32`, shortened to a few steps."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher.safetensors").write_bytes(BUNDLED_TEACHER.read_bytes())
    r = CliRunner().invoke(app, ["distill", "teacher.safetensors", "--student-width", "32", "--steps", "2",
                                 "--max-images", "1", "--no-val", "-b", "2", "--no-teacher-cache"])
    assert r.exit_code == 0, r.output
    assert "DCTLSA widths are multiples of 5: using 30" in r.output
    with safe_open(str(tmp_path / "student.safetensors"), "pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["srdistill.config"])
    assert cfg["student_width"] == 32 and cfg["student_width_used"] == 30
    assert load_model(tmp_path / "student.safetensors").hyperparameters["nf"] == 30


def test_own_data_without_val_validates_on_the_builtin_photos_beside_bicubic(tmp_path):
    from test_distill import _cfg, _natural  # noqa: F401
    import numpy as np
    from PIL import Image as PILImage

    from srdistill.distill.trainer import distill
    from srdistill.progress import RecordingReporter

    d = tmp_path / "mine"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        PILImage.fromarray(_natural(rng, 96, 96)).save(d / f"p{i}.png")
    from srdistill.models._compat import import_spandrel

    import_spandrel()
    import torch
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    torch.save(Compact(num_feat=8, num_conv=1, upscale=2).state_dict(), tmp_path / "t.pth")
    rep = RecordingReporter()
    cfg = _cfg(tmp_path / "t.pth", d, tmp_path, val=None, steps=3, max_images=None)
    res = distill(cfg, rep)
    assert any("validation:" in m and "built-in photos" in m and "bicubic scores" in m for m in rep.infos)
    assert res.best is not None and res.bicubic is not None
    # three steps of a random teacher: far below bicubic, and the user is told
    assert res.best["psnr"] < res.bicubic["psnr"]
    assert any("below bicubic" in w for w in rep.warnings)


def test_output_is_accepted_everywhere_and_out_stays_an_alias():
    import typer

    group = typer.main.get_command(app)
    for name in ("distill", "export", "upscale"):
        opts = {o for p in group.commands[name].params for o in getattr(p, "opts", [])}
        assert {"--output", "-o"} <= opts, (name, opts)
    distill_opts = {o for p in group.commands["distill"].params for o in getattr(p, "opts", [])}
    assert "--out" in distill_opts


def test_tests_leave_no_litter_in_the_system_temp_folder():
    """Every mkdtemp in the test suite is cleaned up (pytest's tmp_path is preferred)."""
    from pathlib import Path

    root = Path(__file__).parent
    for f in root.rglob("*.py"):
        text = f.read_text()
        if "mkdtemp(" in text and f.name != "test_first_hour.py":
            assert "rmtree" in text, f"{f} creates a temp folder and never removes it"


def test_inputs_are_checked_before_outputs_and_missing_paths_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "student.safetensors").write_bytes(b"the user's file")
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    r = CliRunner().invoke(app, ["distill", "photo.jpg", "-w", "8"])
    assert r.exit_code == 2, r.output
    assert "photo.jpg is not a model file" in r.output and "already exists" not in r.output
    r = CliRunner().invoke(app, ["distill", "missing.pth", "-w", "8"])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = CliRunner().invoke(app, ["info", "missing.pth"])
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "broken.pth").write_bytes(b"not a pickle")
    r = CliRunner().invoke(app, ["info", "broken.pth"])
    assert r.exit_code == 1, r.output  # exists but fails to load
    assert (tmp_path / "student.safetensors").read_bytes() == b"the user's file"


def _tiny(tmp_path):
    import numpy as np
    import torch
    from PIL import Image as PILImage

    from srdistill.models._compat import import_spandrel
    from test_distill import _natural

    import_spandrel()
    from spandrel.architectures.Compact import Compact

    d = tmp_path / "mine"
    d.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        PILImage.fromarray(_natural(rng, 64, 64)).save(d / f"p{i}.png")
    torch.manual_seed(0)
    torch.save(Compact(num_feat=8, num_conv=1, upscale=2).state_dict(), tmp_path / "t.pth")
    return tmp_path / "t.pth", d


def test_resume_continues_the_recorded_run_and_refuses_a_different_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    teacher, data = _tiny(tmp_path)
    base = ["distill", str(teacher), "-w", "4", "-d", "1", "-b", "2", "-p", "16", "--no-val", "--seed", "3"]
    r = CliRunner().invoke(app, [*base, "--data", str(data), "--steps", "6", "--checkpoint-every", "3"])
    assert r.exit_code == 0, r.output
    student = tmp_path / "student.safetensors"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    # nothing left to do: --data left out and --steps below the checkpoint's step change no file
    for extra in ([], ["--steps", "5"], ["--steps", "6"]):
        r = CliRunner().invoke(app, ["distill", str(teacher), "-w", "4", "--resume", *extra])
        assert r.exit_code == 0, r.output
        assert "nothing to do" in r.output and "no file was changed" in r.output
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    # an explicit option that differs from the run's is a usage error naming it
    for extra, flag in ((["--lr", "0.1"], "--lr"), (["--data", str(tmp_path)], "--data"),
                        (["--alpha", "0.9"], "--alpha"), (["--loss", "mse"], "--loss")):
        r = CliRunner().invoke(app, ["distill", str(teacher), "-w", "4", "--resume", "--steps", "9", *extra])
        assert r.exit_code == 2, r.output
        assert f"--resume: {flag} " in r.output and "differs from the run in the checkpoint" in r.output
    other = tmp_path / "other.pth"
    import torch

    sd = torch.load(teacher, weights_only=True)
    sd["body.0.bias"] += 1
    torch.save(sd, other)
    r = CliRunner().invoke(app, ["distill", str(other), "-w", "4", "--resume", "--steps", "9"])
    assert r.exit_code == 2 and "not the teacher this run was started with" in r.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != "other.pth"} == before
    # --steps extends the run, on its recorded data
    r = CliRunner().invoke(app, ["distill", str(teacher), "-w", "4", "--resume", "--steps", "9"])
    assert r.exit_code == 0, r.output
    meta = json.loads(load_model(student).metadata["srdistill.config"])
    assert meta["steps"] == 9 and meta["data"] == [str(data)]


def test_an_interrupted_run_with_validation_ends_with_the_uninterrupted_runs_best_student(tmp_path, monkeypatch):
    import torch

    from srdistill.distill.run import TrainHooks
    from srdistill.distill.trainer import distill
    from srdistill.errors import Interrupted
    from test_distill import _cfg

    teacher, data = _tiny(tmp_path)
    kw = dict(val=None, val_every=2, steps=12, checkpoint_every=2, lr=5e-2)  # a high lr: scores go up and down
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    full = distill(_cfg(teacher, data, tmp_path / "a", **kw))
    with pytest.raises(Interrupted):
        distill(_cfg(teacher, data, tmp_path / "b", **kw), hooks=TrainHooks(sigterm_at_step=7))
    resumed = distill(_cfg(teacher, data, tmp_path / "b", resume=True, **kw))
    assert resumed.best == full.best
    a, b = load_model(full.out), load_model(resumed.out)
    for k, v in a.module.state_dict().items():
        assert torch.equal(v, b.module.state_dict()[k]), k
    assert a.metadata["srdistill.metrics"] == b.metadata["srdistill.metrics"]


@pytest.mark.parametrize("cmd", ["info", "distill", "export", "eval", "upscale"])
def test_help_placeholders_are_words_not_python_types(cmd):
    r = CliRunner().invoke(app, [cmd, "--help"])
    assert r.exit_code == 0
    for bad in ("<int>", "<float>", "<str>", "<path>", "<list[", "<Path>"):
        assert bad not in r.output, (bad, r.output)
    if cmd != "info":  # info has no valued options
        assert " N " in r.output or " FILE " in r.output or " DIR " in r.output


def test_piped_results_are_plain_lines_of_at_most_100_columns(tmp_path):
    import subprocess
    import sys

    from srdistill.assets import ASSETS

    out = subprocess.run([sys.executable, "-m", "srdistill", "info", str(ASSETS / "models" / "default_x4.safetensors")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) > 5
    assert max(len(line) for line in lines) <= 100
    assert not any(line != line.rstrip() for line in lines)  # no padding


def test_markup_and_control_characters_in_paths_print_as_plain_text(tmp_path):
    """Issue 17, class 4: text from paths and metadata is never rich markup and never drives the terminal."""
    from srdistill.console import PlainTable, escape_control, stdout_console

    assert escape_control("a\x1b[31mred\x07") == "a\\x1b[31mred\\x07"
    t = PlainTable(title="[/bold]")
    t.add_column("[link=http://x]name")
    t.add_row("[/x].png\x1b[2J")
    con = stdout_console()
    with con.capture() as cap:
        con.print(t)
    out = cap.get()
    assert "[/x].png\\x1b[2J" in out and "[/bold]" in out and "[link=http://x]name" in out
    assert "\x1b" not in out


def test_a_model_with_markup_in_its_path_and_metadata_is_described(tmp_path):
    import torch
    from safetensors.torch import save_file

    from srdistill.models._compat import import_spandrel

    import_spandrel()
    from spandrel.architectures.Compact import Compact

    d = tmp_path / "[red]" / "["
    d.mkdir(parents=True)
    p = d / "x].safetensors"  # the path reads ".../[red]/[/x].safetensors": markup if rich parsed it
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in Compact(num_feat=4, num_conv=1, upscale=2).state_dict().items()},
              str(p), metadata={"modelspec.title": "[/bold]\x1b[2J"})
    r = CliRunner().invoke(app, ["info", str(p)])
    assert r.exit_code == 0, r.output
    assert "[/x].safetensors" in r.output and "Traceback" not in r.output and "\x1b" not in r.output


@pytest.mark.parametrize("args, flag", [
    (["--seed", "-1"], "--seed"), (["--threads", "-1"], "--threads"), (["--weight-decay", "nan"], "--weight-decay"),
    (["--grad-clip", "nan"], "--grad-clip"), (["--warmup-steps", "-1"], "--warmup-steps"),
    (["--batch-size", "1000000000"], "--batch-size"), (["--student-depth", "100000"], "--student-depth"),
    (["--feature-weight", "nan"], "--feature-weight"),
])
def test_absurd_numbers_are_one_line_usage_errors(tmp_path, args, flag):
    teacher, data = _tiny(tmp_path)
    r = CliRunner().invoke(app, ["distill", str(teacher), "-w", "4", "--data", str(data), *args,
                                 "-o", str(tmp_path / "s.safetensors")])
    assert r.exit_code == 2, r.output
    assert r.output.strip().startswith("error:") and flag in r.output and "Traceback" not in r.output
    assert not (tmp_path / "s.safetensors").exists()
