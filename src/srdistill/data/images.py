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

Pillow reads and writes 16-bit RGB(A) PNGs at 8 bits per channel only, so this
module carries a small PNG codec (zlib + the five PNG row filters) for 16-bit
colour and gray+alpha PNGs.
"""

from __future__ import annotations

import glob as _glob
import io
import os
import stat
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, NoReturn

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from ..errors import ImageError, SrDistillError, UsageError
from ..fileio import atomic_path
from ..progress import NULL, Reporter

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "WRITE_FORMATS",
    "Image",
    "list_images",
    "output_format",
    "read_image",
    "write_image",
]

#: Extensions ``list_images`` picks up from folders and glob patterns (lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")

#: Output extension -> Pillow format name.
WRITE_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}

#: Same default as Pillow's own decompression-bomb limit (about 179 MP).
DEFAULT_MAX_PIXELS = 178_956_970

# Formats we let Pillow try. Leaving out the rest (EPS runs Ghostscript, ...) keeps
# the attack surface of "open whatever the user points at" small.
# (JPEG also opens MPO; names this Pillow lacks are dropped on first use.)
_READ_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "TIFF", "GIF", "PPM", "TGA", "AVIF", "QOI")
_read_formats: tuple[str, ...] | None = None

_ORIENTATION_TAG = 0x0112
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's convert("L")


# --------------------------------------------------------------------------- Image


@dataclass
class Image:
    """Pixels as float32 in [0, 1] plus what is needed to write them back in kind.

    ``rgb`` is H×W×3 for colour or H×W×1 for grayscale; ``alpha`` is H×W×1 or None.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    bit_depth: int = 8
    grayscale: bool = False
    icc_profile: bytes | None = None
    exif: bytes | None = None
    source_mode: str = "RGB"
    path: Path | None = None

    def __post_init__(self) -> None:
        rgb = np.asarray(self.rgb)
        if rgb.ndim == 2:
            rgb = rgb[:, :, None]
        if rgb.ndim != 3 or rgb.shape[2] not in (1, 3):
            raise ValueError(f"Image.rgb must be H×W×3 or H×W×1, got shape {rgb.shape}")
        self.rgb = rgb
        self.grayscale = rgb.shape[2] == 1
        if self.alpha is not None:
            a = np.asarray(self.alpha)
            if a.ndim == 2:
                a = a[:, :, None]
            if a.shape != (rgb.shape[0], rgb.shape[1], 1):
                raise ValueError(f"Image.alpha must be {rgb.shape[0]}×{rgb.shape[1]}×1, got {a.shape}")
            self.alpha = a

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def has_alpha(self) -> bool:
        return self.alpha is not None

    def to_tensor(self, device: Any = None) -> "torch.Tensor":
        """(1, 3, H, W) float32; grayscale is replicated to 3 channels (what SR models expect)."""
        import torch

        a = self.rgb
        if a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))[None]
        return t if device is None else t.to(device)

    def alpha_tensor(self, device: Any = None) -> "torch.Tensor | None":
        """(1, 1, H, W) float32 alpha, or None."""
        if self.alpha is None:
            return None
        import torch

        t = torch.from_numpy(np.ascontiguousarray(self.alpha.transpose(2, 0, 1), dtype=np.float32))[None]
        return t if device is None else t.to(device)

    def with_pixels(self, pixels: Any, alpha: Any = None) -> "Image":
        """A new image with these pixels and this image's mode information.

        ``pixels`` is a numpy H×W×C array (float in [0,1], or uint8/uint16) or a torch
        tensor (1,C,H,W) / (C,H,W); C may be 1, 3 or 4 (4: the last channel is alpha).
        Grayscale sources stay grayscale (3 channels are reduced with BT.601 luma).
        Without ``alpha``, this image's alpha is kept, resized (bicubic) when the size
        changed, so an upscaled RGBA image stays RGBA.
        """
        arr = _to_hwc(pixels)
        if arr.shape[2] == 4:
            if alpha is None:
                alpha = arr[:, :, 3:]
            arr = arr[:, :, :3]
        elif arr.shape[2] == 2:
            if alpha is None:
                alpha = arr[:, :, 1:]
            arr = arr[:, :, :1]
        if arr.shape[2] not in (1, 3):
            raise ValueError(f"with_pixels: expected 1, 3 or 4 channels, got {arr.shape[2]}")
        if self.grayscale and arr.shape[2] == 3:
            arr = np.clip(arr @ _LUMA, 0.0, 1.0)[:, :, None].astype(np.float32)
        elif not self.grayscale and arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        h, w = arr.shape[:2]
        a: np.ndarray | None
        if alpha is not None:
            a = _to_hwc(alpha)
            if a.shape[2] != 1:
                a = a.mean(axis=2, keepdims=True)
            if a.shape[:2] != (h, w):
                a = _resize_plane(a, h, w)
        elif self.alpha is not None:
            a = self.alpha if self.alpha.shape[:2] == (h, w) else _resize_plane(self.alpha, h, w)
        else:
            a = None
        return Image(
            rgb=np.ascontiguousarray(arr, dtype=np.float32),
            alpha=None if a is None else np.ascontiguousarray(a, dtype=np.float32),
            bit_depth=self.bit_depth,
            grayscale=self.grayscale,
            icc_profile=self.icc_profile,
            exif=self.exif,
            source_mode=self.source_mode,
            path=None,
        )


