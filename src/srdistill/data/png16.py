"""The 16-bit PNG codec: Pillow reads and writes PNGs at 8 bits per colour channel only.

Reading keeps 16-bit RGB/RGBA/gray+alpha at full precision; writing produces 8- or 16-bit PNGs
with 1-4 channels, ICC and EXIF. OpenCV (the field's usual 16-bit reader) was measured as a
replacement and cannot do it all: ``cv2.imencode`` refuses 2-channel (gray+alpha) images and
``cv2.imdecode`` returns gray+alpha files as 4-channel BGRA (opencv-python-headless 5.0.0), and
its encoder has no option for ICC or EXIF chunks; srdistill writes 16-bit gray+alpha outputs with their profiles.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np


_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
_PNG_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # samples per pixel -> colour type


class PngError(ValueError):
    pass


@dataclass
class Png:
    pixels: np.ndarray  # H×W×C uint16 (or uint8 for 8-bit files)
    icc: bytes | None = None
    exif: bytes | None = None
    trns: bytes | None = None


def png_ihdr(head: bytes) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit depth, colour type, interlace) from a PNG's first bytes."""
    if len(head) < 29 or not head.startswith(_PNG_SIG) or head[12:16] != b"IHDR":
        return None
    w, h, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return w, h, depth, ctype, interlace


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel (palette: 1 index)
_DEFLATE_MAX_RATIO = 1100  # deflate cannot expand more than ~1032:1


def png_data_shortfall(f: BinaryIO, ihdr: tuple[int, int, int, int, int]) -> tuple[int, int] | None:
    """(bytes found, bytes needed) when a PNG's image data cannot fill its declared size, else None.

    Walks the chunks, first comparing the compressed size with the most it could
    inflate to (no decompression: a tiny file claiming a huge image is refused at
    once), then inflating in bounded pieces and counting, so memory stays small.
    """
    w, h, depth, ctype, interlace = ihdr
    if ctype not in _PNG_SAMPLES or depth not in (1, 2, 4, 8, 16):
        return None  # Pillow will refuse the layout itself
    bits = _PNG_SAMPLES[ctype] * depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    need = 0
    for x0, y0, dx, dy in passes:
        cols, rows = max(0, -(-(w - x0) // dx)), max(0, -(-(h - y0) // dy))
        if cols and rows:
            need += rows * (1 + (cols * bits + 7) // 8)
    spans: list[tuple[int, int]] = []
    f.seek(8)
    while True:
        hdr = f.read(8)
        if len(hdr) < 8:
            break
        length, ctype_ = struct.unpack(">I4s", hdr)
        if ctype_ == b"IDAT":
            spans.append((f.tell(), length))
        elif ctype_ == b"IEND":
            break
        f.seek(length + 4, io.SEEK_CUR)
    packed = sum(n for _, n in spans)
    if packed * _DEFLATE_MAX_RATIO + 1024 < need:
        return packed, need
    d = zlib.decompressobj()
    got = 0
    for start, length in spans:
        f.seek(start)
        left = length
        while left > 0 and got < need:
            data = f.read(min(left, 1 << 16))
            if not data:
                break
            left -= len(data)
            while data and got < need:
                out = d.decompress(data, 1 << 20)
                got += len(out)
                data = d.unconsumed_tail
            if d.eof:
                break
        if d.eof or got >= need:
            break
    return None if got >= need else (got, need)


def decode_png(data: bytes) -> Png:
    """Decode a non-interlaced, non-palette PNG of bit depth 8 or 16 (colour types 0, 2, 4, 6)."""
    if not data.startswith(_PNG_SIG):
        raise PngError("not a PNG file")
    pos, n = 8, len(data)
    ihdr = None
    idat: list[bytes] = []
    icc = exif = trns = None
    while pos < n:
        if pos + 8 > n:
            raise PngError("the file is truncated (cut inside a chunk header)")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > n:
            name = ctype.decode("latin-1", "replace")
            raise PngError(f"the file is truncated (cut inside the {name} chunk)")
        body = data[pos + 8 : end]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != crc:
            name = ctype.decode("latin-1", "replace")
            raise PngError(f"the file is corrupt (checksum mismatch in the {name} chunk)")
        pos = end + 4
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body[:13])
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"iCCP":
            try:
                sep = body.index(b"\x00")
                icc = zlib.decompress(body[sep + 2 :])
            except (ValueError, zlib.error):
                icc = None
        elif ctype == b"eXIf":
            exif = body if body.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + body
        elif ctype == b"tRNS":
            trns = body
        elif ctype == b"IEND":
            break
    if ihdr is None:
        raise PngError("the file is corrupt (no IHDR chunk)")
    w, h, depth, ct, comp, filt, interlace = ihdr
    if depth not in (8, 16) or ct not in _PNG_CHANNELS or comp != 0 or filt != 0 or interlace != 0:
        raise PngError(f"unsupported PNG layout (bit depth {depth}, colour type {ct}, interlace {interlace})")
    if not idat:
        raise PngError("the file is truncated (no image data)")
    c = _PNG_CHANNELS[ct]
    bpp = c * depth // 8
    stride = w * bpp
    expected = h * (stride + 1)
    d = zlib.decompressobj()
    try:
        raw = d.decompress(b"".join(idat), expected)
    except zlib.error as e:
        raise PngError(f"the file is corrupt (bad compressed data: {e})") from e
    if len(raw) < expected:
        raise PngError("the file is truncated (image data ends early)")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, stride + 1)
    recon = _unfilter(rows[:, 0].copy(), rows[:, 1:].reshape(h, w, bpp))
    dt = np.dtype(">u2") if depth == 16 else np.dtype(np.uint8)
    px = recon.reshape(h, stride).view(dt).reshape(h, w, c)
    return Png(pixels=px.astype(np.uint16 if depth == 16 else np.uint8), icc=icc, exif=exif, trns=trns)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _unfilter(ft: np.ndarray, filt: np.ndarray) -> np.ndarray:
    """Undo PNG row filters. ``ft``: (H,) filter types; ``filt``: (H, W, bpp) uint8 filtered bytes.

    Rows using only None/Sub/Up are undone a row at a time with whole-row numpy ops.
    Average and Paeth make each byte depend on its left neighbour, so those images
    are undone along anti-diagonals (a wavefront): every pixel on the diagonal
    y + x = d depends only on diagonals d-1 and d-2, so each of the H+W-1 steps is
    one vectorised operation.
    """
    h, w, bpp = filt.shape
    if ft.size and int(ft.max()) > 4:
        raise PngError(f"the file is corrupt (unknown row filter {int(ft.max())})")
    if not np.isin(ft, (3, 4)).any():
        out = np.empty_like(filt)
        prev = np.zeros((w, bpp), dtype=np.uint8)
        for y in range(h):
            t = ft[y]
            row = filt[y]
            if t == 1:
                out[y] = np.add.accumulate(row, axis=0, dtype=np.uint8)  # wraps mod 256
            elif t == 2:
                out[y] = row + prev
            else:
                out[y] = row
            prev = out[y]
        return out

    w1 = w + 1
    rec = np.zeros(((h + 1) * w1, bpp), dtype=np.uint8)  # one zero row on top, one zero column left
    flat = filt.reshape(h * w, bpp)
    for d in range(h + w - 1):
        ys = np.arange(max(0, d - w + 1), min(h - 1, d) + 1)
        xs = d - ys
        idx = (ys + 1) * w1 + xs + 1
        a = rec[idx - 1].astype(np.int16)
        b = rec[idx - w1].astype(np.int16)
        c = rec[idx - w1 - 1].astype(np.int16)
        t = ft[ys][:, None]
        pred = np.select([t == 1, t == 2, t == 3, t == 4], [a, b, (a + b) >> 1, _paeth(a, b, c)], 0)
        rec[idx] = ((flat[ys * w + xs] + pred) & 0xFF).astype(np.uint8)
    return np.ascontiguousarray(rec.reshape(h + 1, w1, bpp)[1:, 1:])


def _png_chunk(f: BinaryIO, ctype: bytes, body: bytes) -> None:
    f.write(struct.pack(">I", len(body)) + ctype + body)
    f.write(struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF))


