"""Training and evaluation data: HR folders, DIV2K-style pairs, LR-only folders, patches.

Every training image is kept in memory as uint8 tensors: its LR image (made once,
with the MATLAB-compatible downscale that ``eval`` uses, then rounded to uint8
as SR papers do), its HR image when there is one, and -- with the teacher cache
-- the teacher's SR output. A training step then only crops and augments.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..assets import TRAIN_IMAGES, VAL_IMAGES
from ..errors import ImageError, SrDistillError, UsageError
from ..fileio import atomic_path
from ..progress import NULL, Reporter
from ..metrics import quantize_u8
from ..runner import augment, run_sr, unaugment  # noqa: F401  (augment: re-exported)
from .images import read_image, scan_folder
from .resize import downscale_for_sr, mod_crop

_LR_DIR = re.compile(r"^(x\d+|lr_bicubic|lr_unknown|lr)$", re.IGNORECASE)


def builtin_train_dir() -> Path:
    return TRAIN_IMAGES


def builtin_val_dir() -> Path:
    return VAL_IMAGES


def to_uint8_chw(rgb: np.ndarray, channels: int = 3) -> torch.Tensor:
    """H x W x C float [0, 1] (C = 1 or 3) -> C x H x W uint8 with the requested channel count."""
    arr = np.asarray(rgb, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1 and channels == 3:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] >= 3 and channels == 1:
        arr = (arr[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    elif arr.shape[2] > channels:
        arr = arr[..., :channels]
    u8 = quantize_u8(arr)
    return torch.from_numpy(np.ascontiguousarray(u8.transpose(2, 0, 1)))


def make_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """uint8 C x H x W HR -> uint8 LR (MATLAB bicubic, rounded); HR must already be mod-cropped."""
    lr = downscale_for_sr(hr.unsqueeze(0), scale)[0]
    return quantize_u8(lr)


def find_lr_dir(hr_dir: Path, scale: int) -> Path | None:
    """The LR folder of a paired (DIV2K / benchmark) layout next to ``hr_dir``, if any."""
    x = f"X{scale}"
    cands = [hr_dir / x, hr_dir / x.lower(), hr_dir.parent / "LR_bicubic" / x,
             hr_dir.parent / hr_dir.name.replace("HR", "LR_bicubic") / x]
    for c in cands:
        if c != hr_dir and c.is_dir():
            return c
    return None


def lr_partner(lr_dir: Path, hr_path: Path, scale: int) -> Path | None:
    for name in (f"{hr_path.stem}x{scale}", hr_path.stem):
        for ext in (hr_path.suffix, ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"):
            p = lr_dir / f"{name}{ext}"
            if p.is_file():
                return p
    return None


def _list(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (sorted), leaving out the LR half of a paired layout."""
    if not folder.exists():
        raise UsageError(f"data folder {str(folder)!r} does not exist")
    if folder.is_file():
        return [folder]
    return sorted(p for p in scan_folder(folder, recursive)
                  if not any(_LR_DIR.match(part) for part in p.relative_to(folder).parts[:-1]))


@dataclass
class TrainImage:
    name: str
    lr: torch.Tensor  # uint8 C x h x w
    hr: torch.Tensor | None  # uint8 C x h*s x w*s
    target: torch.Tensor | None = None  # teacher output (uint8), filled by the cache


@dataclass
class DataStats:
    found: int = 0
    used: int = 0
    paired: int = 0
    skipped_small: int = 0
    skipped_unreadable: int = 0
    converted: int = 0
    lr_only: bool = False
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def list_train_entries(folders: list[str | Path] | None, scale: int, *, lr_only: bool = False,
                       max_images: int | None = None, stats: DataStats | None = None) -> list[tuple[Path, Path | None]]:
    """(image, paired LR or None) for every training file, in the order training uses them."""
    folders = folders or [builtin_train_dir()]
    entries: list[tuple[Path, Path | None]] = []
    for f in folders:
        folder = Path(f)
        files = _list(folder)
        lr_dir = None if lr_only or folder.is_file() else find_lr_dir(folder, scale)
        if stats is not None:
            stats.sources.append(str(folder) + (f" (paired with {lr_dir})" if lr_dir else ""))
        for p in files:
            entries.append((p, lr_partner(lr_dir, p, scale) if lr_dir else None))
    if max_images:
        entries = entries[:max_images]
    if not entries:
        raise UsageError(f"no images found in {', '.join(str(f) for f in folders)}",
                         hint="expected png/jpg/webp/bmp/tiff files")
    return entries


