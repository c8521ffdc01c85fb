"""Reading and writing images for training, evaluation and ``upscale``.

One reader and one writer for the whole tool, so every command treats a file the
same way:

* ``read_image`` turns any common file (RGB, RGBA, LA, L, P with transparency,
  1-bit, CMYK, 16-bit PNG, I/F modes) into an :class:`Image`: float32 pixels in
  [0, 1] plus what is needed to write the result back in kind (alpha, bit depth,
  grayscale, ICC profile, EXIF). EXIF orientation is applied on read.
* Nothing is decoded before its size is checked against ``max_pixels``.
* Every failure is one :class:`~srdistill.errors.ImageError` naming the file.
* ``write_image`` writes through :func:`srdistill.fileio.atomic_path`: a failure
  never leaves a partial file under the final name and never clobbers a file.

Pillow reads and writes 16-bit RGB(A) PNGs at 8 bits per channel only, so srdistill carries a
small PNG codec for 16-bit colour and gray+alpha PNGs (:mod:`srdistill.data.png16`, which says why
not OpenCV). The pieces: :mod:`~srdistill.data.image_type` (the :class:`Image`),
:mod:`~srdistill.data.image_decode` (Pillow/PNG -> Image), :mod:`~srdistill.data.image_files`
(which files are images); this module holds the one reader and the one writer.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from ..errors import ImageError, SrDistillError, UsageError
from ..fileio import MAX_IMAGE_BYTES, atomic_path, open_input_file
from ..progress import NULL, Reporter

# the 16-bit PNG codec lives in png16.py; read_image and write_image look these names up here,
# so tests can wrap them
from .png16 import PngError, decode_png, png_data_shortfall, png_ihdr, write_png
from .image_type import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, WRITE_FORMATS, Image,
                         quantize_u8)
from .image_decode import DECODE_ERRORS, check_pixels, describe_error, image_from_pil, image_from_png16, open_pil
from .image_files import list_images, scan_folder  # noqa: F401


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_PNG_LEVEL",
    "IMAGE_EXTENSIONS",
    "WRITE_FORMATS",
    "Image",
    "list_images",
    "output_format",
    "read_image",
    "write_image",
]

# --------------------------------------------------------------------------- reading


def _open_checked(p: Path, fail) -> BinaryIO:
    """The file opened for reading, after the checks that need no decoding (exists, a regular file of
    at most MAX_IMAGE_BYTES -- never a FIFO or a device --, not empty): fileio's one input check."""
    try:
        f = open_input_file(p, "image", MAX_IMAGE_BYTES, error=ImageError)
    except SrDistillError as e:
        fail(getattr(e, "reason", None) or str(e), e)
    if os.fstat(f.fileno()).st_size == 0:
        f.close()
        fail("the file is empty (0 bytes)")
    return f


def _png_checks(f: BinaryIO, head: bytes, fmt: str, w: int, h: int, name: str, fail, rep: Reporter):
    """PNG only: refuse a short data stream (Pillow would fill it with black); a decoded 16-bit
    colour / gray+alpha PNG at full precision, or None for Pillow to read."""
    ihdr = png_ihdr(head) if fmt == "PNG" else None
    if ihdr is None:
        return None
    # Pillow fills rows missing from a complete-but-short data stream with black, silently:
    # a corrupt file would pass as an image, and a few hundred bytes could claim 100+ MP
    try:
        short = png_data_shortfall(f, ihdr)
    except (zlib.error, struct.error, OSError) as e:
        fail(f"the file is corrupt (bad compressed image data: {' '.join(str(e).split())})", e)
    if short is not None:
        fail(f"the file is truncated or corrupt (its image data holds {short[0]:,} of the "
             f"{short[1]:,} bytes a {w}x{h} image needs)")
    f.seek(0)
    if ihdr[2] == 16 and ihdr[3] in (2, 4, 6):
        if ihdr[4] == 0:  # not interlaced: decode ourselves at full precision
            try:
                return decode_png(f.read())
            except PngError as e:
                fail(str(e), e)
            except DECODE_ERRORS as e:
                fail(describe_error(e), e)
        rep.warn(f"{name} is an interlaced 16-bit PNG; reading it at 8 bits per channel")
    return None


