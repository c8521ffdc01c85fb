"""Fuzzing the two readers that take files from strangers: the checkpoint loader and the image reader.

The only allowed outcomes are a result or an ``SrDistillError`` (a one-line message);
anything else is a bug in srdistill. Examples: random bytes, and valid tiny files
mutated by byte flips, truncations and structure-aware edits (safetensors header
JSON fields, PNG chunks with their CRC recomputed so the decoder behind the CRC check
is reached).

Bounded for CI: ``SRDISTILL_FUZZ_EXAMPLES`` (default 60 per test) and a fixed seed;
set ``SRDISTILL_FUZZ_RANDOM=1`` for a fresh seed (hypothesis prints it on failure).
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from robust_helpers import tiny_compact
from srdistill.data.images import read_image
from srdistill.errors import SrDistillError
from srdistill.models.loading import load_model

EXAMPLES = int(os.environ.get("SRDISTILL_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=os.environ.get("SRDISTILL_FUZZ_RANDOM", "") in ("", "0"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # PIL/torch warnings on corrupt input are fine
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

_WORK = Path(".")  # set per module run by the fixture below, inside pytest's own temp folder


@pytest.fixture(scope="module", autouse=True)
def _fuzz_work(tmp_path_factory):
    global _WORK
    _WORK = tmp_path_factory.mktemp("fuzz")
    yield


def _valid_safetensors() -> bytes:
    from safetensors.torch import save

    return save(tiny_compact().state_dict(), metadata={"srdistill.scale": "2", "modelspec.title": "tiny"})


def _valid_pth() -> bytes:
    buf = io.BytesIO()
    torch.save(tiny_compact().state_dict(), buf)
    return buf.getvalue()


VALID_ST = _valid_safetensors()
VALID_PTH = _valid_pth()
_N = struct.unpack("<Q", VALID_ST[:8])[0]
HEADER = json.loads(VALID_ST[8:8 + _N])
DATA = VALID_ST[8 + _N:]


def _load(blob: bytes, suffix: str):
    p = _WORK / f"fuzz{suffix}"
    p.write_bytes(blob)
    try:
        return load_model(p)
    except SrDistillError as e:
        assert "\n" not in str(e), repr(str(e))
        return e


def _read(blob: bytes, suffix: str):
    p = _WORK / f"fuzz{suffix}"
    p.write_bytes(blob)
    try:
        img = read_image(p)
    except SrDistillError as e:
        assert "\n" not in str(e), repr(str(e))
        return e
    assert img.rgb.dtype == np.float32 and img.rgb.ndim == 3 and img.rgb.shape[2] in (1, 3)
    assert np.isfinite(img.rgb).all() and img.rgb.min() >= 0 and img.rgb.max() <= 1
    return img


def _mutate(blob: bytes, flips, cut) -> bytes:
    b = bytearray(blob)
    for pos, val in flips:
        b[pos % len(b)] = val
    return bytes(b[:cut]) if cut is not None else bytes(b)


flips = st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), max_size=6)
cuts = st.one_of(st.none(), st.integers(0, 1 << 16))


# --------------------------------------------------------------------------- checkpoint loader

CKPT = "checkpoint loader fuzz"


@FUZZ
@given(blob=st.binary(max_size=2048), suffix=st.sampled_from([".safetensors", ".pth", ".pt", ".ckpt"]))
def test_loader_on_random_bytes(tally, blob, suffix):
    with tally.case(CKPT, "random bytes"):
        _load(blob, suffix)


@FUZZ
@given(flips=flips, cut=cuts, header_bias=st.booleans())
def test_loader_on_mutated_safetensors(tally, flips, cut, header_bias):
    if header_bias:  # most interesting bytes are the length and the JSON header
        flips = [(p % (8 + _N), v) for p, v in flips]
    with tally.case(CKPT, "mutated safetensors"):
        _load(_mutate(VALID_ST, flips, cut), ".safetensors")


_ints = st.one_of(st.integers(-3, 70), st.integers(-(2**63), 2**64), st.sampled_from([0, 1, 2**31, 2**32 - 1]))
_edit = st.one_of(
    st.tuples(st.just("shape"), st.lists(_ints, max_size=5)),
    st.tuples(st.just("dtype"), st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I8", "U8", "BOOL", "C64",
                                                 "F8_E4M3", "F8_E5M2", "X", "", "f32"])),
    st.tuples(st.just("data_offsets"), st.lists(_ints, max_size=3)),
    st.tuples(st.just("rename"), st.text(max_size=30)),
    st.tuples(st.just("delete"), st.none()),
    st.tuples(st.just("value"), st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers()))),
    st.tuples(st.just("metadata"), st.dictionaries(st.text(max_size=20), st.one_of(st.text(max_size=20),
                                                                                   st.integers()), max_size=3)),
)


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(sorted(HEADER)), _edit), min_size=1, max_size=3),
       data_cut=st.one_of(st.none(), st.integers(0, len(DATA))))
def test_loader_on_edited_safetensors_headers(tally, edits, data_cut):
    h = json.loads(json.dumps(HEADER))
    for key, (what, val) in edits:
        if key not in h:
            continue
        if what == "rename":
            h[val] = h.pop(key)
        elif what == "delete":
            h.pop(key)
        elif what == "value":
            h[key] = val
        elif what == "metadata":
            h["__metadata__"] = val
        elif isinstance(h[key], dict):
            h[key][what] = val
    head = json.dumps(h).encode()
    data = DATA if data_cut is None else DATA[:data_cut]
    with tally.case(CKPT, "edited safetensors header"):
        _load(struct.pack("<Q", len(head)) + head + data, ".safetensors")


@FUZZ
@given(flips=flips, cut=cuts)
def test_loader_on_mutated_pth(tally, flips, cut):
    with tally.case(CKPT, "mutated pth"):
        _load(_mutate(VALID_PTH, flips, cut), ".pth")


# --------------------------------------------------------------------------- image reader

IMG = "image reader fuzz"


def _seed_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    out = {}

    def save(name, im, fmt, **kw):
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        out[name] = buf.getvalue()

    save("rgb.png", PILImage.fromarray(rgb), "PNG")
    save("rgba.png", PILImage.fromarray(np.dstack([rgb, rgb[..., :1]])), "PNG")
    pal = PILImage.fromarray(rgb).convert("P", palette=PILImage.Palette.ADAPTIVE, colors=8)
    save("palette_trns.png", pal, "PNG", transparency=0)
    save("gray16.png", PILImage.fromarray((rgb[..., 0].astype(np.uint16) * 257)), "PNG")
    from srdistill.data.png16 import write_png

    buf = io.BytesIO()
    write_png(buf, rgb.astype(np.uint16) * 257)  # 16-bit RGB: srdistill's own PNG decoder reads it
    out["rgb16.png"] = buf.getvalue()
    save("rgb.jpg", PILImage.fromarray(rgb), "JPEG", quality=90)
    save("cmyk.jpg", PILImage.fromarray(rgb).convert("CMYK"), "JPEG")
    frames = [PILImage.fromarray(np.roll(rgb, i, axis=0)).convert("P") for i in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out["anim.gif"] = buf.getvalue()
    save("rgb.bmp", PILImage.fromarray(rgb), "BMP")
    save("rgb.tif", PILImage.fromarray(rgb), "TIFF")
    save("rgb.webp", PILImage.fromarray(rgb), "WEBP", lossless=True)
    return out


SEEDS = _seed_images()


def _png_chunks(blob: bytes) -> list[list]:
    pos, chunks = 8, []
    while pos + 8 <= len(blob):
        n, t = struct.unpack(">I4s", blob[pos:pos + 8])
        chunks.append([t, bytearray(blob[pos + 8:pos + 8 + n])])
        pos += 12 + n
    return chunks


def _png_join(chunks) -> bytes:
    out = bytearray(b"\x89PNG\r\n\x1a\n")
    for t, body in chunks:
        out += struct.pack(">I", len(body)) + t + bytes(body)
        out += struct.pack(">I", zlib.crc32(t + bytes(body)) & 0xFFFFFFFF)
    return bytes(out)


@FUZZ
@given(blob=st.binary(max_size=2048), suffix=st.sampled_from([".png", ".jpg", ".gif", ".webp", ".tif", ".bmp"]))
def test_image_reader_on_random_bytes(tally, blob, suffix):
    with tally.case(IMG, "random bytes"):
        _read(blob, suffix)


@FUZZ
@given(name=st.sampled_from(sorted(SEEDS)), flips=flips, cut=cuts)
def test_image_reader_on_mutated_files(tally, name, flips, cut):
    with tally.case(IMG, f"mutated {name}"):
        _read(_mutate(SEEDS[name], flips, cut), Path(name).suffix)


@FUZZ
@given(name=st.sampled_from(["rgb.png", "rgba.png", "palette_trns.png", "gray16.png", "rgb16.png"]),
       which=st.integers(0, 20), flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)),
                                                 min_size=1, max_size=4),
       raw_idat=st.booleans())
def test_image_reader_on_png_chunks_with_valid_crcs(tally, name, which, flips, raw_idat):
    """Edit a chunk (IHDR fields, palette, tRNS, image data) and fix its CRC, to reach the decoders."""
    chunks = _png_chunks(SEEDS[name])
    t, body = chunks[which % len(chunks)]
    if t == b"IDAT" and raw_idat:  # mutate the filtered rows, not the zlib stream
        raw = bytearray(zlib.decompress(bytes(body)))
        for pos, val in flips:
            raw[pos % len(raw)] = val
        body[:] = zlib.compress(bytes(raw))
    elif body:
        for pos, val in flips:
            body[pos % len(body)] = val
    with tally.case(IMG, f"chunk-edited {name}"):
        _read(_png_join(chunks), ".png")


# --------------------------------------------------------------------------- exhaustive sweeps (regressions)


def test_every_byte_of_the_zip_directory_of_a_pth(tally):
    """Each byte of the central directory and end records set to 0x00, 0x40 and 0xFF in turn.

    Found by the fuzzer: Python's zipfile raises NotImplementedError ("zip file version 6.4") and
    ``zipfile.is_zipfile`` itself raises BadZipFile ("span multiple disks") on such files.
    """
    start = VALID_PTH.index(b"PK\x01\x02")
    n = 0
    for pos in range(start, len(VALID_PTH)):
        for val in (0x00, 0x40, 0xFF):
            if VALID_PTH[pos] == val:
                continue
            n += 1
            b = bytearray(VALID_PTH)
            b[pos] = val
            _load(bytes(b), ".pth")
    tally.counts[CKPT].tried += n
    tally.counts[CKPT].handled += n


def test_every_truncation_of_an_animated_gif(tally):
    """Found by the fuzzer: a GIF cut inside a later frame made counting frames raise struct.error."""
    gif = SEEDS["anim.gif"]
    for cut in range(1, len(gif)):
        with tally.case(IMG, f"anim.gif cut at {cut}"):
            r = _read(gif[:cut], ".gif")
            if not isinstance(r, SrDistillError):
                assert r.width == 10 and r.height == 12
