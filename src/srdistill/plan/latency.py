"""Latency of one candidate, measured here through :mod:`srdistill.runtimes`: the student (random
weights) is written as the file a user would run -- the safetensors student for ``torch`` and
``auto`` (which then measures the installed runtimes as ``upscale`` does), the exported file
(``export_model``: traced, simplified, verified) for ``onnxruntime``, ``openvino`` and ``ncnn`` --,
opened in the runtime, run once to warm up, then timed ``repeats`` times on one frame at the plan's
input size; the median is the figure."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path


from ..errors import SrDistillError
from ..export import ExportOptions, export_model
from ..models.checkpoint import save_student
from ..models.loading import SRModel
from ..runner import time_frames
from ..runtimes.select import open_model

#: runtime name -> export format whose file it runs (torch and auto run the checkpoint)
EXPORTED = {"onnxruntime": "onnx", "openvino": "openvino", "ncnn": "ncnn"}
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "ncnn": ".param"}


def model_file(model: SRModel, runtime: str, folder: Path) -> Path:
    """The file ``runtime`` opens for ``model``: the student checkpoint, or its verified export."""
    ckpt = save_student(folder / "student.safetensors", model, overwrite=True, title="plan candidate")
    fmt = EXPORTED.get(runtime)
    if fmt is None:
        return ckpt
    out = folder / f"student{SUFFIX[fmt]}"
    export_model(fmt, str(ckpt), out, ExportOptions(overwrite=True))
    return Path(out)


def time_runnable(runnable, lr_size: tuple[int, int], repeats: int) -> float:
    """Median milliseconds of one (1, C, h, w) frame, after one warm-up run (``lr_size``: width, height)."""
    times, _ = time_frames(runnable, (lr_size[1], lr_size[0]), runs=repeats)
    return statistics.median(times) * 1000


def measure(model: SRModel, *, runtime: str, device: str, threads: int | None, lr_size: tuple[int, int],
            repeats: int) -> tuple[float, str]:
    """(median ms per frame, the runtime that ran it) for ``model`` at ``lr_size`` (width, height)."""
    with tempfile.TemporaryDirectory(prefix="srdistill-plan-") as tmp:
        path = model_file(model, runtime, Path(tmp))
        runnable, desc = open_model(path, runtime=runtime, device=device, threads=threads,
                                    size=(lr_size[1], lr_size[0]), fast=True)  # as upscale runs it
        try:
            ms = time_runnable(runnable, lr_size, repeats)
        except (RuntimeError, ValueError, MemoryError) as e:
            raise SrDistillError(f"{desc['runtime']} could not run it at {lr_size[0]}x{lr_size[1]}: "
                                 + (str(e).strip().splitlines() or [type(e).__name__])[0][:160]) from None
        finally:
            del runnable
    return ms, desc["runtime"]