def read_image(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    reporter: Reporter | None = None,
) -> Image:
    """Read an image file into an :class:`Image` (see the module docstring).

    ``max_pixels`` (None or 0: no limit) is checked against the header before any
    pixel is decoded. Animated files give their first frame and a warning.
    Raises :class:`ImageError` with a one-line message naming the file.
    """
    rep = reporter or NULL
    p = Path(path)
    name = str(p)

    def fail(problem: str, exc: BaseException | None = None) -> NoReturn:
        raise ImageError(f"cannot read image {name!r}: {problem}") from exc

    f = _open_checked(p, fail)
    with f:
        head = f.read(64)
        f.seek(0)
        try:
            im = open_pil(f)
        except UnidentifiedImageError as e:
            fail("not an image file, or not a format srdistill reads (PNG, JPEG, WebP, BMP, TIFF, GIF)", e)
        except DECODE_ERRORS as e:
            fail(describe_error(e), e)
        with im:
            w, h = im.size
            check_pixels(name, w, h, max_pixels)
            fmt = im.format or ""
            try:  # counting frames reads past the first one: a damaged later frame raises here
                frames = int(getattr(im, "n_frames", 1) or 1)
            except DECODE_ERRORS:
                try:
                    im.seek(0)
                except DECODE_ERRORS as e:
                    fail(describe_error(e), e)
                frames = 1
                rep.warn(f"{name}: frames after the first are damaged; using the first one only")
            if frames > 1 and fmt != "MPO":  # MPO: camera JPEGs with an embedded preview
                kind = "pages" if fmt == "TIFF" else "frames"
                rep.warn(f"{name} has {frames} {kind}; using the first one only")

            png16 = _png_checks(f, head, fmt, w, h, name, fail, rep)
            if png16 is not None:
                return image_from_png16(png16, p, rep)
            try:
                im.load()
            except DECODE_ERRORS as e:
                fail(describe_error(e), e)
            try:
                return image_from_pil(im, p, rep)
            except (OSError, MemoryError, PILImage.DecompressionBombError) as e:
                fail(describe_error(e), e)
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- writing

#: zlib level of the PNGs srdistill writes (``upscale --png-level``), chosen by bench/png_level.py's rule
#: (smallest files among the levels within 1.5x level 1's encode time); provisional: measured on a
#: loaded machine, re-measure on a quiet one (bench/results/png_level.json).
DEFAULT_PNG_LEVEL = 3


def output_format(path: str | os.PathLike) -> str:
    """Pillow format name for an output path's extension; UsageError for others (check early)."""
    ext = Path(path).suffix.lower()
    try:
        return WRITE_FORMATS[ext]
    except KeyError:
        raise UsageError(
            f"cannot write {str(path)!r}: unknown image extension {ext or '(none)'!r}",
            hint="use .png, .jpg, .webp, .bmp or .tif",
        ) from None


def _quantize(a: np.ndarray, bits: int) -> np.ndarray:
    """Pixels for a file: 8 bits through the one quantiser (image_type.quantize_u8), or 16 bits; NaN -> 0."""
    a = np.nan_to_num(a, nan=0.0)
    if bits != 16:
        return quantize_u8(a)
    return np.rint(np.clip(a, 0.0, 1.0) * 65535.0).astype(np.uint16)


