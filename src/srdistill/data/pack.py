"""Training packs: the training inputs, ground truth and teacher outputs on disk, built once.

``distill --pack DIR`` keeps everything a run trains on in ``DIR/pack-<key>/`` as uint8
``.npy`` files (one per array) plus a small JSON record per image, instead of in memory:

* the key is a hash of everything the content depends on: the teacher's sha256, every data
  file's path, size and modification time, the scale, the LR-making or degradation settings
  (with their seed and variant count), the patch size (it decides which images are too small)
  and the teacher tiling. A run whose inputs differ gets another key, hence another folder
  beside the first: packs never mix;
* building is resumable: an image is done once its JSON record is written (after its arrays,
  each written atomically), so a killed build is completed, never trusted half-way; a pack is
  complete once ``complete.json`` is written, and a reused pack is checked file by file
  (sizes) before training starts;
* under ``torchrun`` each rank builds the images ``i = rank (mod world)``, then every rank
  reads the whole pack (on a shared file system, or each node builds its own copy: the same
  inputs give the same key and the same bytes);
* training reads each patch with a short-lived memory map (:class:`PackArray`): resident
  memory stays bounded whatever the pack's size, and the OS page cache does the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as fmt
import torch

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks (see _build_lock)
    fcntl = None

from ..errors import SrDistillError, UsageError
from ..fileio import atomic_path
from ..progress import NULL, Reporter
from .degrade import variant_inputs
from .datasets import DataStats, TrainImage, list_train_entries, load_train_image, teacher_output, warn_small

PACK_FORMAT = 1


class PackError(SrDistillError):
    """A pack file is missing, truncated or damaged."""


class PackArray:
    """A uint8 C x H x W array in a ``.npy`` file, sliced like a tensor without keeping it in memory.

    A patch (``[:, y0:y1, x0:x1]``) is one ``pread`` of its rows per channel (14 us for a 128 x 128
    patch, against 100 us for ``np.load(mmap_mode="r")``); any other index maps the file, copies
    and unmaps it again. Nothing stays resident in this process either way."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path = path
        self.shape = torch.Size(shape)
        self._offset: int | None = None

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def _damaged(self, why: str) -> PackError:
        return PackError(f"pack file {str(self.path)!r} is damaged or missing ({why})",
                         hint=f"delete {str(self.path.parent.parent)!r} and run again to rebuild the pack")

    def _header(self) -> int:
        """Where the data starts, after checking the header says uint8 of our shape."""
        if self._offset is None:
            try:
                with open(self.path, "rb") as f:
                    version = fmt.read_magic(f)
                    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, fortran, dtype = read(f)
                    offset = f.tell()
            except (OSError, ValueError) as e:
                raise self._damaged(str(e)) from None
            if dtype != np.uint8 or fortran or tuple(shape) != tuple(self.shape):
                raise self._damaged(f"it holds {dtype} {tuple(shape)}, expected uint8 {tuple(self.shape)}")
            self._offset = offset
        return self._offset

    def _rows(self, index: Any) -> torch.Tensor | None:
        if not (hasattr(os, "pread") and isinstance(index, tuple) and len(index) == 3
                and all(isinstance(i, slice) for i in index) and index[0] == slice(None)
                and index[1].step in (None, 1) and index[2].step in (None, 1)):
            return None
        c, h, w = self.shape
        y0, y1, _ = index[1].indices(h)
        x0, x1, _ = index[2].indices(w)
        if y1 <= y0 or x1 <= x0:
            return None
        off = self._header()
        out = np.empty((c, y1 - y0, x1 - x0), np.uint8)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise self._damaged(e.strerror or str(e)) from None
        try:
            for ch in range(c):
                n = (y1 - y0) * w
                buf = os.pread(fd, n, off + (ch * h + y0) * w)
                if len(buf) != n:
                    raise self._damaged("truncated")
                out[ch] = np.frombuffer(buf, np.uint8).reshape(y1 - y0, w)[:, x0:x1]
        finally:
            os.close(fd)
        return torch.from_numpy(out)

    def __getitem__(self, index: Any) -> torch.Tensor:
        fast = self._rows(index)
        if fast is not None:
            return fast
        self._header()
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise self._damaged(str(e)) from None
        out = torch.from_numpy(np.array(arr[index]))
        del arr  # unmap now
        return out

    def load(self) -> torch.Tensor:
        return self[...]


