"""The in-memory image every command works on, and the reader's/writer's constants."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image as PILImage

if TYPE_CHECKING:  # pragma: no cover
    import torch


def quantize_u8(x):
    """The one float -> uint8 quantiser: clamp to [0, 1], times 255, round half to even.
    A torch tensor or a numpy array in, the same kind and layout out (dtype uint8)."""
    torch = sys.modules.get("torch")  # a tensor exists only once torch is loaded; image I/O never imports it
    if torch is not None and isinstance(x, torch.Tensor):
        return torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return np.rint(np.clip(np.asarray(x), 0.0, 1.0) * 255.0).astype(np.uint8)


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
READ_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "TIFF", "GIF", "PPM", "TGA", "AVIF", "QOI")

ORIENTATION_TAG = 0x0112
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's convert("L")


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
        import torch  # lazy: data.images is on the torch-free start-up path (`info x.onnx`, --help)

        a = self.rgb
        if a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))[None]
        return t if device is None else t.to(device)

    def alpha_tensor(self, device: Any = None) -> "torch.Tensor | None":
        """(1, 1, H, W) float32 alpha, or None."""
        if self.alpha is None:
            return None
        import torch  # lazy: data.images is on the torch-free start-up path (`info x.onnx`, --help)

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
        arr = to_hwc(pixels)
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
            arr = np.clip(arr @ LUMA, 0.0, 1.0)[:, :, None].astype(np.float32)
        elif not self.grayscale and arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        h, w = arr.shape[:2]
        a: np.ndarray | None
        if alpha is not None:
            a = to_hwc(alpha)
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


def to_hwc(x: Any) -> np.ndarray:
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