def load_train_image(path: Path, lr_path: Path | None, scale: int, patch_size: int, *, channels: int = 3,
                     lr_only: bool = False, stats: DataStats | None = None) -> TrainImage | None:
    """One training image (LR made with the MATLAB downscale unless paired); None if smaller than a
    patch. An unreadable file raises SrDistillError."""
    img = read_image(path)
    if stats is not None and (img.grayscale or img.bit_depth != 8 or img.alpha is not None):
        stats.converted += 1
    t = to_uint8_chw(img.rgb, channels)
    if lr_only:
        lr, hr = t, None
    elif lr_path is not None:
        lr = to_uint8_chw(read_image(lr_path).rgb, channels)
        hr = t[:, : lr.shape[1] * scale, : lr.shape[2] * scale]
        if hr.shape[1] != lr.shape[1] * scale or hr.shape[2] != lr.shape[2] * scale:
            raise ImageError(f"{lr_path.name} is not 1/{scale} the size of {path.name}")
        if stats is not None:
            stats.paired += 1
    else:
        hr = mod_crop(t, scale)
        if hr.shape[1] < scale * patch_size or hr.shape[2] < scale * patch_size:
            return None
        lr = make_lr(hr, scale)
    if lr.shape[1] < patch_size or lr.shape[2] < patch_size:
        return None
    return TrainImage(path.name, lr.contiguous(), None if hr is None else hr.contiguous())


def warn_small(reporter: Reporter, small: list[str], patch_size: int, scale: int, lr_only: bool) -> None:
    if small:
        reporter.warn(f"skipped {len(small)} image(s) smaller than one patch "
                      f"({patch_size * (1 if lr_only else scale)} px): {', '.join(small[:5])}"
                      + (" ..." if len(small) > 5 else ""))


def load_train_images(folders: list[str | Path] | None, scale: int, patch_size: int, *, channels: int = 3,
                      lr_only: bool = False, reporter: Reporter = NULL,
                      max_images: int | None = None) -> tuple[list[TrainImage], DataStats]:
    """Read every usable image; unreadable or too-small ones are skipped with a warning and counted."""
    stats = DataStats(lr_only=lr_only)
    entries = list_train_entries(folders, scale, lr_only=lr_only, max_images=max_images, stats=stats)
    stats.found = len(entries)
    images: list[TrainImage] = []
    small: list[str] = []
    with reporter.task("reading images", total=len(entries)) as task:
        for path, lr_path in entries:
            task.advance(1)
            try:
                im = load_train_image(path, lr_path, scale, patch_size, channels=channels, lr_only=lr_only,
                                      stats=stats)
            except SrDistillError as e:
                reporter.warn(f"skipping {path.name}: {e}")
                stats.skipped_unreadable += 1
                continue
            if im is None:
                small.append(path.name)
                continue
            images.append(im)
    stats.skipped_small = len(small)
    warn_small(reporter, small, patch_size, scale, lr_only)
    stats.used = len(images)
    if not images:
        raise UsageError("no usable training images: all were unreadable or smaller than one patch",
                         hint="lower --patch-size or add larger images")
    return images, stats


def teacher_output(teacher_fn: Callable[[torch.Tensor], torch.Tensor], lr: torch.Tensor, scale: int, *,
                   device: torch.device, tile: int | None = 256, overlap: int = 16) -> torch.Tensor:
    """The teacher's output on one whole uint8 LR image (tiled through :class:`srdistill.runner.Runner`,
    which meets the teacher's size requirements), as uint8 (within 0.5/255)."""
    return quantize_u8(run_sr(teacher_fn, lr, scale, device=device, tile=tile, overlap=overlap)[0]).contiguous()