@dataclass
class PackInfo:
    path: str
    key: str
    reused: bool
    images: int
    inputs: int
    bytes: int
    seconds: float
    built_here: int = 0  # images this process built (the rest were done before, or by other ranks)
    skipped: dict = field(default_factory=dict)

    def describe(self) -> str:
        how = "reused" if self.reused else f"built in {self.seconds:.1f} s"
        return (f"pack: {how}, {self.images:,} images, {self.inputs:,} inputs, {self.bytes / 1e9:.2f} GB "
                f"({self.path})")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PackRequest:
    """What a pack must hold (everything its key depends on, and how to make it)."""

    root: Path
    data: list[str]
    scale: int
    patch_size: int
    channels: int
    lr_only: bool
    max_images: int | None
    teacher_sha256: str | None  # None: no teacher outputs in the pack
    degradation: Any = None  # a srdistill.data.degrade.Degradation, or None (clean bicubic LR)
    variants: int = 1
    seed: int = 0
    tile: int | None = 256

    def spec(self, entries: list[tuple[Path, Path | None]]) -> dict:
        def stamp(p: Path | None):
            if p is None:
                return None
            st = p.stat()
            return [os.path.realpath(p), st.st_size, st.st_mtime_ns]

        deg = self.degradation
        return {"format": PACK_FORMAT, "scale": self.scale, "patch_size": self.patch_size,
                "channels": self.channels, "lr_only": self.lr_only, "teacher_sha256": self.teacher_sha256,
                "tile": self.tile if self.teacher_sha256 else None,
                "degradation": None if deg is None else {"name": deg.name, "params": deg.params,
                                                         "variants": self.variants, "seed": self.seed},
                "files": [[stamp(a), stamp(b)] for a, b in entries]}


def pack_key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- building


def _save(path: Path, t: torch.Tensor) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, t.numpy(), allow_pickle=False)


def _record_path(folder: Path, i: int) -> Path:
    return folder / "items" / f"{i:07d}.json"


def _inputs_of(im: TrainImage, req: PackRequest, i: int) -> list[tuple[torch.Tensor, float]]:
    """(LR input, sampling weight) of one image: the clean LR, or its degraded variants (+ the clean one)."""
    if req.degradation is None:
        return [(im.lr, 1.0)]
    return [(lr, w) for lr, w, _ in variant_inputs(im, req.degradation, req.variants, req.scale, req.seed, i)]


def _build_one(folder: Path, i: int, path: Path, lr_path: Path | None, req: PackRequest, teacher, device) -> dict:
    try:
        im = load_train_image(path, lr_path, req.scale, req.patch_size, channels=req.channels, lr_only=req.lr_only)
    except SrDistillError as e:
        return {"name": path.name, "skipped": "unreadable", "reason": str(e)}
    if im is None:
        return {"name": path.name, "skipped": "small"}
    items = folder / "items"
    rec: dict[str, Any] = {"name": im.name, "inputs": []}
    if im.hr is not None:
        _save(items / f"{i:07d}.hr.npy", im.hr)
        rec["hr"] = list(im.hr.shape)
    for k, (lr, w) in enumerate(_inputs_of(im, req, i)):
        e: dict[str, Any] = {"lr": list(lr.shape), "weight": w}
        _save(items / f"{i:07d}.{k}.lr.npy", lr)
        if teacher is not None:
            tg = teacher_output(teacher, lr, req.scale, device=device, tile=req.tile)
            _save(items / f"{i:07d}.{k}.tg.npy", tg)
            e["target"] = list(tg.shape)
        rec["inputs"].append(e)
    return rec


@contextlib.contextmanager
def _build_lock(folder: Path, shared: bool, rep: Reporter):
    if fcntl is None:  # no POSIX locks: atomic per-file writes still keep the pack consistent
        yield
        return
    fd = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError:
            rep.info(f"pack: another run is building {folder.name}; waiting for it")
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def open_pack(req: PackRequest, teacher=None, *, device: torch.device | str = "cpu", reporter: Reporter = NULL,
              rank: int = 0, world: int = 1, barrier=None) -> tuple[list[TrainImage], list[float], DataStats, PackInfo]:
    """Open the pack for ``req`` under ``req.root``, building (or completing) it first if needed.

    Returns the training inputs (arrays read from the pack on demand), their sampling weights, the
    data statistics and what was done. ``teacher`` is needed only to build one with targets."""
    rep = reporter
    stats = DataStats(lr_only=req.lr_only)
    entries = list_train_entries(req.data or None, req.scale, lr_only=req.lr_only, max_images=req.max_images,
                                 stats=stats)
    stats.found = len(entries)
    spec = req.spec(entries)
    key = pack_key(spec)
    folder = Path(req.root) / f"pack-{key}"
    try:
        (folder / "items").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot use --pack folder {str(req.root)!r}: {e.strerror or e}") from None
    others = sorted(p.name for p in Path(req.root).glob("pack-*") if p.name != folder.name)
    t0 = time.monotonic()
    built = 0
    complete = folder / "complete.json"
    with _build_lock(folder, shared=world > 1, rep=rep):
        existed = complete.exists()
        if not existed:
            if rank == 0:
                _write_json(folder / "spec.json", spec)
                if others:
                    rep.info(f"pack: these inputs differ from the pack(s) in {req.root} ({', '.join(others[:3])}); "
                             f"building {folder.name} beside them")
            built = _build(folder, entries, req, teacher, device, rep, rank, world)
            if barrier is not None:
                barrier()
            if rank == 0:
                _finish(folder, entries, key)
            if barrier is not None:
                barrier()
    images, weights, info, small = _load(folder, key, stats, rep)
    info.reused, info.built_here = existed, built
    info.seconds = round(time.monotonic() - t0, 3)
    warn_small(rep, small, req.patch_size, req.scale, req.lr_only)
    return images, weights, stats, info


