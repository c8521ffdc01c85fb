"""srdistill.data.images: reading, writing and listing images."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from PIL import ImageCms, ImageFile, ImageOps

from srdistill.data import images as I
from srdistill.data.images import (
    IMAGE_EXTENSIONS,
    Image,
    list_images,
    output_format,
    read_image,
    write_image,
)
from srdistill.errors import ImageError, OutputExistsError, SrDistillError, UsageError
from srdistill.progress import RecordingReporter

SRC = Path(__file__).resolve().parents[1] / "src"
RNG = np.random.default_rng(1234)


def u8(shape) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def u16(shape) -> np.ndarray:
    a = RNG.integers(0, 65536, size=shape, dtype=np.uint16)
    a.flat[:4] = [0, 1, 65535, 257]  # extremes and values a 16->8->16 trip would change
    return a


def as_u8(a: np.ndarray) -> np.ndarray:
    return np.rint(a * 255).astype(np.uint8)


def as_u16(a: np.ndarray) -> np.ndarray:
    return np.rint(a * 65535).astype(np.uint16)


ADAM7 = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]  # (y0, x0, dy, dx)


def png16_reference(path: Path, a: np.ndarray, interlace: bool = False) -> None:
    """An independent minimal 16-bit PNG writer (filter 0 only), to test the reader."""
    h, w, c = a.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    passes = [a[y0::dy, x0::dx] for y0, x0, dy, dx in ADAM7] if interlace else [a]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for sub in passes if sub.size for row in sub)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, int(interlace)))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def patch_png_size(data: bytes, w: int, h: int) -> bytes:
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", w, h)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return data[:16] + bytes(ihdr) + crc + data[33:]


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(exc.value)
    assert path.name in msg
    assert "\n" not in msg


# ----------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "mode,channels,gray,alpha",
    [("RGB", 3, False, False), ("RGBA", 4, False, True), ("L", 1, True, False), ("LA", 2, True, True)],
)
def test_round_trip_8bit_png_keeps_mode_size_and_values(tmp_path, mode, channels, gray, alpha):
    a = u8((23, 37, channels))
    src = tmp_path / "src.png"
    PILImage.fromarray(a if channels > 1 else a[:, :, 0]).save(src)
    img = read_image(src)
    assert (img.height, img.width) == (23, 37)
    assert img.source_mode == mode and img.grayscale is gray and img.bit_depth == 8
    assert img.rgb.dtype == np.float32 and img.rgb.shape == (23, 37, 1 if gray else 3)
    assert (img.alpha is not None) is alpha
    np.testing.assert_array_equal(as_u8(img.rgb), a[:, :, : (1 if gray else 3)])

    out = write_image(tmp_path / "out.png", img)
    with PILImage.open(out) as back_pil:
        assert back_pil.mode == mode
    back = read_image(out)
    np.testing.assert_array_equal(back.rgb, img.rgb)
    if alpha:
        np.testing.assert_array_equal(back.alpha, img.alpha)
        np.testing.assert_array_equal(as_u8(back.alpha[:, :, 0]), a[:, :, -1])


def test_palette_with_transparency_reads_as_rgba_and_round_trips(tmp_path):
    idx = RNG.integers(0, 4, size=(12, 17), dtype=np.uint8)
    p = PILImage.new("P", (17, 12))
    p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * 756)
    p.putdata(idx.flatten().tolist())
    p.info["transparency"] = 2
    src = tmp_path / "pal.png"
    p.save(src, transparency=2)
    img = read_image(src)
    assert img.source_mode == "P" and not img.grayscale and img.alpha is not None
    np.testing.assert_array_equal(img.alpha[:, :, 0] == 0, idx == 2)
    np.testing.assert_array_equal(as_u8(img.rgb)[idx == 0], np.tile([255, 0, 0], ((idx == 0).sum(), 1)))
    back = read_image(write_image(tmp_path / "out.png", img))
    np.testing.assert_array_equal(back.alpha, img.alpha)
    np.testing.assert_array_equal(back.rgb, img.rgb)

    gif = tmp_path / "pal.gif"
    p.save(gif, transparency=2)
    assert read_image(gif).alpha is not None


def test_one_bit_image_reads_as_grayscale(tmp_path):
    a = RNG.integers(0, 2, size=(9, 14)).astype(bool)
    src = tmp_path / "bw.png"
    PILImage.fromarray(a).save(src)
    img = read_image(src)
    assert img.grayscale and img.source_mode == "1"
    np.testing.assert_array_equal(img.rgb[:, :, 0], a.astype(np.float32))


def test_16bit_gray_png_keeps_exact_values(tmp_path):
    a = u16((19, 26))
    src = tmp_path / "g16.png"
    PILImage.fromarray(a).save(src)
    img = read_image(src)
    assert img.bit_depth == 16 and img.grayscale and img.alpha is None
    np.testing.assert_array_equal(as_u16(img.rgb[:, :, 0]), a)
    out = write_image(tmp_path / "out.png", img)
    with PILImage.open(out) as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(im), a)
    np.testing.assert_array_equal(as_u16(read_image(out).rgb[:, :, 0]), a)


@pytest.mark.parametrize("channels", [3, 4, 2])
def test_16bit_colour_and_alpha_png_keep_exact_values(tmp_path, channels):
    a = u16((21, 30, channels))
    src = tmp_path / "c16.png"
    png16_reference(src, a)
    img = read_image(src)
    assert img.bit_depth == 16
    assert img.grayscale is (channels == 2)
    assert (img.alpha is not None) is (channels in (2, 4))
    planes = [img.rgb] if img.alpha is None else [img.rgb, img.alpha]
    np.testing.assert_array_equal(as_u16(np.concatenate(planes, axis=2)), a)

    out = write_image(tmp_path / "out.png", img)
    back = read_image(out)
    assert back.bit_depth == 16 and back.grayscale is img.grayscale
    np.testing.assert_array_equal(back.rgb, img.rgb)
    if img.alpha is not None:
        np.testing.assert_array_equal(back.alpha, img.alpha)
    # an independent reader: Pillow keeps the high byte of each 16-bit sample
    with PILImage.open(out) as im:
        pil = np.asarray(im.convert("LA") if channels == 2 else im)
        np.testing.assert_array_equal(pil.reshape(a.shape), (a >> 8).astype(np.uint8))


def test_interlaced_16bit_rgb_png_falls_back_to_8bit_with_a_warning(tmp_path):
    a = u16((13, 11, 3))
    src = tmp_path / "i16.png"
    png16_reference(src, a, interlace=True)
    rep = RecordingReporter()
    img = read_image(src, reporter=rep)
    assert img.bit_depth == 8 and img.rgb.shape == (13, 11, 3)
    np.testing.assert_array_equal(as_u8(img.rgb), (a >> 8).astype(np.uint8))
    assert len(rep.warnings) == 1 and "interlaced" in rep.warnings[0] and "i16.png" in rep.warnings[0]


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    c=st.sampled_from([1, 2, 3, 4]),
    depth=st.sampled_from([8, 16]),
    filt=st.sampled_from([None, 0, 1, 2, 3, 4]),
    seed=st.integers(0, 2**31),
)
def test_png_codec_round_trips_every_filter(h, w, c, depth, filt, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256 if depth == 8 else 65536, size=(h, w, c)).astype(np.uint8 if depth == 8 else np.uint16)
    buf = io.BytesIO()
    I.write_png(buf, a, filter_type=filt)
    np.testing.assert_array_equal(I.decode_png(buf.getvalue()).pixels, a)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_png_decoder_matches_pillow_on_pillow_filtered_files(mode):
    # Pillow picks filters adaptively (Sub, Up, Paeth, ...): a check of the unfiltering
    a = np.cumsum(u8((31, 45, len(mode))), axis=1).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(a if len(mode) > 1 else a[:, :, 0]).save(buf, "PNG")
    np.testing.assert_array_equal(I.decode_png(buf.getvalue()).pixels.reshape(a.shape), a)


def test_webp_tiff_bmp_jpeg_round_trips(tmp_path):
    a = u8((16, 24, 3))
    img = Image(rgb=a.astype(np.float32) / 255)
    for ext, exact in ((".webp", True), (".tiff", True), (".bmp", True), (".jpg", False)):
        out = write_image(tmp_path / f"o{ext}", img, quality=100)
        back = read_image(out)
        assert (back.height, back.width) == (16, 24)
        if exact:
            np.testing.assert_array_equal(as_u8(back.rgb), a, err_msg=ext)
        else:
            assert np.abs(back.rgb - img.rgb).mean() < 0.03


def test_tiff_float_and_int_modes(tmp_path):
    f = RNG.random((8, 9)).astype(np.float32)
    PILImage.fromarray(f).save(tmp_path / "f.tif")
    img = read_image(tmp_path / "f.tif")
    assert img.source_mode == "F" and img.grayscale and img.bit_depth == 16
    np.testing.assert_allclose(img.rgb[:, :, 0], f, atol=1e-6)

    i = RNG.integers(0, 65536, size=(8, 9)).astype(np.int32)
    PILImage.fromarray(i).save(tmp_path / "i.tif")
    img = read_image(tmp_path / "i.tif")
    assert img.source_mode == "I" and img.bit_depth == 16
    np.testing.assert_array_equal(as_u16(img.rgb[:, :, 0]), i)


# ----------------------------------------------------------------- metadata


def test_exif_orientation_6_jpeg_swaps_dimensions_and_resets_tag(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:5, :5] = 255  # a white block at the top-left of the stored pixels
    exif = PILImage.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "srdistill-test"  # Make
    src = tmp_path / "rot.jpg"
    PILImage.fromarray(a).save(src, exif=exif, quality=95)
    img = read_image(src)
    assert (img.width, img.height) == (20, 40)
    assert img.rgb[1, -2].min() > 0.9 and img.rgb[-2, 1].max() < 0.1  # rotated 90° clockwise
    ex = PILImage.Exif()
    ex.load(img.exif)
    assert ex[0x0112] == 1 and ex[0x010F] == "srdistill-test"
    out = read_image(write_image(tmp_path / "out.jpg", img))
    assert (out.width, out.height) == (20, 40)  # orientation 1 now: not rotated twice
    ex2 = PILImage.Exif()
    ex2.load(out.exif)
    assert ex2[0x010F] == "srdistill-test"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(tmp_path, orientation):
    a = u8((5, 7, 3))
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    src = tmp_path / "o.png"
    PILImage.fromarray(a).save(src, exif=exif)
    with PILImage.open(src) as im:
        want = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(as_u8(read_image(src).rgb), want)


def test_icc_profile_carried_over(tmp_path):
    icc = srgb_icc()
    src = tmp_path / "icc.png"
    PILImage.fromarray(u8((8, 8, 3))).save(src, icc_profile=icc)
    img = read_image(src)
    assert img.icc_profile == icc
    for ext in (".png", ".jpg", ".webp", ".tif"):
        assert read_image(write_image(tmp_path / f"o{ext}", img)).icc_profile == icc, ext
    img16 = read_image(src)
    img16.bit_depth = 16
    assert read_image(write_image(tmp_path / "o16.png", img16)).icc_profile == icc


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    cmyk = PILImage.new("CMYK", (10, 6), (255, 0, 0, 0))  # cyan
    src = tmp_path / "cmyk.jpg"
    cmyk.save(src, quality=95)
    img = read_image(src)
    assert img.source_mode == "CMYK" and not img.grayscale and img.rgb.shape == (6, 10, 3)
    assert img.icc_profile is None  # a CMYK profile would be wrong for RGB pixels
    np.testing.assert_allclose(img.rgb.mean(axis=(0, 1)), [0, 1, 1], atol=0.05)


def test_animated_gif_gives_first_frame_and_warns(tmp_path):
    frames = [PILImage.new("RGB", (6, 4), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    src = tmp_path / "anim.gif"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=50, loop=0)
    rep = RecordingReporter()
    img = read_image(src, reporter=rep)
    assert (img.width, img.height) == (6, 4)
    np.testing.assert_allclose(img.rgb.mean(axis=(0, 1)), [1, 0, 0], atol=0.02)
    assert len(rep.warnings) == 1 and "anim.gif" in rep.warnings[0] and "3 frames" in rep.warnings[0]


# ----------------------------------------------------------------- bad input


def _truncated_copy(tmp_path: Path, ext: str, **save) -> Path:
    full = tmp_path / f"full{ext}"
    PILImage.fromarray(u8((120, 160, 3))).save(full, **save)
    data = full.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def test_bad_files_raise_one_line_image_errors_naming_the_file(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture\n")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    c16 = tmp_path / "c16.png"
    png16_reference(c16, u16((40, 50, 3)))
    cut16 = tmp_path / "cut16.png"
    cut16.write_bytes(c16.read_bytes()[:-200])
    crc = bytearray(c16.read_bytes())
    crc[60] ^= 0xFF  # inside IDAT
    bad_crc = tmp_path / "badcrc16.png"
    bad_crc.write_bytes(bytes(crc))
    cases = {
        empty: "empty",
        text: "not an image",
        folder: "folder",
        tmp_path / "missing.png": "no such file",
        _truncated_copy(tmp_path, ".png"): "truncated",
        _truncated_copy(tmp_path, ".jpg", quality=90): "truncated",
        cut16: "truncated",
        bad_crc: "corrupt",
    }
    for path, words in cases.items():
        with pytest.raises(ImageError) as exc:
            read_image(path)
        assert_one_line_naming(exc, path)
        assert words in str(exc.value), str(exc.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file_is_an_image_error(tmp_path):
    src = tmp_path / "secret.png"
    PILImage.new("RGB", (2, 2)).save(src)
    src.chmod(0)
    with pytest.raises(ImageError, match="permission denied") as exc:
        read_image(src)
    assert_one_line_naming(exc, src)


def test_permission_denied_on_open_is_an_image_error(tmp_path, monkeypatch):
    # the same path as the test above, for when the tests run as root
    src = tmp_path / "secret.png"
    PILImage.new("RGB", (2, 2)).save(src)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)  # fileio opens every input with os.open (O_NONBLOCK)
    with pytest.raises(ImageError, match="permission denied") as exc:
        read_image(src)
    assert_one_line_naming(exc, src)


def test_max_pixels_is_checked_before_decoding_and_is_ours(tmp_path, monkeypatch):
    src = tmp_path / "small.png"
    PILImage.new("RGB", (20, 10)).save(src)
    with pytest.raises(ImageError, match=r"20x10 .* over the .* limit; raise it with --max-pixels"):
        read_image(src, max_pixels=199)
    assert read_image(src, max_pixels=200).width == 20
    assert read_image(src, max_pixels=None).width == 20
    # Pillow's own (global) limit neither refuses nor warns: ours is the one that counts
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(src).width == 20
    assert PILImage.MAX_IMAGE_PIXELS == 50


@pytest.mark.parametrize("kind", ["rgb8", "rgb16"])
def test_decompression_bomb_refused_fast_without_decoding(tmp_path, kind):
    small = tmp_path / "small.png"
    if kind == "rgb8":
        PILImage.fromarray(u8((16, 16, 3))).save(small)
    else:
        png16_reference(small, u16((16, 16, 3)))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(patch_png_size(small.read_bytes(), 40000, 40000))
    # In a fresh process, so that its peak memory is this read's alone.
    code = textwrap.dedent(
        f"""
        import resource, sys, time
        from srdistill.data.images import read_image
        from srdistill.errors import ImageError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        try:
            read_image({str(bomb)!r})
        except ImageError as e:
            msg = str(e)
        else:
            sys.exit("no error")
        took = time.perf_counter() - t
        grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(repr(msg)); print(took); print(grew_mb)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    msg, took, grew_mb = r.stdout.strip().splitlines()
    assert "bomb.png" in msg and "40000x40000 = 1600 MP" in msg and "179 MP limit" in msg
    assert "--max-pixels" in msg
    assert float(took) < 3.0  # header only: ~0.1 s (decoding would take many seconds)
    assert float(grew_mb) < 64  # decoding would need 4.8 GB (9.6 GB at 16 bits)


