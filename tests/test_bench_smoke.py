"""Every benchmark runs end to end at toy size, so bench/ never rots (results go to *_quick.json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

pytestmark = [pytest.mark.slow, pytest.mark.shared]


@pytest.fixture(autouse=True)
def _needs_shared(shared_dir, monkeypatch, tmp_path):
    import bench.common as common

    monkeypatch.setattr(common, "SHARED", shared_dir)
    monkeypatch.setattr(common, "RESULTS", tmp_path)  # never touch the real results


@pytest.mark.parametrize("name", ["eval_correctness", "distill_speed", "kd_vs_scratch"])
def test_benchmark_runs_at_toy_size(name, tmp_path, monkeypatch):
    import importlib

    mod = importlib.import_module(f"bench.{name}")
    if hasattr(mod, "SHARED"):
        import bench.common as common

        monkeypatch.setattr(mod, "SHARED", common.SHARED)
    doc = mod.run(quick=True)
    assert doc["results"]
    written = json.loads((tmp_path / f"{name}_quick.json").read_text())
    assert written["machine"]["cores"] >= 1


def test_inference_benchmark_runs_side_by_side_at_toy_size(tmp_path, shared_dir):
    from bench import report

    doc = _in_subprocess("inference", tmp_path, shared_dir)
    assert doc["results"] and doc["peak_gflops_estimate"]["formula"].startswith("cores x GHz")
    timed = [r for r in doc["runs"] if "output_mp_per_s_median" in r]
    assert {("torch", "fp32"), ("onnxruntime", "fp32")} <= {(r["runtime"], r["precision"]) for r in timed}
    for r in timed:
        assert r["output_mp_per_s_min"] <= r["output_mp_per_s_median"] <= r["output_mp_per_s_max"]
        assert r["threads"] == 2 and r["gflops_per_frame"] > 0
        assert (r["psnr_set5"] is None) == ("random weights" in r["model"])
    assert {r["command"].split()[-1] for r in doc["end_to_end"]} == {"torch", "auto"}
    written = json.loads((tmp_path / "inference_quick.json").read_text())
    assert written["runs"] == json.loads(json.dumps(doc["runs"]))
    text = "\n".join(report._inference(written))
    assert "side by side" in text and "end to end" in text


def test_png_level_benchmark_runs_at_toy_size(tmp_path):
    from bench import png_level

    doc = png_level.run(quick=True)
    assert [r["level"] for r in doc["results"]] == list(range(10)) and 1 <= doc["chosen_level"] <= 9
    assert doc["provisional"] and (tmp_path / "png_level_quick.json").exists()


def test_kd_methods_study_runs_at_toy_size(tmp_path):
    from bench import kd_methods

    doc = kd_methods.run(quick=True, methods=["realesr-animevideov3:init-teacher"])
    (row,) = doc["runs"]
    assert row["method"] == "init-teacher" and row["steps"] == 4 and "set5_teacher_psnr" in row
    assert (tmp_path / "kd_methods_quick.json").exists()


def _in_subprocess(module: str, results: Path, shared: Path) -> dict:
    """Run ``python -m bench.MODULE --quick`` in its own process: benchmarks that load native runtimes
    (OpenVINO, ncnn) or fork many children keep their threads and atfork handlers out of pytest's
    process (the full suite once died with SIGSEGV in the startup benchmark's first fork after the
    inference benchmark ran in-process)."""
    import os
    import subprocess

    env = {**os.environ, "SRDISTILL_BENCH_RESULTS": str(results), "SRDISTILL_SHARED": str(shared)}
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-m", f"bench.{module}", "--quick"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((results / f"{module}_quick.json").read_text())


def test_startup_benchmark_runs_at_toy_size(tmp_path, shared_dir):
    doc = _in_subprocess("startup", tmp_path, shared_dir)
    assert doc["results"]["srdistill info default_x4.onnx"]["torch"] is False
    assert all(r["median_s"] > 0 for r in doc["results"].values())


def test_report_renders_from_results(tmp_path):
    from bench import report

    (tmp_path / "eval_correctness.json").write_text(json.dumps({
        "machine": {"date": "2026-01-01", "cpu": "x", "cores": 2, "torch_threads": 2, "gpu": None, "python": "3",
                    "torch": "t", "onnxruntime": "o"},
        "results": {"Set5 x4": {"psnr": 28.43, "ssim": 0.811, "published_psnr": 28.42, "published_ssim": 0.8104,
                                "delta_psnr": 0.01, "delta_ssim": 0.0006, "images": 5}}}))
    machine = {"date": "2026-01-01", "cpu": "x", "cores": 2, "torch_threads": 2, "gpu": None, "python": "3",
               "torch": "t", "onnxruntime": "o"}
    run = {"teacher": "T", "student": "compact 32/8", "steps": 10, "seconds": 1.0, "cache_seconds": 0.0,
           "set5_ssim": 0.8, "set14_ssim": 0.7}
    (tmp_path / "kd_methods.json").write_text(json.dumps({
        "machine": machine, "settings": {"student": "compact 32/8", "batch": 16, "lr_patch": 32, "lr": 1e-3,
                                         "data": "d", "scored": "s"},
        "runs": [{**run, "method": "scratch", "seed": 0, "set5_psnr": 30.0, "set14_psnr": 27.0},
                 {**run, "method": "scratch", "seed": 1, "set5_psnr": 30.2, "set14_psnr": 27.2},
                 {**run, "method": "output-kd", "seed": 0, "set5_psnr": 30.5, "set14_psnr": 27.5}]}))
    out = report.write_report(tmp_path / "B.md")
    text = out.read_text()
    assert "28.430" in text and "Not measured yet" in text
    assert "| scratch | 0,1 | 10 | 30.100 ± 0.100 |" in text and "+0.400 / +0.400" in text


def test_data_scale_benchmark_runs_at_toy_size(tmp_path):
    from bench import data_scale

    doc = data_scale.run(quick=True)
    assert doc["pack_images"] == 6 and doc["train_steps"] == 3 and doc["build_peak_rss_gb"] > 0


def test_reparam_study_runs_at_toy_size(tmp_path):
    from bench import reparam

    doc = reparam.run(quick=True, items=["reparam-ecb:scratch"])
    (row,) = doc["runs"]
    assert row["method"] == "reparam-ecb" and row["branches"] == "1x1,expand,sobel,laplacian"
    assert row["params"] == 89040 and row["steps"] == 4  # the saved student is the plain Compact 32/8
    assert doc["summary"][0]["seeds"] == [0]
    assert (tmp_path / "reparam_quick.json").exists()
