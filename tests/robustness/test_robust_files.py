"""Files that are not regular files, paths too long for the system, names that could split or colour
lines, and degradation files with values of the wrong type or size.

Every file input (model files, the resume checkpoint, the degradation file, images, calibration
folders, the training log) goes through one check (``srdistill.fileio``): a regular file under a
stated size, refused at once otherwise -- a FIFO never blocks, /dev/zero is never read. Paths over
the system's limits are one ``error:`` line with exit 2. File names are escaped in every line of
output (``\\n``, ``\\x1b``). Each CLI case runs in a thread with a time limit, so a hang fails the
test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from robust_helpers import natural_image
from srdistill import fileio
from srdistill.cli import app
from srdistill.console import escape_control
from srdistill.data import images as images_mod
from srdistill.data.degrade import load_degradation
from srdistill.data.images import read_image
from srdistill.errors import ImageError, UsageError

PATHS = "bad images and paths"
VALUES = "malformed but harmless inputs"

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="FIFOs, sockets and /dev/zero are POSIX"),
    pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning"),
]


def _cli(*args, timeout: float = 120):
    """``srdistill ARGS`` in-process, in a thread: a command that blocks (a FIFO opened for reading)
    fails the test after ``timeout`` seconds instead of hanging it."""
    box: dict = {}

    def go():
        box["r"] = CliRunner().invoke(app, [str(a) for a in args])

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"srdistill {' '.join(map(str, args))[:200]} still running after {timeout} s"
    return box["r"]


def _one_error_line(r, code: int) -> str:
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert len(err) == 1 and err[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stdout + r.stderr and r.stdout == "", (r.stdout, r.stderr)
    assert len(err[0]) < 400, err[0]
    return err[0]


def _special(tmp_path: Path, kind: str, name: str) -> Path:
    """A path of ``kind``: fifo, socket, folder, dev-zero (a symlink to /dev/zero), dev-null."""
    p = tmp_path / name
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "socket":
        s, cwd = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), os.getcwd()
        try:
            os.chdir(p.parent)  # bound by its short name: sun_path holds 108 bytes, tmp_path may be longer
            s.bind(p.name)
        finally:
            os.chdir(cwd)
            s.close()
    elif kind == "folder":
        p.mkdir()
    elif kind in ("dev-zero", "dev-null"):
        p.symlink_to("/dev/zero" if kind == "dev-zero" else "/dev/null")
    return p


KINDS = ["fifo", "socket", "folder", "dev-zero", "dev-null"]


@pytest.fixture(scope="module")
def teacher() -> Path:
    from srdistill import assets

    return Path(assets.BUNDLED_TEACHER)


@pytest.fixture(scope="module")
def sample_png(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("sample") / "photo.png"
    PILImage.fromarray(natural_image(np.random.default_rng(0), 24, 24)).save(p)
    return p


# --------------------------------------------------------------------------- class 3: not regular files


@pytest.mark.parametrize("kind", KINDS)
def test_degradation_file_that_is_not_a_regular_file_is_refused_at_once(tmp_path, tally, teacher, kind):
    with tally.case(PATHS, f"--degradation {kind}"):
        deg = _special(tmp_path, kind, "deg.toml")
        r = _cli("distill", teacher, "-w", "4", "--steps", "1", "--degradation", deg, "-o",
                 tmp_path / "s.safetensors", timeout=60)
        err = _one_error_line(r, 2)
        assert "not a regular file" in err and "deg.toml" in err and "tiles" not in err, err
        assert not (tmp_path / "s.safetensors").exists()


def test_degradation_file_over_its_size_limit_is_refused_unread(tmp_path, tally, teacher):
    with tally.case(PATHS, "a 2 MiB --degradation file"):
        big = tmp_path / "big.json"
        big.write_text('{"noise_range": [' + ",".join(["1"] * (1 << 20)) + "]}")
        r = _cli("distill", teacher, "-w", "4", "--degradation", big, "-o", tmp_path / "s.safetensors")
        err = _one_error_line(r, 2)
        assert "over the 1 MiB limit" in err, err


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ext", [".pth", ".safetensors", ".onnx"])
def test_model_file_that_is_not_a_regular_file_is_a_usage_error(tmp_path, tally, kind, ext):
    with tally.case(PATHS, f"info on a {kind} named {ext}"):
        m = _special(tmp_path, kind, "model" + ext)
        err = _one_error_line(_cli("info", m, timeout=60), 2)
        assert ("folder" if kind == "folder" else "not a regular file") in err and "model" + ext in err, err


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_teacher_and_upscale_model_that_are_not_regular_files(tmp_path, tally, teacher, sample_png, kind):
    with tally.case(PATHS, f"distill teacher / upscale -m / eval model: {kind}"):
        m = _special(tmp_path, kind, "t.pth")
        err = _one_error_line(_cli("distill", m, "-w", "4", "-o", tmp_path / "s.safetensors", timeout=60), 2)
        assert "not a regular file" in err, err
        err = _one_error_line(_cli("upscale", sample_png, "-m", m, "-o", tmp_path / "o.png", timeout=60), 2)
        assert "not a regular file" in err, err
        assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "socket"])
def test_image_that_is_not_a_regular_file(tmp_path, tally, kind):
    with tally.case(PATHS, f"image: {kind}"):
        p = _special(tmp_path, kind, "x.png")
        with pytest.raises(ImageError, match="not a regular file") as e:
            read_image(p)  # a FIFO with no writer: would block in open() without O_NONBLOCK
        assert "x.png" in str(e.value) and "\n" not in str(e.value)
        err = _one_error_line(_cli("upscale", p, timeout=60), 2)  # named explicitly: a usage error
        assert "x.png" in err, err


def test_special_files_in_an_image_folder_are_passed_over(tmp_path, tally, sample_png):
    with tally.case(PATHS, "upscale over a folder holding a FIFO and a /dev/zero link named .png"):
        d = tmp_path / "in"
        d.mkdir()
        (d / "good.png").write_bytes(sample_png.read_bytes())
        _special(d, "fifo", "pipe.png")
        _special(d, "dev-zero", "zero.png")
        from srdistill.data.images import list_images

        assert [p.name for p in list_images([d])] == ["good.png"]


def test_image_over_its_size_limit_is_refused_unread(tmp_path, tally, sample_png, monkeypatch):
    with tally.case(PATHS, "an image over the file size limit"):
        monkeypatch.setattr(images_mod, "MAX_IMAGE_BYTES", 100)
        with pytest.raises(ImageError, match="over the 100 bytes limit"):
            read_image(sample_png)


def test_a_fifo_swapped_in_after_the_check_does_not_block(tmp_path, tally, monkeypatch):
    """The race: the file checked is a regular file, the file opened a FIFO. O_NONBLOCK and fstat."""
    with tally.case(PATHS, "a FIFO swapped in between the check and the open"):
        real = tmp_path / "real.png"
        real.write_bytes(b"x")
        fifo = _special(tmp_path, "fifo", "pipe.png")
        checked = fileio.check_input_file
        monkeypatch.setattr(fileio, "check_input_file", lambda p, *a, **k: checked(real, *a, **k))
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("e", _raises(read_image, fifo)), daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "opening a FIFO blocked"
        assert isinstance(box["e"], ImageError) and "FIFO" in str(box["e"]), box


def _raises(fn, *args):
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 - returned for the test to look at
        return e
    return None


def test_calibration_folder_reads_only_regular_files(tmp_path, tally, sample_png):
    from srdistill.export.calibration import check_calibration, read_rgb

    with tally.case(PATHS, "calibration folder with a FIFO and a device among its images"):
        d = tmp_path / "cal"
        d.mkdir()
        (d / "a.png").write_bytes(sample_png.read_bytes())
        fifo = _special(d, "fifo", "b.png")
        _special(d, "dev-zero", "c.png")
        assert [p.name for p in check_calibration(d)] == ["a.png"]
        with pytest.raises(ImageError, match="not a regular file"):
            read_rgb(fifo)
        fifo_folder = _special(tmp_path, "fifo", "calfifo")
        with pytest.raises(UsageError, match="not a folder"):
            check_calibration(fifo_folder)


@pytest.mark.parametrize("kind", ["fifo", "dev-null", "folder"])
def test_resume_checkpoint_that_is_not_a_regular_file(tmp_path, tally, teacher, kind):
    from srdistill.distill.resume import read_checkpoint

    with tally.case(PATHS, f"--resume with a {kind} as the checkpoint"):
        ck = _special(tmp_path, kind, "s.ckpt")
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("e", _raises(read_checkpoint, ck, 1)), daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "reading the checkpoint blocked"
        assert isinstance(box["e"], UsageError) and "s.ckpt" in str(box["e"]), box
        assert "not a regular file" in str(box["e"])


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "socket"])
def test_training_log_that_is_not_a_regular_file(tmp_path, tally, kind):
    from srdistill.distill.state import existing_log, unfinished_run_log

    with tally.case(PATHS, f"the training log is a {kind}"):
        log = _special(tmp_path, kind, "s.train.jsonl")
        for fn in (existing_log, unfinished_run_log):
            box = {}
            t = threading.Thread(target=lambda: box.setdefault("e", _raises(fn, log)), daemon=True)
            t.start()
            t.join(30)
            assert not t.is_alive(), f"{fn.__name__} blocked"
            assert isinstance(box["e"], UsageError) and "not a regular file" in str(box["e"]), box
        assert existing_log(tmp_path / "missing.train.jsonl") is False


def test_read_input_bytes_never_reads_past_its_limit(tmp_path, tally):
    with tally.case(PATHS, "input helpers on a regular file, a device and a limit"):
        p = tmp_path / "f.json"
        p.write_bytes(b"x" * 10)
        assert fileio.read_input_bytes(p, "file", 10) == b"x" * 10
        with pytest.raises(UsageError, match="over the 9 bytes limit"):
            fileio.read_input_bytes(p, "file", 9)
        with pytest.raises(UsageError, match="character device"):
            fileio.read_input_bytes("/dev/zero", "file", 1 << 20)
        with pytest.raises(UsageError, match="does not exist"):
            fileio.check_input_file(tmp_path / "nope" / "f.json", "file", 10)


# --------------------------------------------------------------------------- class 4: long paths


def _long_name(tmp_path: Path) -> Path:
    return tmp_path / ("n" * 300 + ".pth")


def _long_path(tmp_path: Path) -> Path:
    return tmp_path.joinpath(*["d" * 200] * 25, "m.pth")  # 5,000+ bytes: over PATH_MAX


@pytest.mark.parametrize("which", ["name", "path"])
def test_paths_over_the_system_limits_are_one_line_exit_2(tmp_path, tally, teacher, sample_png, which):
    long = (_long_name if which == "name" else _long_path)(tmp_path)
    png = long.with_suffix(".png")
    cases = [
        ("info", long),
        ("distill", long, "-w", "4"),
        ("distill", teacher, "-w", "4", "--degradation", long.with_suffix(".toml")),
        ("distill", teacher, "-w", "4", "--data", long.parent / (long.name + "d")),
        ("distill", teacher, "-w", "4", "-o", long.with_suffix(".safetensors")),
        ("upscale", png),
        ("upscale", sample_png, "-m", long),
        ("upscale", sample_png, "-o", png),
        ("eval", long, "--data", sample_png.parent),
        ("eval", teacher, "--data", long.parent / (long.name + "d")),
        ("export", long, "-o", tmp_path / "x.onnx"),
        ("export", teacher, "-o", long.with_suffix(".onnx")),
    ]
    for args in cases:
        with tally.case(PATHS, f"{args[0]} with a {which} too long"):
            err = _one_error_line(_cli(*args), 2)
            assert "too long" in err, (args[:2], err)
            assert "Errno" not in err and len(err) < 400, err
    assert not (tmp_path / "x.onnx").exists()


def test_too_long_says_which_limit():
    name = fileio.too_long("/tmp/" + "a" * 300)
    assert "a name in it is 300 bytes" in str(name) and len(str(name)) < 300
    path = fileio.too_long("/".join(["b" * 100] * 50))
    assert "over the system's path length limit" in str(path) and len(str(path)) < 300


# --------------------------------------------------------------------------- class 4: names in output

NAMES = ["new\nline.png", "esc\x1b[31mred.png", "tab\there.png", "cr\rret.png"]


def _no_raw_controls(text: str) -> None:
    assert "\x1b" not in text and "\r" not in text and "\t" not in text, repr(text)


def test_escape_control_keeps_every_message_on_one_line():
    for raw, shown in (("a\nb", "a\\nb"), ("a\x1b[2Jb", "a\\x1b[2Jb"), ("a\tb\rc", "a\\tb\\rc"),
                       ("a\x85b\u2028c", "a\\x85b\\u2028c"), ("plain é", "plain é")):
        assert escape_control(raw) == shown


@pytest.mark.native
def test_upscale_lines_and_warnings_escape_file_names(tmp_path, tally, monkeypatch):
    from srdistill import assets

    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(1)
    for name in NAMES:
        PILImage.fromarray(natural_image(rng, 16, 16)).save(d / name, format="PNG")
    # an animated GIF: its warning ("has 2 frames") names the file
    frames = [PILImage.fromarray(natural_image(rng, 16, 16)) for _ in range(2)]
    frames[0].save(d / "two\nframes.gif", save_all=True, append_images=frames[1:])
    (d / "bro\x1bken.png").write_bytes(b"not a png")  # a failed file: its line and its reason
    monkeypatch.chdir(tmp_path)
    with tally.case(PATHS, "upscale over files named with newline, ESC, tab, CR"):
        r = _cli("upscale", "in", "-o", "out", "-m", assets.DEFAULT_MODEL, "--quiet", timeout=300)
        assert r.exit_code == 1, (r.stdout, r.stderr)  # the broken file
        _no_raw_controls(r.stdout + r.stderr)
        lines = r.stdout.splitlines()
        assert len(lines) == len(NAMES) + 2 + 1, lines  # one per file and the summary
        assert sum(ln.startswith("ok") for ln in lines) == len(NAMES) + 1, lines
        assert any("new\\nline.png" in ln for ln in lines) and any("esc\\x1b[31mred" in ln for ln in lines)
        assert any(ln.startswith("failed") and "bro\\x1bken.png" in ln for ln in lines), lines
        warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
        assert any("two\\nframes.gif" in ln for ln in warn), r.stderr
        assert all(ln.startswith(("warning:", "error:")) for ln in r.stderr.splitlines() if ln.strip()), r.stderr
        assert len(list((tmp_path / "out").iterdir())) == len(NAMES) + 1  # written under their real names


@pytest.mark.parametrize("name", ["new\nline", "esc\x1b[2Jcls"])
def test_distill_result_table_escapes_the_output_name(tmp_path, tally, tiny_model_files, train_dir, monkeypatch,
                                                      name):
    monkeypatch.chdir(tmp_path)
    with tally.case(PATHS, f"distill -o {name!r}"):
        r = _cli("distill", tiny_model_files["safetensors"], "-w", "2", "--steps", "2", "--batch-size", "2",
                 "--patch-size", "8", "--data", train_dir, "--no-val", "--quiet", "-o", f"{name}.safetensors",
                 timeout=300)
        assert r.exit_code == 0, (r.stdout, r.stderr)
        _no_raw_controls(r.stdout + r.stderr)
        escaped = escape_control(name)
        rows = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.strip()}
        assert escaped in rows["student"] and escaped in rows["checkpoint"] and escaped in rows["log"], r.stdout
        assert (tmp_path / f"{name}.safetensors").is_file()
        # and a second run is told, on one line, that the output exists
        err = _one_error_line(_cli("distill", tiny_model_files["safetensors"], "-w", "2", "--steps", "2",
                                   "--data", train_dir, "--no-val", "-o", f"{name}.safetensors"), 1)
        assert repr(name)[1:-1] in err, err


def test_usage_errors_from_the_parser_are_escaped(tally):
    with tally.case(PATHS, "a bad option value holding a newline and ESC"):
        r = _cli("upscale", "x.png", "--tile-overlap", "1\n\x1b[2J")
        err = _one_error_line(r, 2)
        _no_raw_controls(err)


# --------------------------------------------------------------------------- class 5: degradation values


DEGRADATION_CASES = {
    "preset-list.toml": "preset = [1]\n",
    "preset-table.toml": "preset = {a = 1}\n",
    "preset-int.json": '{"preset": 1}',
    "preset-long.json": json.dumps({"preset": "x" * 5000}),
    "prob-400-digits.toml": "sinc_prob = " + "9" * 400 + "\n",
    "range-400-digits.toml": "blur_sigma = [1, " + "9" * 400 + "]\n",
    "dist-400-digits.json": '{"resize_prob": [' + "9" * 400 + ", 0, 0]}",
    "kernel-prob-400.json": '{"kernel_prob": [1' + "0" * 400 + ", 0, 0, 0, 0, 0]}",
    "inf.json": '{"noise_range": [1, 1e400]}',
    "nan.json": '{"clean_prob": NaN}',
    "bool.json": '{"jpeg_range": [true, 90]}',
    "string.json": '{"gray_noise_prob": "0.5"}',
    "kernel-names.json": '{"kernel_list": [[1], {"a": 2}], "kernel_prob": [0.5, 0.5]}',
    "long-list.json": '{"noise_range": [' + ",".join(["1"] * 200_000) + "]}",
    "long-field.json": json.dumps({"f" * 100_000: 1}),
    "deep.json": "[" * 100_000 + "]" * 100_000,
    "list.json": "[1, 2]",
    "not-utf8.toml": b"\xff\xfe\x00",
    "null-byte.toml": "preset = \"light\"\x00\n",
}


@pytest.mark.parametrize("name", sorted(DEGRADATION_CASES))
def test_degradation_values_of_the_wrong_type_or_size_are_one_short_line(tmp_path, tally, monkeypatch, name):
    body = DEGRADATION_CASES[name]
    monkeypatch.chdir(tmp_path)
    Path(name).write_bytes(body if isinstance(body, bytes) else body.encode())
    with tally.case(VALUES, f"degradation file {name}"):
        with pytest.raises(UsageError) as e:
            load_degradation(name)
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 500, (len(msg), msg[:600])
        assert name in msg


def test_degradation_values_through_the_cli(tmp_path, tally, teacher):
    with tally.case(VALUES, "distill --degradation with a 400-digit probability"):
        p = tmp_path / "digits.toml"
        p.write_text("sinc_prob = " + "9" * 400 + "\n")
        err = _one_error_line(_cli("distill", teacher, "-w", "4", "--degradation", p, "-o", tmp_path / "s.safetensors"),
                              2)
        assert "sinc_prob" in err and "characters)" in err, err


def test_a_good_degradation_file_still_loads(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({"preset": "light", "noise_range": [1, 5], "kernel_prob": [0.5, 0.5]}))
    d = load_degradation(str(p))
    assert d.name == "mine.json" and d.params["noise_range"] == [1.0, 5.0]


@pytest.mark.parametrize("name", ["Se\nt5", "Se\x1b[1mt5"])
def test_eval_table_escapes_dataset_and_model_names(tmp_path, tally, tiny_model_files, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    data = Path(name)
    data.mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        PILImage.fromarray(natural_image(rng, 24, 24)).save(data / f"im{i}.png")
    model = Path(f"stu{name}dent.safetensors")
    model.write_bytes(tiny_model_files["safetensors"].read_bytes())
    with tally.case(PATHS, f"eval table with dataset and model named {name!r}"):
        r = _cli("eval", model, "--data", data, "--no-bench", "--quiet", timeout=300)
        assert r.exit_code == 0, (r.stdout, r.stderr)
        _no_raw_controls(r.stdout + r.stderr)
        escaped = escape_control(name)
        assert escaped in r.stdout and f"stu{escaped}dent" in r.stdout, r.stdout
        assert "PSNR / SSIM" in r.stdout  # the two-line header keeps its own line break


@pytest.mark.native
def test_an_output_name_made_too_long_fails_that_file_in_words(tmp_path, tally, sample_png, monkeypatch):
    """A 250-byte input name is legal; its output (+ "_x4") is not: that file fails, named, in words."""
    from srdistill import assets

    monkeypatch.chdir(tmp_path)
    long_in = Path("p" * 250 + ".png")
    long_in.write_bytes(sample_png.read_bytes())
    Path("ok.png").write_bytes(sample_png.read_bytes())
    with tally.case(PATHS, "upscale: an output name over 255 bytes"):
        r = _cli("upscale", long_in, "ok.png", "-m", assets.DEFAULT_MODEL, "--quiet", timeout=300)
        assert r.exit_code == 1, (r.stdout, r.stderr)
        failed = [ln for ln in r.stdout.splitlines() if ln.startswith("failed")]
        assert len(failed) == 1 and "too long" in failed[0] and "Errno" not in failed[0], r.stdout
        assert any(ln.startswith("ok") and "ok.png" in ln for ln in r.stdout.splitlines()), r.stdout
