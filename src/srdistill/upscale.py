"""Upscale image files with a super-resolution model (the library behind ``srdistill upscale``).

One path for every model and file: the model (an srdistill student, any checkpoint
the loader knows, or an exported ``.onnx``) is run through the seamless tiling engine
(:mod:`srdistill.tiling`) on images read and written by :mod:`srdistill.data.images`
(RGB, RGBA, grayscale, palette, 16-bit PNG, EXIF orientation, ICC profile).

* :func:`upscale_image` upscales one :class:`~srdistill.data.images.Image` in memory.
* :func:`upscale_files` expands files, folders and globs, plans every output path
  before any work (refusing collisions and outputs that would replace an input),
  then upscales file by file: a file that cannot be read or upscaled is reported and
  skipped, the rest go on; the :class:`UpscaleResult` lists every file.

Flag vocabulary follows Real-ESRGAN's inference script (``--tile``, ``--tile-overlap``
(its ``--tile_pad``), ``--outscale``, ``--suffix``, ``--ext``). Library code never
prints: it raises :mod:`srdistill.errors` types and reports through a ``Reporter``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from .data.images import DEFAULT_MAX_PIXELS, DEFAULT_PNG_LEVEL, Image, list_images, read_image, write_image
from .data.resize import imresize
from .models.loading import SRModel
from .runtimes.select import check_runtime_name, open_model, probe_size
from .errors import (ModelLoadError, OutputExistsError, SrDistillError, UnsupportedModelError, UsageError, debug_enabled,
                     nonempty, shown)
from .fileio import check_path_length
from .progress import NULL, Reporter, Task
from .runner import Runner
from .upscale_pipeline import Outcome, run_pipeline
from .upscale_plan import output_mode, plan_outputs
from .tiling import is_oom_error, parse_tile as _parse_tile

__all__ = [
    "ALPHA_MODES",
    "BACKENDS",
    "OUTPUT_EXTS",
    "FileResult",
    "UpscaleOptions",
    "UpscaleResult",
    "default_model_path",
    "load_upscale_model",
    "output_size",
    "upscale_files",
    "upscale_image",
]

BACKENDS = ("auto", "onnx", "torch")
ALPHA_MODES = ("bicubic", "model")
#: ``--ext`` values (``auto``: keep the input's extension when it can be written, else png).
OUTPUT_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "auto")
#: Smallest explicit ``--tile`` (0 turns tiling off); smaller tiles are almost all overlap.
MIN_TILE = 8


# --------------------------------------------------------------------------- options and results


@dataclass
class UpscaleOptions:
    """What ``srdistill upscale`` was asked to do (defaults are the CLI's)."""

    model: str | os.PathLike | None = None  # None: default_model_path()
    output: str | os.PathLike | None = None  # None: next to each input; a file (one input) or a folder
    recursive: bool = False
    tile: int | str | None = "auto"  # "auto", 0/None (whole image), or LR pixels per tile
    tile_overlap: int = 16
    backend: str = "auto"  # deprecated: onnx (-> runtime onnxruntime), torch (-> torch)
    runtime: str = "auto"  # auto (measured, cached), native, torch, onnxruntime, openvino, ncnn
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    threads: int | None = None
    outscale: float | None = None  # final size = outscale x input size; None: the model's scale
    suffix: str | None = None  # None: "_x{outscale:g}"
    ext: str | None = None  # None: png (or the extension of an -o file)
    alpha: str = "bicubic"  # how alpha is upscaled: bicubic (imresize) or model
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # refuse larger images before decoding; 0/None: no limit
    overwrite: bool = False
    quality: int = 95  # JPEG/WebP quality
    png_level: int = DEFAULT_PNG_LEVEL  # zlib level of PNG outputs (0-9); the pixels are the same
    workers: int | None = None  # encoder threads; None: 1-2 by the CPU count; 0: one file at a time, no threads

    def validate(self) -> None:
        """Raise :class:`UsageError` (exit 2) for a bad value, before any work."""
        self.tile = parse_tile(self.tile)
        if isinstance(self.tile_overlap, bool) or not isinstance(self.tile_overlap, int) or self.tile_overlap < 0:
            raise UsageError(f"--tile-overlap must be 0 or more pixels, got {self.tile_overlap!r}")
        self.backend = str(nonempty("--backend", self.backend, "auto, onnx or torch") or "auto").strip().lower()
        if self.backend not in BACKENDS:
            raise UsageError(f"invalid --backend {self.backend!r}", hint="use auto, onnx or torch")
        self.runtime = check_runtime_name(self.runtime)
        if self.threads is not None and (isinstance(self.threads, bool) or not 1 <= int(self.threads) <= 4096):
            raise UsageError(f"--threads must be between 1 and 4096 (as eval and distill), got {shown(self.threads)}")
        if self.outscale is not None:
            try:
                f = float(self.outscale)
            except (TypeError, ValueError):
                raise UsageError(f"--outscale must be a number, got {self.outscale!r}") from None
            if not math.isfinite(f) or f <= 0:
                raise UsageError(f"--outscale must be a positive number, got {self.outscale!r}")
            if f > MAX_OUTSCALE:  # 10**6 would ask for terabytes before any check on the output
                raise UsageError(f"--outscale must be at most {MAX_OUTSCALE}, got {self.outscale!r}",
                                 hint="run upscale again on its output for larger factors")
            self.outscale = f
        if self.suffix is not None and ("/" in self.suffix or os.sep in self.suffix or "\0" in self.suffix):
            raise UsageError(f"--suffix {self.suffix!r} must not contain a path separator", hint="use -o for folders")
        if self.ext is not None:
            e = str(self.ext).strip().lower().lstrip(".")
            if e not in OUTPUT_EXTS:
                raise UsageError(f"invalid --ext {self.ext!r}", hint="use png, jpg, webp or auto")
            self.ext = e
        nonempty("--device", self.device, "auto, cpu, cuda or cuda:N")
        self.alpha = str(nonempty("--alpha-mode", self.alpha, "bicubic or model") or "bicubic").strip().lower()
        if self.alpha not in ALPHA_MODES:
            raise UsageError(f"invalid --alpha-mode {self.alpha!r}", hint="use bicubic or model")
        if self.max_pixels is not None and int(self.max_pixels) < 0:
            raise UsageError(f"--max-pixels must be 0 (no limit) or more, got {self.max_pixels}")
        if not 1 <= int(self.quality) <= 100:
            raise UsageError(f"quality must be 1..100, got {self.quality}")
        if isinstance(self.png_level, bool) or not 0 <= int(self.png_level) <= 9:
            raise UsageError(f"--png-level must be 0..9, got {self.png_level!r}",
                             hint="1 is fastest, 9 smallest; the pixels are the same")
        if self.workers is not None and int(self.workers) < 0:
            raise UsageError(f"workers must be 0 or more, got {self.workers!r}")


def parse_tile(tile: Any) -> int | str | None:
    """``"auto"``, None (no tiling: ``0`` or None) or a tile size of at least :data:`MIN_TILE`."""
    return _parse_tile(tile, min_tile=MIN_TILE)


@dataclass
class FileResult:
    """What happened to one input file."""

    input: str
    output: str | None
    status: str  # "ok", "failed" or "skipped"
    error: str | None = None
    input_size: tuple[int, int] | None = None  # (width, height), after EXIF orientation
    output_size: tuple[int, int] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "input": self.input,
            "output": self.output,
            "status": self.status,
            "error": self.error,
            "input_size": list(self.input_size) if self.input_size else None,
            "output_size": list(self.output_size) if self.output_size else None,
            "seconds": round(self.seconds, 4),
        }


