"""Round three of hardening (issue 25, classes 5 and 7): every numeric option's range is what all its
consumers accept, echoes of user values stay short, nested JSON in metadata or a training log is
bounded, an empty text option is refused instead of read as its default, and an image too small to
score is skipped by name instead of ending the whole eval."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

from robust_helpers import natural_image, python_env, tiny_compact
from srdistill.cli import app
from srdistill.metadata import MAX_JSON_DEPTH, decode_srdistill_metadata, loads_bounded, metadata_int

MALFORMED = "malformed but harmless inputs"
BIG = "9" * 400


def _run(args, timeout=120):
    return subprocess.run([sys.executable, "-m", "srdistill", *args], capture_output=True, text=True,
                          timeout=timeout, env=python_env())


def _one_error_line(stderr: str, code: int, got: int) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and got == code, (got, stderr)
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny x2 student file and a few training images."""
    from srdistill.models.checkpoint import save_student
    from srdistill.models.loading import model_from_state_dict

    d = tmp_path_factory.mktemp("values")
    student = d / "s.safetensors"
    save_student(student, model_from_state_dict(tiny_compact().state_dict()))
    data = d / "hr"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(natural_image(rng, 40, 48)).save(data / f"img{i}.png")
    return {"student": student, "data": data, "dir": d}


def _distill(files, tmp_path, *extra):
    return CliRunner().invoke(app, ["distill", str(files["student"]), "-w", "4", "-d", "1", "--data",
                                    str(files["data"]), "--no-val", "--steps", "1", "-b", "2", "-p", "8",
                                    "--threads", "1", "-q", "-o", str(tmp_path / "x.safetensors"), *extra])


# --------------------------------------------------------------------------- class 5: ranges and echoes


@pytest.mark.parametrize("args, flag", [
    (["--seed", str(2**32)], "--seed"),  # passed the old check, then numpy refused it with a traceback
    (["--seed", BIG], "--seed"),
    (["--lr", "1e300"], "--lr"),  # AdamW's float32 step overflowed inside torch
    (["--lr", "inf"], "--lr"),
    (["--gt-size", BIG], "--gt-size"),
    (["--checkpoint-every", "-" + BIG], "--checkpoint-every"),
    (["--max-images", "-" + BIG], "--max-images"),
])
def test_distill_values_outside_what_their_consumers_take(files, tmp_path, tally, args, flag):
    with tally.case(MALFORMED, f"distill {args[0]} {args[1][:20]}"):
        r = _distill(files, tmp_path, *args)
        line = _one_error_line(r.stderr, 2, r.exit_code)
        assert flag in line and len(line) < 250, line
        assert not (tmp_path / "x.safetensors").exists()


def test_gt_size_beyond_the_largest_patch_is_refused_with_the_scale(files, tmp_path, tally):
    with tally.case(MALFORMED, "distill --gt-size 16384 at x2 (LR patch 8192 > 4096)"):
        r = _distill(files, tmp_path, "--gt-size", "16384")
        line = _one_error_line(r.stderr, 2, r.exit_code)
        assert "--gt-size" in line and "between 8 and 8192" in line


