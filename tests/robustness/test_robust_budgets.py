"""Round two of hardening: tiny files that would cost memory or time, malformed but harmless inputs,
stdout that cannot be written, and a finished run's log. Each case: one ``error:`` line (or a
result), the right exit code, no traceback, within the budget the README states."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from robust_helpers import python_env, tiny_compact

BUDGET = "resource budgets of tiny files"
MALFORMED = "malformed but harmless inputs"
FINISHED = "finished runs' files"


def _run(args, timeout=60, **kw):
    return subprocess.run([sys.executable, "-m", "srdistill", *args], capture_output=True, text=True,
                          timeout=timeout, env=kw.pop("env", None) or python_env(), **kw)


def _one_error_line(r, code=None):
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.stderr
    if code is not None:
        assert r.returncode == code, (r.returncode, r.stderr)
    else:
        assert r.returncode in (1, 2), (r.returncode, r.stderr)
    return lines[0]


_MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    import torch  # the baseline: what any srdistill command pays
    from srdistill.models.loading import load_model
    from srdistill.errors import SrDistillError
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    try:
        load_model(sys.argv[1])
        out = "loaded"
    except SrDistillError as e:
        out = str(e)
    print(json.dumps({"seconds": time.monotonic() - t0, "extra_mb":
                      (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, "result": out}))
""")


@pytest.mark.parametrize("kind", ["stride0", "meta"])
def test_a_tiny_pth_that_declares_a_huge_model_is_refused_within_budget(tmp_path, tally, kind):
    z = torch.zeros(1)
    if kind == "meta":
        big = torch.empty(8192, 8192, 3, 3, device="meta")
    else:
        big = z.as_strided((8192, 8192, 3, 3), (0, 0, 0, 0))
    sd = {"body.0.weight": z.as_strided((8192, 3, 3, 3), (0, 0, 0, 0)), "body.0.bias": z.as_strided((8192,), (0,)),
          "body.1.weight": z.as_strided((8192,), (0,)), "body.2.weight": big,
          "body.2.bias": z.as_strided((8192,), (0,)), "body.3.weight": z.as_strided((8192,), (0,)),
          "body.4.weight": z.as_strided((48, 8192, 3, 3), (0, 0, 0, 0)), "body.4.bias": torch.zeros(48)}
    f = tmp_path / f"{kind}.pth"
    try:
        torch.save(sd, f)
    except Exception:  # noqa: BLE001 - this torch cannot save it: nothing to defend against
        pytest.skip(f"torch.save refuses a {kind} state dict")
    assert f.stat().st_size < 1 << 20
    with tally.case(BUDGET, f"{kind} .pth of {f.stat().st_size} bytes declaring 8192 channels"):
        r = subprocess.run([sys.executable, "-c", _MEASURE, str(f)], capture_output=True, text=True, timeout=60,
                           env=python_env())
        assert r.returncode == 0, r.stderr
        m = json.loads(r.stdout.strip().splitlines()[-1])
        assert m["result"] != "loaded" and "Traceback" not in r.stderr
        assert m["seconds"] < 10 and m["extra_mb"] < 1024, m
        e = _one_error_line(_run(["info", str(f)]), 1)
        assert "larger than the weights" in e or "not" in e


def _loop_graph(path, scale_meta=None):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c2"]), helper.make_node("Identity", ["v"], ["v2"])], "b",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("c2", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v2", TensorProto.FLOAT, None)])
    g = helper.make_graph([helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)], "g", [x], [y],
                          initializer=[helper.make_tensor("trip", TensorProto.INT64, [], [10**12]),
                                       helper.make_tensor("cond", TensorProto.BOOL, [], [True])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    if scale_meta is not None:
        m.metadata_props.add(key="srdistill.scale", value=scale_meta)
    onnx.save(m, path)


def test_an_onnx_graph_that_would_run_forever_is_described_without_running_it(tmp_path, tally):
    f = tmp_path / "loop.onnx"
    _loop_graph(f)
    with tally.case(BUDGET, "ONNX Loop with a 10^12 trip count: info"):
        t0 = time.monotonic()
        r = _run(["info", str(f)], timeout=30)
        assert r.returncode == 0 and time.monotonic() - t0 < 10, r.stderr
        assert "unknown" in r.stdout and "Traceback" not in r.stderr
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    with tally.case(BUDGET, "ONNX Loop with a 10^12 trip count: upscale (bounded probe)"):
        t0 = time.monotonic()
        e = _one_error_line(_run(["upscale", str(img), "-m", str(f), "-o", str(tmp_path / "o.png")], timeout=60))
        assert "probe" in e and time.monotonic() - t0 < 30


@pytest.mark.parametrize("value", ["abc", "null", "-4", "[1]"])
def test_onnx_scale_metadata_that_is_not_a_scale(tmp_path, tally, value):
    f = tmp_path / "m.onnx"
    _loop_graph(f, value)
    with tally.case(MALFORMED, f"ONNX srdistill.scale = {value}"):
        r = _run(["info", str(f), "--json"], timeout=30)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert json.loads(r.stdout)["scale"] is None


@pytest.fixture(scope="module")
def student_file(tmp_path_factory):
    from srdistill.models.checkpoint import save_student
    from srdistill.models.loading import model_from_state_dict

    d = tmp_path_factory.mktemp("student")
    m = model_from_state_dict(tiny_compact().state_dict())
    f = d / "s.safetensors"
    save_student(f, m)
    return f


def _with_meta(src, dst, **entries):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as g:
        meta, sd = dict(g.metadata() or {}), {k: g.get_tensor(k) for k in g.keys()}
    meta.update(entries)
    save_file(sd, str(dst), metadata=meta)
    return dst


@pytest.mark.parametrize("entry, value", [("srdistill.config", "[1]"), ("srdistill.teacher", '"x"'),
                                          ("srdistill.metrics", "3"), ("srdistill.scale", '"abc"'),
                                          ("srdistill.hyperparameters", "null")])
def test_srdistill_metadata_of_the_wrong_shape(student_file, tmp_path, tally, entry, value):
    f = _with_meta(student_file, tmp_path / "odd.safetensors", **{entry: value})
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(img)
    with tally.case(MALFORMED, f"metadata {entry}={value}"):
        for args in (["info", str(f)], ["info", str(f), "--json"],
                     ["upscale", str(img), "-m", str(f), "-o", str(tmp_path / "o.png"), "--overwrite"]):
            r = _run(args)
            assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr)