@dataclass
class UpscaleResult:
    """Every file's outcome plus totals; ``exit_code`` is 1 when any file was not written."""

    files: list[FileResult]
    model: dict
    outscale: float
    tile: Any
    tile_overlap: int
    seconds: float = 0.0
    dropped: list[str] = field(default_factory=list)  # inputs left out: outputs of other inputs
    tile_used: int | None = None  # the last image's tile size (None: whole image)
    files_seconds: float | None = None  # wall time of the files (decode, model and encode overlap)

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def ok(self) -> int:
        return self.count("ok")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def exit_code(self) -> int:
        return 0 if self.ok == len(self.files) else 1

    @property
    def input_megapixels(self) -> float:
        return sum(f.input_size[0] * f.input_size[1] for f in self.files if f.status == "ok" and f.input_size) / 1e6

    @property
    def output_megapixels(self) -> float:
        return sum(f.output_size[0] * f.output_size[1] for f in self.files if f.status == "ok" and f.output_size) / 1e6

    @property
    def busy_seconds(self) -> float:
        """Seconds from the first file's decode to the last file's write (the stages overlap, so this
        is less than the sum of the files' seconds); without it, that sum for the files written."""
        if self.files_seconds is not None:
            return self.files_seconds
        return sum(f.seconds for f in self.files if f.status == "ok")

    @property
    def output_mp_per_s(self) -> float | None:
        s = self.busy_seconds
        return self.output_megapixels / s if s > 0 else None

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "outscale": self.outscale,
            "tile": self.tile,
            "tile_overlap": self.tile_overlap,
            "tile_used": self.tile_used,
            "files": [f.to_dict() for f in self.files],
            "dropped_inputs": self.dropped,
            "totals": {
                "files": len(self.files),
                "ok": self.ok,
                "failed": self.failed,
                "skipped": self.skipped,
                "seconds": round(self.seconds, 4),
                "input_megapixels": round(self.input_megapixels, 6),
                "output_megapixels": round(self.output_megapixels, 6),
                "output_megapixels_per_second": (None if self.output_mp_per_s is None
                                                 else round(self.output_mp_per_s, 6)),
            },
            "exit_code": self.exit_code,
        }