# ----------------------------------------------------------------- writing


def test_write_never_overwrites_without_overwrite(tmp_path):
    img = Image(rgb=np.zeros((4, 4, 3), np.float32))
    out = write_image(tmp_path / "o.png", img)
    before = out.read_bytes()
    with pytest.raises(OutputExistsError):
        write_image(out, img.with_pixels(np.ones((4, 4, 3), np.float32)))
    assert out.read_bytes() == before
    write_image(out, img.with_pixels(np.ones((4, 4, 3), np.float32)), overwrite=True)
    assert read_image(out).rgb.min() == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]


def test_write_into_unusable_folder_raises_our_error_and_leaves_nothing(tmp_path):
    img = Image(rgb=np.zeros((4, 4, 3), np.float32))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SrDistillError):
        write_image(blocker / "o.png", img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_write_into_read_only_folder_raises_our_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(SrDistillError):
            write_image(ro / "o.png", Image(rgb=np.zeros((4, 4, 3), np.float32)))
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("bits", [8, 16])
def test_failed_encode_leaves_no_file_behind(tmp_path, monkeypatch, bits):
    def broken(self, fp, *args, **kwargs):
        fp.write(b"partial data")
        raise OSError("encoder error -2")  # Pillow's kind: no errno

    def broken_png(f, *args, **kwargs):
        f.write(b"partial data")
        raise ValueError("boom")

    monkeypatch.setattr(PILImage.Image, "save", broken)
    monkeypatch.setattr(I, "write_png", broken_png)
    img = Image(rgb=np.zeros((4, 4, 3), np.float32), bit_depth=bits)
    with pytest.raises(ImageError, match="o.png"):
        write_image(tmp_path / "o.png", img)
    assert list(tmp_path.iterdir()) == []


def test_jpeg_drops_alpha_with_a_warning(tmp_path):
    img = Image(rgb=np.full((4, 5, 3), 0.5, np.float32), alpha=np.zeros((4, 5, 1), np.float32))
    rep = RecordingReporter()
    back = read_image(write_image(tmp_path / "o.jpg", img, reporter=rep))
    assert back.alpha is None and back.rgb.shape == (4, 5, 3)
    assert any("alpha" in w and "o.jpg" in w for w in rep.warnings)


def test_16bit_to_8bit_format_is_reported(tmp_path):
    img = Image(rgb=np.full((4, 5, 3), 0.5, np.float32), bit_depth=16)
    rep = RecordingReporter()
    write_image(tmp_path / "o.jpg", img, reporter=rep)
    assert any("8 bits" in m for m in rep.infos)


def test_output_format_from_extension():
    assert output_format("a.PNG") == "PNG" and output_format("b.jpeg") == "JPEG"
    assert output_format("c.tif") == "TIFF" and output_format("d.webp") == "WEBP"
    with pytest.raises(UsageError, match="xyz"):
        output_format("e.xyz")
    with pytest.raises(UsageError):
        write_image("noext", Image(rgb=np.zeros((2, 2, 3), np.float32)))


# ----------------------------------------------------------------- Image object


def test_to_tensor_and_with_pixels_keep_mode_information(tmp_path):
    a = u16((6, 7, 2))
    src = tmp_path / "la16.png"
    png16_reference(src, a)
    img = read_image(src)
    t = img.to_tensor()
    assert t.shape == (1, 3, 6, 7) and t.dtype == torch.float32
    assert torch.equal(t[:, 0], t[:, 1]) and torch.equal(t[:, 1], t[:, 2])
    np.testing.assert_array_equal(t[0, 0].numpy(), img.rgb[:, :, 0])
    assert img.alpha_tensor().shape == (1, 1, 6, 7)

    up = torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")
    out = img.with_pixels(up)
    assert out.grayscale and out.bit_depth == 16 and out.rgb.shape == (12, 14, 1)
    assert out.alpha is not None and out.alpha.shape == (12, 14, 1)  # alpha followed the upscale
    np.testing.assert_allclose(out.rgb[::2, ::2, 0], img.rgb[:, :, 0], atol=1e-6)
    back = read_image(write_image(tmp_path / "up.png", out))
    assert back.grayscale and back.bit_depth == 16 and back.alpha is not None
    assert (back.height, back.width) == (12, 14)

    rgba = Image(rgb=np.zeros((2, 3, 3), np.float32)).with_pixels(np.ones((2, 3, 4), np.uint8) * 255)
    assert rgba.alpha is not None and rgba.rgb.max() == 1.0
    nan = Image(rgb=np.zeros((2, 2, 3), np.float32)).with_pixels(torch.full((3, 2, 2), float("nan")))
    assert np.isfinite(nan.rgb).all()


# ----------------------------------------------------------------- listing


def test_list_images_files_folders_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.png", "a.JPG", "c.webp", "sub/d.tif", ".hidden/e.png", ".f.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    flat = list_images([str(tmp_path)], recursive=False)
    assert [p.name for p in flat] == ["a.JPG", "b.png", "c.webp"]
    deep = list_images([tmp_path], recursive=True)
    assert [p.name for p in deep] == ["a.JPG", "b.png", "c.webp", "d.tif"]
    assert [p.name for p in list_images([str(tmp_path / "*.png")], recursive=False)] == ["b.png"]
    assert [p.name for p in list_images([str(tmp_path / "**" / "*.tif")], recursive=True)] == ["d.tif"]
    both = list_images([str(tmp_path / "b.png"), str(tmp_path), str(tmp_path / "notes.txt")], recursive=False)
    assert [p.name for p in both] == ["a.JPG", "b.png", "c.webp", "notes.txt"]  # de-duplicated, sorted
    assert both == sorted(both, key=str)
    for bad in (tmp_path / "missing.png", tmp_path / "*.bmp", tmp_path / "sub" / "nothing"):
        with pytest.raises(UsageError):
            list_images([str(bad)], recursive=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="empty"):
        list_images([str(tmp_path / "empty")], recursive=True)
    assert ".png" in IMAGE_EXTENSIONS and ".tiff" in IMAGE_EXTENSIONS
