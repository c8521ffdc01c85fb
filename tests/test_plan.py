"""plan and distill --budget: a tiny Compact x2 teacher, generated images, output 128x96, CPU, seconds each.

Timings on a test machine mean nothing, so the tests that need a candidate to fit or not to fit give a
budget far from every candidate (1 s per frame fits all; the FLOP pruning is driven by a fake
measurement)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from srdistill.cli import app
from srdistill.errors import UsageError
from srdistill.models.loading import load_model
from srdistill.plan import PRUNE_FACTOR, Budget, plan, plan_options
from srdistill.plan import latency as measure_mod
from srdistill.plan.budget import input_size, parse_budget, parse_size
from srdistill.plan.distill_pick import distill_within_budget
from srdistill.plan.proxy import ProxySettings
from srdistill.distill.trainer import DistillConfig
from srdistill.progress import RecordingReporter

from test_distill import data_dir, teacher_path, write_natural_images  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # runtime auto's choices stay here


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    return write_natural_images(tmp_path_factory.mktemp("val"), 2, 48, 56, seed=5)


def _proxy(data_dir, val_dir, **kw):
    return ProxySettings(steps=kw.pop("steps", 4), batch_size=2, patch_size=16, data=[str(data_dir)],
                         val=[str(val_dir)], **kw)


def _opts(teacher_path, data_dir, val_dir, budget="1000ms", families=("compact",), **kw):
    return plan_options(teacher_path, budget=budget, size=kw.pop("size", "128x96"), runtime=kw.pop("runtime", "torch"),
                        families=list(families), repeats=1, max_proxy=kw.pop("max_proxy", 2),
                        proxy=_proxy(data_dir, val_dir), device="cpu", **kw)


# ---------------------------------------------------------------- budgets and sizes


@pytest.mark.parametrize("text,ms", [("33ms", 33.0), ("33 ms", 33.0), ("0.05s", 50.0), ("30fps", 1000 / 30),
                                     ("25 FPS", 40.0)])
def test_time_budgets(text, ms):
    assert parse_budget(text).ms == pytest.approx(ms)


def test_params_and_mb_budgets():
    assert parse_budget("250k params").max_params == 250_000
    assert parse_budget(None, max_params="1.5M").max_params == 1_500_000
    assert parse_budget(None, max_params=1200).max_params == 1200
    assert parse_budget("1.5MB").max_mb == pytest.approx(1.5)
    assert parse_budget(None, max_mb=2).max_mb == 2
    b = parse_budget("30fps", max_params="100k", max_mb=0.5)
    assert (round(b.ms, 3), b.max_params, b.max_mb) == (33.333, 100_000, 0.5)


@pytest.mark.parametrize("text", ["abc", "33", "-5ms", "0fps", "ms", "1e400ms", "nan ms"])
def test_bad_budgets_are_usage_errors(text):
    with pytest.raises(UsageError) as e:
        parse_budget(text)
    assert "\n" not in str(e.value)


def test_no_budget_and_bad_sizes():
    with pytest.raises(UsageError, match="give a budget"):
        parse_budget(None)
    for bad in ("0x5", "1920", "axb", "20000x10", "-1x5"):
        with pytest.raises(UsageError):
            parse_size(bad)
    assert parse_size("1920x1080") == (1920, 1080)
    assert input_size((1920, 1080), 4) == (480, 270)
    with pytest.raises(UsageError, match="too small"):
        input_size((8, 8), 4)


# ---------------------------------------------------------------- the plan


def test_plan_picks_a_fitting_candidate_and_prints_its_command(teacher_path, data_dir, val_dir):
    rep = RecordingReporter()
    res = plan(_opts(teacher_path, data_dir, val_dir, families=("compact", "span")), rep)
    assert res.input_size == [64, 48]
    assert res.pick is not None and res.pick.fits and res.pick.proxy_psnr is not None
    scored = [c for c in res.candidates if c.proxy_psnr is not None]
    assert 1 <= len(scored) <= 2 and all(c.fits for c in scored)
    assert res.pick.proxy_psnr == max(c.proxy_psnr for c in scored)
    assert all(c.ms is not None and c.ms > 0 and c.runtime == "torch" for c in res.candidates if c.fits)
    assert res.command.startswith(f"srdistill distill {teacher_path} ")
    assert f"--student-width {res.pick.width}" in res.command
    # the teacher labelled the data once, every measurement and proxy run a progress step
    assert sum("labelling" in m for m in rep.infos) == 1
    tasks = {t.description: t for t in rep.tasks}
    assert tasks["measuring latency"].done == tasks["measuring latency"].total > 0
    assert tasks["proxy distillation"].done == len(scored)


def test_far_over_budget_candidates_are_pruned_by_flops(teacher_path, data_dir, val_dir, monkeypatch):
    calls = []

    def fake(model, *, runtime, device, threads, lr_size, repeats):  # 1 ms per 0.001 GFLOP, ~ a real net
        calls.append(model.params)
        return 10.0, "torch"

    monkeypatch.setattr("srdistill.plan.measure", fake)
    res = plan(_opts(teacher_path, data_dir, val_dir, budget="12ms", families=("compact", "span"), max_proxy=1),
               RecordingReporter())
    pruned = [c for c in res.candidates if c.status == "pruned"]
    measured = [c for c in res.candidates if c.ms is not None]
    assert pruned and measured and len(calls) == len(measured)
    assert {c.family for c in pruned} >= {"SPAN"}  # SPAN's FLOPs are 10-100x Compact's here
    for c in pruned:
        assert "GFLOPs" in c.reason and not c.fits
    ratio = min(c.ms / c.gflops for c in measured)
    assert all(c.gflops * ratio > PRUNE_FACTOR * 12 for c in pruned)


def test_params_budget_rules_out_before_measuring(teacher_path, data_dir, val_dir):
    res = plan(_opts(teacher_path, data_dir, val_dir, budget=None, max_params="2000", max_proxy=1),
               RecordingReporter())
    assert res.pick.params <= 2000
    over = [c for c in res.candidates if c.params > 2000]
    assert over and all(c.status == "over budget" and c.ms is None for c in over)


def test_no_family_fits_is_one_line(teacher_path, data_dir, val_dir):
    with pytest.raises(UsageError, match="no candidate fits") as e:
        plan(_opts(teacher_path, data_dir, val_dir, budget=None, max_params="10"), RecordingReporter())
    assert "\n" not in str(e.value)


def test_unknown_family_is_a_usage_error(teacher_path, data_dir, val_dir):
    with pytest.raises(UsageError, match="unknown student architecture"):
        _opts(teacher_path, data_dir, val_dir, families=("compact,nosuchnet",))


def test_measure_runs_the_exported_onnx_file(teacher_path, tmp_path):
    from srdistill.models.students import build_student

    teacher = load_model(teacher_path)
    student = build_student(teacher, 4, 1, seed=0)
    path = measure_mod.model_file(student, "onnxruntime", tmp_path)
    assert path.suffix == ".onnx" and path.is_file()
    ms, rt = measure_mod.measure(student, runtime="onnxruntime", device="cpu", threads=1, lr_size=(32, 24), repeats=2)
    assert rt == "onnxruntime" and ms > 0


# ---------------------------------------------------------------- the command line


def _cli(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def test_cli_json_has_the_table_the_pick_and_the_command(teacher_path, data_dir, val_dir):
    r = _cli("plan", teacher_path, "--budget", "1000ms", "--size", "128x96", "--runtime", "torch", "--device", "cpu",
             "--families", "compact", "--data", data_dir, "--val", val_dir, "--proxy-steps", 3, "--max-proxy", 1,
             "--repeats", 1, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert set(doc) >= {"teacher", "size", "input_size", "budget", "candidates", "pick", "command", "proxy"}
    row = doc["candidates"][0]
    assert set(row) >= {"family", "width", "depth", "params", "mb", "gflops", "ms", "fps", "proxy_psnr", "fits"}
    assert doc["pick"]["fits"] is True and doc["budget"]["ms"] == 1000
    assert doc["command"].startswith("srdistill distill")


@pytest.mark.parametrize("args,what", [
    (["--budget", "abc"], "invalid --budget"),
    (["--budget", "33ms", "--size", "0x5"], "--size"),
    (["--budget", "33ms", "--families", "nosuchnet"], "unknown student architecture"),
    (["--max-params", "10", "--families", "compact"], "no candidate fits"),
    ([], "give a budget"),
])
def test_cli_errors_are_one_line_exit_2(teacher_path, data_dir, val_dir, args, what):
    common = ["--runtime", "torch", "--device", "cpu", "--data", data_dir, "--val", val_dir, "-q"]
    r = _cli("plan", teacher_path, *common, *(args if "--size" in args else ["--size", "128x96", *args]))
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and what in lines[0], r.output


# ---------------------------------------------------------------- distill --budget


def _dcfg(teacher_path, data_dir, val_dir, tmp_path, **kw):
    return DistillConfig(teacher=str(teacher_path), student_width=kw.pop("student_width", None),
                         data=[str(data_dir)], val=[str(val_dir)], steps=3, batch_size=2, patch_size=16,
                         out=str(tmp_path / "s.safetensors"), device="cpu", **kw)


def test_distill_budget_distills_the_pick_and_records_the_plan(teacher_path, data_dir, val_dir, tmp_path):
    cfg = _dcfg(teacher_path, data_dir, val_dir, tmp_path)
    opts = _opts(teacher_path, data_dir, val_dir, max_proxy=1)
    res = distill_within_budget(cfg, opts, RecordingReporter(), explicit=set())
    pick = res.plan.pick
    student = load_model(res.distill.out)
    assert student.hyperparameters["num_feat"] == pick.width
    recorded = student.srdistill["config"]["plan"]
    assert recorded["pick"]["width"] == pick.width and recorded["budget"]["ms"] == 1000
    assert recorded["candidates"] and recorded["overridden"] == []


def test_explicit_width_wins_over_the_pick_with_a_notice(teacher_path, data_dir, val_dir, tmp_path):
    cfg = _dcfg(teacher_path, data_dir, val_dir, tmp_path, student_width=6, student_depth=1)
    rep = RecordingReporter()
    res = distill_within_budget(cfg, _opts(teacher_path, data_dir, val_dir, max_proxy=1), rep,
                                explicit={"student_width", "student_depth"})
    assert load_model(res.distill.out).hyperparameters["num_feat"] == 6
    assert any(m.startswith("notice: --student-width, --student-depth given") for m in rep.infos)
    assert load_model(res.distill.out).srdistill["config"]["plan"]["overridden"] == ["student_width", "student_depth"]


def test_distill_cli_needs_a_width_or_a_budget(teacher_path):
    r = _cli("distill", teacher_path)
    assert r.exit_code == 2 and "--student-width" in r.output and "--budget" in r.output


def test_budget_only_limits_are_a_budget():
    assert Budget(max_mb=1).any() and not Budget().any()
    assert torch.__version__  # the plan's FLOP counter is torch's own