# --------------------------------------------------------------------------- the model


def default_model_path(backend: str = "auto") -> Path:
    """The bundled model ``upscale`` uses without ``-m``.

    In order: the default student exported to ONNX (fast path), the default student
    checkpoint, the bundled DCTLSA x4 teacher; the first that exists. ``backend``
    "onnx" only takes the ONNX file, "torch" only checkpoints.
    """
    from . import assets  # read the names at call time: tests and new assets change them

    candidates = []
    if backend in ("auto", "onnx"):
        candidates.append(Path(assets.DEFAULT_MODEL_ONNX))
    if backend in ("auto", "torch"):
        candidates += [Path(assets.DEFAULT_MODEL), Path(assets.BUNDLED_TEACHER)]
    for p in candidates:
        if p.is_file():
            return p
    if backend == "onnx":
        raise UsageError("--backend onnx: no bundled ONNX model is installed",
                         hint="pass an .onnx file with -m, or use --backend auto")
    raise ModelLoadError("no bundled default model found in the installed package", hint="pass a model with -m")


#: the deprecated ``--backend`` values and the runtime each means
_BACKEND_RUNTIME = {"onnx": "onnxruntime", "torch": "torch"}


def load_upscale_model(path: str | os.PathLike | None = None, *, runtime: str = "auto", backend: str = "auto",
                       device: str = "auto", threads: int | None = None, size: tuple[int, int] | None = None,
                       reporter: Reporter | None = None) -> tuple[Any, dict]:
    """Load the model for upscaling through the runtime layer; returns ``(model, description)``.

    ``runtime``: auto (the fastest installed runtime, measured at ``size`` and cached), native (the
    file's own), torch, onnxruntime, openvino or ncnn (see :mod:`srdistill.runtimes`). ``backend`` is
    the deprecated name (onnx: onnxruntime, torch: torch). ``device`` "cuda" without CUDA is a UsageError.
    """
    backend = (backend or "auto").lower()
    if backend != "auto":
        runtime = _BACKEND_RUNTIME[backend]
    runtime = check_runtime_name(runtime)
    p = Path(path) if path is not None else default_model_path("torch" if runtime in ("torch", "ncnn") else "auto")
    model, desc = open_model(p, runtime=runtime, device=device, threads=threads, size=size, reporter=reporter or NULL,
                             fast=True)
    if isinstance(model, SRModel):
        model.module.eval()
    if hasattr(model, "session") and hasattr(model.session, "get_providers"):
        desc["providers"] = list(model.session.get_providers())
        desc["device"] = "cuda" if desc["providers"][0] == "CUDAExecutionProvider" else "cpu"
    if int(getattr(model, "input_channels", 3) or 3) not in (1, 3):
        raise UnsupportedModelError(f"{p.name} takes {model.input_channels}-channel input; "
                                    "upscale runs RGB (3-channel) or grayscale (1-channel) models")
    info = {"path": str(p), "name": p.name, "architecture": str(getattr(model, "architecture", "?")),
            "scale": int(model.scale), **desc}
    if getattr(model, "static_size", None):
        info["static_size"] = list(model.static_size)
    return model, info


# --------------------------------------------------------------------------- one image


