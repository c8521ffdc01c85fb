"""Opening a model in a runtime: the one asked for, the file's own (``native``), or the fastest here
(``auto``).

``auto`` measures every installed runtime that can run the file on the device (``Runtime.auto``: torch,
onnxruntime and OpenVINO for checkpoints and .onnx files, ncnn for .param files) at the input size in
use: one warm-up, then timed runs until three are done or about half a second is spent, so the whole
choice takes a couple of seconds. The choice is cached per (model sha256, device, size bucket, the
runtimes installed and their versions) in ``$XDG_CACHE_HOME/srdistill/runtimes.json`` (default
``~/.cache/srdistill``), written atomically, and said in one line, e.g.
``runtime: openvino (18.2 MP/s vs onnxruntime 9.1, torch 7.0 at 480x270; measured)``.
A runtime that is not installed is skipped silently under ``auto``; asked for by name it is an error
naming the extra to install.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import statistics
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any


from ..errors import SrDistillError, UsageError, nonempty, shown
from ..fileio import atomic_write_text, sha256_file
from ..onnx_model import load_onnx
from ..progress import NULL, Reporter
from .registry import Runtime, file_kind, get_runtime, native_runtime, runtime_names

#: ``--runtime`` values
RUNTIME_CHOICES = ("auto", "native", "torch", "onnxruntime", "openvino", "ncnn")
#: the largest LR side ``auto`` measures at (bigger inputs are measured at this, bucketed the same)
MAX_PROBE_SIDE = 1024
PROBE_SECONDS = 0.5  # timed seconds per runtime, after one warm-up run (at least one timed run)
PROBE_RUNS = 3
DEFAULT_PROBE = (256, 256)


def check_runtime_name(name: str | None) -> str:
    nonempty("--runtime", name, ", ".join(RUNTIME_CHOICES))
    key = str(name or "auto").strip().lower()
    if key not in RUNTIME_CHOICES:
        raise UsageError(f"invalid --runtime {shown(name)}", hint=f"use {', '.join(RUNTIME_CHOICES)}")
    return key


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "srdistill" / "runtimes.json"


def device_for(rt: Runtime, device: str | None) -> str:
    """The device ``rt`` runs on for ``--device`` (auto: CUDA where it can use it, else the CPU)."""
    name = str(device or "auto").strip().lower()
    avail = rt.devices()
    if name == "auto":
        name = "cuda" if "cuda" in avail else "cpu"
    kind = name.split(":")[0]
    if kind not in avail:
        if kind not in ("cpu", "cuda"):
            raise UsageError(f"invalid --device {device!r}", hint="use auto, cpu, cuda or cuda:N")
        what = "no CUDA device is available to it" if kind == "cuda" else f"it cannot use {kind}"
        raise UsageError(f"--device {name}: {what} in the {rt.name} runtime here (it runs on {', '.join(avail)})",
                         hint="use --device cpu, or another --runtime")
    if rt.name == "torch" and kind == "cuda":
        from ..devices import resolve_device  # lazy: torch; only the torch runtime on CUDA needs it

        return str(resolve_device(name))
    return name


def open_model(path: str | os.PathLike, *, runtime: str = "auto", device: str | None = "auto",
               threads: int | None = None, size: tuple[int, int] | None = None,
               reporter: Reporter = NULL, fast: bool = False) -> tuple[Any, dict]:
    """(runnable, description) for ``path`` in ``runtime``; ``size`` is the LR (height, width) ``auto``
    measures at. The description has ``runtime``, ``device`` and, under auto, ``choice`` (the line said).
    ``fast``: a runtime may compute in a lower precision that keeps the scores (OpenVINO's bf16 on CPUs
    that have it: upscale, plan); off for eval, whose scores are fp32's."""
    p = Path(path)
    name = check_runtime_name(runtime)
    if name == "auto":
        return _auto(p, device, threads, size, reporter, fast)
    rt = native_runtime(p) if name == "native" else get_runtime(name)
    rt.require()
    if not rt.can_run(p):
        raise UsageError(f"the {rt.name} runtime cannot run {p.name} ({file_kind(p)} file)",
                         hint=f"use --runtime native ({native_runtime(p).name}) or auto")
    dev = device_for(rt, device)
    return _load(rt, p, dev, threads, fast), describe(rt, dev)


