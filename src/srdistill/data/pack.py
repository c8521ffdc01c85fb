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
  complete once ``complete.json`` is written, and a reused pack is checked before training
  starts: every record field (types, shapes, ranges, finiteness) and every array file (its
  ``.npy`` header and size). Anything wrong is one "damaged" error naming the file;
* reading a complete pack opens nothing for writing and takes no lock (a pack on a read-only
  file system or in a folder the user cannot write is usable); only building takes the
  ``.lock`` (never through a symbolic link);
* under ``torchrun`` each rank builds the images ``i = rank (mod world)``, then every rank
  reads the whole pack (on a shared file system, or each node builds its own copy: the same
  inputs give the same key and the same bytes);
* training reads each patch with a short-lived memory map (:class:`PackArray`): resident
  memory stays bounded whatever the pack's size, and the OS page cache does the rest.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import stat
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

from ..errors import SrDistillError, UsageError, shown
from ..fileio import atomic_path
from ..progress import NULL, Reporter
from .degrade import variant_inputs
from .datasets import DataStats, TrainImage, list_train_entries, load_train_image, teacher_output, warn_small

PACK_FORMAT = 1
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # open flags where the OS has them
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class PackError(SrDistillError):
    """A pack file is missing, truncated or damaged, or a pack cannot be used here."""


def damaged(folder: Path, what: str, why: str = "") -> PackError:
    """The one error of a damaged pack part: what is wrong, and to delete the pack folder."""
    return PackError(f"{what} is damaged" + (f" ({why})" if why else ""),
                     hint=f"delete the pack folder {str(folder)!r} and run again to rebuild the pack")


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
        return math.prod(self.shape)

    def _damaged(self, why: str) -> PackError:
        return damaged(self.path.parent.parent, f"pack file {str(self.path)!r}", why)

    def _header(self) -> int:
        """Where the data starts, after checking that the file is a regular file whose header says
        uint8 of our shape, C order, and whose size is exactly header + data."""
        if self._offset is None:
            try:
                fd = os.open(self.path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
            except OSError as e:
                raise self._damaged(e.strerror or str(e)) from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise self._damaged("not a regular file")
                with os.fdopen(os.dup(fd), "rb") as f:
                    version = fmt.read_magic(f)
                    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, fortran, dtype = read(f)
                    offset = f.tell()
            except PackError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to parse a header means a damaged file
                raise self._damaged(f"unreadable .npy header: {shown(str(e))}") from None
            finally:
                os.close(fd)
            if dtype != np.uint8 or fortran or tuple(shape) != tuple(self.shape):
                raise self._damaged(f"it holds {shown(str(dtype))} {shown(tuple(shape))}"
                                    f"{' (Fortran order)' if fortran else ''}, expected uint8 {tuple(self.shape)}")
            need = offset + self.numel()
            if st.st_size != need:
                what = "truncated" if st.st_size < need else "too long"
                raise self._damaged(f"{what}: {st.st_size:,} bytes, {need:,} expected")
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
            fd = os.open(self.path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)  # a FIFO put there must not hang
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


# --------------------------------------------------------------------------- the lock

_LOCK = ".lock"
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def _odd_lock(folder: Path) -> PackError | None:
    """The error for a ``.lock`` that is not a plain file (a symbolic link is never followed)."""
    path = folder / _LOCK
    try:
        st = os.lstat(path)
    except OSError:
        return None  # none yet (or no folder): the build creates it
    if stat.S_ISLNK(st.st_mode):
        return PackError(f"pack lock {str(path)!r} is a symbolic link: refusing to follow it",
                         hint="srdistill makes it a plain file; delete the link and run again")
    if not stat.S_ISREG(st.st_mode):
        return PackError(f"pack lock {str(path)!r} is not a regular file",
                         hint="srdistill makes it a plain file; delete it and run again")
    return None


def _cannot_write(folder: Path, e: OSError) -> PackError:
    return PackError(f"pack {str(folder)!r} is incomplete and cannot be written here ({e.strerror or e})",
                     hint="build it where the --pack folder is writable (--build-only), or point --pack at a "
                          "writable folder")


def _open_lock(folder: Path) -> int:
    """The build lock's descriptor: created if needed, never through a symbolic link, never a FIFO."""
    path = folder / _LOCK
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | _NOFOLLOW | _NONBLOCK | _CLOEXEC, 0o644)
    except OSError as e:
        odd = _odd_lock(folder)
        if odd is not None:  # ELOOP (Linux) or EMLINK (BSD): a symbolic link
            raise odd from None
        if e.errno in _READ_ONLY:
            raise _cannot_write(folder, e) from None
        raise PackError(f"cannot open pack lock {str(path)!r}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PackError(f"pack lock {str(path)!r} is not a regular file",
                            hint="srdistill makes it a plain file; delete it and run again")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _build_lock(folder: Path, shared: bool, rep: Reporter):
    """Held while building: exclusive, or shared by the ranks of one distributed run. Reading a
    complete pack takes no lock (nothing writes to a complete pack), so it needs no write access."""
    if fcntl is None:  # no POSIX locks: atomic per-file writes still keep the pack consistent
        yield
        return
    fd = _open_lock(folder)
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