class _Runner(Runner):
    """The runner plus what upscale adds: output size, alpha."""

    def image(self, image: Image, *, outscale: float | None = None, alpha: str = "bicubic",
              reporter: Reporter | None = None) -> Image:
        h, w = image.height, image.width
        oh, ow = output_size(h, w, self.scale if outscale is None else outscale)
        y = self.sr(image.to_tensor(), reporter)
        if y.shape[1] not in (1, 3):
            raise UnsupportedModelError(f"the model returned {y.shape[1]} channels; expected 3 (RGB) or 1 (gray)")
        if tuple(y.shape[-2:]) != (oh, ow):
            y = imresize(y, size=(oh, ow))
        y = y.clamp_(0.0, 1.0)
        a = None
        at = image.alpha_tensor()
        if at is not None:
            if alpha == "model" and float(at.min()) < 1.0:
                ya = self.sr(at.expand(-1, 3, -1, -1).contiguous(), reporter).mean(dim=1, keepdim=True)
                if tuple(ya.shape[-2:]) != (oh, ow):
                    ya = imresize(ya, size=(oh, ow))
            elif float(at.min()) >= 1.0:
                ya = torch.ones(1, 1, oh, ow)
            else:
                ya = imresize(at, size=(oh, ow))
            a = ya.clamp_(0.0, 1.0)
        return image.with_pixels(y, alpha=a)


MAX_OUTSCALE = 16


def output_size(h: int, w: int, outscale: float) -> tuple[int, int]:
    """(height, width) of the result: ``int(side * outscale)`` as Real-ESRGAN does
    (guarded against floating-point noise: 100 * 0.29 is 29), at least 1."""
    return max(1, int(math.floor(h * outscale + 1e-6))), max(1, int(math.floor(w * outscale + 1e-6)))


def upscale_image(model: Any, image: Image, *, tile: Any = "auto", overlap: int = 16, device: Any = None,
                  outscale: float | None = None, alpha: str = "bicubic", reporter: Reporter | None = None) -> Image:
    """Upscale one image in memory; returns a new :class:`Image` of the same kind.

    ``model``: an SRModel or OnnxModel (anything with ``scale`` and ``__call__`` on NCHW
    float tensors in [0, 1]). ``tile``: "auto", 0/None or a size in LR pixels.
    ``outscale``: final size relative to the input (default: the model's scale),
    resized with MATLAB bicubic (antialiased when shrinking). ``alpha``: "bicubic"
    resizes the alpha plane, "model" runs it through the model as a gray image.
    Grayscale stays grayscale, 16-bit stays 16-bit, ICC/EXIF are carried over.
    """
    if alpha not in ALPHA_MODES:
        raise UsageError(f"invalid alpha mode {alpha!r}", hint="use bicubic or model")
    if outscale is not None and (not math.isfinite(float(outscale)) or float(outscale) <= 0):
        raise UsageError(f"outscale must be a positive number, got {outscale!r}")
    runner = _Runner(model, device=device, tile=tile, overlap=overlap, reporter=reporter)
    return runner.image(image, outscale=outscale, alpha=alpha, reporter=reporter)


# --------------------------------------------------------------------------- many files


class _FileProgress(Reporter):
    """Passes messages on; shows an image's tile progress on the files bar instead of a second bar."""

    def __init__(self, parent: Reporter, task: Task):
        self.parent = parent
        self.files_task = task

    def info(self, message: str) -> None:
        self.parent.info(message)

    def warn(self, message: str) -> None:
        self.parent.warn(message)

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Task]:
        outer = self.files_task

        class _T(Task):
            done = 0

            def advance(self, n: float = 1, **fields: Any) -> None:
                self.done += n
                outer.update(tiles=f"{int(self.done)}/{int(total or 0)}")

        try:
            yield _T()
        finally:
            outer.update(tiles="-")


def _first_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg[:300] or type(e).__name__


def _file_error(e: BaseException) -> tuple[str, str]:
    """(status, one-line reason) of a file that was not written."""
    if isinstance(e, OutputExistsError):
        return "skipped", _first_line(e)
    if isinstance(e, SrDistillError):
        return "failed", _first_line(e)
    if debug_enabled():
        raise e
    return "failed", ("out of memory; try a smaller --tile" if is_oom_error(e)
                      else f"{type(e).__name__}: {_first_line(e)}")


