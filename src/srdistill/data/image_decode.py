"""Pillow images and decoded PNGs -> :class:`Image` (modes, 16-bit, CMYK, EXIF orientation, limits)."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image as PILImage

from ..errors import ImageError
from ..progress import Reporter
from .image_type import ORIENTATION_TAG, READ_FORMATS, Image
from .png16 import Png

_PIL_LIMIT_LOCK = threading.Lock()
_read_formats: tuple[str, ...] | None = None  # READ_FORMATS this Pillow has, found on first use


def open_pil(f: BinaryIO) -> PILImage.Image:
    """``PIL.Image.open`` (lazy: reads the header only) with Pillow's own bomb check off.

    We compare the header size with ``max_pixels`` ourselves, so that the limit is the
    caller's (``--max-pixels``) and Pillow neither warns on stderr nor refuses first
    with a message that lacks the dimensions. The global is swapped back at once.
    """
    global _read_formats
    with _PIL_LIMIT_LOCK:
        if _read_formats is None:
            PILImage.init()
            _read_formats = tuple(f for f in READ_FORMATS if f in PILImage.OPEN)
        saved = PILImage.MAX_IMAGE_PIXELS
        PILImage.MAX_IMAGE_PIXELS = None
        try:
            return PILImage.open(f, formats=_read_formats)
        finally:
            PILImage.MAX_IMAGE_PIXELS = saved


def _fmt_mp(n: float) -> str:
    mp = n / 1e6
    return f"{mp:.0f}" if mp >= 10 else f"{mp:.3g}"


def check_pixels(name: str, w: int, h: int, max_pixels: int | None) -> None:
    if w <= 0 or h <= 0:
        raise ImageError(f"cannot read image {name!r}: it has zero size ({w}x{h})")
    if max_pixels and w * h > max_pixels:
        raise ImageError(
            f"{name!r} is {w}x{h} = {_fmt_mp(w * h)} MP, over the {_fmt_mp(max_pixels)} MP limit; "
            "raise it with --max-pixels"
        )


def describe_error(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    low = msg.lower()
    if isinstance(e, EOFError) or "truncated" in low or "premature end" in low:
        return f"the file is truncated or corrupt ({msg or 'unexpected end of file'})"
    if isinstance(e, MemoryError):
        return "not enough memory to decode it"
    return f"the file is corrupt or not a supported image ({msg or type(e).__name__})"


DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,  # Pillow's PNG plugin raises it for broken chunks
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    MemoryError,
    PILImage.DecompressionBombError,
    PILImage.DecompressionBombWarning,
)


def image_from_pil(im: PILImage.Image, path: Path, rep: Reporter) -> Image:
    mode = im.mode
    info = im.info
    icc = info.get("icc_profile") or None
    bit_depth = 8
    alpha = None

    if mode in ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa"):
        has_alpha = mode in ("LA", "La", "PA", "RGBA", "RGBa") or (
            mode in ("1", "L", "P", "RGB") and im.has_transparency_data
        )
        gray = mode in ("1", "L", "LA", "La")
        target = ("LA" if has_alpha else "L") if gray else ("RGBA" if has_alpha else "RGB")
        conv = im if mode == target else im.convert(target)
        arr = np.asarray(conv).astype(np.float32) / 255.0
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if has_alpha:
            arr, alpha = arr[:, :, :-1], arr[:, :, -1:]
    elif mode.startswith("I;16"):
        raw = np.asarray(im)
        arr = raw.astype(np.float32)[:, :, None] / 65535.0
        bit_depth = 16
        trns = info.get("transparency")
        if isinstance(trns, int):
            alpha = (raw != trns).astype(np.float32)[:, :, None]
    elif mode == "I":
        raw = np.asarray(im)
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            rep.warn(f"{path}: 32-bit integer pixels outside 0..65535 were clipped")
        arr = np.clip(raw, 0, 65535).astype(np.float32)[:, :, None] / 65535.0
        bit_depth = 16
    elif mode == "F":
        raw = np.nan_to_num(np.asarray(im, dtype=np.float32))
        hi = float(raw.max()) if raw.size else 0.0
        if hi <= 1.0:
            div = 1.0
        elif hi <= 255.0:
            div = 255.0
        elif hi <= 65535.0:
            div = 65535.0
        else:
            div = hi
            rep.warn(f"{path}: floating-point pixels up to {hi:g} were scaled into 0..1")
        arr = np.clip(raw / div, 0.0, 1.0).astype(np.float32)[:, :, None]
        bit_depth = 16
    else:  # CMYK, YCbCr, LAB, HSV, ...: to RGB; their ICC profile no longer applies
        conv = None
        if mode == "CMYK" and icc:
            conv = _cmyk_to_srgb(im, icc)
        if conv is None:
            conv = im.convert("RGBA" if im.has_transparency_data else "RGB")
        arr = np.asarray(conv).astype(np.float32) / 255.0
        if arr.shape[2] == 4:
            arr, alpha = arr[:, :, :3], arr[:, :, 3:]
        icc = None

    orientation = 1
    exif = info.get("exif") or None
    try:
        orientation = int(im.getexif().get(ORIENTATION_TAG, 1) or 1)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        rep.warn(f"{path}: unreadable EXIF data ignored")
        exif = None
    if isinstance(exif, PILImage.Exif):  # pragma: no cover - defensive
        exif = exif.tobytes()
    return _finish(arr, alpha, orientation, bit_depth, icc, exif, mode, path)


def _cmyk_to_srgb(im: PILImage.Image, icc: bytes) -> PILImage.Image | None:
    try:
        from PIL import ImageCms  # lazy: only CMYK files with a profile need littlecms (a Pillow build may lack it)

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        dst = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
    except Exception:
        return None


def _finish(
    arr: np.ndarray,
    alpha: np.ndarray | None,
    orientation: int,
    bit_depth: int,
    icc: bytes | None,
    exif: bytes | None,
    mode: str,
    path: Path,
) -> Image:
    if orientation not in range(1, 9):
        orientation = 1
    if orientation != 1:
        arr = _orient(arr, orientation)
        alpha = None if alpha is None else _orient(alpha, orientation)
    if exif:
        exif = _exif_reset_orientation(bytes(exif))
    return Image(
        rgb=np.ascontiguousarray(arr, dtype=np.float32),
        alpha=None if alpha is None else np.ascontiguousarray(alpha, dtype=np.float32),
        bit_depth=bit_depth,
        grayscale=arr.shape[2] == 1,
        icc_profile=bytes(icc) if icc else None,
        exif=exif or None,
        source_mode=mode,
        path=path,
    )


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an H×W×C array, as ``ImageOps.exif_transpose``."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(a, k=-1)
    if orientation == 7:
        return a[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(a, k=1)
    return a


def _exif_reset_orientation(raw: bytes) -> bytes:
    """Set the IFD0 Orientation tag to 1 in place, leaving every other byte as it was."""
    prefix, data = (raw[:6], raw[6:]) if raw.startswith(b"Exif\x00\x00") else (b"", raw)
    try:
        if data[:2] == b"II":
            e = "<"
        elif data[:2] == b"MM":
            e = ">"
        else:
            return raw
        (ifd,) = struct.unpack(e + "I", data[4:8])
        (n,) = struct.unpack(e + "H", data[ifd : ifd + 2])
        for i in range(n):
            off = ifd + 2 + 12 * i
            tag, typ, count = struct.unpack(e + "HHI", data[off : off + 8])
            if tag == ORIENTATION_TAG:
                if typ == 3 and count == 1:
                    b = bytearray(data)
                    b[off + 8 : off + 10] = struct.pack(e + "H", 1)
                    return prefix + bytes(b)
                return raw
    except struct.error:
        return raw
    return raw


def image_from_png16(png: "Png", path: Path, rep: Reporter) -> Image:
    px = png.pixels.astype(np.float32) / 65535.0
    c = px.shape[2]
    alpha = None
    if c in (2, 4):
        px, alpha = px[:, :, :-1], px[:, :, -1:]
    elif png.trns is not None and len(png.trns) == 2 * c:
        key = np.frombuffer(png.trns, dtype=">u2")
        alpha = (~np.all(png.pixels == key, axis=2)).astype(np.float32)[:, :, None]
    orientation = 1
    if png.exif:
        try:
            ex = PILImage.Exif()
            ex.load(png.exif)
            orientation = int(ex.get(ORIENTATION_TAG, 1) or 1)
        except Exception:
            rep.warn(f"{path}: unreadable EXIF data ignored")
    mode = {1: "I;16", 2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[png.pixels.shape[2]]
    return _finish(px, alpha, orientation, 16, png.icc, png.exif, mode, path)