def _load(rt: Runtime, p: Path, dev: str, threads: int | None, fast: bool) -> Any:
    if fast and "precision" in inspect.signature(rt.load).parameters:
        return rt.load(p, device=dev, threads=threads, precision="fast")
    return rt.load(p, device=dev, threads=threads)


def describe(rt: Runtime, device: str, choice: str | None = None, model: Any = None) -> dict:
    prec = getattr(model, "inference_precision", None)
    return {"runtime": rt.name, "backend": rt.name, "device": device, **({"choice": choice} if choice else {}),
            **({"precision": prec} if prec else {})}


def size_bucket(h: int, w: int) -> str:
    """Each side rounded to the nearest power of two: 480x270 -> 512x256."""
    return "x".join(str(2 ** max(0, round(math.log2(max(1, v))))) for v in (w, h))


def _candidates(p: Path, device: str | None) -> list[tuple[Runtime, str]]:
    out = []
    for n in runtime_names():
        rt = get_runtime(n)
        if file_kind(p) not in rt.auto or not rt.installed():
            continue
        try:
            out.append((rt, device_for(rt, device)))
        except UsageError:
            continue  # cannot use this device: not a candidate
    if str(device or "auto").lower() == "auto" and any(d.startswith("cuda") for _, d in out):
        out = [(rt, d) for rt, d in out if d.startswith("cuda")]  # a GPU is there: compare on it
    return out


def _cache_key(p: Path, cands: list[tuple[Runtime, str]], bucket: str) -> str:
    sha = sha256_file(p)
    if p.with_suffix(".bin").is_file() and file_kind(p) != "checkpoint":
        sha += "+" + sha256_file(p.with_suffix(".bin"))
    versions = []
    for rt, _ in cands:
        try:
            versions.append(f"{rt.name}={importlib_metadata.version(rt.packages[0])}")
        except importlib_metadata.PackageNotFoundError:
            versions.append(rt.name)
    return "|".join([sha, cands[0][1].split(":")[0], bucket, ",".join(versions)])


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, entry: dict) -> None:
    data = _read_cache()
    data[key] = entry
    try:
        atomic_write_text(cache_path(), json.dumps(data, indent=1, sort_keys=True), overwrite=True)
    except (OSError, SrDistillError):
        pass  # a read-only home: the choice is measured again next time


def _line(name: str, speeds: dict, hw: tuple[int, int], how: str) -> str:
    others = ", ".join(f"{n} {v:.1f}" for n, v in sorted(speeds.items(), key=lambda kv: -kv[1]) if n != name)
    figures = f"{speeds[name]:.1f} MP/s" + (f" vs {others}" if others else "")
    return f"runtime: {name} ({figures} at {hw[1]}x{hw[0]}; {how})"