def _run_files(pairs: list[tuple[Path, Path]], runner: _Runner, opts: UpscaleOptions, rep: Reporter,
               task: Task) -> list[FileResult]:
    """Read, upscale and write every (input, output) pair through the pipeline; one result per pair,
    in order. A file's problem is its result; KeyboardInterrupt goes on up (no partial file stays)."""
    max_px = int(opts.max_pixels) if opts.max_pixels else None
    sizes: dict[int, list] = {}

    def read(i: int, r: Reporter) -> Image:
        src, dst = pairs[i]
        check_path_length(dst, "output path")  # a name over 255 bytes: this file's reason, in words
        if dst.exists() and not opts.overwrite:
            raise OutputExistsError(f"{str(dst)!r} already exists", hint="pass --overwrite to replace it")
        img = read_image(src, max_pixels=max_px, reporter=r)
        sizes[i] = [(img.width, img.height), None]
        return img

    def model(i: int, img: Image, r: Reporter) -> Image:
        out = runner.image(img, outscale=opts.outscale, alpha=opts.alpha, reporter=_FileProgress(r, task))
        sizes[i][1] = (out.width, out.height)
        return out

    def write(i: int, out: Image, r: Reporter) -> None:
        write_image(pairs[i][1], out, overwrite=opts.overwrite, quality=opts.quality, png_level=opts.png_level,
                    reporter=r)

    results: list[FileResult] = []

    def finish(o: Outcome) -> None:
        src, dst = pairs[o.item]
        o.messages.replay(rep)
        r = FileResult(input=str(src), output=str(dst), status="ok", seconds=o.seconds)
        r.input_size, out_size = sizes.pop(o.item, (None, None))
        if o.error is None:
            r.output_size = out_size
        else:
            r.status, r.error = _file_error(o.error)
        results.append(r)  # reported once, by the caller (a table row or a JSON entry)
        task.advance(1, last=src.name)

    workers = _write_workers() if opts.workers is None else int(opts.workers)
    run_pipeline(range(len(pairs)), read=read, model=model, write=write, finish=finish, workers=workers,
                 prefetch=2)
    return results


def _write_workers() -> int:
    """Encoder threads: a 1080p PNG takes a thread 0.2-0.5 s at the default level (bench/png_level.py),
    several model frames' time: two at least, so one frame's encode never waits for another's; up to
    4 with the cores to spare (more only take cores from the model)."""
    return max(2, min(4, (os.cpu_count() or 1) // 2))


def upscale_files(inputs: Iterable[str | os.PathLike], options: UpscaleOptions | None = None,
                  reporter: Reporter | None = None) -> UpscaleResult:
    """Upscale image files (see the module docstring); never raises for one bad image.

    Raises :class:`UsageError` for bad options, inputs that match nothing and output
    conflicts, model loading errors for a bad model; per-file problems (unreadable,
    too large, existing output without ``overwrite``) end up in the result.
    """
    opts = options or UpscaleOptions()
    opts.validate()
    rep = reporter or NULL
    ins = [os.fspath(i) for i in inputs]
    if not ins:
        raise UsageError("no input images given")
    t_start = time.monotonic()
    files = list_images(ins, opts.recursive)
    # fail fast on -o misuse before loading the model
    output_mode(ins, len(files), None if opts.output is None else os.fspath(opts.output))

    saved_threads = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    try:
        model, minfo = load_upscale_model(opts.model, runtime=opts.runtime, backend=opts.backend, device=opts.device,
                                          threads=opts.threads,
                                          size=probe_size(files, opts.tile, opts.tile_overlap))
        scale = int(model.scale)
        plan = plan_outputs(ins, files, opts, scale)
        if minfo.get("choice"):  # said once the outputs are known to be fine (a usage error stays one line)
            rep.info(minfo["choice"])
        for s, origin in plan.dropped:
            rep.info(f"leaving out {s}: it is the output of {origin}")
        runner = _Runner(model, device=minfo["device"], tile=opts.tile,
                         overlap=opts.tile_overlap, reporter=rep)
        if getattr(model, "tiling", "supported") in ("discouraged", "internal") and isinstance(opts.tile, int) \
                and not runner.static:
            rep.warn(f"{minfo['architecture']} does not tile well (spandrel marks tiling {model.tiling}); "
                     "seams are possible: prefer --tile auto or 0")
        outscale = float(scale) if opts.outscale is None else opts.outscale
        n = len(plan.pairs)
        with rep.task(f"upscaling {n} image{'s' if n != 1 else ''}", total=n) as task:
            t_loop = time.monotonic()
            results = _run_files(plan.pairs, runner, opts, rep, task)
            loop_seconds = time.monotonic() - t_loop
    finally:
        torch.set_num_threads(saved_threads)
    tile_desc: Any = opts.tile if not runner.static else runner.tile
    return UpscaleResult(files=results, model=minfo, outscale=outscale, tile=tile_desc, tile_used=runner.last_tile,
                         tile_overlap=runner.overlap, seconds=time.monotonic() - t_start,
                         dropped=[str(s) for s, _ in plan.dropped], files_seconds=loop_seconds)
