"""KD methods (issue: beat training from scratch): alpha schedules, data upcycling, teacher init.

Tiny real runs on generated images (CPU, seconds each); the quality study is bench/kd_methods.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from srdistill.cli import app
from srdistill.distill.schedule import make_schedule
from srdistill.distill.run import TrainHooks
from srdistill.distill.trainer import distill
from srdistill.errors import Interrupted, UsageError
from srdistill.models.loading import load_model, model_from_state_dict
from srdistill.models.students import build_student
from srdistill.models.teacher_init import init_from_teacher

from test_distill import _cfg, data_dir, teacher_path  # noqa: F401  (fixtures)


def _steps(log):
    return [json.loads(line) for line in open(log) if '"step"' in line and '"event": "step"' in line]


def test_eco_schedule_moves_alpha_from_teacher_to_ground_truth():
    s = make_schedule("eco", None, None, 100)
    assert s.at(0) == pytest.approx(1.0) and s.at(50) == pytest.approx(0.0) and s.at(99) == 0.0
    assert all(s.at(i) >= s.at(i + 1) for i in range(99))
    lin = make_schedule("linear", 0.8, 0.2, 11)
    assert lin.at(0) == pytest.approx(0.8) and lin.at(10) == pytest.approx(0.2) and lin.at(5) == pytest.approx(0.5)
    assert make_schedule("constant", None, None, 10).at(7) == 0.5


@pytest.mark.parametrize("kw, msg", [
    (dict(alpha_schedule="cosine"), "--alpha-schedule"),
    (dict(alpha_schedule="eco", alpha_end=1.5), "--alpha-end"),
    (dict(alpha_schedule="eco", alpha=float("nan")), "--alpha"),
    (dict(alpha_end=0.1), "--alpha-end needs"),
    (dict(upcycle=True, upcycle_ratio=1.5), "--upcycle-ratio"),
    (dict(upcycle=True, upcycle_ratio=0.0), "--upcycle-ratio"),
    (dict(upcycle_ratio=0.5), "needs --upcycle"),
    (dict(upcycle=True, teacher_cache=False), "teacher cache"),
    (dict(init="pretrained"), "--init"),
])
def test_bad_kd_method_options_are_usage_errors(teacher_path, data_dir, tmp_path, kw, msg):
    with pytest.raises(UsageError, match=msg.replace("-", r"\-")):
        distill(_cfg(teacher_path, data_dir, tmp_path, **kw))
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_bad_values_are_one_line_errors(teacher_path, data_dir, tmp_path):
    for extra in (["--upcycle", "--upcycle-ratio", "1.5"], ["--alpha-schedule", "nope"]):
        r = CliRunner().invoke(app, ["distill", str(teacher_path), "-w", "8", "--data", str(data_dir),
                                     "-o", str(tmp_path / "s.safetensors"), *extra])
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output and "error:" in r.output


def test_init_teacher_on_a_family_without_support_is_a_one_line_error(tmp_path, data_dir):
    from srdistill.models._compat import import_spandrel

    import_spandrel()
    from spandrel.architectures.PLKSR import PLKSR

    torch.manual_seed(0)
    t = tmp_path / "plksr.pth"
    torch.save(PLKSR(dim=16, n_blocks=2, upscaling_factor=2).state_dict(), t)
    r = CliRunner().invoke(app, ["distill", str(t), "-w", "8", "--data", str(data_dir), "--steps", "1",
                                 "--init", "teacher", "--no-val", "-o", str(tmp_path / "s.safetensors")])
    assert r.exit_code == 2, r.output
    assert "--init teacher does not support PLKSR" in r.output and "Compact" in r.output
    assert "reading images" not in r.output  # refused before any data is read
    assert sum(line.startswith("error:") for line in r.output.splitlines()) == 1


def _real_compact_teacher():
    """A Compact teacher with a learned-looking structure: trained briefly would be slow, so use a
    random net with strong residual; init must still reproduce it more closely than random."""
    from srdistill.models._compat import import_spandrel

    import_spandrel()
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(3)
    net = Compact(num_feat=32, num_conv=8, upscale=2)
    with torch.no_grad():
        net.body[-1].weight.mul_(4)
    return model_from_state_dict(net.state_dict(), name="teacher")


def test_init_teacher_starts_closer_to_the_teacher_than_random():
    teacher = _real_compact_teacher()
    x = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = teacher.module(x).clamp(0, 1)

    def psnr(m):
        with torch.no_grad():
            return float(-10 * torch.log10(((m.module(x).clamp(0, 1) - ref) ** 2).mean()))

    rnd = build_student(teacher, 16, 4, seed=0)
    init = build_student(teacher, 16, 4, seed=0)
    report = init_from_teacher(init, teacher, x[:2, :, :16, :16])
    assert report.channels == 16 and report.teacher_channels == 32 and len(report.blocks) == 4
    assert psnr(init) > psnr(rnd) + 1.0, (psnr(init), psnr(rnd))


def test_init_teacher_keeps_a_same_size_student_exact():
    teacher = _real_compact_teacher()
    s = build_student(teacher, 32, 8, seed=0)
    init_from_teacher(s, teacher)
    for k, v in teacher.module.state_dict().items():
        assert torch.equal(v, s.module.state_dict()[k])


def test_upcycle_eco_init_train_save_and_say_so(teacher_path, data_dir, tmp_path):
    from srdistill.progress import RecordingReporter

    rep = RecordingReporter()
    cfg = _cfg(teacher_path, data_dir, tmp_path, upcycle=True, alpha_schedule="eco", init="teacher", steps=20)
    res = distill(cfg, rep)
    text = "\n".join(rep.infos)
    assert "upcycle:" in text and "zoom-in" in text and "MB extra cache" in text
    assert "init from the teacher: 8 of 16 channels" in text
    assert "a = alpha 1 -> 0 (eco" in res.loss_formula
    assert res.teacher_cache["upcycle"]["zoom_in"] == 6 and res.teacher_cache["upcycle"]["per_batch"] == 1
    alphas = [r["alpha"] for r in _steps(res.log)]
    assert alphas[0] > 0.5 and alphas[-1] == 0.0
    meta = load_model(res.out)
    assert meta.architecture == "Compact"


def test_resume_with_upcycle_and_eco_equals_an_uninterrupted_run(teacher_path, data_dir, tmp_path, monkeypatch):
    kw = dict(upcycle=True, alpha_schedule="eco", upcycle_ratio=0.5, steps=20, checkpoint_every=5)
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir(), b.mkdir()
    distill(_cfg(teacher_path, data_dir, a, **kw))
    with pytest.raises(Interrupted):
        distill(_cfg(teacher_path, data_dir, b, **kw), hooks=TrainHooks(sigterm_at_step=8))
    distill(_cfg(teacher_path, data_dir, b, resume=True, **kw))
    sa = load_model(a / "s.safetensors").module.state_dict()
    sb = load_model(b / "s.safetensors").module.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_upcycled_inputs_are_labelled_by_the_teacher_only(teacher_path, data_dir):
    from srdistill.data.datasets import fill_teacher_cache, load_train_images
    from srdistill.data.upcycle import label_with_targets, make_upcycled

    teacher = load_model(teacher_path)
    images, _ = load_train_images([data_dir], 2, 16)
    up = make_upcycled(images, 2, 16, seed=0)
    assert {u.name.split("#")[1] for u in up} == {"zoom-in", "zoom-out"}
    zin = [u for u in up if u.name.endswith("zoom-in")][0]
    assert zin.lr.shape[1:] == (32, 32)  # an HR region, fed as an input
    again = make_upcycled(images, 2, 16, seed=0)
    assert all(torch.equal(u.lr, v.lr) for u, v in zip(up, again))
    fill_teacher_cache(up, teacher, 2, device=torch.device("cpu"))
    label_with_targets(up)
    with torch.no_grad():
        ref = teacher(zin.lr[None].float() / 255)[0].clamp(0, 1)
    assert np.abs(zin.hr.float().numpy() / 255 - ref.numpy()).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("fid, width, depth", [("Compact", 8, 1), ("SPAN", 8, None), ("EDSR", 8, 1),
                                               ("ESRGAN", 8, 1)])
def test_init_teacher_builds_a_working_student_for_every_supported_family(fid, width, depth):
    from test_models import lr_input, tiny_teacher

    teacher = tiny_teacher(fid)
    student = build_student(teacher, width, depth, seed=0)
    x = lr_input(teacher)
    report = init_from_teacher(student, teacher, x)
    assert report.channels == width
    if depth is not None:
        assert len(report.blocks) == depth
    student.module.eval()
    with torch.no_grad():
        y = student.module(x)
    assert y.shape == teacher.module(x).shape and torch.isfinite(y).all()
    # the same-size student is the teacher exactly
    full = build_student(teacher, report.teacher_channels, None, seed=0)
    init_from_teacher(full, teacher)
    with torch.no_grad():
        assert torch.allclose(full.module.eval()(x), teacher.module.eval()(x), atol=1e-5)


def test_init_auto_starts_a_same_family_student_from_the_teacher_and_a_cross_family_one_at_random(
        teacher_path, data_dir, tmp_path):
    from srdistill.progress import RecordingReporter

    rep = RecordingReporter()
    distill(_cfg(teacher_path, data_dir, tmp_path / "same", steps=1, init="auto"), rep)
    assert any("init from the teacher" in m and "--init auto" in m for m in rep.infos), rep.infos
    rep = RecordingReporter()
    distill(_cfg(teacher_path, data_dir, tmp_path / "cross", steps=1, init="auto", student_arch="span",
                 student_depth=None), rep)
    assert not any("init from the teacher" in m for m in rep.infos)
