"""What ``srdistill eval`` is asked (:class:`EvalOptions`, the option parsers) and what it returns
(:class:`EvalReport`, :class:`ModelRow`); :mod:`srdistill.evaluate` does the work."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import QualityGateError, UsageError, shown


def parse_crop(value: Any) -> tuple[int, int, int, int]:
    """``"x,y,w,h"`` (or a 4-sequence) in HR pixels -> a tuple of ints; UsageError if malformed."""
    err = UsageError(f"invalid --crop {value!r}: expected x,y,w,h in HR pixels "
                     "(four integers, x and y >= 0, w and h > 0)")
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace(" ", "").split(",")]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise err
    if len(parts) != 4:
        raise err
    try:
        nums = []
        for p in parts:
            if isinstance(p, bool):
                raise ValueError
            if isinstance(p, str):
                if not p.lstrip("-").isdigit():
                    raise ValueError
                p = int(p)
            if not isinstance(p, (int, np.integer)):
                raise ValueError
            nums.append(int(p))
    except ValueError:
        raise err from None
    x, y, w, h = nums
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise err
    return x, y, w, h


def parse_psnr_thresholds(values: Sequence[Any] | dict | float | None) -> dict[str | None, float]:
    """``--fail-under-psnr`` values: ``"X"`` (every dataset) or ``"DATASET=X"`` (one dataset).

    Returns ``{None: X, "Set5": Y, ...}``; a dataset's own threshold overrides the global one.
    """
    if values is None:
        return {}
    if isinstance(values, dict):
        items = list(values.items())
    else:
        if isinstance(values, (str, int, float)):
            values = [values]
        items = []
        for v in values:
            if isinstance(v, str) and "=" in v:
                name, _, num = v.rpartition("=")
                name = name.strip()
                if not name:
                    raise UsageError(f"invalid --fail-under-psnr {v!r}: expected X or DATASET=X (X in dB)")
                items.append((name, num))
            else:
                items.append((None, v))
    out: dict[str | None, float] = {}
    for name, num in items:
        shown = f"{name}={num}" if name else str(num)
        try:
            if isinstance(num, bool):
                raise ValueError
            x = float(str(num).strip())
        except ValueError:
            raise UsageError(f"invalid --fail-under-psnr {shown!r}: expected X or DATASET=X (X in dB)") from None
        if not math.isfinite(x):
            raise UsageError(f"invalid --fail-under-psnr {shown!r}: the threshold must be a finite number of dB")
        if name in out:
            what = f"for dataset {name!r}" if name else "without a dataset name"
            raise UsageError(f"--fail-under-psnr given twice {what}")
        out[name] = x
    return out


def dataset_name(folder: str | os.PathLike) -> str:
    """A dataset's display name: its folder name, or the parent's for ``.../Set5/HR``."""
    p = Path(folder)
    if p.is_file():
        return p.stem
    p = p.resolve() if str(p) in ("", ".", "..") or p.name in ("", ".", "..") else p
    name = p.name
    if name.lower() in ("hr", "gt", "hq") and p.parent.name:
        name = p.parent.name
    return name or str(folder)


def check_int(name: str, value: Any, minimum: int, allow_none: bool = True, maximum: int | None = None) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UsageError(f"invalid {name} {shown(value)}: expected an integer >= {minimum}")
    if maximum is not None and value > maximum:
        raise UsageError(f"invalid {name} {shown(value)}: expected at most {maximum}")
    return int(value)


#: largest LR side of the benchmark input (x4: an 8192 x 8192 output, 0.8 GB as float32)
MAX_BENCH_SIZE = 2048


@dataclass
class EvalOptions:
    """What ``srdistill eval`` was asked to do (the CLI fills it from its flags).

    ``models`` and ``teacher`` are model files (anything :func:`srdistill.runtimes.select.load_any`
    opens) or already-loaded model objects (anything with ``scale`` and ``__call__``, as tests
    use). With no model, ``scale`` is required and only the bicubic row is computed.
    """

    models: list = field(default_factory=list)
    data: list = field(default_factory=list)
    scale: int | None = None
    crop_border: int | None = None
    y_channel: bool = True
    self_ensemble: bool = False
    device: str = "auto"
    tile: int | None = None
    teacher: Any = None
    save_images: str | os.PathLike | None = None
    overwrite: bool = False
    comparison: str | os.PathLike | None = None
    crop: Any = None
    fail_under_psnr: Any = None
    benchmark: bool = True
    bench_size: int = 128
    bench_repeats: int = 10
    threads: int | None = None
    runtime: str = "native"  # native (each file in its own format's runtime), auto (measured), torch, ...
    reference: str = "hr"  # "teacher": score against the teacher's outputs (fidelity), not the HR images
    degradation: str | None = None  # degrade the HR into the inputs (realesrgan, light, a file)
    seed: int = 0  # of the degradation
    lr_only: bool = False  # the folders hold inputs, no HR (needs reference "teacher")


@dataclass
class ModelEntry:
    """One model an eval scores: its shown name, the runnable, its role (baseline, teacher, student),
    its format and its file."""

    name: str
    model: Any
    role: str
    format: str
    path: str | None = None


@dataclass
class ModelRow:
    name: str
    role: str  # "baseline" (bicubic), "teacher", "student"
    format: str  # "bicubic", "pytorch", "onnx", "object"
    architecture: str
    path: str | None = None
    params: int | None = None
    compression: float | None = None  # teacher params / these params
    self_ensemble: bool = False
    datasets: dict = field(default_factory=dict)  # name -> {psnr, ssim, delta_psnr, images}
    latency_ms_per_mp: float | None = None
    peak_memory_mib: float | None = None
    macs_per_mp: float | None = None
    benchmark: dict | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class EvalReport:
    scale: int
    crop_border: int
    y_channel: bool
    self_ensemble: bool
    device: str
    datasets: list[dict]
    models: list[ModelRow]
    teacher: str | None = None
    benchmark: dict | None = None
    comparison: dict | None = None
    saved_images: str | None = None
    quality_gate: dict | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reference: str = "hr"

    @property
    def skipped(self) -> list[str]:
        """``dataset/name: reason`` of every image left out because it could not be read."""
        return [f"{d['name']}/{s}" for d in self.datasets for s in d.get("skipped", [])]

    @property
    def metric(self) -> str:
        space = "Y channel (BT.601, studio range)" if self.y_channel else "RGB"
        if self.reference == "teacher":
            return (f"fidelity to the teacher, not to ground truth: PSNR (dB) / SSIM (Gaussian 11x11, sigma 1.5) "
                    f"against the teacher's uint8 outputs on the {space}, {self.crop_border} px border cropped; "
                    "inf = identical to the teacher")
        return (f"PSNR (dB) / SSIM (Gaussian 11x11, sigma 1.5) on the {space} of uint8 outputs, "
                f"{self.crop_border} px border cropped; inf = identical to HR")

    def row(self, name: str) -> ModelRow:
        for r in self.models:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "scale": self.scale,
            "crop_border": self.crop_border,
            "y_channel": self.y_channel,
            "self_ensemble": self.self_ensemble,
            "metric": self.metric,
            "device": self.device,
            "datasets": self.datasets,
            "teacher": self.teacher,
            "models": [r.to_dict() for r in self.models],
            "benchmark": self.benchmark,
            "comparison": self.comparison,
            "saved_images": self.saved_images,
            "quality_gate": self.quality_gate,
            "notes": self.notes,
            "seconds": self.seconds,
            "reference": self.reference,
        }

    def check_quality_gate(self) -> None:
        """Raise :class:`QualityGateError` (exit code 3) if a ``--fail-under-psnr`` threshold was missed."""
        g = self.quality_gate
        if not g or g.get("passed", True):
            return
        parts = [f"{f['model']} on {f['dataset']}: {f['psnr']:.3f} dB < {f['threshold']:g} dB" for f in g["failures"]]
        raise QualityGateError("quality gate failed: " + "; ".join(parts))


# --------------------------------------------------------------------------- evaluate