def fill_teacher_cache(images: list[TrainImage], teacher_fn: Callable[[torch.Tensor], torch.Tensor], scale: int,
                       *, device: torch.device, tile: int | None = 256, overlap: int = 16,
                       reporter: Reporter = NULL, cache_dir: str | Path | None = None,
                       teacher_key: str = "") -> dict:
    """Run the teacher once per whole LR image (tiled) and keep its output as uint8.

    With ``cache_dir``, outputs are also stored there as ``.npy`` files keyed by the
    teacher (``teacher_key``, e.g. its sha256) and the exact LR pixels, and reused by
    later runs. Returns counts and the quantisation error bound of the targets (0.5/255).
    """
    folder = Path(cache_dir) if cache_dir else None
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot use teacher cache folder {str(folder)!r}: {e.strerror or e}") from None
    hits = 0
    with reporter.task("teacher cache", total=len(images)) as task:
        for img in images:
            path = None
            if folder is not None:
                h = hashlib.sha256(f"{teacher_key}|x{scale}|{tuple(img.lr.shape)}|".encode())
                h.update(img.lr.numpy().tobytes())
                path = folder / f"{h.hexdigest()[:40]}.npy"
                if path.exists():
                    try:
                        arr = np.load(path, allow_pickle=False)
                        if arr.dtype == np.uint8 and arr.shape == (img.lr.shape[0], img.lr.shape[1] * scale,
                                                                    img.lr.shape[2] * scale):
                            img.target = torch.from_numpy(arr)
                            hits += 1
                            task.advance(1)
                            continue
                    except (OSError, ValueError):
                        pass  # unreadable entry: recompute and replace it
            img.target = teacher_output(teacher_fn, img.lr, scale, device=device, tile=tile, overlap=overlap)
            if path is not None:
                with atomic_path(path, overwrite=True) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, img.target.numpy(), allow_pickle=False)
            task.advance(1)
    return {"computed": len(images) - hits, "reused": hits, "max_quantization_error": 0.5 / 255.0}


@dataclass
class Batch:
    lr: torch.Tensor
    hr: torch.Tensor | None
    target: torch.Tensor | None