# --------------------------------------------------------------------------- opening


def open_pack(req: PackRequest, teacher=None, *, device: torch.device | str = "cpu", reporter: Reporter = NULL,
              rank: int = 0, world: int = 1, barrier=None) -> tuple[list[TrainImage], list[float], DataStats, PackInfo]:
    """Open the pack for ``req`` under ``req.root``, building (or completing) it first if needed.

    Returns the training inputs (arrays read from the pack on demand), their sampling weights, the
    data statistics and what was done. ``teacher`` is needed only to build one with targets. A
    complete pack is only read: no lock, nothing opened for writing."""
    rep = reporter
    stats = DataStats(lr_only=req.lr_only)
    entries = list_train_entries(req.data or None, req.scale, lr_only=req.lr_only, max_images=req.max_images,
                                 stats=stats)
    stats.found = len(entries)
    spec = req.spec(entries)
    key = pack_key(spec)
    folder = Path(req.root) / f"pack-{key}"
    odd = _odd_lock(folder)
    if odd is not None:
        raise odd
    t0 = time.monotonic()
    existed, built = (folder / "complete.json").exists(), 0
    if not existed:
        existed, built = _build_here(folder, entries, spec, key, req, teacher, device, rep, rank, world, barrier)
    images, weights, info, small = _load(folder, key, req, [p.name for p, _ in entries], stats, rep)
    info.reused, info.built_here = existed, built
    info.seconds = round(time.monotonic() - t0, 3)
    warn_small(rep, small, req.patch_size, req.scale, req.lr_only)
    return images, weights, stats, info


def _build_here(folder: Path, entries, spec: dict, key: str, req: PackRequest, teacher, device, rep: Reporter,
                rank: int, world: int, barrier) -> tuple[bool, int]:
    """Build or complete the pack under its lock: (whether another run had completed it meanwhile,
    the images this process built)."""
    try:
        (folder / "items").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot use --pack folder {str(req.root)!r}: {e.strerror or e}",
                         hint="it holds no complete pack for these inputs, and building one needs write access"
                         if e.errno in _READ_ONLY else None) from None
    complete = folder / "complete.json"
    with _build_lock(folder, shared=world > 1, rep=rep):
        if complete.exists():  # another run finished it while this one waited
            return True, 0
        if rank == 0:
            try:
                others = sorted(p.name for p in Path(req.root).glob("pack-*") if p.name != folder.name)
            except OSError:
                others = []
            _write_json(folder / "spec.json", spec)
            if others:
                rep.info(f"pack: these inputs differ from the pack(s) in {req.root} ({', '.join(others[:3])}); "
                         f"building {folder.name} beside them")
        built = _build(folder, entries, req, teacher, device, rep, rank, world)
        if barrier is not None:
            barrier()
        if rank == 0:
            _finish(folder, entries, key, req)
        if barrier is not None:
            barrier()
    return False, built


def _build(folder: Path, entries, req: PackRequest, teacher, device, rep: Reporter, rank: int, world: int) -> int:
    mine = [i for i in range(len(entries)) if i % world == rank]
    todo = [i for i in mine if not _record_ok(folder, i, req, entries[i][0].name)]
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


