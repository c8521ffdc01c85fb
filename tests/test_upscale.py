"""``srdistill upscale``: the library (upscale_image / upscale_files) and the CLI end to end,
on tiny random-weight models so the whole file runs in seconds on a CPU."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageCms
from typer.testing import CliRunner

from srdistill.cli import app
from srdistill.data.images import Image, read_image, write_image
from srdistill.errors import UsageError
from srdistill.models._compat import import_spandrel
from srdistill.models.loading import load_model
from srdistill import upscale as up

import_spandrel()
from spandrel.architectures.Compact import Compact  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _compact(scale: int = 2) -> Compact:
    torch.manual_seed(0)
    m = Compact(num_feat=8, num_conv=2, upscale=scale)
    with torch.no_grad():  # random weights, but not so wild that outputs clip to 0/1 everywhere
        for p in m.parameters():
            p.mul_(0.5)
    return m.eval()


@pytest.fixture(scope="module")
def c2(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("models") / "compact_x2.pth"
    torch.save(_compact(2).state_dict(), p)
    return p


@pytest.fixture(scope="module")
def c2_onnx(tmp_path_factory, c2) -> Path:
    p = tmp_path_factory.mktemp("onnx") / "compact_x2.onnx"
    torch.onnx.export(_compact(2), torch.rand(1, 3, 32, 32), str(p), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}, "output": {0: "n", 2: "H", 3: "W"}})
    return p


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def run(cli: CliRunner, *args):
    return cli.invoke(app, ["upscale", *[str(a) for a in args]])


def rgb_png(path: Path, w: int = 24, h: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    PILImage.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def png_bit_depth(path: Path) -> int:
    return Path(path).read_bytes()[24]


def warnings_of(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("warning:")]


# --------------------------------------------------------------------------- the engine


def test_tiled_equals_untiled(c2):
    model = load_model(c2)
    rng = np.random.default_rng(1)
    img = Image(rgb=rng.random((53, 70, 3), dtype=np.float32))
    whole = up.upscale_image(model, img, tile=0)
    for tile in (16, 24):
        tiled = up.upscale_image(model, img, tile=tile, overlap=16)
        assert tiled.rgb.shape == (106, 140, 3)
        assert np.abs(tiled.rgb - whole.rgb).max() < 1 / 255
    auto = up.upscale_image(model, img)  # auto: the whole image on the CPU
    assert np.abs(auto.rgb - whole.rgb).max() < 1e-6


def test_auto_tile_reuses_the_tile_that_fit():
    calls: list[int] = []

    class Picky:  # "runs out of memory" on inputs over 40 px a side
        scale = 2

        def __call__(self, x):
            calls.append(max(x.shape[-2:]))
            if max(x.shape[-2:]) > 40:
                raise MemoryError("out of memory")
            return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    runner = up._Runner(Picky(), tile="auto", overlap=4)
    x = torch.rand(1, 3, 100, 100)
    y = runner.sr(x)
    assert y.shape == (1, 3, 200, 200) and torch.allclose(y[..., ::2, ::2], x)
    first = runner.last_tile
    assert first is not None and first + 8 <= 40
    calls.clear()
    runner.sr(torch.rand(1, 3, 90, 90))
    assert calls and max(calls) <= 40  # started from the tile that worked: no failed attempt


def test_outscale_and_alpha_in_memory(c2):
    model = load_model(c2)
    rng = np.random.default_rng(2)
    a = np.linspace(0, 1, 30 * 20, dtype=np.float32).reshape(20, 30, 1)
    img = Image(rgb=rng.random((20, 30, 3), dtype=np.float32), alpha=a)
    out = up.upscale_image(model, img, outscale=3)
    assert out.rgb.shape == (60, 90, 3) and out.alpha.shape == (60, 90, 1)
    out_m = up.upscale_image(model, img, alpha="model")
    assert out_m.alpha.shape == (40, 60, 1)
    assert up.output_size(100, 100, 0.29) == (29, 29)
    with pytest.raises(UsageError):
        up.upscale_image(model, img, alpha="magic")


# --------------------------------------------------------------------------- formats


def _gradient16(h: int, w: int, c: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * 997 + yy * 4099) % 65536
    return np.stack([(base + 12345 * k) % 65536 for k in range(c)], axis=2).astype(np.uint16)


def make_source(kind: str, path: Path) -> Path:
    rng = np.random.default_rng(3)
    h, w = 20, 24
    if kind == "RGBA":
        PILImage.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").save(path)
    elif kind == "L":
        PILImage.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").save(path)
    elif kind == "LA":
        PILImage.fromarray(rng.integers(0, 256, (h, w, 2), dtype=np.uint8), "LA").save(path)
    elif kind == "P":
        PILImage.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("P").save(path)
    elif kind == "PT":  # palette with a transparent entry
        im = PILImage.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("P")
        im.info["transparency"] = 0
        im.save(path, transparency=0)
    elif kind == "I;16":
        PILImage.fromarray(_gradient16(h, w, 1)[:, :, 0]).save(path)
    elif kind == "RGB16":
        write_image(path, Image(rgb=_gradient16(h, w, 3).astype(np.float32) / 65535, bit_depth=16))
    elif kind == "RGBA16":
        px = _gradient16(h, w, 4).astype(np.float32) / 65535
        write_image(path, Image(rgb=px[:, :, :3], alpha=px[:, :, 3:], bit_depth=16))
    return path


@pytest.mark.parametrize("kind, pil_mode, depth", [
    ("RGBA", "RGBA", 8), ("L", "L", 8), ("LA", "LA", 8), ("P", "RGB", 8), ("PT", "RGBA", 8),
    ("I;16", None, 16), ("RGB16", None, 16), ("RGBA16", None, 16),
])
@pytest.mark.native
def test_modes_round_trip(cli, c2, tmp_path, kind, pil_mode, depth):
    src = make_source(kind, tmp_path / "src.png")
    alpha = ["--alpha-mode", "model"] if kind == "RGBA16" else []
    r = run(cli, src, "-m", c2, *alpha)
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "src_x2.png"
    with PILImage.open(out) as im:
        assert im.size == (48, 40)
        if pil_mode:
            assert im.mode == pil_mode
    assert png_bit_depth(out) == depth
    back = read_image(out)
    src_img = read_image(src)
    assert back.grayscale == src_img.grayscale and back.has_alpha == src_img.has_alpha
    if depth == 16:
        assert back.bit_depth == 16
        levels = np.unique(np.rint(back.rgb[:, :, 0] * 65535).astype(np.int64))
        assert len(levels) > 256  # not quantised to 8 bits on the way
        assert np.any(levels % 257 != 0)


@pytest.mark.native
def test_exif_rotation_and_icc_carried_over(cli, c2, tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    src = tmp_path / "photo.jpg"
    PILImage.fromarray(np.random.default_rng(4).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(
        src, exif=exif.tobytes(), icc_profile=icc, quality=95)
    r = run(cli, src, "-m", c2, "--ext", "auto", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["files"][0]["input_size"] == [24, 40] and doc["files"][0]["output_size"] == [48, 80]
    out = tmp_path / "photo_x2.jpg"  # --ext auto: jpg stays jpg
    with PILImage.open(out) as im:
        assert im.format == "JPEG" and im.size == (48, 80)
        assert im.info.get("icc_profile") == icc
        assert im.getexif().get(0x0112, 1) == 1  # pixels already upright


# --------------------------------------------------------------------------- files and folders


def test_no_overwrite_without_flag(cli, c2, tmp_path):
    src = rgb_png(tmp_path / "a.png")
    out = tmp_path / "a_x2.png"
    out.write_bytes(b"mine")
    r = run(cli, src, "-m", c2, "--json")
    assert r.exit_code == 1
    assert out.read_bytes() == b"mine"
    f = json.loads(r.stdout)["files"][0]
    assert f["status"] == "skipped" and "--overwrite" in f["error"]
    assert "error: 1 of 1 image(s) not written" in r.stderr  # the file itself is reported once, in the JSON
    r = run(cli, src, "-m", c2, "--overwrite")
    assert r.exit_code == 0, r.stderr
    assert PILImage.open(out).size == (48, 40)


def test_corrupt_file_in_folder(cli, c2, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rgb_png(d / "a.png")
    rgb_png(d / "c.png", seed=1)
    (d / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 5)
    r = run(cli, d, "-m", c2, "-o", tmp_path / "out")
    assert r.exit_code == 1
    assert "Traceback" not in r.stderr + r.stdout
    # each file is reported once: a table row, the failure's reason in its reason column
    rows = [line for line in r.stdout.splitlines() if "b.png" in line]
    assert len(rows) == 1 and rows[0].startswith("failed") and "reason: cannot read image" in rows[0], r.stdout
    assert not [ln for ln in r.stderr.splitlines() if "b.png" in ln and not ln.startswith("upscaling ")], r.stderr
    assert "error: 1 of 3 image(s) not written" in r.stderr
    assert (tmp_path / "out" / "a_x2.png").is_file() and (tmp_path / "out" / "c_x2.png").is_file()
    assert not (tmp_path / "out" / "b_x2.png").exists()
    assert "2 ok, 1 failed" in r.stdout


def test_output_file_and_folder_semantics(cli, c2, tmp_path):
    a = rgb_png(tmp_path / "a.png")
    # one input: -o names the file
    r = run(cli, a, "-m", c2, "-o", tmp_path / "named.webp")
    assert r.exit_code == 0, r.stderr
    assert PILImage.open(tmp_path / "named.webp").format == "WEBP"
    # an existing folder, or a path ending in /, is a folder
    (tmp_path / "there").mkdir()
    assert run(cli, a, "-m", c2, "-o", tmp_path / "there").exit_code == 0
    assert (tmp_path / "there" / "a_x2.png").is_file()
    assert run(cli, a, "-m", c2, "-o", f"{tmp_path / 'new'}/").exit_code == 0
    assert (tmp_path / "new" / "a_x2.png").is_file()
    # several inputs: always a folder; -r keeps the subfolders
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    rgb_png(tree / "t.png")
    rgb_png(tree / "sub" / "deeper" / "u.png")
    r = run(cli, tree, "-r", "-m", c2, "-o", tmp_path / "mirror", "--json")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "mirror" / "t_x2.png").is_file()
    assert (tmp_path / "mirror" / "sub" / "deeper" / "u_x2.png").is_file()
    # glob patterns
    r = run(cli, str(tree / "*.png"), "-m", c2, "-o", tmp_path / "globbed", "--suffix", "_big", "--ext", "jpg")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "globbed" / "t_big.jpg").is_file()


def test_previous_outputs_are_not_inputs(cli, c2, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rgb_png(d / "a.png")
    assert run(cli, d, "-m", c2).exit_code == 0
    assert (d / "a_x2.png").is_file()
    r = run(cli, d, "-m", c2, "--json")  # a_x2.png is a.png's output, not a new input
    doc = json.loads(r.stdout)
    assert [f["input"] for f in doc["files"]] == [str(d / "a.png")]
    assert doc["dropped_inputs"] == [str(d / "a_x2.png")]
    assert not (d / "a_x2_x2.png").exists()


@pytest.mark.native
def test_outscale_3_with_x2_model(cli, c2, tmp_path):
    src = rgb_png(tmp_path / "a.png", w=20, h=15)
    r = run(cli, src, "-m", c2, "--outscale", "3", "--json")
    assert r.exit_code == 0, r.stderr
    assert PILImage.open(tmp_path / "a_x3.png").size == (60, 45)
    assert json.loads(r.stdout)["outscale"] == 3.0


@pytest.mark.native
def test_onnx_models(cli, c2, c2_onnx, tmp_path):
    src = rgb_png(tmp_path / "a.png", w=50, h=40)
    r = run(cli, src, "-m", c2_onnx, "-o", tmp_path / "onnx.png", "--json", "--runtime", "native")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["model"]["backend"] == "onnxruntime"
    assert run(cli, src, "-m", c2, "-o", tmp_path / "torch.png").exit_code == 0
    a = np.asarray(PILImage.open(tmp_path / "onnx.png"), dtype=np.int16)
    b = np.asarray(PILImage.open(tmp_path / "torch.png"), dtype=np.int16)
    assert a.shape == (80, 100, 3) and np.abs(a - b).max() <= 1

    # a fixed-size model: tiles of exactly its input size
    static = tmp_path / "static32.onnx"
    torch.onnx.export(_compact(2), torch.rand(1, 3, 32, 32), str(static), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"])
    r = run(cli, src, "-m", static, "-o", tmp_path / "static.png", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["model"]["static_size"] == [32, 32] and doc["tile"] == 16 and doc["tile_overlap"] == 8
    s = np.asarray(PILImage.open(tmp_path / "static.png"), dtype=np.int16)
    assert s.shape == (80, 100, 3)
    # identical away from the bottom/right border (padded by reflection, not zeros, there)
    assert np.abs(s - b)[:-10, :-10].max() <= 1

    # the deprecated --backend onnx runs a checkpoint in onnxruntime (an in-memory ONNX graph)
    r = run(cli, src, "-m", c2, "--backend", "onnx", "-o", tmp_path / "via_onnx.png", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["model"]["runtime"] == "onnxruntime"


def test_default_model_when_no_m(cli, c2, tmp_path, monkeypatch):
    monkeypatch.setattr(up, "default_model_path", lambda backend="auto": c2)
    src = rgb_png(tmp_path / "a.png")
    r = run(cli, src, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["model"]["path"] == str(c2)


@pytest.mark.native
def test_real_default_model_is_bundled():
    from srdistill import assets

    p = up.default_model_path()
    assert p.is_file() and p.resolve().parent == Path(assets.DEFAULT_MODEL).resolve().parent
    assert p in {Path(assets.DEFAULT_MODEL_ONNX), Path(assets.DEFAULT_MODEL), Path(assets.BUNDLED_TEACHER)}
    model, info = up.load_upscale_model(None, device="cpu")
    assert info["scale"] == model.scale == 4


def test_default_model_fallback_order(tmp_path, monkeypatch):
    from srdistill import assets

    teacher = tmp_path / "teacher.safetensors"
    teacher.write_bytes(b"x")
    monkeypatch.setattr(assets, "DEFAULT_MODEL_ONNX", tmp_path / "missing.onnx")
    monkeypatch.setattr(assets, "DEFAULT_MODEL", tmp_path / "missing.safetensors")
    monkeypatch.setattr(assets, "BUNDLED_TEACHER", teacher)
    assert up.default_model_path() == teacher
    (tmp_path / "missing.onnx").write_bytes(b"x")
    assert up.default_model_path() == tmp_path / "missing.onnx"
    assert up.default_model_path("torch") == teacher


def _bomb_png(path: Path, w: int, h: int) -> Path:
    def chunk(t: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body) & 0xFFFFFFFF)

    data = zlib.compress(b"\x00" * 64)  # a few bytes that would inflate to gigabytes
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.mark.native
def test_decompression_bomb_refused(cli, c2, tmp_path):
    bomb = _bomb_png(tmp_path / "bomb.png", 40000, 40000)
    r = run(cli, bomb, "-m", c2, "--json")
    assert r.exit_code == 1
    f = json.loads(r.stdout)["files"][0]
    assert f["status"] == "failed" and "limit" in f["error"] and "--max-pixels" in f["error"]
    small = rgb_png(tmp_path / "a.png")
    r = run(cli, small, "-m", c2, "--max-pixels", "100")
    assert r.exit_code == 1 and "limit" in r.stdout and "reason:" in r.stdout  # its row says why
    assert not (tmp_path / "a_x2.png").exists()


@pytest.mark.native
def test_json_document(cli, c2, tmp_path):
    rgb_png(tmp_path / "a.png")
    rgb_png(tmp_path / "b.png", seed=2)
    r = run(cli, tmp_path / "a.png", tmp_path / "b.png", "-m", c2, "--json", "--tile", "16", "--threads", "1")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["totals"]["files"] == 2 and doc["totals"]["ok"] == 2 and doc["exit_code"] == 0
    assert doc["totals"]["output_megapixels"] == pytest.approx(2 * 48 * 40 / 1e6)
    assert doc["model"]["architecture"] == "Compact" and doc["model"]["device"] == "cpu"
    assert doc["tile"] == 16 and doc["tile_used"] == 16
    for f in doc["files"]:
        assert f["status"] == "ok" and f["output_size"] == [48, 40] and Path(f["output"]).is_file()


def test_human_output(cli, c2, tmp_path):
    rgb_png(tmp_path / "a.png")
    r = run(cli, tmp_path / "a.png", "-m", c2)
    assert r.exit_code == 0
    assert "a_x2.png" in r.stdout and "MP/s" in r.stdout and "1 ok" in r.stdout
    assert "a_x2.png" not in r.stderr  # reported once, on stdout
    r = run(cli, tmp_path / "a.png", "-m", c2, "--quiet", "--overwrite")
    assert r.exit_code == 0 and r.stderr == ""


@pytest.mark.parametrize("args", [
    ["--tile", "-5"], ["--tile", "big"], ["--outscale", "0"], ["--ext", "gif"], ["--backend", "foo"],
    ["--alpha-mode", "magic"], ["--tile-overlap", "-1"], ["--suffix", ""], ["SECOND", "-o", "OUT/one.png"],
])
def test_bad_flags(cli, c2, tmp_path, args):
    a = rgb_png(tmp_path / "a.png")
    b = rgb_png(tmp_path / "b.png")
    args = [str(b) if x == "SECOND" else x.replace("OUT", str(tmp_path)) for x in args]
    extra = ["--ext", "auto"] if args == ["--suffix", ""] else []  # the output would replace the input
    r = run(cli, a, "-m", c2, *args, *extra)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert not (tmp_path / "a_x2.png").exists()


def test_the_old_alpha_flag_still_works_with_a_deprecation_warning(cli, c2, tmp_path):
    src = make_source("RGBA", tmp_path / "src.png")
    r = run(cli, src, "-m", c2, "--alpha", "model")
    assert r.exit_code == 0, r.stderr
    assert "--alpha is deprecated" in r.stderr and "--alpha-mode" in r.stderr
    assert (tmp_path / "src_x2.png").exists()


def test_missing_cuda_is_a_usage_error(cli, c2, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    r = run(cli, rgb_png(tmp_path / "a.png"), "-m", c2, "--device", "cuda")
    assert r.exit_code == 2 and "CUDA" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_input_and_model(cli, c2, tmp_path):
    r = run(cli, tmp_path / "nope.png", "-m", c2)
    assert r.exit_code == 2 and r.stderr.startswith("error:")
    r = run(cli, rgb_png(tmp_path / "a.png"), "-m", tmp_path / "nope.pth")
    assert r.exit_code == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
