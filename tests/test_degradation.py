"""Real-world degradations (issue: real-world teachers): the pipeline, its presets and files,
distilling on degraded variants or on the fly, and ``eval --reference teacher``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image as PILImage
from typer.testing import CliRunner

from srdistill.cli import app
from srdistill.data import degrade as D
from srdistill.distill.run import TrainHooks
from srdistill.distill.trainer import distill
from srdistill.errors import Interrupted, UsageError
from srdistill.eval_report import EvalOptions
from srdistill.evaluate import evaluate
from srdistill.models.loading import load_model

from test_distill import _cfg, _natural, data_dir, teacher_path, write_natural_images  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def hr():
    return torch.from_numpy(_natural(np.random.default_rng(5), 96, 128)).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("name", ["realesrgan", "light"])
def test_same_seed_same_image_other_seed_other_image(hr, name):
    deg = D.load_degradation(name)
    a = deg.degrade(hr, 4, D.variant_rng(0, 3, 1), training=False)
    b = deg.degrade(hr, 4, D.variant_rng(0, 3, 1), training=False)
    c = deg.degrade(hr, 4, D.variant_rng(1, 3, 1), training=False)
    assert a.dtype == torch.uint8 and a.shape == (3, 24, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_each_stage_is_repeatable_and_seed_dependent(hr):
    x = hr[None].float() / 255
    for op in (lambda r: D.add_noise(x.clone(), {"kind": "gaussian", "sigma": 10.0, "gray": False}, r),
               lambda r: D.add_noise(x.clone(), {"kind": "poisson", "scale": 1.0, "gray": True}, r),
               lambda r: D.filter2d(x, D._kernel_of(D._draw_blur(D.REALESRGAN, "", r)))):
        assert torch.equal(op(np.random.default_rng(7)), op(np.random.default_rng(7)))
        assert not torch.equal(op(np.random.default_rng(7)), op(np.random.default_rng(8)))
    assert torch.equal(D.jpeg(x, 40), D.jpeg(x, 40))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_drawn_parameters_stay_in_the_published_ranges(seed):
    p = D.REALESRGAN
    plan = D.draw(p, np.random.default_rng(seed))
    for key, sfx in (("blur1", ""), ("blur2", "2")):
        b = plan.get(key)
        if b is None:
            continue
        assert b["size"] in D.KERNEL_SIZES
        if b["kind"] == "sinc":
            assert np.pi / 5 <= b["omega"] <= np.pi
        else:
            lo, hi = p["blur_sigma" + sfx]
            assert lo <= b["sigma_x"] <= hi and lo <= b["sigma_y"] <= hi
            if b["kind"].startswith("generalized"):
                assert p["betag_range" + sfx][0] <= b["beta"] <= p["betag_range" + sfx][1]
            if b["kind"].startswith("plateau"):
                assert p["betap_range" + sfx][0] <= b["beta"] <= p["betap_range" + sfx][1]
        k = D._kernel_of(b)
        assert k.shape == (21, 21) and abs(k.sum() - 1) < 1e-6
    for key, sfx in (("resize1", ""), ("resize2", "2")):
        r = plan[key]
        lo, hi = p["resize_range" + sfx]
        assert lo <= r["factor"] <= hi and r["mode"] in D.RESIZE_MODES
        assert (r["direction"] == "up") == (r["factor"] > 1) or r["factor"] == 1.0
    for key, sfx in (("noise1", ""), ("noise2", "2")):
        n = plan[key]
        if n["kind"] == "gaussian":
            assert p["noise_range" + sfx][0] <= n["sigma"] <= p["noise_range" + sfx][1]
        else:
            assert p["poisson_scale_range" + sfx][0] <= n["scale"] <= p["poisson_scale_range" + sfx][1]
    assert 30 <= plan["jpeg1"] <= 95 and 30 <= plan["jpeg2"] <= 95
    if plan["final_sinc"]:
        assert np.pi / 3 <= plan["final_sinc"]["omega"] <= np.pi


def _blockiness(a: np.ndarray) -> float:
    """Mean jump across 8-px block boundaries over the mean jump elsewhere (columns)."""
    d = np.abs(np.diff(a.astype(np.float64), axis=1)).mean(axis=(0, 2))
    at = d[7::8]
    return float(at.mean() / np.delete(d, np.arange(7, len(d), 8)).mean())


def test_the_jpeg_stage_is_a_real_jpeg_encode():
    yy, xx = np.mgrid[0:64, 0:64]
    smooth = np.stack([xx * 3, yy * 3, (xx + yy) * 2], -1).astype(np.float32) / 255
    x = torch.from_numpy(smooth.transpose(2, 0, 1))[None]
    out = (D.jpeg(x, 5)[0].permute(1, 2, 0).numpy() * 255).round()
    assert _blockiness(out) > 1.5  # 8x8 DCT blocks show at low quality
    again = (D.jpeg(torch.from_numpy(out.transpose(2, 0, 1) / 255).float()[None], 5)[0].numpy() * 255).round()
    assert np.abs(again - out.transpose(2, 0, 1)).mean() < 2.0  # near a fixed point of the same encoder
    assert _blockiness((D.jpeg(x, 98)[0].permute(1, 2, 0).numpy() * 255).round()) < _blockiness(out)


def test_a_share_of_training_inputs_stays_clean(hr):
    deg = D.load_degradation("realesrgan")
    clean = [torch.equal(deg.degrade(hr, 4, D.variant_rng(0, i, 0)), D.degrade_clean(hr, 4)) for i in range(200)]
    assert 0.6 < np.mean(clean) < 0.9  # clean_prob 0.75
    assert not any(torch.equal(deg.degrade(hr, 4, D.variant_rng(0, i, 0), training=False), D.degrade_clean(hr, 4))
                   for i in range(20))


def test_variants_sample_the_clean_input_at_its_share(teacher_path, data_dir, tmp_path):  # noqa: F811
    from srdistill.data.datasets import load_train_images

    images, _ = load_train_images([str(data_dir)], 2, 16)
    out, w = D.make_variants(images, D.load_degradation("realesrgan"), 4, 2, 0)
    assert len(out) == 5 * len(images) and abs(sum(w[::5]) / sum(w) - 0.75) < 1e-9
    assert out[0] is images[0] and out[1].hr is images[0].hr and not torch.equal(out[1].lr, images[0].lr)


def test_lr_only_images_are_degraded_at_their_own_size(hr):
    out = D.load_degradation("light").degrade(hr, 1, D.variant_rng(0, 0, 0), training=False)
    assert out.shape == hr.shape and not torch.equal(out, hr)


@pytest.mark.parametrize("text, suffix, msg", [
    ('jpeg_range = [30, 95]\nblurr = 2\n', ".toml", "unknown field(s) blurr"),
    ('{"jpeg_range": [0, 200]}', ".json", "jpeg_range"),
    ('{"gaussian_noise_prob": 1.5}', ".json", "probability"),
    ('{"kernel_list": ["iso", "box"]}', ".json", "kernel_list"),
    ('{"resize_prob": [0.5, 0.6, 0.1]}', ".json", "add up to 1"),
    ('jpeg_range = [30', ".toml", "not valid TOML"),
    ('{"preset": "heavy"}', ".json", "preset"),
])
def test_bad_preset_files_are_one_line_usage_errors(tmp_path, teacher_path, text, suffix, msg):  # noqa: F811
    f = tmp_path / f"deg{suffix}"
    f.write_text(text)
    with pytest.raises(UsageError, match="--degradation"):
        D.load_degradation(str(f))
    r = CliRunner().invoke(app, ["distill", str(teacher_path), "-w", "8", "--degradation", str(f),
                                 "-o", str(tmp_path / "s.safetensors")])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], r.output


def test_a_preset_file_overrides_its_base(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('preset = "light"\njpeg_range = [50, 60]\n')
    d = D.load_degradation(str(f))
    assert d.params["jpeg_range"] == [50.0, 60.0] and d.params["second_order_prob"] == 0.0


@pytest.mark.parametrize("k", ["0", "-3"])
def test_variant_counts_below_one_are_usage_errors(tmp_path, teacher_path, k):  # noqa: F811
    r = CliRunner().invoke(app, ["distill", str(teacher_path), "-w", "8", "--degradation", "light",
                                 "--degradation-variants", k, "-o", str(tmp_path / "s.safetensors")])
    assert r.exit_code == 2 and "--degradation-variants" in r.output, r.output
    r = CliRunner().invoke(app, ["distill", str(teacher_path), "-w", "8", "--degradation-variants", "2",
                                 "-o", str(tmp_path / "s.safetensors")])
    assert r.exit_code == 2 and "needs a --degradation" in r.output, r.output


def test_cached_variants_replace_the_clean_inputs(teacher_path, data_dir, tmp_path):  # noqa: F811
    res = distill(_cfg(teacher_path, data_dir, tmp_path, steps=4, degradation="light", degradation_variants=3))
    d = res.teacher_cache["degradation"]
    assert d["variants"] == 3 and d["inputs"] == 4 * res.data["used"]  # 3 degraded + the clean one
    meta = load_model(res.out).metadata
    cfg = json.loads(meta["srdistill.config"])
    assert cfg["degradation"] == "light" and cfg["degradation_params"]["jpeg_range"] == [70.0, 95.0]


@pytest.mark.parametrize("cache", [True, False], ids=["cached-variants", "on-the-fly"])
def test_resume_with_degradations_is_exact(teacher_path, data_dir, tmp_path, monkeypatch, cache):  # noqa: F811
    kw = dict(steps=16, degradation="realesrgan", teacher_cache=cache, checkpoint_every=4)
    if cache:
        kw["degradation_variants"] = 2
    full = distill(_cfg(teacher_path, data_dir, tmp_path / "full", **kw))
    cfg = _cfg(teacher_path, data_dir, tmp_path / "cut", **kw)
    with pytest.raises(Interrupted):
        distill(cfg, hooks=TrainHooks(sigterm_at_step=7))
    cfg.resume = True
    resumed = distill(cfg)
    assert resumed.resumed_from == 7
    a, b = load_model(full.out), load_model(resumed.out)
    for (k, va), (_, vb) in zip(a.module.state_dict().items(), b.module.state_dict().items()):
        assert torch.equal(va, vb), k


def test_resume_refuses_another_degradation(teacher_path, data_dir, tmp_path, monkeypatch):  # noqa: F811
    cfg = _cfg(teacher_path, data_dir, tmp_path, steps=6, degradation="light", degradation_variants=2)
    with pytest.raises(Interrupted):
        distill(cfg, hooks=TrainHooks(sigterm_at_step=2))
    cfg.resume, cfg.degradation = True, "realesrgan"
    cfg.explicit = ["degradation", "resume"]
    with pytest.raises(UsageError, match="--degradation"):
        distill(cfg)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_natural_images(tmp_path_factory.mktemp("photos"), 2, 40, 48, seed=9, prefix="photo")


def test_eval_reference_teacher_on_an_lr_only_folder(teacher_path, data_dir, photos, tmp_path):  # noqa: F811
    student = distill(_cfg(teacher_path, data_dir, tmp_path, steps=4)).out
    rep = evaluate(EvalOptions(models=[str(teacher_path), student], data=[str(photos)], lr_only=True,
                               reference="teacher", benchmark=False, comparison=str(tmp_path / "c.png")))
    row = rep.row("s.safetensors")
    d = row.datasets[rep.datasets[0]["name"]]
    assert np.isfinite(d["psnr"]) and np.isfinite(d["ssim"]) and -1 <= d["ssim"] <= 1 and len(d["images"]) == 2
    assert rep.reference == "teacher" and "fidelity to the teacher" in rep.metric
    assert rep.comparison["panels"][:2] == ["input", "teacher.pth (teacher)"]
    with pytest.raises(UsageError, match="needs a teacher"):
        evaluate(EvalOptions(models=[student], data=[str(photos)], lr_only=True, reference="teacher",
                             benchmark=False))
    with pytest.raises(UsageError, match="no ground truth"):
        evaluate(EvalOptions(models=[str(teacher_path), student], data=[str(photos)], lr_only=True,
                             benchmark=False))
    r = CliRunner().invoke(app, ["eval", str(teacher_path), student, "--data", str(photos), "--lr-only",
                                 "--reference", "teacher", "--no-bench"])
    assert r.exit_code == 0, r.output
    assert "fidelity to the teacher, not to ground truth" in r.output and "reference" in r.output


def test_eval_degradation_is_seeded(teacher_path, data_dir, tmp_path):  # noqa: F811
    student = distill(_cfg(teacher_path, data_dir, tmp_path, steps=4)).out

    def score(seed):
        rep = evaluate(EvalOptions(models=[str(teacher_path), student], data=[str(data_dir)], reference="teacher",
                                   degradation="realesrgan", seed=seed, benchmark=False))
        return rep.row("s.safetensors").datasets[rep.datasets[0]["name"]]["psnr"]

    assert score(3) == score(3) != score(4)