def _to_hwc(x: Any) -> np.ndarray:
    """numpy/torch pixels -> H×W×C float32 in [0, 1] (NaN -> 0)."""
    if hasattr(x, "detach") and hasattr(x, "permute"):  # torch.Tensor, without importing torch
        t = x.detach()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ValueError(f"expected a single image (batch 1), got shape {tuple(t.shape)}")
            t = t[0]
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        elif t.ndim == 2:
            t = t[:, :, None]
        else:
            raise ValueError(f"cannot use a tensor of shape {tuple(x.shape)} as image pixels")
        a = t.float().cpu().numpy()
    else:
        a = np.asarray(x)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3:
            raise ValueError(f"cannot use an array of shape {a.shape} as image pixels")
        if a.dtype == np.uint8:
            a = a.astype(np.float32) / 255.0
        elif a.dtype == np.uint16:
            a = a.astype(np.float32) / 65535.0
        elif a.dtype == np.bool_:
            a = a.astype(np.float32)
    a = np.nan_to_num(a.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(a, 0.0, 1.0)


def _resize_plane(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bicubic resize of an H×W×1 float plane (used to follow alpha through an upscale)."""
    im = PILImage.fromarray(np.ascontiguousarray(a[:, :, 0], dtype=np.float32))  # mode F
    out = np.asarray(im.resize((w, h), PILImage.Resampling.BICUBIC), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)[:, :, None]


# --------------------------------------------------------------------------- reading


_PIL_LIMIT_LOCK = threading.Lock()


def _open_pil(f: BinaryIO) -> PILImage.Image:
    """``PIL.Image.open`` (lazy: reads the header only) with Pillow's own bomb check off.

    We compare the header size with ``max_pixels`` ourselves, so that the limit is the
    caller's (``--max-pixels``) and Pillow neither warns on stderr nor refuses first
    with a message that lacks the dimensions. The global is swapped back at once.
    """
    global _read_formats
    with _PIL_LIMIT_LOCK:
        if _read_formats is None:
            PILImage.init()
            _read_formats = tuple(f for f in _READ_FORMATS if f in PILImage.OPEN)
        saved = PILImage.MAX_IMAGE_PIXELS
        PILImage.MAX_IMAGE_PIXELS = None
        try:
            return PILImage.open(f, formats=_read_formats)
        finally:
            PILImage.MAX_IMAGE_PIXELS = saved


def _fmt_mp(n: float) -> str:
    mp = n / 1e6
    return f"{mp:.0f}" if mp >= 10 else f"{mp:.3g}"


def _check_pixels(name: str, w: int, h: int, max_pixels: int | None) -> None:
    if w <= 0 or h <= 0:
        raise ImageError(f"cannot read image {name!r}: it has zero size ({w}x{h})")
    if max_pixels and w * h > max_pixels:
        raise ImageError(
            f"{name!r} is {w}x{h} = {_fmt_mp(w * h)} MP, over the {_fmt_mp(max_pixels)} MP limit; "
            "raise it with --max-pixels"
        )


def _describe(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    low = msg.lower()
    if isinstance(e, EOFError) or "truncated" in low or "premature end" in low:
        return f"the file is truncated or corrupt ({msg or 'unexpected end of file'})"
    if isinstance(e, MemoryError):
        return "not enough memory to decode it"
    return f"the file is corrupt or not a supported image ({msg or type(e).__name__})"


_DECODE_ERRORS: tuple[type[BaseException], ...] = (
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

    try:
        st = p.stat()
    except FileNotFoundError as e:
        fail("no such file", e)
    except PermissionError as e:
        fail("permission denied", e)
    except OSError as e:
        fail(e.strerror or str(e), e)
    if stat.S_ISDIR(st.st_mode):
        fail("it is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        fail("not a regular file")
    if st.st_size == 0:
        fail("the file is empty (0 bytes)")
    try:
        f = open(p, "rb")
    except PermissionError as e:
        fail("permission denied", e)
    except OSError as e:
        fail(e.strerror or str(e), e)

    with f:
        head = f.read(64)
        f.seek(0)
        try:
            im = _open_pil(f)
        except UnidentifiedImageError as e:
            fail("not an image file, or not a format srdistill reads (PNG, JPEG, WebP, BMP, TIFF, GIF)", e)
        except _DECODE_ERRORS as e:
            fail(_describe(e), e)
        with im:
            w, h = im.size
            _check_pixels(name, w, h, max_pixels)
            fmt = im.format or ""
            try:  # counting frames reads past the first one: a damaged later frame raises here
                frames = int(getattr(im, "n_frames", 1) or 1)
            except _DECODE_ERRORS:
                try:
                    im.seek(0)
                except _DECODE_ERRORS as e:
                    fail(_describe(e), e)
                frames = 1
                rep.warn(f"{name}: frames after the first are damaged; using the first one only")
            if frames > 1 and fmt != "MPO":  # MPO: camera JPEGs with an embedded preview
                kind = "pages" if fmt == "TIFF" else "frames"
                rep.warn(f"{name} has {frames} {kind}; using the first one only")

            ihdr = _png_ihdr(head) if fmt == "PNG" else None
            if ihdr is not None:
                # Pillow fills rows missing from a complete-but-short data stream with black, silently:
                # a corrupt file would pass as an image, and a few hundred bytes could claim 100+ MP
                try:
                    short = _png_data_shortfall(f, ihdr)
                except (zlib.error, struct.error, OSError) as e:
                    fail(f"the file is corrupt (bad compressed image data: {' '.join(str(e).split())})", e)
                if short is not None:
                    fail(f"the file is truncated or corrupt (its image data holds {short[0]:,} of the "
                         f"{short[1]:,} bytes a {w}x{h} image needs)")
                f.seek(0)
            if ihdr is not None and ihdr[2] == 16 and ihdr[3] in (2, 4, 6):
                if ihdr[4] == 0:  # not interlaced: decode ourselves at full precision
                    f.seek(0)
                    try:
                        data = f.read()
                        png = _decode_png(data)
                    except _PngError as e:
                        fail(str(e), e)
                    except _DECODE_ERRORS as e:
                        fail(_describe(e), e)
                    return _image_from_png16(png, p, rep)
                rep.warn(f"{name} is an interlaced 16-bit PNG; reading it at 8 bits per channel")

            try:
                im.load()
            except _DECODE_ERRORS as e:
                fail(_describe(e), e)
            try:
                return _image_from_pil(im, p, rep)
            except (OSError, MemoryError, PILImage.DecompressionBombError) as e:
                fail(_describe(e), e)
    raise AssertionError("unreachable")  # pragma: no cover


def _image_from_pil(im: PILImage.Image, path: Path, rep: Reporter) -> Image:
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
        orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        rep.warn(f"{path}: unreadable EXIF data ignored")
        exif = None
    if isinstance(exif, PILImage.Exif):  # pragma: no cover - defensive
        exif = exif.tobytes()
    return _finish(arr, alpha, orientation, bit_depth, icc, exif, mode, path)


def _cmyk_to_srgb(im: PILImage.Image, icc: bytes) -> PILImage.Image | None:
    try:
        from PIL import ImageCms

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
            if tag == _ORIENTATION_TAG:
                if typ == 3 and count == 1:
                    b = bytearray(data)
                    b[off + 8 : off + 10] = struct.pack(e + "H", 1)
                    return prefix + bytes(b)
                return raw
    except struct.error:
        return raw
    return raw


def _image_from_png16(png: "_Png", path: Path, rep: Reporter) -> Image:
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
            orientation = int(ex.get(_ORIENTATION_TAG, 1) or 1)
        except Exception:
            rep.warn(f"{path}: unreadable EXIF data ignored")
    mode = {1: "I;16", 2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[png.pixels.shape[2]]
    return _finish(px, alpha, orientation, 16, png.icc, png.exif, mode, path)


# --------------------------------------------------------------------------- PNG codec

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
_PNG_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # samples per pixel -> colour type


class _PngError(ValueError):
    pass


@dataclass
class _Png:
    pixels: np.ndarray  # H×W×C uint16 (or uint8 for 8-bit files)
    icc: bytes | None = None
    exif: bytes | None = None
    trns: bytes | None = None


def _png_ihdr(head: bytes) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit depth, colour type, interlace) from a PNG's first bytes."""
    if len(head) < 29 or not head.startswith(_PNG_SIG) or head[12:16] != b"IHDR":
        return None
    w, h, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return w, h, depth, ctype, interlace


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel (palette: 1 index)
_DEFLATE_MAX_RATIO = 1100  # deflate cannot expand more than ~1032:1


def _png_data_shortfall(f: BinaryIO, ihdr: tuple[int, int, int, int, int]) -> tuple[int, int] | None:
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


def _decode_png(data: bytes) -> _Png:
    """Decode a non-interlaced, non-palette PNG of bit depth 8 or 16 (colour types 0, 2, 4, 6)."""
    if not data.startswith(_PNG_SIG):
        raise _PngError("not a PNG file")
    pos, n = 8, len(data)
    ihdr = None
    idat: list[bytes] = []
    icc = exif = trns = None
    while pos < n:
        if pos + 8 > n:
            raise _PngError("the file is truncated (cut inside a chunk header)")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > n:
            name = ctype.decode("latin-1", "replace")
            raise _PngError(f"the file is truncated (cut inside the {name} chunk)")
        body = data[pos + 8 : end]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != crc:
            name = ctype.decode("latin-1", "replace")
            raise _PngError(f"the file is corrupt (checksum mismatch in the {name} chunk)")
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
        raise _PngError("the file is corrupt (no IHDR chunk)")
    w, h, depth, ct, comp, filt, interlace = ihdr
    if depth not in (8, 16) or ct not in _PNG_CHANNELS or comp != 0 or filt != 0 or interlace != 0:
        raise _PngError(f"unsupported PNG layout (bit depth {depth}, colour type {ct}, interlace {interlace})")
    if not idat:
        raise _PngError("the file is truncated (no image data)")
    c = _PNG_CHANNELS[ct]
    bpp = c * depth // 8
    stride = w * bpp
    expected = h * (stride + 1)
    d = zlib.decompressobj()
    try:
        raw = d.decompress(b"".join(idat), expected)
    except zlib.error as e:
        raise _PngError(f"the file is corrupt (bad compressed data: {e})") from e
    if len(raw) < expected:
        raise _PngError("the file is truncated (image data ends early)")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, stride + 1)
    recon = _unfilter(rows[:, 0].copy(), rows[:, 1:].reshape(h, w, bpp))
    dt = np.dtype(">u2") if depth == 16 else np.dtype(np.uint8)
    px = recon.reshape(h, stride).view(dt).reshape(h, w, c)
    return _Png(pixels=px.astype(np.uint16 if depth == 16 else np.uint8), icc=icc, exif=exif, trns=trns)


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
        raise _PngError(f"the file is corrupt (unknown row filter {int(ft.max())})")
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


def _write_png(
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


# --------------------------------------------------------------------------- writing


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
    top = 65535.0 if bits == 16 else 255.0
    q = np.rint(np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0) * top)
    return q.astype(np.uint16 if bits == 16 else np.uint8)


def write_image(
    path: str | os.PathLike,
    image: Image,
    *,
    overwrite: bool = False,
    quality: int = 95,
    reporter: Reporter | None = None,
) -> Path:
    """Write ``image`` in the format its extension names, atomically and never clobbering.

    16-bit sources stay 16-bit in PNG (and grayscale TIFF). Alpha is kept where the
    format has it (PNG, WebP, TIFF); JPEG and BMP get the colour only, with a warning.
    ICC profile and EXIF are carried over where the format supports them.
    """
    rep = reporter or NULL
    fmt = output_format(path)
    p = Path(path)
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
        kwargs.update(compress_level=6)
    elif fmt == "TIFF":
        kwargs.update(compression="tiff_deflate")

    with atomic_path(p, overwrite=overwrite) as tmp:
        try:
            with open(tmp, "wb") as f:
                if own_png:
                    _write_png(f, pixels, icc=icc, exif=exif)
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


# --------------------------------------------------------------------------- listing


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def scan_folder(folder: Path, recursive: bool) -> list[Path]:
    """Image files (``IMAGE_EXTENSIONS``, hidden files and folders skipped) in ``folder``, unsorted."""
    found: list[Path] = []
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found.extend(Path(root) / n for n in files if _is_image_name(Path(n)))
    else:
        try:
            entries = list(folder.iterdir())
        except OSError as e:
            raise UsageError(f"cannot list folder {str(folder)!r}: {e.strerror or e}") from e
        found.extend(e for e in entries if _is_image_name(e) and e.is_file())
    return [p for p in found if p.is_file()]


def list_images(inputs: Iterable[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Expand files, folders (``recursive``: subfolders too) and glob patterns into a
    sorted, de-duplicated list of image files. Files named explicitly are kept whatever
    their extension; folders and patterns contribute files with ``IMAGE_EXTENSIONS``
    (hidden files skipped). An input that yields nothing is a :class:`UsageError`.
    """
    found: dict[str, Path] = {}
    for inp in inputs:
        s = os.fspath(inp)
        p = Path(s)
        if p.is_dir():
            matches = scan_folder(p, recursive)
            if not matches:
                hint = None if recursive else "pass --recursive to look in subfolders"
                raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {s!r}", hint=hint)
        elif p.is_file():
            matches = [p]
        elif _glob.has_magic(s):
            matches = []
            for m in _glob.glob(s, recursive=recursive):
                mp = Path(m)
                if mp.is_dir():
                    matches.extend(scan_folder(mp, recursive))
                elif mp.is_file() and _is_image_name(mp):
                    matches.append(mp)
            if not matches:
                raise UsageError(f"pattern {s!r} matches no images")
        elif p.exists():
            raise UsageError(f"{s!r} is not a file or folder")
        else:
            raise UsageError(f"{s!r}: no such file or folder")
        for m in matches:
            found.setdefault(os.path.normcase(os.path.abspath(m)), m)
    return sorted(found.values(), key=lambda q: str(q))