def _build(folder: Path, entries, req: PackRequest, teacher, device, rep: Reporter, rank: int, world: int) -> int:
    mine = [i for i in range(len(entries)) if i % world == rank]
    todo = [i for i in mine if not _record_ok(folder, i)]
    if not todo:
        return 0
    if len(todo) < len(mine):
        rep.info(f"pack: completing {folder.name}: {len(mine) - len(todo)} image(s) were built before")
    with rep.task("building pack", total=len(todo)) as task:
        for i in todo:
            path, lr_path = entries[i]
            rec = _build_one(folder, i, path, lr_path, req, teacher, device)
            _write_json(_record_path(folder, i), rec)  # last: the image is done
            task.advance(1)
    return len(todo)


def _record_ok(folder: Path, i: int) -> bool:
    p = _record_path(folder, i)
    try:
        json.loads(p.read_text())
    except (OSError, ValueError):
        return False
    return True


def _write_json(path: Path, doc: dict) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(doc))


def _finish(folder: Path, entries, key: str) -> None:
    missing = [i for i in range(len(entries)) if not _record_ok(folder, i)]
    if missing:
        raise PackError(f"pack {folder.name} is incomplete: {len(missing)} image(s) were not built",
                        hint="run again: the build resumes where it stopped")
    _write_json(folder / "complete.json", {"format": PACK_FORMAT, "key": key, "images": len(entries)})


def _array(folder: Path, name: str, shape: list[int]) -> PackArray:
    """A pack array whose file is checked by size (a truncated file is caught before training)."""
    p = folder / "items" / name
    need = int(np.prod(shape))
    try:
        size = p.stat().st_size
    except OSError:
        raise PackError(f"pack file {str(p)!r} is missing",
                        hint=f"delete {str(folder)!r} and run again to rebuild the pack") from None
    if size < need:
        raise PackError(f"pack file {str(p)!r} is truncated ({size:,} bytes, at least {need:,} expected)",
                        hint=f"delete {str(folder)!r} and run again to rebuild the pack")
    return PackArray(p, tuple(shape))


def _load(folder: Path, key: str, stats: DataStats, rep: Reporter):
    try:
        done = json.loads((folder / "complete.json").read_text())
        n = int(done["images"])
    except (OSError, ValueError, KeyError, TypeError):
        raise PackError(f"pack {str(folder)!r} has no valid complete.json",
                        hint=f"delete {str(folder)!r} and run again to rebuild the pack") from None
    images: list[TrainImage] = []
    weights: list[float] = []
    skipped: dict[str, list[str]] = {"small": [], "unreadable": []}
    total = 0
    for i in range(n):
        try:
            rec = json.loads(_record_path(folder, i).read_text())
        except (OSError, ValueError):
            raise PackError(f"pack record {str(_record_path(folder, i))!r} is missing or damaged",
                            hint=f"delete {str(folder)!r} and run again to rebuild the pack") from None
        if rec.get("skipped"):
            skipped.setdefault(rec["skipped"], []).append(rec["name"])
            if rec["skipped"] == "unreadable":
                rep.warn(f"skipping {rec['name']}: {rec.get('reason', 'unreadable')}")
            continue
        hr = _array(folder, f"{i:07d}.hr.npy", rec["hr"]) if "hr" in rec else None
        total += hr.numel() if hr is not None else 0
        for k, e in enumerate(rec["inputs"]):
            lr = _array(folder, f"{i:07d}.{k}.lr.npy", e["lr"])
            tg = _array(folder, f"{i:07d}.{k}.tg.npy", e["target"]) if "target" in e else None
            total += lr.numel() + (tg.numel() if tg is not None else 0)
            images.append(TrainImage(rec["name"] + (f"#{k}" if len(rec["inputs"]) > 1 else ""), lr, hr, tg))
            weights.append(float(e["weight"]))
    stats.skipped_small = len(skipped.get("small", []))
    stats.skipped_unreadable = len(skipped.get("unreadable", []))
    stats.used = n - stats.skipped_small - stats.skipped_unreadable
    if not images:
        raise UsageError("no usable training images: all were unreadable or smaller than one patch",
                         hint="lower --patch-size or add larger images")
    info = PackInfo(path=str(folder), key=key, reused=True, images=stats.used, inputs=len(images), bytes=total,
                    seconds=0.0, skipped={k: len(v) for k, v in skipped.items()})
    return images, weights, info, skipped.get("small", [])