def _encode_plan(image: Image, fmt: str, p: Path, quality: int, rep: Reporter, png_level: int = 6):
    """How ``image`` is encoded in ``fmt``: our 16-bit PNG writer or Pillow, and the options."""
    gray = image.rgb.shape[2] == 1
    alpha = image.alpha
    if alpha is not None and fmt in ("JPEG", "BMP"):
        rep.warn(f"{p}: {fmt} has no alpha channel; transparency dropped")
        alpha = None
    icc = image.icc_profile if fmt in ("PNG", "JPEG", "WEBP", "TIFF") else None
    exif = image.exif if fmt in ("PNG", "JPEG", "WEBP") else None
    if exif and fmt == "JPEG" and len(exif) > 65533:
        rep.warn(f"{p}: EXIF block too large for JPEG ({len(exif)} bytes); not copied")
        exif = None

    sixteen = image.bit_depth == 16
    own_png = sixteen and fmt == "PNG" and (not gray or alpha is not None)
    pil_im: PILImage.Image | None = None
    planes = [image.rgb] if alpha is None else [image.rgb, alpha]
    if own_png:
        pixels = _quantize(np.concatenate(planes, axis=2), 16)
    elif sixteen and gray and alpha is None and fmt in ("PNG", "TIFF"):
        pil_im = PILImage.fromarray(_quantize(image.rgb[:, :, 0], 16))  # mode I;16
    else:
        if sixteen:
            rep.info(f"{p}: {fmt} is written with 8 bits per channel (the source has 16)")
        q = _quantize(np.concatenate(planes, axis=2), 8)
        if q.shape[2] == 1:
            q = q[:, :, 0]  # L
        pil_im = PILImage.fromarray(np.ascontiguousarray(q))  # L, LA, RGB or RGBA

    kwargs: dict[str, Any] = {}
    if icc:
        kwargs["icc_profile"] = icc
    if exif:
        kwargs["exif"] = exif
    if fmt == "JPEG":
        kwargs.update(quality=int(quality), subsampling=0 if quality >= 90 else 2)
    elif fmt == "WEBP":
        kwargs.update(quality=int(quality), lossless=quality >= 100)
    elif fmt == "PNG":
        kwargs.update(compress_level=int(png_level))
    elif fmt == "TIFF":
        kwargs.update(compression="tiff_deflate")

    return own_png, (pixels if own_png else None), pil_im, kwargs, icc, exif


def write_image(
    path: str | os.PathLike,
    image: Image,
    *,
    overwrite: bool = False,
    quality: int = 95,
    png_level: int = DEFAULT_PNG_LEVEL,
    reporter: Reporter | None = None,
) -> Path:
    """Write ``image`` in the format its extension names, atomically and never clobbering.

    16-bit sources stay 16-bit in PNG (and grayscale TIFF). Alpha is kept where the
    format has it (PNG, WebP, TIFF); JPEG and BMP get the colour only, with a warning.
    ICC profile and EXIF are carried over where the format supports them. ``png_level`` is
    zlib's compression level for PNG (0: none, 1: fastest, 9: smallest); the pixels are the same.
    """
    rep = reporter or NULL
    fmt = output_format(path)
    p = Path(path)
    if isinstance(png_level, bool) or not 0 <= int(png_level) <= 9:
        raise UsageError(f"PNG compression level must be 0..9, got {png_level!r}")
    own_png, pixels, pil_im, kwargs, icc, exif = _encode_plan(image, fmt, p, quality, rep, png_level)
    with atomic_path(p, overwrite=overwrite) as tmp:
        try:
            with open(tmp, "wb") as f:
                if own_png:
                    write_png(f, pixels, icc=icc, exif=exif, compress_level=int(png_level))
                else:
                    assert pil_im is not None
                    # encode in memory, then write with Python's file I/O: given a descriptor, Pillow's C
                    # encoders (JPEG, BMP, ...) ignore a short write -- a full disk would leave a
                    # truncated file that we then report as written
                    enc = io.BytesIO()
                    pil_im.save(enc, format=fmt, **kwargs)
                    f.write(enc.getbuffer())
                f.flush()
                os.fsync(f.fileno())
        except SrDistillError:
            raise
        except OSError as e:
            if e.errno is not None:  # a real I/O error: atomic_path words it (disk full, ...)
                raise
            raise ImageError(f"cannot write image {str(p)!r}: {' '.join(str(e).split())}") from e
        except (ValueError, TypeError, KeyError, struct.error, zlib.error, MemoryError) as e:
            raise ImageError(f"cannot write image {str(p)!r}: {' '.join(str(e).split()) or type(e).__name__}") from e
    return p