def _auto(p: Path, device: str | None, threads: int | None, size, rep: Reporter,
          fast: bool = False) -> tuple[Any, dict]:
    cands = _candidates(p, device)
    if not cands:
        rt = native_runtime(p)
        rt.require()  # the file's own runtime is missing: say which extra installs it
        device_for(rt, device)  # it cannot use the device: say so
        raise UsageError(f"no installed runtime can run {p.name} on --device {device}")
    hw = tuple(min(MAX_PROBE_SIDE, max(1, int(v))) for v in (size or DEFAULT_PROBE))
    key = _cache_key(p, cands, size_bucket(*hw)) + ("|fast" if fast else "")
    hit = _read_cache().get(key)
    by_name = {rt.name: (rt, d) for rt, d in cands}
    if not (isinstance(hit, dict) and hit.get("runtime") in by_name and isinstance(hit.get("mp_per_s"), dict)):
        hit = None
    else:
        rt, dev = by_name[hit["runtime"]]
        label = hit.get("label") if hit.get("label") in hit["mp_per_s"] else rt.name
        if label not in hit["mp_per_s"]:
            hit = None  # a cache entry of another shape: measure again
    if hit is not None:
        line = _line(label, hit["mp_per_s"], tuple(hit.get("size") or hw), "cached")
        rep.info(line)
        model = _load(rt, p, dev, threads, fast)
        return model, describe(rt, dev, line, model)
    best, speeds, errors = None, {}, []
    for rt, dev in cands:
        try:
            model = _load(rt, p, dev, threads, fast)
            speeds[_label(rt, model)] = _measure(model, hw)
        except (SrDistillError, RuntimeError, ValueError, MemoryError) as e:
            errors.append(f"{rt.name}: {(str(e).splitlines() or [type(e).__name__])[0][:120]}")
            continue
        if best is None or speeds[_label(rt, model)] > speeds[_label(best[0], best[2])]:
            best = (rt, dev, model)
        del model
    if best is None:
        raise SrDistillError(f"no runtime could run {p.name}: {'; '.join(errors)}")
    rt, dev, model = best
    line = _line(_label(rt, model), speeds, hw, "measured")
    _write_cache(key, {"runtime": rt.name, "label": _label(rt, model),
                       "mp_per_s": {k: round(v, 3) for k, v in speeds.items()},
                       "size": list(hw), "path": str(p), "when": time.strftime("%Y-%m-%dT%H:%M:%S")})
    rep.info(line)
    return model, describe(rt, dev, line, model)


def _label(rt: Runtime, model: Any) -> str:
    """``openvino`` or ``openvino bf16``: the name the one-line choice says."""
    prec = getattr(model, "inference_precision", "fp32")
    return rt.name if prec == "fp32" else f"{rt.name} {prec}"


def _measure(model: Any, hw: tuple[int, int]) -> float:
    """Output megapixels per second of ``model`` on one (1, C, h, w) input (raised to its size needs)."""
    from ..runner import time_frames  # lazy: runner imports torch; the registry (and `info`) stay torch-free

    times, (h, w) = time_frames(model, hw, runs=PROBE_RUNS, seconds=PROBE_SECONDS)
    scale = int(model.scale)
    return (h * scale) * (w * scale) / 1e6 / max(statistics.median(times), 1e-9)


def probe_size(files: list, tile: Any, overlap: int) -> tuple[int, int] | None:
    """The LR (height, width) the model will see: a fixed tile with its context, else the first image's
    size from its header (None when it cannot be read)."""
    if isinstance(tile, int) and tile > 0:
        return tile + 2 * overlap, tile + 2 * overlap
    if not files:
        return None
    try:
        from PIL import Image as PILImage  # lazy: Pillow is only needed to read a header here

        with PILImage.open(files[0]) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - an unreadable first file is reported by upscale itself
        return None
    return h, w


#: file suffix -> loader of a runnable model: the one table ``upscale`` and ``eval`` pick backends from.
#: OpenVINO IR (.xml) and ncnn (.param) load through their runtimes (:mod:`srdistill.runtimes`). A new
#: format (TensorRT, CoreML) adds its export module under ``srdistill/export/``, its runtime, and
#: its runnable (call on NCHW float in [0, 1], ``scale``, ``min_size``, ``multiple_of``,
#: ``static_size``, ``input_channels``) here. Anything else loads as a PyTorch checkpoint.
def _load_with(runtime: str):
    def load(path, *, device: str = "cpu", threads: int | None = None):
        rt = get_runtime(runtime)
        rt.require()  # not installed: one line naming the extra
        return rt.load(path, device="cpu" if str(device).startswith("cuda") else device, threads=threads)

    load.__name__ = f"load_{runtime}"
    return load


RUNNABLE_LOADERS: dict[str, Any] = {".onnx": load_onnx, ".xml": _load_with("openvino"), ".param": _load_with("ncnn")}


def load_any(path: str | os.PathLike, *, device: str = "cpu", threads: int | None = None):
    """A runnable for ``path``: its format's loader from :data:`RUNNABLE_LOADERS`, else an SRModel."""
    loader = RUNNABLE_LOADERS.get(Path(path).suffix.lower())
    if loader is not None:
        return loader(path, device=device, threads=threads)
    from ..models.loading import load_model  # lazy: models.loading imports torch; only checkpoints need it

    return load_model(path, device=device)
