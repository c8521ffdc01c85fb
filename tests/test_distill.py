"""distill: real (tiny) distillation runs on images generated here, CPU, seconds each."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from typer.testing import CliRunner

from srdistill.cli import app
from srdistill.data.datasets import PatchSampler, fill_teacher_cache, load_train_images
from srdistill.distill.run import TrainHooks
from srdistill.distill.trainer import DistillConfig, distill
from srdistill.errors import Interrupted, OutputExistsError, TrainingError, UsageError
from srdistill.metrics import psnr, to_uint8
from srdistill.models.checkpoint import save_student
from srdistill.models.loading import load_model, model_from_state_dict
from srdistill.models._compat import import_spandrel
from srdistill.progress import RecordingReporter

import_spandrel()
from spandrel.architectures.Compact import Compact  # noqa: E402


def _natural(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured test picture: smooth colour gradients, hard-edged shapes and fine noise."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(6 * xx + rng.uniform(0, 6)), np.cos(5 * yy + rng.uniform(0, 6)),
                    np.sin(4 * (xx + yy) + rng.uniform(0, 6))], -1) * 0.25 + 0.5
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, h / 4)
        mask = (np.mgrid[0:h, 0:w][0] - cy) ** 2 + (np.mgrid[0:h, 0:w][1] - cx) ** 2 < r * r
        img[mask] = rng.uniform(0, 1, 3)
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_natural_images(folder, n: int, h: int, w: int, seed: int, prefix: str = "img"):
    """``n`` :func:`_natural` pictures as PNGs in ``folder`` (created), from one seeded generator."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        PILImage.fromarray(_natural(rng, h, w)).save(folder / f"{prefix}{i}.png")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_natural_images(tmp_path_factory.mktemp("hr"), 6, 96, 112, seed=0)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    """A small Compact x2 teacher with random (but fixed) weights, saved as .pth."""
    torch.manual_seed(123)
    net = Compact(num_feat=16, num_conv=2, upscale=2)
    with torch.no_grad():  # a clear residual over nearest upsampling: something to learn
        net.body[-1].weight.mul_(3)
    p = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save(net.state_dict(), p)
    return p


def _cfg(teacher_path, data_dir, tmp_path, **kw) -> DistillConfig:
    base = dict(teacher=str(teacher_path), student_width=8, student_depth=2, data=[str(data_dir)], val=[],
                steps=40, batch_size=4, patch_size=16, lr=2e-3, out=str(tmp_path / "s.safetensors"),
                checkpoint_every=10, seed=1, log_every=5, init="random")  # a random student: the mechanics
    base.update(kw)
    return DistillConfig(**base)


def _psnr_vs_teacher(student_file, teacher_path, data_dir) -> float:
    teacher = load_model(teacher_path)
    student = load_model(student_file)
    vals = []
    for f in sorted(data_dir.iterdir())[:3]:
        x = torch.from_numpy(np.array(PILImage.open(f))).permute(2, 0, 1)[None].float() / 255
        vals.append(psnr(to_uint8(student(x)), to_uint8(teacher(x)), 2))
    return float(np.mean(vals))


def test_distillation_moves_the_student_toward_the_teacher(teacher_path, data_dir, tmp_path):
    # a student with the same init trained for 1 step vs 60 steps
    res1 = distill(_cfg(teacher_path, data_dir, tmp_path / "a", steps=1, alpha=1.0))
    res = distill(_cfg(teacher_path, data_dir, tmp_path / "b", steps=60, alpha=1.0, log_every=1))
    log = [json.loads(line) for line in open(res.log)]
    kd = [r["kd"] for r in log if r["event"] == "step"]
    assert np.mean(kd[-3:]) < 0.85 * kd[0], kd
    before = _psnr_vs_teacher(res1.out, teacher_path, data_dir)
    after = _psnr_vs_teacher(res.out, teacher_path, data_dir)
    print(f"student vs teacher PSNR: {before:.2f} -> {after:.2f} dB")
    assert after > before + 1.0, (before, after)
    assert res.compression_ratio > 1
    assert res.loss_formula == "loss = 1*L1(student, teacher)"


def test_lr_only_mode_uses_the_teacher_as_the_only_target(teacher_path, data_dir, tmp_path):
    rep = RecordingReporter()
    res = distill(_cfg(teacher_path, data_dir, tmp_path, lr_only=True, steps=20, alpha=0.5), rep)
    assert res.data["lr_only"] is True
    assert set(res.final_losses) == {"kd", "loss"}
    assert any("only target" in w or "teacher term" in w for w in rep.warnings)
    assert load_model(res.out).scale == 2


def test_resume_after_sigterm_ends_with_the_same_weights(teacher_path, data_dir, tmp_path, monkeypatch):
    full = distill(_cfg(teacher_path, data_dir, tmp_path / "full", steps=30))
    cfg = _cfg(teacher_path, data_dir, tmp_path / "cut", steps=30)
    with pytest.raises(Interrupted) as ei:
        distill(cfg, hooks=TrainHooks(sigterm_at_step=13))
    assert ei.value.exit_code == 143
    ck = torch.load(tmp_path / "cut" / "s.ckpt", weights_only=True)
    assert ck["step"] == 13
    cfg.resume = True
    resumed = distill(cfg)
    assert resumed.resumed_from == 13 and resumed.steps == 30
    a, b = load_model(full.out), load_model(resumed.out)
    for (k, va), (_, vb) in zip(a.module.state_dict().items(), b.module.state_dict().items()):
        assert torch.equal(va, vb), k


def test_nan_loss_stops_with_the_last_checkpoint_intact(teacher_path, data_dir, tmp_path, monkeypatch):
    with pytest.raises(TrainingError, match="step 15.*s.ckpt is intact"):
        distill(_cfg(teacher_path, data_dir, tmp_path, steps=30), hooks=TrainHooks(nan_at_step=15))
    ck = torch.load(tmp_path / "s.ckpt", weights_only=True)
    assert ck["step"] == 10
    assert all(torch.isfinite(v).all() for v in ck["student"].values() if v.is_floating_point())


def test_cached_and_uncached_targets_agree_on_step_one(teacher_path, data_dir):
    teacher = load_model(teacher_path)
    images, _ = load_train_images([data_dir], 2, 16)
    fill_teacher_cache(images, teacher, 2, device=torch.device("cpu"), tile=32)
    sampler = PatchSampler(images, 2, 16)
    plan = sampler.plan(4, torch.Generator().manual_seed(0))
    batch = sampler.crop(plan, torch.device("cpu"))
    live = sampler.live_targets(plan, teacher, torch.device("cpu"))  # what --no-teacher-cache trains on
    border = 2 * 4  # the teacher's receptive field (4 convs) in HR pixels
    diff = (live - batch.target)[..., border:-border, border:-border].abs().max().item()
    assert diff <= 0.5 / 255 + 1e-6, diff
    # whole-image targets equal the untiled teacher output within the stated quantisation
    full = teacher(images[0].lr[None].float() / 255).clamp(0, 1)
    assert (full[0] - images[0].target.float() / 255).abs().max().item() <= 0.5 / 255 + 1e-6


def test_uncached_run_and_feature_adapters_get_gradients(teacher_path, data_dir, tmp_path):
    res = distill(_cfg(teacher_path, data_dir, tmp_path, steps=5, teacher_cache=False, feature_weight=0.1))
    assert "feature" in res.final_losses and res.teacher_cache["enabled"] is False
    ck = torch.load(tmp_path / "s.ckpt", weights_only=True)
    adapters = ck["terms"]["feature"]["module"]  # each term's learned module is saved under its name
    assert adapters is not None
    # student width 8 -> teacher width 16: 1x1 adapters, trained (moved away from their init)
    from srdistill.distill.losses import Adapters

    torch.manual_seed(1 + 1)
    init = Adapters([8] * 2, [16] * 2).state_dict()
    moved = [not torch.equal(init[k], v) for k, v in adapters.items()]
    assert any(moved)


def test_adversarial_term_runs(teacher_path, data_dir, tmp_path):
    res = distill(_cfg(teacher_path, data_dir, tmp_path, steps=3, adversarial_weight=0.01))
    assert {"adv", "disc"} <= set(res.final_losses)


def test_output_is_never_clobbered_and_second_run_is_locked_out(teacher_path, data_dir, tmp_path):
    out = tmp_path / "s.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError):
        distill(_cfg(teacher_path, data_dir, tmp_path, steps=2))
    assert out.read_bytes() == b"precious"
    out.unlink()
    import fcntl

    lock = tmp_path / "s.lock"
    with open(lock, "w") as held:  # a live run holds the OS lock
        held.write(str(os.getpid()))
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OutputExistsError, match="another srdistill run"):
            distill(_cfg(teacher_path, data_dir, tmp_path, steps=2))
        # the same stem with another suffix case shares the checkpoint and log: refused too
        with pytest.raises(OutputExistsError, match="another srdistill run"):
            distill(_cfg(teacher_path, data_dir, tmp_path, steps=2, out=str(tmp_path / "s.SAFETENSORS")))
    lock.write_text("1")  # left by a killed run whose pid is alive again (pid 1 in a container)
    distill(_cfg(teacher_path, data_dir, tmp_path, steps=2))
    assert not lock.exists()


@pytest.mark.parametrize("kw, msg", [
    (dict(steps=0), "--steps"), (dict(batch_size=0), "--batch-size"), (dict(alpha=1.5), "--alpha"),
    (dict(loss="huber"), "--loss"), (dict(patch_size=2), "--patch-size"), (dict(student_width=0), "width"),
    (dict(device="tpu"), "--device"), (dict(precision="fp8"), "--precision"), (dict(lr=0), "--lr"),
])
def test_bad_options_are_clear_errors(teacher_path, data_dir, tmp_path, kw, msg):
    with pytest.raises(UsageError, match=msg.replace("-", r"\-")):
        distill(_cfg(teacher_path, data_dir, tmp_path, **kw))
    assert not (tmp_path / "s.safetensors").exists()


def test_small_and_broken_images_are_skipped_and_counted(teacher_path, data_dir, tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    for f in sorted(data_dir.iterdir())[:2]:
        (d / f.name).write_bytes(f.read_bytes())
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "tiny.png")
    (d / "broken.png").write_bytes(b"not a png")
    PILImage.fromarray(np.full((96, 96), 128, np.uint8)).save(d / "gray.png")
    PILImage.fromarray(np.full((96, 96, 4), 200, np.uint8)).save(d / "rgba.png")
    rep = RecordingReporter()
    res = distill(_cfg(teacher_path, d, tmp_path, steps=2), rep)
    assert res.data["used"] == 4 and res.data["skipped_small"] == 1 and res.data["skipped_unreadable"] == 1
    assert res.data["converted"] >= 2
    assert any("broken.png" in w for w in rep.warnings) and any("tiny.png" in w for w in rep.warnings)


def test_cli_distill_json_and_saved_files_load_with_info(teacher_path, data_dir, tmp_path):
    out = tmp_path / "cli.safetensors"
    r = CliRunner().invoke(app, ["distill", str(teacher_path), "--student-width", "8", "--student-depth", "2",
                                 "--data", str(data_dir), "--val", str(data_dir), "--steps", "6",
                                 "--batch-size", "2", "--patch-size", "16", "--val-every", "3",
                                 "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["steps"] == 6 and doc["best"]["psnr"] > 0 and len(doc["validation"]) == 2
    info = CliRunner().invoke(app, ["info", str(out), "--json"])
    assert info.exit_code == 0, info.output
    meta = json.loads(info.stdout)
    assert meta["architecture"] == "Compact" and meta["srdistill"]["teacher"]["architecture"] == "Compact"
    assert meta["srdistill"]["metrics"]["val"]["psnr"] == pytest.approx(doc["best"]["psnr"])
    assert "srdistill distill" in meta["srdistill"]["config"]["command"]
    # the training checkpoint is a plain tensor file that loads safely
    assert torch.load(tmp_path / "cli.ckpt", weights_only=True)["step"] == 6
    # second run without --overwrite: refused, exit 1, one line
    r2 = CliRunner().invoke(app, ["distill", str(teacher_path), "--student-width", "8", "--data", str(data_dir),
                                  "--steps", "2", "-o", str(out)])
    assert r2.exit_code == 1 and r2.stderr.strip().startswith("error:") and "Traceback" not in r2.output


def test_div2k_paired_layout_is_used_as_given(data_dir, tmp_path):
    hr = tmp_path / "DIV2K_HR"
    (hr / "X2").mkdir(parents=True)
    for i, f in enumerate(sorted(data_dir.iterdir())[:3]):
        im = PILImage.open(f)
        im.save(hr / f"{i:04d}.png")
        # a deliberately different LR (box filter): it must be used as is, not remade with bicubic
        im.resize((im.width // 2, im.height // 2), PILImage.BOX).save(hr / "X2" / f"{i:04d}x2.png")
    images, stats = load_train_images([hr], 2, 16)
    assert stats.paired == 3 and stats.found == 3  # the X2 folder is not read as HR data
    given = np.array(PILImage.open(hr / "X2" / "0000x2.png"))
    assert np.array_equal(images[0].lr.permute(1, 2, 0).numpy(), given)


def test_teacher_cache_dir_is_the_training_pack(teacher_path, data_dir, tmp_path):
    cache = tmp_path / "tcache"
    a = distill(_cfg(teacher_path, data_dir, tmp_path / "a", steps=3, teacher_cache_dir=str(cache)))
    b = distill(_cfg(teacher_path, data_dir, tmp_path / "b", steps=3, pack=str(cache)))
    assert a.pack["reused"] is False and a.pack["built_here"] == 6
    assert b.pack["reused"] is True and b.pack["path"] == a.pack["path"]
    assert not list(cache.rglob("*.partial"))
    # the reused targets train exactly like freshly computed ones
    wa, wb = load_model(a.out).module.state_dict(), load_model(b.out).module.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # and like the in-memory path
    c = distill(_cfg(teacher_path, data_dir, tmp_path / "c", steps=3))
    wc = load_model(c.out).module.state_dict()
    assert all(torch.equal(wa[k], wc[k]) for k in wa)


def test_training_checkpoint_loads_as_its_ema_model_and_bad_paths_fail_early(teacher_path, data_dir, tmp_path):
    res = distill(_cfg(teacher_path, data_dir, tmp_path, steps=4, checkpoint_every=2))
    from_ckpt = load_model(tmp_path / "s.ckpt")
    final = load_model(res.out)
    assert from_ckpt.srdistill["checkpoint_step"] == 4
    sd_a, sd_b = from_ckpt.module.state_dict(), final.module.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)  # the EMA student, as saved
    # the training log is a user's file too: not replaced without --overwrite
    log = tmp_path / "t.train.jsonl"
    log.write_text("my notes\n")
    with pytest.raises(OutputExistsError):
        distill(_cfg(teacher_path, data_dir, tmp_path, steps=1, out=str(tmp_path / "t.safetensors")))
    assert log.read_text() == "my notes\n"
    # a wrong --val path is reported before any work, not after the teacher cache is filled
    with pytest.raises(UsageError, match="--val"):
        distill(_cfg(teacher_path, data_dir, tmp_path, steps=1, val=[str(tmp_path / "nope")],
                     out=str(tmp_path / "u.safetensors")))
    with pytest.raises(UsageError, match="--max-images"):
        distill(_cfg(teacher_path, data_dir, tmp_path, steps=1, max_images=0, out=str(tmp_path / "v.safetensors")))


def test_a_killed_runs_own_log_is_replaced_by_a_fresh_start(teacher_path, data_dir, tmp_path):
    log = tmp_path / "s.train.jsonl"
    log.write_text(json.dumps({"event": "start", "step": 0, "srdistill": "0.1.0"}) + "\n")  # no checkpoint yet
    distill(_cfg(teacher_path, data_dir, tmp_path, steps=2))
    assert json.loads(log.read_text().splitlines()[-1])["event"] == "end"


def test_gt_size_sets_the_hr_patch_like_basicsr(teacher_path, data_dir, tmp_path):
    res = distill(_cfg(teacher_path, data_dir, tmp_path, steps=1, gt_size=24))  # x2 teacher: LR patch 12
    assert json.loads(load_model(res.out).metadata["srdistill.config"])["patch_size"] == 12
    with pytest.raises(UsageError, match="--gt-size"):
        distill(_cfg(teacher_path, data_dir, tmp_path, steps=1, gt_size=25, out=str(tmp_path / "b.safetensors")))


def test_a_pack_folder_that_is_a_file_is_a_clear_error(teacher_path, data_dir, tmp_path):
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    r = CliRunner().invoke(app, ["distill", str(teacher_path), "-w", "8", "-d", "2", "--data", str(data_dir),
                                 "--no-val", "--steps", "1", "-p", "16", "--teacher-cache-dir", str(f),
                                 "-o", str(tmp_path / "s.safetensors")])
    assert r.exit_code == 2 and r.stderr.strip().startswith("error:") and "--pack folder" in r.stderr and "it is a file" in r.stderr
    assert "Traceback" not in r.output and not (tmp_path / "s.safetensors").exists()