class PatchSampler:
    """Random LR patches with the matching HR/teacher patches, flipped/rotated alike.

    The global batch is drawn from one generator (so every rank of a distributed
    run draws the same plan) and each rank materialises only its slice.
    """

    def __init__(self, images: list[TrainImage], scale: int, patch_size: int, *, augment: bool = True,
                 weights: list[float] | None = None):
        self.images = images
        self.scale = scale
        self.p = patch_size
        self.augment = augment
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.float64)

    def plan(self, batch_size: int, gen: torch.Generator) -> list[tuple[int, int, int, int]]:
        n = len(self.images)
        if self.weights is None:  # every image alike
            idx = torch.randint(n, (batch_size,), generator=gen).tolist()
        else:
            idx = torch.multinomial(self.weights, batch_size, replacement=True, generator=gen).tolist()
        u = torch.rand(batch_size, 2, generator=gen, dtype=torch.float64).tolist()
        aug = torch.randint(8, (batch_size,), generator=gen).tolist()
        out = []
        for i, (uy, ux), a in zip(idx, u, aug):
            img = self.images[i]
            h, w = img.lr.shape[1:]
            y = min(int(uy * (h - self.p + 1)), h - self.p)
            x = min(int(ux * (w - self.p + 1)), w - self.p)
            out.append((i, y, x, a if self.augment else 0))
        return out

    def crop(self, plan: list[tuple[int, int, int, int]], device: torch.device) -> Batch:
        p, s = self.p, self.scale
        lrs, hrs, tgs = [], [], []
        for i, y, x, a in plan:
            img = self.images[i]
            lrs.append(augment(img.lr[:, y:y + p, x:x + p], a))
            if img.hr is not None:
                hrs.append(augment(img.hr[:, y * s:(y + p) * s, x * s:(x + p) * s], a))
            if img.target is not None:
                tgs.append(augment(img.target[:, y * s:(y + p) * s, x * s:(x + p) * s], a))

        def stack(ts):
            if not ts or len(ts) != len(plan):
                return None
            return torch.stack(ts).to(device=device, non_blocking=True).float().div_(255.0)

        return Batch(stack(lrs), stack(hrs), stack(tgs))

    def live_targets(self, plan: list[tuple], teacher_fn, device: torch.device,
                     lr: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's output on the un-augmented LR patches, then flipped/rotated like the batch,
        so live targets are what the cache would hold (up to patch borders and quantisation).

        ``lr``: the batch's (augmented) inputs: undoing the flips gives the patches exactly, so
        nothing is read (or degraded) a second time in the step."""
        if lr is not None:
            x = torch.stack([unaugment(lr[k], item[3]) for k, item in enumerate(plan)])
        else:
            x = self._unaugmented_inputs(plan).to(device=device).float().div_(255.0)
        with torch.no_grad():
            y = teacher_fn(x).float().clamp_(0, 1)
        return torch.stack([augment(y[k], item[3]) for k, item in enumerate(plan)])

    def _unaugmented_inputs(self, plan: list[tuple]) -> torch.Tensor:
        p = self.p
        return torch.stack([self.images[i].lr[:, y:y + p, x:x + p] for i, y, x, *_ in plan])


@dataclass
class EvalPair:
    name: str
    lr: torch.Tensor  # uint8 C x h x w
    hr: np.ndarray  # uint8 H x W x 3 (mod-cropped)


def load_eval_pairs(folder: str | Path, scale: int, *, reporter: Reporter = NULL,
                    skipped: list[str] | None = None, inputs_only: bool = False) -> list[EvalPair]:
    """An HR folder (LR made with the MATLAB downscale, HR cropped to a multiple of the scale),
    or a paired layout (``LR_bicubic/X4/*x4.png`` + ``HR/*.png``, or ``X4/`` inside the HR folder).

    With ``skipped`` (a list), an unreadable image is left out with a warning and its
    ``name: reason`` appended there; without it, the first one raises."""
    folder = Path(folder)
    if folder.is_dir() and not any(True for _ in _list(folder)) and (folder / "HR").is_dir():
        folder = folder / "HR"
    files = _list(folder)
    if not files:
        raise UsageError(f"no images found in {str(folder)!r}")
    lr_dir = find_lr_dir(folder, scale) if folder.is_dir() and not inputs_only else None
    pairs = []
    for p in files:
        lr_path = lr_partner(lr_dir, p, scale) if lr_dir else None
        try:
            img = read_image(p)
            lr_img = read_image(lr_path) if lr_path is not None else None
        except SrDistillError as e:
            if skipped is None:
                raise
            reporter.warn(f"skipping {p.name}: {e}")
            skipped.append(f"{p.name}: {e}")
            continue
        if inputs_only:  # the image is the input; there is no HR (scored against a reference model)
            pairs.append(EvalPair(p.name, to_uint8_chw(img.rgb, 3), None))  # type: ignore[arg-type]
            continue
        hr = to_uint8_chw(img.rgb, 3)
        if lr_img is not None:
            lr = to_uint8_chw(lr_img.rgb, 3)
            hr = hr[:, : lr.shape[1] * scale, : lr.shape[2] * scale]
        else:
            hr = mod_crop(hr, scale)
            if hr.shape[1] < scale or hr.shape[2] < scale:
                reporter.warn(f"skipping {p.name}: smaller than the scale")
                continue
            lr = make_lr(hr, scale)
        pairs.append(EvalPair(p.name, lr, np.ascontiguousarray(hr.permute(1, 2, 0).numpy())))
    return pairs