def _write_json(path: Path, doc: dict) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(doc))


def _finish(folder: Path, entries, key: str, req: PackRequest) -> None:
    missing = [i for i in range(len(entries)) if not _record_ok(folder, i, req, entries[i][0].name)]
    if missing:
        raise PackError(f"pack {folder.name} is incomplete: {len(missing)} image(s) were not built",
                        hint="run again: the build resumes where it stopped")
    _write_json(folder / "complete.json", {"format": PACK_FORMAT, "key": key, "images": len(entries)})


# --------------------------------------------------------------------------- reading and checking

_JSON_LIMIT = 1 << 20  # bytes of one record or marker (a real one is a few hundred)
_MAX_SIDE = 1 << 20  # pixels per side in a record (the file size check bounds the product)
_TEXT_LIMIT = 4096  # characters of a skip reason


def _read_json(folder: Path, path: Path, what: str) -> Any:
    """A pack JSON file, read only if it is a regular file of at most ``_JSON_LIMIT`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    except OSError as e:
        raise damaged(folder, what, "missing" if e.errno == errno.ENOENT else (e.strerror or str(e))) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise damaged(folder, what, "not a regular file")
        chunks, size = [], 0
        while size <= _JSON_LIMIT:
            b = os.read(fd, _JSON_LIMIT + 1 - size)
            if not b:
                break
            chunks.append(b)
            size += len(b)
    except OSError as e:
        raise damaged(folder, what, e.strerror or str(e)) from None
    finally:
        os.close(fd)
    if size > _JSON_LIMIT:
        raise damaged(folder, what, f"over {_JSON_LIMIT:,} bytes")
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as e:
        raise damaged(folder, what, f"not valid JSON: {shown(str(e))}") from None


def _shape(v: Any, what: str, channels: int) -> list[int]:
    if not (isinstance(v, list) and len(v) == 3 and all(type(x) is int for x in v)):
        raise ValueError(f"{what}: {shown(v)} is not a [channels, height, width] shape")
    if v[0] != channels or not all(1 <= x <= _MAX_SIDE for x in v[1:]):
        raise ValueError(f"{what}: shape {shown(v)}, expected {channels} channels of 1 to {_MAX_SIDE:,} pixels a side")
    return v


def _valid_record(rec: Any, req: PackRequest, name: str) -> dict:
    """The record of image ``name``, every field checked against what the pack was built for;
    ValueError says what is wrong."""
    if not isinstance(rec, dict):
        raise ValueError(f"{shown(rec)} is not a JSON object")
    if rec.get("name") != name:
        raise ValueError(f"name {shown(rec.get('name'))}, expected {shown(name)}")
    if "skipped" in rec:
        why, reason = rec["skipped"], rec.get("reason", "unreadable")
        if not (isinstance(why, str) and why in ("small", "unreadable")):
            raise ValueError(f"skipped = {shown(why)}, expected 'small' or 'unreadable'")
        if not isinstance(reason, str) or len(reason) > _TEXT_LIMIT:
            raise ValueError(f"reason {shown(reason)} is not a short text")
        return {"name": name, "skipped": why, "reason": reason}
    c, s, p = req.channels, req.scale, req.patch_size
    if req.lr_only:
        if "hr" in rec:
            raise ValueError("an HR array in an LR-only pack")
        hr = None
    else:
        hr = _shape(rec.get("hr"), "hr", c)
    most = req.variants + 1 if req.degradation is not None else 1
    inputs = rec.get("inputs")
    if not (isinstance(inputs, list) and 1 <= len(inputs) <= most):
        raise ValueError(f"inputs {shown(inputs)}, expected a list of 1 to {most} input(s)")
    out = []
    for k, e in enumerate(inputs):
        if not isinstance(e, dict):
            raise ValueError(f"input {k}: {shown(e)} is not a JSON object")
        lr = _shape(e.get("lr"), f"input {k} lr", c)
        if lr[1] < p or lr[2] < p:
            raise ValueError(f"input {k}: LR {lr[1]}x{lr[2]} is smaller than one {p}x{p} patch")
        big = [c, lr[1] * s, lr[2] * s]
        if hr is not None and hr != big:
            raise ValueError(f"hr shape {hr} is not {s}x input {k}'s LR {lr}")
        w = e.get("weight")
        if type(w) not in (int, float) or not 0 <= w <= 1:  # NaN and infinities fail the range too
            raise ValueError(f"input {k}: weight {shown(w)}, expected a number from 0 to 1")
        tg = None
        if req.teacher_sha256 is not None:
            tg = _shape(e.get("target"), f"input {k} target", c)
            if tg != big:
                raise ValueError(f"input {k}: target shape {tg} is not {s}x its LR {lr}")
        elif "target" in e:
            raise ValueError(f"input {k}: a teacher output in a pack built without them")
        out.append({"lr": lr, "weight": float(w), "target": tg})
    return {"name": name, "hr": hr, "inputs": out}


def _record(folder: Path, i: int, req: PackRequest, name: str) -> dict:
    path = _record_path(folder, i)
    what = f"pack record {str(path)!r}"
    rec = _read_json(folder, path, what)
    try:
        return _valid_record(rec, req, name)
    except ValueError as e:
        raise damaged(folder, what, str(e)) from None


def _record_ok(folder: Path, i: int, req: PackRequest, name: str) -> bool:
    try:
        _record(folder, i, req, name)
    except PackError:
        return False
    return True


def _array(folder: Path, name: str, shape: list[int]) -> PackArray:
    """A pack array whose file is checked now (a regular file, its header, its size), so a damaged
    or truncated file is caught before training."""
    arr = PackArray(folder / "items" / name, tuple(shape))
    arr._header()
    return arr


def _load(folder: Path, key: str, req: PackRequest, names: list[str], stats: DataStats, rep: Reporter):
    marker = folder / "complete.json"
    done = _read_json(folder, marker, f"pack marker {str(marker)!r}")
    if not (isinstance(done, dict) and type(done.get("format")) is int and done["format"] == PACK_FORMAT
            and done.get("key") == key and type(done.get("images")) is int and done["images"] == len(names)):
        raise damaged(folder, f"pack marker {str(marker)!r}",
                      f"{shown(done)}, expected format {PACK_FORMAT}, key {key} and {len(names)} images")
    images: list[TrainImage] = []
    weights: list[float] = []
    skipped: dict[str, list[str]] = {"small": [], "unreadable": []}
    total = 0
    for i, name in enumerate(names):
        rec = _record(folder, i, req, name)
        if "skipped" in rec:
            skipped[rec["skipped"]].append(name)
            if rec["skipped"] == "unreadable":
                rep.warn(f"skipping {name}: {rec['reason']}")
            continue
        hr = _array(folder, f"{i:07d}.hr.npy", rec["hr"]) if rec["hr"] is not None else None
        total += hr.numel() if hr is not None else 0
        many = len(rec["inputs"]) > 1
        for k, e in enumerate(rec["inputs"]):
            lr = _array(folder, f"{i:07d}.{k}.lr.npy", e["lr"])
            tg = _array(folder, f"{i:07d}.{k}.tg.npy", e["target"]) if e["target"] is not None else None
            total += lr.numel() + (tg.numel() if tg is not None else 0)
            images.append(TrainImage(name + (f"#{k}" if many else ""), lr, hr, tg))
            weights.append(e["weight"])
    stats.skipped_small = len(skipped["small"])
    stats.skipped_unreadable = len(skipped["unreadable"])
    stats.used = len(names) - stats.skipped_small - stats.skipped_unreadable
    if not images:
        raise UsageError("no usable training images: all were unreadable or smaller than one patch",
                         hint="lower --patch-size or add larger images")
    if not sum(weights) > 0:
        raise damaged(folder, f"pack {str(folder)!r}", "every input's sampling weight is 0")
    info = PackInfo(path=str(folder), key=key, reused=True, images=stats.used, inputs=len(images), bytes=total,
                    seconds=0.0, skipped={k: len(v) for k, v in skipped.items()})
    return images, weights, info, skipped["small"]