def test_the_largest_seed_trains(files, tmp_path, tally):
    with tally.case(MALFORMED, f"distill --seed {2**32 - 1} (the largest) runs"):
        r = _distill(files, tmp_path, "--seed", str(2**32 - 1))
        assert r.exit_code == 0, r.output
        assert (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("seed, ok", [(2**32, False), (int(BIG), False), (2**32 - 1, True)])
def test_eval_seed_has_distills_range(files, tally, seed, ok):
    with tally.case(MALFORMED, f"eval --seed {str(seed)[:20]}"):
        r = CliRunner().invoke(app, ["eval", str(files["student"]), "--data", str(files["data"]), "--no-bench",
                                     "--degradation", "light", "--seed", str(seed)])
        if ok:
            assert r.exit_code == 0, r.output
        else:
            line = _one_error_line(r.stderr, 2, r.exit_code)
            assert "--seed" in line and len(line) < 250, line


@pytest.mark.parametrize("threads", ["99999999999", "0", "5000"])
def test_upscale_threads_has_the_range_of_the_other_commands(files, tmp_path, tally, threads):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    with tally.case(MALFORMED, f"upscale --threads {threads}"):
        r = CliRunner().invoke(app, ["upscale", str(img), "-m", str(files["student"]), "--threads", threads,
                                     "-o", str(tmp_path / "o.png")])
        assert "--threads" in _one_error_line(r.stderr, 2, r.exit_code)


# --------------------------------------------------------------------------- class 5: nested JSON


def _nest(depth: int, kind: str = "list") -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


def test_bounded_json_reader():
    assert loads_bounded(_nest(MAX_JSON_DEPTH)) is not None
    assert loads_bounded(_nest(MAX_JSON_DEPTH, "dict")) is not None
    for text in (_nest(MAX_JSON_DEPTH + 1), _nest(500, "dict"), _nest(200_000)):
        with pytest.raises(ValueError, match="nested deeper"):
            loads_bounded(text)
    meta = {"srdistill.config": _nest(200_000), "srdistill.foo": _nest(600), "srdistill.bar": _nest(3),
            "srdistill.scale": _nest(100_000), "srdistill.name": "plain text"}
    out = decode_srdistill_metadata(meta)
    assert out == {"bar": [[[]]], "name": "plain text"}  # the over-deep entries are left out
    assert metadata_int(meta, "srdistill.scale") is None


def _with_meta(src, dst, entries):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as g:
        meta, sd = dict(g.metadata() or {}), {k: g.get_tensor(k) for k in g.keys()}
    meta.update(entries)
    save_file(sd, str(dst), metadata=meta)
    return dst


@pytest.mark.native
@pytest.mark.parametrize("depth", [100_000, 900, 40])
def test_nested_safetensors_metadata(files, tmp_path, tally, depth):
    entries = {k: _nest(depth, "dict" if depth == 900 else "list")
               for k in ("srdistill.config", "srdistill.hyperparameters", "srdistill.metrics", "srdistill.foo",
                         "srdistill.scale")}
    f = _with_meta(files["student"], tmp_path / "deep.safetensors", entries)
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    with tally.case(MALFORMED, f"safetensors srdistill.* metadata nested {depth} deep"):
        for args in (["info", str(f)], ["info", str(f), "--json"],
                     ["upscale", str(img), "-m", str(f), "-o", str(tmp_path / "o.png"), "--overwrite"]):
            r = CliRunner().invoke(app, args)
            assert r.exit_code == 0 and "Recursion" not in r.output, (args, r.output[-500:])
            if "--json" in args:
                assert "foo" not in json.loads(r.stdout).get("srdistill", {})


@pytest.mark.parametrize("depth", [100_000, 700])
def test_nested_onnx_metadata(files, tmp_path, tally, depth):
    from srdistill.export import ExportOptions, export_onnx

    plain = files["dir"] / "s.onnx"
    if not plain.exists():
        export_onnx(files["student"], plain, ExportOptions(simplify=False))
    m = onnx.load(str(plain))
    for k in ("srdistill.hyperparameters", "srdistill.export", "srdistill.scale", "srdistill.foo"):
        m.metadata_props.add(key=k, value=_nest(depth))
    f = tmp_path / "deep.onnx"
    onnx.save(m, str(f))
    with tally.case(MALFORMED, f"ONNX srdistill.* metadata nested {depth} deep"):
        for args in (["info", str(f)], ["info", str(f), "--json"]):
            r = CliRunner().invoke(app, args)
            assert r.exit_code == 0 and "Recursion" not in r.output, (args, r.output[-500:])


@pytest.mark.parametrize("where", ["first line", "end line"])
def test_nested_json_in_a_training_log(files, tmp_path, tally, where):
    """The log is read to decide whether it belongs to an unfinished run of ours; nesting makes it not."""
    start = '{"event": "start", "srdistill": "0.3.0", "config": {"steps": 5}}\n'
    text = (_nest(100_000) + "\n" if where == "first line"
            else start + '{"event": "end", "step": 5, "x": ' + _nest(100_000) + "}\n")
    (tmp_path / "x.train.jsonl").write_text(text)
    with tally.case(MALFORMED, f"training log nested 100000 deep ({where})"):
        r = _distill(files, tmp_path)
        line = _one_error_line(r.stderr, 1, r.exit_code)
        assert "x.train.jsonl" in line and "--overwrite" in line
        assert (tmp_path / "x.train.jsonl").read_text() == text


# --------------------------------------------------------------------------- class 7: empty text options


@pytest.mark.parametrize("flag", ["--init", "--degradation", "--student-arch", "--device", "--precision", "--loss",
                                  "--alpha-schedule", "--reparam-branches"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_distill_option_is_refused(files, tmp_path, tally, flag, value):
    with tally.case(MALFORMED, f"distill {flag} {value!r}"):
        extra = ["--reparam"] if flag == "--reparam-branches" else []
        r = _distill(files, tmp_path, flag, value, *extra)
        line = _one_error_line(r.stderr, 2, r.exit_code)
        assert f"{flag} cannot be empty" in line
        assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("args, flag", [(["eval", "--reference", ""], "--reference"),
                                        (["eval", "--degradation", " "], "--degradation"),
                                        (["eval", "--device", ""], "--device"),
                                        (["upscale", "--device", ""], "--device"),
                                        (["upscale", "--alpha-mode", ""], "--alpha-mode")])
def test_an_empty_option_of_other_commands_is_refused(files, tmp_path, tally, args, flag):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    cmd, *opt = args
    where = (["--data", str(files["data"]), "--no-bench"] if cmd == "eval"
             else [str(img), "-o", str(tmp_path / "o.png")])
    with tally.case(MALFORMED, f"{cmd} {flag} {opt[1]!r}"):
        r = CliRunner().invoke(app, [cmd, str(files["student"]) if cmd == "eval" else "-m", *(
            [] if cmd == "eval" else [str(files["student"])]), *where, *opt])
        assert f"{flag} cannot be empty" in _one_error_line(r.stderr, 2, r.exit_code)


# --------------------------------------------------------------------------- class 7: images too small to score


def _tiny(path, w, h):
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


@pytest.mark.parametrize("sizes", [[(1, 1)], [(1, 1), (5, 3)], [(2, 40)]])
def test_lr_only_images_too_small_to_score_are_skipped_by_name(files, tmp_path, tally, sizes):
    d = tmp_path / "lr"
    d.mkdir()
    for i in range(2):
        Image.fromarray(natural_image(np.random.default_rng(i), 20, 24)).save(d / f"ok{i}.png")
    names = [f"tiny{w}x{h}.png" for w, h in sizes]
    for (w, h), name in zip(sizes, names):
        _tiny(d / name, w, h)
    with tally.case(MALFORMED, f"eval --lr-only with {sizes} images"):
        r = CliRunner().invoke(app, ["eval", str(files["student"]), "--teacher", str(files["student"]), "--data",
                                     str(d), "--lr-only", "--reference", "teacher", "--no-bench", "--json"])
        line = _one_error_line(r.stderr, 1, r.exit_code)  # scored and reported, then marked incomplete
        assert all(n in line for n in names) and "too small to score" in line
        for n, (w, h) in zip(names, sizes):
            assert f"skipping {n}: its {w}x{h} input gives a {2 * w}x{2 * h} output" in r.stderr
        ds = json.loads(r.stdout)["datasets"][0]
        assert ds["images"] == 2 and len(ds["skipped"]) == len(sizes)


def test_a_folder_of_only_unscorable_images_names_the_file(files, tmp_path, tally):
    for layout in ("lr-only", "hr"):
        d = tmp_path / layout
        d.mkdir()
        _tiny(d / "only.png", 1, 1) if layout == "lr-only" else _tiny(d / "only.png", 8, 8)
        args = ["--lr-only", "--reference", "teacher", "--teacher", str(files["student"])] if layout == "lr-only" else []
        with tally.case(MALFORMED, f"eval of a folder with one unscorable image ({layout})"):
            r = CliRunner().invoke(app, ["eval", str(files["student"]), "--data", str(d), "--no-bench", *args])
            line = _one_error_line(r.stderr, 1, r.exit_code)
            assert "only.png" in line and "too small to score" in line
