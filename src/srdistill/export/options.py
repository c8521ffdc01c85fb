"""Export options, results, errors and the option parsers."""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExportError, QualityGateError, UsageError


MIN_OPSET = 13
try:  # the highest opset the TorchScript-based exporter can write
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as MAX_OPSET
except ImportError:  # pragma: no cover - older/newer torch
    MAX_OPSET = 17

ATOL_FP32 = 1e-4
ATOL_FP16 = 2e-2

#: ``ExportOptions.int8_weights``: "auto" (full range on a CPU with VNNI, else 7-bit), "full", "reduced"
INT8_WEIGHTS = ("auto", "full", "reduced")

# Architectures whose traced graph bakes the input size in (window partitioning, padding to a
# window multiple, attention masks computed for one resolution, fixed patch grids). The
# verification at other sizes catches these too; naming them gives a clear message up front.
WINDOW_ATTENTION_FAMILIES = frozenset({
    "SwinIR", "Swin2SR", "HAT", "DAT", "DRCT", "ATD", "GRL", "RGT", "CRAFT", "SCUNet", "Uformer", "IPT",
    "FDAT", "OmniSR", "DCTLSA",
})


class Int8QualityError(QualityGateError, ExportError):
    """The int8 model lost more PSNR than allowed (exit code 3, like every quality gate)."""


# --------------------------------------------------------------------------- options and results


@dataclass
class ExportOptions:
    opset: int = 17
    fp16: bool = False
    simplify: bool = True
    int8: bool = False
    calibration: str | os.PathLike | None = None  # folder of HR images; None -> dynamic int8
    max_psnr_drop: float = 0.3
    force: bool = False
    static_size: tuple[int, int] | None = None  # (height, width) of a fixed-size model
    overwrite: bool = False
    export_size: int = 64  # LR side of the example input traced by the exporter
    atol: float = ATOL_FP32
    atol_fp16: float = ATOL_FP16
    calibration_size: int = 64  # LR side of the calibration/evaluation patches (centre crops)
    max_calibration_images: int = 32
    speed_size: int = 128
    speed_runs: int = 5
    # int8 weight range: "full" (8-bit) needs VNNI (its u8 x s8 sums do not saturate), "reduced" (7-bit) is
    # safe on every x86 CPU; "auto" picks full on a CPU with VNNI (this one), reduced elsewhere
    int8_weights: str = "auto"


@dataclass
class Verification:
    """onnxruntime vs fp32 PyTorch on one input."""

    stage: str  # "export", "simplified", "fp16" or "int8"
    size: tuple[int, int]  # LR input (height, width)
    batch: int
    max_abs_diff: float | None
    tolerance: float | None  # None for int8: judged by PSNR instead, here only finite/shape
    ok: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        return d


@dataclass
class Int8Report:
    mode: str  # "static" (QDQ, calibrated) or "dynamic"
    images: int  # images the PSNR was measured on
    image_source: str  # "calibration" or "synthetic"
    psnr_reference: str  # "hr": each model vs the HR image; "fp32": int8 vs the fp32 output
    psnr_fp32: float | None
    psnr_int8: float | None
    psnr_drop: float | None
    psnr_int8_vs_fp32: float | None
    calibration_images: int
    patch_size: tuple[int, int]
    fp32_ms: float
    int8_ms: float
    speedup: float
    speed_size: tuple[int, int]
    weights: str = "reduced"  # "full" (8-bit range) or "reduced" (7-bit range, onnxruntime's reduce_range)
    vnni: bool | None = None  # whether the exporting CPU has VNNI (what "auto" chose by)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["speed_size"] = list(self.speed_size)
        return d


