"""Bad images and paths: clear errors, nothing half-written, and a batch that keeps going.

Covers the image reader and writer on their own, the upscale engine on images smaller
than a model's minimum input, and ``srdistill upscale`` over a folder where some files
are broken (``srdistill.upscale``; skipped where that module is absent).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import resource
import signal
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageFile
from typer.testing import CliRunner

from robust_helpers import natural_image, tiny_compact
from srdistill.data import images as images_mod
from srdistill.data.images import read_image, write_image
from srdistill.errors import ImageError, SrDistillError
from srdistill.progress import RecordingReporter

CATEGORY = "bad images and paths"

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning"),
]


# --------------------------------------------------------------------------- building files


def _png(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG", **kw)
    return buf.getvalue()


def _chunk(t: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body) & 0xFFFFFFFF)


def _png_claiming(w: int, h: int) -> bytes:
    """A valid PNG header claiming w x h, a few rows of data, IEND."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 300)) + \
        _chunk(b"IEND", b"")


def _jpeg_claiming(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (16, 16), (90, 20, 200)).save(buf, format="JPEG")
    b = bytearray(buf.getvalue())
    i = b.index(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
    struct.pack_into(">HH", b, i + 5, h, w)
    return bytes(b)


def _gif_claiming(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    PILImage.new("P", (8, 8)).save(buf, format="GIF")
    b = bytearray(buf.getvalue())
    struct.pack_into("<HH", b, 6, w, h)
    i = b.index(b"\x2c")
    struct.pack_into("<HH", b, i + 5, w, h)
    return bytes(b)


def _bmp_claiming(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(buf, format="BMP")
    b = bytearray(buf.getvalue())
    struct.pack_into("<ii", b, 18, w, h)
    return bytes(b)


def _webp_claiming(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(buf, format="WEBP", lossless=True)
    b = bytearray(buf.getvalue())
    i = b.index(b"VP8L") + 8  # signature 0x2f, then 14 bits width-1, 14 bits height-1
    bits = int.from_bytes(b[i + 1:i + 5], "little")
    bits = (bits & ~((1 << 28) - 1)) | ((w - 1) & 0x3FFF) | (((h - 1) & 0x3FFF) << 14)
    b[i + 1:i + 5] = bits.to_bytes(4, "little")
    return bytes(b)


def bad_and_odd_images(d: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expectation): "ok", "warn" (ok with a warning) or an error substring."""
    rng = np.random.default_rng(3)
    rgb = natural_image(rng, 24, 20)
    good_png, good_jpg = _png(rgb), io.BytesIO()
    PILImage.fromarray(rgb).save(good_jpg, format="JPEG", quality=90)
    good_jpg = good_jpg.getvalue()
    files: dict[str, tuple[bytes, str]] = {
        "zero_bytes.png": (b"", "empty"),
        "truncated.png": (good_png[: len(good_png) // 2], "truncated"),
        "truncated_jpeg.jpg": (good_jpg[: len(good_jpg) // 2], "truncated"),
        "readme_named.png": (b"# not an image\nhello\n" * 5, "not an image"),
        "short_data_stream.png": (_png_claiming(64, 64), "truncated"),  # Pillow alone gives black rows
        "bomb_100000x100000.png": (_png_claiming(100000, 100000), "MP limit"),
        "bomb_65000x65000.jpg": (_jpeg_claiming(65000, 65000), "MP limit"),
        "bomb_65535x65535.gif": (_gif_claiming(65535, 65535), "MP limit"),
        "bomb_60000x60000.bmp": (_bmp_claiming(60000, 60000), "MP limit"),
        "bomb_16384x16384.webp": (_webp_claiming(16384, 16384), "MP limit"),
        "one_pixel.png": (_png(rgb[:1, :1]), "ok"),
        "two_by_two.png": (_png(rgb[:2, :2]), "ok"),
        "cmyk.jpg": (None, "ok"),
        "palette_transparent.png": (None, "ok"),
        "gray16.png": (None, "ok"),
        "rgba16.png": (None, "ok"),
        "animated.gif": (None, "warn"),
        "unicode ünï 画像 name.png": (_png(rgb), "ok"),
    }
    out: dict[str, tuple[Path, str]] = {}
    for name, (blob, expect) in files.items():
        p = d / name
        if blob is not None:
            p.write_bytes(blob)
        out[name] = (p, expect)
    PILImage.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg", format="JPEG")
    pal = PILImage.fromarray(rgb).convert("P", palette=PILImage.Palette.ADAPTIVE, colors=16)
    pal.save(d / "palette_transparent.png", transparency=0)
    PILImage.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(d / "gray16.png")
    with open(d / "rgba16.png", "wb") as f:
        images_mod.write_png(f, np.dstack([rgb, rgb[..., :1]]).astype(np.uint16) * 257)
    frames = [PILImage.fromarray(np.roll(rgb, 3 * i, axis=1)).convert("P") for i in range(3)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    return out


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    d = tmp_path_factory.mktemp("odd images")
    return d, bad_and_odd_images(d)


# --------------------------------------------------------------------------- reading


def test_reader_gives_a_result_or_one_clear_error_and_never_decodes_a_bomb(odd, tally, monkeypatch):
    _, files = odd
    decoded: list[str] = []
    real_load, real_decode = ImageFile.ImageFile.load, images_mod.decode_png

    def spy_load(self, *a, **k):
        decoded.append(getattr(self, "filename", "?") or "?")
        return real_load(self, *a, **k)

    def spy_decode(data):
        decoded.append("16-bit png")
        return real_decode(data)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    monkeypatch.setattr(images_mod, "decode_png", spy_decode)
    for name, (p, expect) in files.items():
        with tally.case(CATEGORY, f"read {name}"):
            rep = RecordingReporter()
            decoded.clear()
            t0 = time.perf_counter()
            if expect in ("ok", "warn"):
                img = read_image(p, reporter=rep)
                assert img.rgb.dtype == np.float32 and np.isfinite(img.rgb).all()
                assert (img.width, img.height) == PILImage.open(p).size
                assert bool(rep.warnings) == (expect == "warn"), (name, rep.warnings)
            else:
                with pytest.raises(ImageError) as ei:
                    read_image(p, reporter=rep)
                msg = str(ei.value)
                assert "\n" not in msg and expect.lower() in msg.lower() and str(p) in msg, (name, msg)
                if "bomb" in name or "short_data" in name:
                    assert not decoded, f"{name}: decoded before refusing"
                    assert time.perf_counter() - t0 < 1.0
    # specific modes survive
    assert read_image(files["gray16.png"][0]).bit_depth == 16
    assert read_image(files["rgba16.png"][0]).alpha is not None
    assert read_image(files["palette_transparent.png"][0]).alpha is not None
    cmyk = read_image(files["cmyk.jpg"][0])
    assert cmyk.rgb.shape[2] == 3 and not cmyk.grayscale
    rep = RecordingReporter()
    gif = read_image(files["animated.gif"][0], reporter=rep)
    first = np.asarray(PILImage.open(files["animated.gif"][0]).convert("RGB"), dtype=np.float32) / 255
    assert np.allclose(gif.rgb, first) and any("3 frames" in w for w in rep.warnings), rep.warnings


# --------------------------------------------------------------------------- upscaling tiny images


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Compact x2 (no size requirement) and a tiny SwinIR x2 (multiple of 8, window attention)."""
    from safetensors.torch import save_file

    from srdistill.models._compat import import_spandrel

    import_spandrel()
    from spandrel.architectures.SwinIR import SwinIR

    d = tmp_path_factory.mktemp("upscale models")
    save_file(tiny_compact().state_dict(), str(d / "compact.safetensors"))
    torch.manual_seed(0)
    swin = SwinIR(embed_dim=8, depths=[1], num_heads=[2], window_size=8, mlp_ratio=2.0,
                  upsampler="pixelshuffledirect", upscale=2, img_size=16)
    save_file({k: v.contiguous() for k, v in swin.state_dict().items()}, str(d / "swinir.safetensors"))
    return {"compact": d / "compact.safetensors", "swinir": d / "swinir.safetensors"}


@pytest.mark.parametrize("arch", ["compact", "swinir"])
@pytest.mark.parametrize("side", [1, 2])
def test_images_smaller_than_the_model_minimum_are_padded_and_upscaled(models, tally, arch, side, tmp_path):
    upscale = pytest.importorskip("srdistill.upscale")
    from srdistill.models.loading import load_model

    model = load_model(models[arch])
    with tally.case(CATEGORY, f"{side}x{side} image through {arch}"):
        src = tmp_path / f"tiny {side}.png"
        src.write_bytes(_png(natural_image(np.random.default_rng(side), 16, 16)[:side, :side]))
        img = read_image(src)
        out = upscale.upscale_image(model, img, tile="auto")
        assert (out.height, out.width) == (2 * side, 2 * side)
        assert np.isfinite(out.rgb).all()
        dst = tmp_path / "out" / f"tiny {side} x2.png"
        write_image(dst, out)
        assert PILImage.open(dst).size == (2 * side, 2 * side)


# --------------------------------------------------------------------------- writing


def _listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def _partials(d: Path) -> list[str]:
    return [p.name for p in d.rglob("*") if p.name.endswith(".partial")]


@pytest.fixture
def small_image():
    return images_mod.Image(rgb=natural_image(np.random.default_rng(0), 16, 16).astype(np.float32) / 255)


def test_unicode_and_spaces_in_paths(tmp_path, small_image, tiny_model_files, tally):
    from srdistill.cli import app
    from srdistill.models.loading import load_model

    d = tmp_path / "dossier été" / "子 フォルダ with spaces"
    with tally.case(CATEGORY, "unicode/space paths: image write+read"):
        p = write_image(d / "ïmage ✓.png", small_image)
        assert read_image(p).width == 16
    with tally.case(CATEGORY, "unicode/space paths: model load + info"):
        m = d / "modèle x2 ✓.safetensors"
        m.write_bytes(tiny_model_files["safetensors"].read_bytes())
        assert load_model(m).scale == 2
        r = CliRunner().invoke(app, ["info", str(m), "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["scale"] == 2


def test_output_folder_not_writable(tmp_path, small_image, tally, monkeypatch):
    blocker = tmp_path / "a regular file"
    blocker.write_text("I am not a folder")
    for target in (blocker / "out.png", blocker / "sub" / "deeper" / "out.png"):
        with tally.case(CATEGORY, f"write under a file: {target.relative_to(tmp_path)}"):
            with pytest.raises(SrDistillError) as ei:
                write_image(target, small_image)
            assert "\n" not in str(ei.value)
            assert blocker.read_text() == "I am not a folder"
    # a folder we may not write into (we run as root: simulate the kernel's answer)
    out = tmp_path / "ro"
    out.mkdir()

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    for fns, overwrite in ((("link", "replace"), False), (("replace",), True)):  # how a file gets its name
        for fn in fns:
            monkeypatch.setattr(os, fn, denied)
        with tally.case(CATEGORY, f"permission denied at os.{fns[0]}"):
            with pytest.raises(SrDistillError, match="Permission denied"):
                write_image(out / "x.png", small_image, overwrite=overwrite)
            assert _listing(out) == [], _listing(out)
        monkeypatch.undo()
    import tempfile as _tf

    monkeypatch.setattr(_tf, "mkstemp", denied)
    with tally.case(CATEGORY, "permission denied creating the temporary file"):
        with pytest.raises(SrDistillError, match="cannot write to folder"):
            write_image(out / "x.png", small_image)
        assert _listing(out) == []


class _FullDisk:
    """A file object that takes ``room`` bytes and then fails as a full disk does."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, b):
        b = bytes(b)
        if len(b) > self._room:
            self._f.write(b[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(b)
        return self._f.write(b)

    def fileno(self):  # no descriptor: Pillow's encoders must write through write()
        raise AttributeError("fileno")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self._f.close()
        return False


@pytest.fixture
def file_size_limit():
    """A real OS-level write failure (EFBIG) past ``n`` bytes, for writers outside Python (Rust, C++).

    Use as ``with file_size_limit(n): ...``: the limit covers the whole process, so it must be
    lifted before pytest writes its own report (a redirected stdout is a file too).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    @contextlib.contextmanager
    def limit(n: int):
        sys.stdout.flush()
        sys.stderr.flush()
        old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, old)

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tif"])
def test_disk_full_while_writing_an_image(tmp_path, small_image, tally, monkeypatch, ext):
    real_open = open

    def full_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return _FullDisk(f, 100) if "w" in mode else f

    monkeypatch.setattr(images_mod, "open", full_open, raising=False)
    with tally.case(CATEGORY, f"disk full writing {ext}"):
        with pytest.raises(SrDistillError, match="no space left on device"):
            write_image(tmp_path / f"out{ext}", small_image)
        assert _listing(tmp_path) == [], _listing(tmp_path)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tif", ".bmp"])
def test_real_write_failure_inside_the_encoders(tmp_path, tally, file_size_limit, ext):
    """The kernel refuses the write (EFBIG past a file-size limit) while Pillow's C encoders write
    straight to the descriptor: still one clear error and no file."""
    big = images_mod.Image(rgb=np.random.default_rng(0).random((128, 128, 3), dtype=np.float32))
    with tally.case(CATEGORY, f"write refused by the OS: {ext}"):
        with pytest.raises(SrDistillError) as ei, file_size_limit(2048):
            write_image(tmp_path / f"out{ext}", big)
        assert "\n" not in str(ei.value) and "out" in str(ei.value)
    assert _listing(tmp_path) == [], _listing(tmp_path)


def test_real_write_failure_in_rust_and_cxx_writers(tmp_path, tally, file_size_limit):
    """safetensors (Rust) and a 16-bit PNG (our codec) hitting the file-size limit: clear errors, no files."""
    from srdistill.models.checkpoint import save_student
    from srdistill.models.loading import model_from_state_dict

    model = model_from_state_dict(tiny_compact(num_feat=16).state_dict())
    big = images_mod.Image(rgb=np.random.default_rng(0).random((64, 64, 3), dtype=np.float32), bit_depth=16)
    with tally.case(CATEGORY, "file too large: safetensors student"):
        with pytest.raises(SrDistillError, match="cannot write .*too large"), file_size_limit(2048):
            save_student(tmp_path / "student.safetensors", model)
    with tally.case(CATEGORY, "file too large: 16-bit png"):
        with pytest.raises(SrDistillError, match="cannot write .*too large"), file_size_limit(2048):
            write_image(tmp_path / "big16.png", big)
    assert _listing(tmp_path) == [], _listing(tmp_path)


# --------------------------------------------------------------------------- batch mode


@pytest.fixture
def batch(odd, tmp_path):
    upscale = pytest.importorskip("srdistill.upscale")
    src = tmp_path / "in put"
    src.mkdir()
    for name, (p, expect) in odd[1].items():
        (src / name).write_bytes(p.read_bytes())
    return upscale, src, odd[1]


def _check_batch(res, out: Path, expected: dict, tally, label: str, fail_also=()):
    by = {Path(f.input).name: f for f in res.files}
    assert set(by) == set(expected), set(by) ^ set(expected)
    for name, (_, expect) in expected.items():
        f = by[name]
        with tally.case(CATEGORY, f"{label}: {name}"):
            if expect in ("ok", "warn") and name not in fail_also:
                if f.status != "ok":
                    tally.lost(CATEGORY)
                assert f.status == "ok", (name, f.error)
                im = PILImage.open(f.output)
                im.load()  # the whole file is there
                assert im.size == (2 * f.input_size[0], 2 * f.input_size[1])
            else:
                assert f.status == "failed" and f.error and "\n" not in f.error, (name, f.status, f.error)
                assert not Path(f.output).exists(), f"{name}: a file under the final name after failure"
    left = _partials(out)
    if left:
        tally.lost(CATEGORY, len(left))
    assert not left, left


@pytest.mark.native
def test_batch_keeps_going_past_bad_files(batch, models, tmp_path, tally):
    upscale, src, expected = batch
    out = tmp_path / "out"
    res = upscale.upscale_files([str(src)], upscale.UpscaleOptions(model=str(models["compact"]), output=str(out),
                                                                   device="cpu", tile="auto"))
    _check_batch(res, out, expected, tally, "batch")
    assert res.exit_code == 1


def test_batch_disk_full_on_one_file_keeps_the_others(batch, models, tmp_path, tally, monkeypatch):
    upscale, src, expected = batch
    out = tmp_path / "out"
    real_open = open
    victim = "two_by_two"

    def full_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return _FullDisk(f, 10) if "w" in mode and victim in os.fspath(path) else f

    monkeypatch.setattr(images_mod, "open", full_open, raising=False)
    res = upscale.upscale_files([str(src)], upscale.UpscaleOptions(model=str(models["compact"]), output=str(out),
                                                                   device="cpu"))
    _check_batch(res, out, expected, tally, "batch, disk full on one file", fail_also=(victim + ".png",))
    bad = next(f for f in res.files if victim in f.input)
    assert "no space left" in bad.error


def test_batch_cli_output_under_a_file_is_refused_before_any_work(batch, models, tmp_path, tally):
    from srdistill.cli import app

    upscale, src, expected = batch
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with tally.case(CATEGORY, "batch -o under a regular file"):
        r = CliRunner().invoke(app, ["upscale", str(src), "-m", str(models["compact"]), "-o", str(blocker / "out"),
                                     "--device", "cpu", "--json"])
        assert r.exit_code in (1, 2), r.output
        if r.exit_code == 1 and r.stdout.strip():  # per-file failures reported in the JSON document
            doc = json.loads(r.stdout)
            assert doc["totals"]["ok"] == 0
        assert "Traceback" not in r.output
        assert blocker.read_text() == "x"


def test_batch_cli_reports_each_bad_file_on_one_line(batch, models, tmp_path, tally):
    from srdistill.cli import app

    upscale, src, expected = batch
    out = tmp_path / "cli out"
    with tally.case(CATEGORY, "batch through the CLI"):
        r = CliRunner().invoke(app, ["upscale", str(src), "-m", str(models["compact"]), "-o", str(out),
                                     "--device", "cpu", "--json"])
        assert r.exit_code == 1, r.output
        doc = json.loads(r.stdout)
        n_bad = sum(1 for _, e in expected.values() if e not in ("ok", "warn"))
        assert doc["totals"]["failed"] == n_bad and doc["totals"]["ok"] == len(expected) - n_bad
        assert "Traceback" not in r.output
        assert not _partials(out)