def _filter_rows(cur: np.ndarray, prev: np.ndarray, bpp: int, force: int | None) -> np.ndarray:
    """Filter rows (n, stride) uint8 given the row above; per row the filter with the
    smallest sum of absolute signed bytes (libpng's heuristic), or ``force``."""
    x = cur.astype(np.int16)
    up = np.concatenate([prev[None].astype(np.int16), x[:-1]], axis=0)
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    ul = np.zeros_like(x)
    ul[:, bpp:] = up[:, :-bpp]
    makers = (
        lambda: x,
        lambda: x - left,
        lambda: x - up,
        lambda: x - ((left + up) >> 1),
        lambda: x - _paeth(left, up, ul),
    )
    out = np.empty((x.shape[0], x.shape[1] + 1), dtype=np.uint8)
    if force is not None:
        out[:, 0] = force
        out[:, 1:] = makers[force]() & 0xFF
        return out
    best = np.full(x.shape[0], np.iinfo(np.int64).max)
    for k, make in enumerate(makers):
        cand = (make() & 0xFF).astype(np.uint8)
        score = np.abs(cand.view(np.int8).astype(np.int64)).sum(axis=1)
        better = score < best
        best = np.where(better, score, best)
        out[better, 0] = k
        out[better, 1:] = cand[better]
    return out


def write_png(
    f: BinaryIO,
    pixels: np.ndarray,
    *,
    icc: bytes | None = None,
    exif: bytes | None = None,
    compress_level: int = 6,
    filter_type: int | None = None,
) -> None:
    """Write an H×W×C (C = 1..4) uint8 or uint16 array as a PNG (8 or 16 bits per sample)."""
    h, w, c = pixels.shape
    depth = 16 if pixels.dtype == np.uint16 else 8
    raw = np.ascontiguousarray(pixels, dtype=">u2" if depth == 16 else np.uint8).view(np.uint8).reshape(h, -1)
    bpp = c * depth // 8
    f.write(_PNG_SIG)
    _png_chunk(f, b"IHDR", struct.pack(">IIBBBBB", w, h, depth, _PNG_COLOR_TYPE[c], 0, 0, 0))
    if icc:
        _png_chunk(f, b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if exif:
        _png_chunk(f, b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    comp = zlib.compressobj(compress_level)
    buf = bytearray()
    idat_max = 1 << 20
    rows = max(1, (2 << 20) // max(1, raw.shape[1]))
    prev = np.zeros(raw.shape[1], dtype=np.uint8)
    for y0 in range(0, h, rows):
        cur = raw[y0 : y0 + rows]
        buf += comp.compress(_filter_rows(cur, prev, bpp, filter_type).tobytes())
        prev = cur[-1]
        while len(buf) >= idat_max:
            _png_chunk(f, b"IDAT", bytes(buf[:idat_max]))
            del buf[:idat_max]
    buf += comp.flush()
    for i in range(0, len(buf), idat_max):
        _png_chunk(f, b"IDAT", bytes(buf[i : i + idat_max]))
    _png_chunk(f, b"IEND", b"")