@dataclass
class ExportResult:
    path: Path
    architecture: str
    scale: int
    opset: int
    fp16: bool
    int8: bool
    simplified: bool
    static_size: tuple[int, int] | None
    verification: list[Verification]
    size_bytes: int
    fp32_size_bytes: int
    params: int
    sha256: str
    source_sha256: str
    reparameterized: int = 0  # re-parameterised blocks folded into their deploy conv
    quantization: Int8Report | None = None
    warnings: list[str] = field(default_factory=list)
    format: str = "onnx"  # "onnx", "openvino" (.xml + .bin) or "ncnn" (.param + .bin)
    files: list[str] = field(default_factory=list)  # every file written (path first)

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"

    @property
    def max_abs_diff(self) -> float | None:
        diffs = [v.max_abs_diff for v in self.verification if v.stage != "int8" and v.max_abs_diff is not None]
        return max(diffs) if diffs else None

    def to_dict(self) -> dict[str, Any]:
        q = self.quantization
        return {
            "path": str(self.path),
            "architecture": self.architecture,
            "scale": self.scale,
            "params": self.params,
            "opset": self.opset,
            "precision": self.precision,
            "fp16": self.fp16,
            "int8": self.int8,
            "simplified": self.simplified,
            "dynamic": self.static_size is None,
            "static_size": list(self.static_size) if self.static_size else None,
            "reparameterized": self.reparameterized,
            "verification": [v.to_dict() for v in self.verification],
            "max_abs_diff": self.max_abs_diff,
            "size_bytes": self.size_bytes,
            "fp32_size_bytes": self.fp32_size_bytes,
            "psnr_drop": q.psnr_drop if q else None,
            "speedup": q.speedup if q else None,
            "quantization": q.to_dict() if q else None,
            "format": self.format,
            "files": list(self.files) or [str(self.path)],
            "sha256": self.sha256,
            "source_sha256": self.source_sha256,
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------- option parsing


_SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:[xX×*,]\s*(\d+))?\s*$")


def parse_static_size(text: str | None) -> tuple[int, int] | None:
    """``"64x96"`` -> ``(64, 96)`` (height x width); ``"64"`` -> ``(64, 64)``; None -> None."""
    if text is None:
        return None
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"invalid --static-size {text!r}: expected HEIGHTxWIDTH, e.g. 64x64")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) is not None else h
    if h < 1 or w < 1:
        raise UsageError(f"invalid --static-size {text!r}: height and width must be at least 1")
    if h > 8192 or w > 8192:
        raise UsageError(f"invalid --static-size {text!r}: at most 8192x8192")
    return h, w


def check_options(o: ExportOptions) -> None:
    if isinstance(o.opset, bool) or not isinstance(o.opset, int):
        raise UsageError(f"--opset must be an integer, not {o.opset!r}")
    if o.opset < MIN_OPSET:
        raise UsageError(f"--opset {o.opset} is too old: srdistill exports opset {MIN_OPSET} to {MAX_OPSET}")
    if o.opset > MAX_OPSET:
        raise UsageError(f"--opset {o.opset} is newer than torch's TorchScript exporter supports "
                         f"(opset {MIN_OPSET} to {MAX_OPSET})")
    if o.fp16 and o.int8:
        raise UsageError("--fp16 and --int8 exclude each other: choose one precision")
    if o.calibration is not None and not o.int8:
        raise UsageError("--calibration is only used with --int8")
    if not (isinstance(o.max_psnr_drop, (int, float)) and math.isfinite(o.max_psnr_drop)) or o.max_psnr_drop < 0:
        raise UsageError(f"--max-psnr-drop must be a number of dB >= 0, not {o.max_psnr_drop!r}")
    if o.static_size is not None:
        if (len(tuple(o.static_size)) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                 for v in o.static_size)):
            raise UsageError(f"invalid static size {o.static_size!r}: expected (height, width) >= 1")
    if o.int8_weights not in INT8_WEIGHTS:
        raise UsageError(f"int8 weights must be one of {', '.join(INT8_WEIGHTS)}, not {o.int8_weights!r}")
    for name in ("export_size", "calibration_size", "speed_size", "speed_runs", "max_calibration_images"):
        v = getattr(o, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"{name} must be a positive integer, not {v!r}")


def cpu_has_vnni(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has VNNI (``avx512_vnni`` or ``avx_vnni`` in /proc/cpuinfo's flags; False where
    there is no such file)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[-1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni"})
    except OSError:
        return False
    return False


def int8_weight_range(choice: str = "auto", vnni: bool | None = None) -> tuple[str, bool]:
    """("full" or "reduced", whether the CPU has VNNI) for ``ExportOptions.int8_weights``."""
    has = cpu_has_vnni() if vnni is None else bool(vnni)
    if choice == "auto":
        return ("full" if has else "reduced"), has
    return choice, has