def test_a_pth_with_non_string_keys(tmp_path, tally):
    f = tmp_path / "k.pth"
    torch.save({1: torch.zeros(3), "body.0.weight": torch.zeros(4, 3, 3, 3)}, f)
    with tally.case(MALFORMED, "non-string keys in a .pth"):
        e = _one_error_line(_run(["info", str(f)]), 1)
        assert "key 1" in e


@pytest.mark.parametrize("args, flag", [
    (["--student-width", "100000", "--allow-wider"], "--student-width"),
    (["--student-width", "4096", "--allow-wider"], "parameters"),
    (["--student-width", "4", "--student-depth", "100000"], "--student-depth"),
    (["--student-width", "4", "--degradation-variants", "0", "--degradation", "light"], "--degradation-variants"),
])
def test_absurd_sizes_are_refused_before_anything_is_built(student_file, tmp_path, tally, args, flag):
    with tally.case(MALFORMED, " ".join(args)):
        t0 = time.monotonic()
        e = _one_error_line(_run(["distill", str(student_file), *args, "-o", str(tmp_path / "x.safetensors")]), 2)
        assert flag in e and time.monotonic() - t0 < 30


def test_upscale_outscale_is_bounded(student_file, tmp_path, tally):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    with tally.case(MALFORMED, "upscale --outscale 1000000"):
        e = _one_error_line(_run(["upscale", str(img), "-m", str(student_file), "--outscale", "1000000",
                                  "-o", str(tmp_path / "o.png")], timeout=30), 2)
        assert "--outscale" in e


def test_eval_bench_size_is_bounded(student_file, tmp_path, tally):
    d = tmp_path / "hr"
    d.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / "a.png")
    with tally.case(MALFORMED, "eval --bench-size 100000"):
        e = _one_error_line(_run(["eval", str(student_file), "--data", str(d), "--bench-size", "100000"]), 2)
        assert "--bench-size" in e


def test_stdout_closed_or_full(student_file, tally):
    with tally.case(MALFORMED, "info --json >&-"):
        r = subprocess.run([sys.executable, "-m", "srdistill", "info", str(student_file), "--json"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=python_env(),
                           pass_fds=(), preexec_fn=lambda: os.close(1), timeout=60)
        assert "Traceback" not in r.stderr and r.returncode in (1, 2), r.stderr
        assert "standard output is closed" in r.stderr
    if not os.path.exists("/dev/full"):
        return
    for extra in ([], ["--json"]):
        with tally.case(MALFORMED, f"info {' '.join(extra)} > /dev/full"):
            with open("/dev/full", "w") as full:
                r = subprocess.run([sys.executable, "-m", "srdistill", "info", str(student_file), *extra],
                                   stdout=full, stderr=subprocess.PIPE, text=True, env=python_env(), timeout=60)
            assert "Traceback" not in r.stderr and r.returncode == 1, r.stderr
            assert "standard output" in r.stderr


def test_an_ascii_only_output_with_non_ascii_file_names(student_file, tmp_path, tally):
    img = tmp_path / "bébé.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    env = python_env(PYTHONIOENCODING="ascii", LC_ALL="C")
    with tally.case(MALFORMED, "PYTHONIOENCODING=ascii, upscale bébé.png"):
        r = _run(["upscale", str(img), "-m", str(student_file), "-o", f"{tmp_path}/out/"], env=env)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert "b\\xe9b\\xe9" in r.stdout
    with tally.case(MALFORMED, "PYTHONIOENCODING=ascii, info on a non-ASCII file name"):
        e = _one_error_line(_run(["info", str(img)], env=env), 2)
        assert "b\\xe9b\\xe9.png" in e


def test_a_finished_runs_log_is_not_replaced(student_file, tmp_path, tally):
    from robust_helpers import natural_image

    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(natural_image(np.random.default_rng(0), 48, 48)).save(data / "a.png")
    out = tmp_path / "s.safetensors"
    args = ["distill", str(student_file), "-w", "2", "-d", "1", "--data", str(data), "--steps", "2", "-b", "2",
            "-p", "8", "--no-val", "-o", str(out)]
    assert _run(args).returncode == 0
    (tmp_path / "s.ckpt").unlink()
    out.rename(tmp_path / "moved.safetensors")
    log = (tmp_path / "s.train.jsonl").read_text()
    with tally.case(FINISHED, "a finished run's log, its student moved and checkpoint deleted"):
        e = _one_error_line(_run(args), 1)
        assert "s.train.jsonl" in e and "--overwrite" in e
        assert (tmp_path / "s.train.jsonl").read_text() == log
