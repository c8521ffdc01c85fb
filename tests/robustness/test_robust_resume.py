"""``--resume`` continues only the same run, and a damaged checkpoint is one error line.

A tiny run is stopped at step 3 of 6 (the SIGTERM test hook), then resumed through the real
CLI with one thing changed: an option that changes what the run trains on (the cache mode,
the degradation, its variants, re-parameterisation, the seed, ...), the degradation file's
contents, or the images in the data and validation folders. Each is refused with one line that
names what changed, and the checkpoint is left as it was. Then the checkpoint itself is damaged
in many ways (an entry missing, a wrong type, a tensor of the wrong shape, a bad RNG state,
...): one ``error:`` line, exit 1, no traceback. Last, ``srdistill info`` on a ``.pth`` shaped
like a checkpoint whose step is not a count describes the file.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from typer.testing import CliRunner

from robust_helpers import natural_image, tiny_compact
from srdistill.cli import app

CATEGORY = "interruption and faults during distill"
INFO_CATEGORY = "untrusted model files"
DEG = {"preset": "light", "gaussian_noise_prob": 0.5}


def _images(folder: Path, n: int, seed: int, prefix: str = "img") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        PILImage.fromarray(natural_image(rng, 48, 48)).save(folder / f"{prefix}{i}.png")
    return folder


def _invoke(args: list[str], **env: str):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def _one_error_line(r, code: int) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and not (r.exception and not isinstance(r.exception, SystemExit)), r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output
    return lines[0]


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory) -> dict[str, Path]:
    """Two runs stopped at step 3 of 6: ``light`` (built-in preset, default variants, no validation)
    and ``file`` (a degradation file, 2 variants, a validation folder). Tests work on copies."""
    root = tmp_path_factory.mktemp("stopped")
    teacher = root / "teacher.pth"
    torch.save(tiny_compact(num_feat=8, num_conv=1, seed=3).state_dict(), teacher)
    out = {}
    for name, extra in (("light", ["--degradation", "light", "--no-val"]),
                        ("file", ["--degradation", "{deg}", "--degradation-variants", "2", "--val", "{val}"])):
        d = root / name
        data, val = _images(d / "data", 3, seed=1), _images(d / "val", 2, seed=2, prefix="v")
        (d / "deg.json").write_text(json.dumps(DEG))
        extra = [e.format(deg=d / "deg.json", val=val) for e in extra]
        r = _invoke(["distill", teacher, "-w", "4", "-d", "1", "-b", "2", "-p", "16", "--steps", "6",
                     "--checkpoint-every", "2", "--seed", "1", "--data", data, "-o", d / "s.safetensors", *extra],
                    SRDISTILL_TEST_SIGTERM_AT_STEP="3")
        assert r.exit_code == 143, r.output
        out[name] = d
    out["teacher"] = teacher
    return out


@pytest.fixture
def run_dir(stopped_runs, request, tmp_path):
    """The stopped run ``request.param``, restored afterwards exactly as it was (files, times)."""
    d = stopped_runs[request.param]  # in place: the checkpoint records the run's absolute paths
    backup = tmp_path / "backup"
    shutil.copytree(d, backup, copy_function=shutil.copy2)  # copy2: the images keep their times
    yield d
    shutil.rmtree(d)
    shutil.copytree(backup, d, copy_function=shutil.copy2)


def _resume(stopped_runs, d: Path, *extra):
    return _invoke(["distill", stopped_runs["teacher"], "-w", "4", "-o", d / "s.safetensors", "--resume", *extra])


# --------------------------------------------------------------------------- options

REFUSED_OPTIONS = [
    ("light", ["--no-teacher-cache"], "--no-teacher-cache"),  # the example: other weights, exit 0
    ("light", ["--degradation-variants", "3"], "--degradation-variants 3"),
    ("light", ["--degradation", "realesrgan"], "--degradation 'realesrgan'"),
    ("light", ["--no-reparam"], "--no-reparam"),
    ("light", ["--seed", "2"], "--seed 2"),
    ("light", ["--max-images", "2"], "--max-images 2"),
    ("light", ["--val", "{val}"], "--val"),
    ("file", ["--degradation-variants", "3"], "--degradation-variants 3"),
    ("file", ["--no-teacher-cache"], "--no-teacher-cache"),
    ("file", ["--degradation", "light"], "--degradation 'light'"),
    ("file", ["--teacher-cache", "--degradation-variants", "4"], "--degradation-variants 4"),
]


@pytest.mark.parametrize("run_dir,extra,named", [(r, e, n) for r, e, n in REFUSED_OPTIONS], indirect=["run_dir"],
                         ids=[f"{r}:{' '.join(e)}" for r, e, _ in REFUSED_OPTIONS])
def test_an_option_that_changes_the_training_is_refused_by_name(stopped_runs, run_dir, extra, named, tally):
    with tally.case(CATEGORY, f"--resume {' '.join(extra)}"):
        before = (run_dir / "s.ckpt").read_bytes()
        r = _resume(stopped_runs, run_dir, *[e.format(val=run_dir / "val") for e in extra])
        line = _one_error_line(r, 2)
        assert f"--resume: {named}" in line and "differs from the run in the checkpoint" in line, line
        assert "needs a --degradation" not in line and "counts the cached variants" not in line, line
        assert (run_dir / "s.ckpt").read_bytes() == before


def _add_image(d: Path) -> None:
    _images(d / "data", 1, seed=9, prefix="added")


def _remove_image(d: Path) -> None:
    (d / "data" / "img2.png").unlink()


def _replace_image(d: Path) -> None:  # another picture under the same name
    PILImage.fromarray(natural_image(np.random.default_rng(7), 48, 40)).save(d / "data" / "img0.png")


def _touch_image(d: Path) -> None:  # same bytes, newer time (cheap key: rewritten since the run)
    t = time.time() + 10
    os.utime(d / "data" / "img1.png", (t, t))


def _change_val(d: Path) -> None:
    _images(d / "val", 1, seed=8, prefix="more")


def _edit_degradation(d: Path) -> None:  # still a valid file, other settings
    (d / "deg.json").write_text(json.dumps({**DEG, "gaussian_noise_prob": 0.1}))


def _break_degradation(d: Path) -> None:
    (d / "deg.json").write_text("{not json")


def _remove_degradation(d: Path) -> None:
    (d / "deg.json").unlink()


CHANGED_INPUTS = [
    (_add_image, "light", "the images in --data changed"),
    (_remove_image, "light", "the images in --data changed"),
    (_replace_image, "file", "the images in --data changed"),
    (_touch_image, "light", "the images in --data changed"),
    (_change_val, "file", "the images in --val changed"),
    (_edit_degradation, "file", "the degradation file"),
    (_break_degradation, "file", "cannot be used now"),
    (_remove_degradation, "file", "cannot be used now"),
]


@pytest.mark.parametrize("change,run_dir,said", CHANGED_INPUTS, indirect=["run_dir"],
                         ids=[c.__name__.strip("_") for c, _, _ in CHANGED_INPUTS])
def test_inputs_changed_between_the_runs_are_refused(stopped_runs, run_dir, change, said, tally):
    with tally.case(CATEGORY, f"--resume after {change.__name__}"):
        before = (run_dir / "s.ckpt").read_bytes()
        change(run_dir)
        line = _one_error_line(_resume(stopped_runs, run_dir), 2)
        assert line.startswith("error: --resume: ") and said in line, line
        assert (run_dir / "s.ckpt").read_bytes() == before


@pytest.mark.parametrize("run_dir", ["light", "file"], indirect=True)
def test_the_same_run_resumes_and_records_its_inputs(stopped_runs, run_dir, tally):
    with tally.case(CATEGORY, f"--resume of the unchanged {run_dir.name} run"):
        # given again with the values it had, an option is no change
        same = ["--degradation-variants", "2", "--teacher-cache"] if run_dir.name == "file" else ["--teacher-cache"]
        r = _resume(stopped_runs, run_dir, *same)
        assert r.exit_code == 0, r.output
        ck = torch.load(run_dir / "s.ckpt", weights_only=True)
        assert ck["step"] == 6
        rec = json.loads(ck["config"])
        assert rec["inputs"]["data"]["files"] == 3 and rec["teacher_cache"] is True
        assert (rec["inputs"]["val"] or {}).get("files") == (2 if run_dir.name == "file" else None)


# --------------------------------------------------------------------------- damaged checkpoints


def _first(sd: dict) -> str:
    return next(k for k, v in sd.items() if v.is_floating_point())


def _set(*path, value):
    def f(ck):
        node = ck
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value(node) if callable(value) else value
    return f


def _drop(key):
    return lambda ck: ck.pop(key)


def _config(**kw):
    return lambda ck: ck.__setitem__("config", json.dumps({**json.loads(ck["config"]), **kw}))


DAMAGE = {
    "no student": _drop("student"),
    "no ema": _drop("ema"),
    "no optimizer": _drop("optimizer"),
    "no rng": _drop("rng"),
    "no scheduler": _drop("scheduler"),
    "step 'abc'": _set("step", value="abc"),
    "step inf": _set("step", value=math.inf),
    "step None": _set("step", value=None),
    "step -1": _set("step", value=-1),
    "step [1]": _set("step", value=[1]),
    "student a list": _set("student", value=[1]),
    "student tensor wrong shape": lambda ck: ck["student"].__setitem__(_first(ck["student"]), torch.zeros(3)),
    "student tensor missing": lambda ck: ck["student"].pop(_first(ck["student"])),
    "student extra tensor": _set("student", "extra.weight", value=torch.zeros(2)),
    "student tensor a string": lambda ck: ck["student"].__setitem__(_first(ck["student"]), "w"),
    "student NaN weights": lambda ck: ck["student"][_first(ck["student"])].fill_(math.nan),
    "student int weights": lambda ck: ck["student"].__setitem__(
        _first(ck["student"]), ck["student"][_first(ck["student"])].long()),
    "ema wrong shape": lambda ck: ck["ema"]["module"].__setitem__(_first(ck["ema"]["module"]), torch.zeros(1, 1)),
    "ema updates 'x'": _set("ema", "updates", value="x"),
    "optimizer a list": _set("optimizer", value=[1]),
    "optimizer no state": lambda ck: ck["optimizer"].pop("state"),
    "optimizer moment wrong shape": _set("optimizer", "state", 0, "exp_avg", value=torch.zeros(5)),
    "optimizer moment a string": _set("optimizer", "state", 0, "exp_avg_sq", value="x"),
    "optimizer step NaN": _set("optimizer", "state", 0, "step", value=torch.tensor(math.nan)),
    "optimizer lr a string": _set("optimizer", "param_groups", 0, "lr", value="x"),
    "optimizer betas 3": _set("optimizer", "param_groups", 0, "betas", value=(0.9, 0.9, 0.9)),
    "optimizer 2 groups": lambda ck: ck["optimizer"]["param_groups"].append(
        copy.deepcopy(ck["optimizer"]["param_groups"][0])),
    "optimizer state unknown param": _set("optimizer", "state", 999, value={"step": torch.tensor(1.0)}),
    "optimizer params short": lambda ck: ck["optimizer"]["param_groups"][0]["params"].pop(),
    "scheduler last_epoch 'x'": _set("scheduler", "last_epoch", value="x"),
    "scheduler behind the step": _set("scheduler", "last_epoch", value=1),
    "scheduler base_lrs a string": _set("scheduler", "base_lrs", value="x"),
    "scheduler lr_lambdas 5": _set("scheduler", "lr_lambdas", value=5),
    "rng gen 3 bytes": _set("rng", "gen", value=torch.zeros(3, dtype=torch.uint8)),
    "rng torch float": _set("rng", "torch", value=lambda st: st["torch"].float()),
    "rng numpy short": _set("rng", "numpy", value=[1, 2, 3]),
    "rng numpy words too large": _set("rng", "numpy", value=[2**40] * 624),
    "rng python position": _set("rng", "python", value=list(range(624)) + [9999]),
    "rng python a string": _set("rng", "python", value="abc"),
    "rng cuda a string": _set("rng", "cuda", value="abc"),
    "rng a list": _set("rng", value=[1]),
    "config an int": _set("config", value=5),
    "config not json": _set("config", value="{oops"),
    "config a list": _set("config", value="[1, 2]"),
    "config nested 100000 deep": _set("config", value="[" * 100000 + "]" * 100000),
    "config lr a string": _config(lr="fast"),
    "config data a string": _config(data="folder"),
    "config seed a float": _config(seed=1.5),
    "config terms a list": _config(terms=[1]),
    "history a dict": _set("history", value={"a": 1}),
    "history psnr 'x'": _set("history", value=[{"step": 2, "psnr": "x", "ssim": 0.5}]),
    "best without psnr": _set("best", value={"step": 2}),
    "best psnr NaN": _set("best", value={"step": 2, "psnr": math.nan, "ssim": 0.5}),
    "terms a list": _set("terms", value=[1]),
    "scaler a string": _set("scaler", value="x"),
}


@pytest.mark.parametrize("run_dir", ["light"], indirect=True)
def test_a_damaged_checkpoint_is_one_error_line(stopped_runs, run_dir, tally):
    good = torch.load(run_dir / "s.ckpt", weights_only=True)
    failed = []
    for name, damage in DAMAGE.items():
        with tally.case(CATEGORY, f"checkpoint: {name}"):
            ck = copy.deepcopy(good)
            damage(ck)
            torch.save(ck, run_dir / "s.ckpt")
            r = _resume(stopped_runs, run_dir)
            try:
                line = _one_error_line(r, 1)
                assert "s.ckpt is a damaged checkpoint" in line or "not a checkpoint this srdistill" in line, line
                assert len(line) < 400, line
            except AssertionError as e:
                failed.append(f"{name}: {e}")
    assert not failed, "\n".join(failed)
    torch.save(good, run_dir / "s.ckpt")  # and the undamaged one still resumes
    r = _resume(stopped_runs, run_dir)
    assert r.exit_code == 0, r.output


# --------------------------------------------------------------------------- info


@pytest.mark.parametrize("step", ["abc", math.inf, [1], math.nan, None, {}, -1, 10**30, True, 2.5])
def test_info_describes_a_checkpoint_shaped_pth_whatever_its_step(tmp_path, step, tally):
    with tally.case(INFO_CATEGORY, f"info: checkpoint-shaped .pth with step {step!r}"):
        sd = tiny_compact().state_dict()
        p = tmp_path / "ck.pth"
        torch.save({"format": 1, "step": step, "student_arch": "Compact", "student": sd,
                    "ema": {"module": sd, "updates": 1}, "config": json.dumps({"lr": 0.1})}, p)
        r = _invoke(["info", p])
        assert r.exit_code == 0 and "Traceback" not in r.output, r.output
        assert "Compact" in r.output and "x2" in r.output
        r = _invoke(["info", p, "--json"])
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output)
        assert "checkpoint_step" not in doc["srdistill"] and doc["scale"] == 2


def test_info_still_shows_a_real_step(tmp_path):
    sd = tiny_compact().state_dict()
    p = tmp_path / "ck.pth"
    torch.save({"format": 1, "step": 7, "student_arch": "Compact", "student": sd, "ema": {"module": sd, "updates": 1}},
               p)
    r = _invoke(["info", p, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["srdistill"]["checkpoint_step"] == 7
