"""ONNX export with verification, optional simplification, fp16 and int8 quantization.

One call, :func:`export_onnx`, turns a checkpoint (or a loaded :class:`SRModel`) into an ONNX
file that follows the ecosystem contract (input ``input``, output ``output``, NCHW float32 RGB in
[0, 1], dynamic ``batch``/``height``/``width``) and that has been *checked*: onnxruntime must
reproduce the PyTorch output at the export size and at two other sizes (one non-square with a
batch of 2, one not a multiple of 8 where the architecture allows it) before anything is
written. A failed check raises :class:`~srdistill.errors.ExportError` and leaves no file behind.

Stages (each one re-verified against the same fp32 PyTorch references):

1. ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``), in eval mode, with
   re-parameterised convolutions (SPAN's ``Conv3XC``) folded into their single deploy conv
   first, so the graph carries no training-branch compute.
2. ``--simplify`` (default): ``onnxslim.slim``. A graph that onnxslim breaks is not shipped: the
   unsimplified, verified graph is kept and a warning says so.
3. ``--fp16``: ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``
   (internal fp16, float32 I/O so the contract holds), refused when the fp16 graph produces
   NaN/inf or differs from fp32 PyTorch by more than 2e-2.
4. ``--int8``: onnxruntime static QDQ quantization (per-channel int8 weights, uint8 activations)
   calibrated on LR patches made from ``--calibration DIR`` (images are treated as HR and
   downscaled with srdistill's MATLAB-compatible bicubic), or dynamic quantization when no
   calibration folder is given (its quality is then measured on built-in synthetic images).
   A ``--calibration`` folder that is missing or holds no images is an error, not a silent
   fallback to dynamic quantization.
   The PSNR (Y channel, crop = scale, BasicSR) of the fp32 and int8 models against the HR
   images is compared; a drop above ``max_psnr_drop`` refuses the file unless ``force``.

Window-attention models (SwinIR, HAT, DAT, ...) bake the input size into the traced graph;
they are refused unless a fixed size is asked for with ``static_size``, which exports a
fixed-shape (batch 1) model and records ``srdistill.static_size`` in the metadata: such a model
must be run tile by tile at exactly that size.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import math
import os
import re
import statistics
import tempfile
import time
import types
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from . import __version__
from .errors import ExportError, BadPathError, ImageError, QualityGateError, SrDistillError, UnsupportedModelError, UsageError
from .fileio import atomic_path, check_writable
from .models.checkpoint import jsonable
from .progress import NULL, Reporter

__all__ = [
    "ExportOptions",
    "ExportResult",
    "Verification",
    "Int8Report",
    "Int8QualityError",
    "export_onnx",
    "parse_static_size",
    "WINDOW_ATTENTION_FAMILIES",
    "MIN_OPSET",
    "MAX_OPSET",
]

MIN_OPSET = 13
try:  # the highest opset the TorchScript-based exporter can write
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as MAX_OPSET
except ImportError:  # pragma: no cover - older/newer torch
    MAX_OPSET = 17

ATOL_FP32 = 1e-4
ATOL_FP16 = 2e-2

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


def _check_options(o: ExportOptions) -> None:
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
    for name in ("export_size", "calibration_size", "speed_size", "speed_runs", "max_calibration_images"):
        v = getattr(o, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"{name} must be a positive integer, not {v!r}")


# --------------------------------------------------------------------------- small helpers


def _first_line(e: BaseException, limit: int = 240) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0].strip() or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _round_up(v: int, m: int) -> int:
    return ((int(v) + m - 1) // m) * m


def _test_batch(batch: int, channels: int, h: int, w: int, seed: int) -> np.ndarray:
    """A deterministic image-like batch in [0, 1]: gradients, edges, texture and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.empty((batch, channels, h, w), dtype=np.float32)
    for b in range(batch):
        for c in range(channels):
            f1, f2 = rng.uniform(2, 9, size=2)
            ph = rng.uniform(0, 2 * np.pi)
            img = 0.35 * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))
            img += 0.2 * np.sin(2 * np.pi * (f1 * xx + f2 * yy) + ph)
            img += 0.25 * ((xx + 0.3 * yy) > rng.uniform(0.3, 0.7))
            img += 0.12 * rng.standard_normal((h, w))
            out[b, c] = img - img.min()
            out[b, c] /= max(float(out[b, c].max()), 1e-6)
    return out


def _synthetic_hr(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    """Synthetic HR images (``H x W x 3`` uint8) for dynamic int8 quality checks."""
    imgs = []
    for i in range(n):
        x = _test_batch(1, 3, h, w, seed + i)[0]
        # smooth the noise a little so bicubic LR keeps structure a model can rebuild
        x = 0.5 * x + 0.25 * (np.roll(x, 1, axis=1) + np.roll(x, 1, axis=2))
        imgs.append(np.ascontiguousarray((np.clip(x, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8)))
    return imgs


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence tracer/deprecation warnings and onnxruntime.quantization's root-logger chatter."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003
            return False

    root = logging.getLogger()
    flt = _Drop()
    root.addFilter(flt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(flt)


def _session(model_bytes: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 4  # failures are reported by us, as one line
    return ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])


def _serialize(proto) -> bytes:
    try:
        return proto.SerializeToString()
    except ValueError as e:  # protobuf's 2 GiB limit
        raise ExportError(f"the ONNX graph cannot be serialised: {_first_line(e)}",
                          hint="models over 2 GB are not supported") from None


# --------------------------------------------------------------------------- model preparation


def _fold_reparameterized(module: torch.nn.Module) -> tuple[int, set[str]]:
    """Fold re-parameterisable blocks (SPAN's Conv3XC) into their deploy conv, for good.

    In eval mode such a block recomputes ``eval_conv`` from its training branches on every
    forward. We compute it once and make the recomputation a no-op on this (copied) module,
    so the traced graph holds only ``eval_conv``. Returns how many blocks were folded and
    the names of the training-only parameters, which must not appear in the graph.
    """
    n = 0
    train_only: set[str] = set()
    for name, m in module.named_modules():
        if callable(getattr(m, "update_params", None)) and isinstance(getattr(m, "eval_conv", None), torch.nn.Module):
            with torch.no_grad():
                m.update_params()
            m.update_params = lambda: None  # instance attribute: only this copy changes
            n += 1
            prefix = f"{name}." if name else ""
            for pname, _ in m.named_parameters():
                if not pname.startswith("eval_conv."):
                    train_only.add(prefix + pname)
    return n, train_only


def _safm_forward(self, x):
    """SAFMN's SAFM block with ``adaptive_max_pool2d(x, (h // 2**i, w // 2**i))`` written as
    ``max_pool2d(x, 2**i)``: identical for inputs that are multiples of ``2**(n_levels-1)``
    (SAFMN requires multiples of 8), and exportable with dynamic height/width."""
    import torch.nn.functional as F

    h, w = x.size()[-2:]
    xc = x.chunk(self.n_levels, dim=1)
    out = []
    for i in range(self.n_levels):
        if i > 0:
            k = 2**i
            s = F.max_pool2d(xc[i], kernel_size=k, stride=k)
            s = self.mfr[i](s)
            s = F.interpolate(s, size=(h, w), mode="nearest")
        else:
            s = self.mfr[i](xc[i])
        out.append(s)
    out = self.aggr(torch.cat(out, dim=1))
    return self.act(out) * x


def _patch_for_export(module: torch.nn.Module) -> list[str]:
    """Exportable, numerically identical forwards for blocks the TorchScript exporter cannot take."""
    patched = []
    for name, m in module.named_modules():
        if (type(m).__name__ == "SAFM" and type(m).__module__.startswith("spandrel.")
                and all(hasattr(m, a) for a in ("n_levels", "mfr", "aggr", "act"))):
            m.forward = types.MethodType(_safm_forward, m)
            patched.append(name)
    return patched


def _uses_window_attention(model) -> bool:
    if model.architecture in WINDOW_ATTENTION_FAMILIES:
        return True
    for m in model.module.modules():
        if re.search(r"WindowAttention|Swin", type(m).__name__):
            return True
    return False


def _suggest_static(model) -> str:
    hp = model.hyperparameters or {}
    ws = hp.get("window_size") or hp.get("split_size") or 8
    if isinstance(ws, (list, tuple)):
        ws = max(int(v) for v in ws) if ws else 8
    side = max(64, int(model.min_size or 0))
    side = _round_up(side, math.lcm(int(ws) if isinstance(ws, int) and ws > 0 else 8, max(1, model.multiple_of)))
    return f"{side}x{side}"


FP16_MAX = 65504.0


def _fp16_hazards(module: torch.nn.Module, x: np.ndarray, reference: np.ndarray, tol: float) -> str | None:
    """Why fp16 is unsafe for ``module`` on input ``x``, or None.

    onnxruntime's CPU provider runs fp16 nodes that lack fp16 kernels (Conv among them on x86)
    in fp32 behind inserted Casts, so a CPU run of the fp16 graph cannot show activations that
    overflow float16. Check that directly: every weight and every module output of an fp32
    forward must stay within float16's range (65504). Where CUDA is available, also run the
    model in half precision there and compare it with the fp32 output.
    """
    for name, p in module.named_parameters():
        if p.is_floating_point() and p.numel() and float(p.detach().abs().max()) > FP16_MAX:
            return f"weight {name} exceeds float16's range ({float(p.detach().abs().max()):.3g} > 65504)"
    worst: list = [0.0, ""]

    def hook(name):
        def fn(_m, _inp, out):
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                    v = float(t.detach().abs().max())
                    if not v <= worst[0]:  # also catches NaN
                        worst[0], worst[1] = v, name
        return fn

    handles = [m.register_forward_hook(hook(n or "(model)")) for n, m in module.named_modules()]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
    if not worst[0] <= FP16_MAX:
        return f"activations reach {worst[0]:.3g} in {worst[1]} (float16 overflows above 65504)"
    if torch.cuda.is_available():
        try:
            half = copy.deepcopy(module).to("cuda", torch.float16)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y = half(torch.from_numpy(x).to("cuda", torch.float16)).float().cpu().numpy()
            del half
        except Exception as e:  # noqa: BLE001
            return f"the model fails in half precision on CUDA: {_first_line(e)}"
        if not np.isfinite(y).all():
            return "the model outputs NaN/inf in half precision on CUDA"
        d = float(np.abs(y - reference).max())
        if d > tol:
            return f"in half precision on CUDA it differs from fp32 by {d:.3g} (more than {tol:g})"
    return None


# --------------------------------------------------------------------------- verification plan


def _pick(start: int, lo: int, m: int, avoid8: bool, exclude: set[int]) -> int:
    """The first size >= max(start, lo) that is a multiple of m (and, if possible, not of 8)."""
    v = _round_up(max(start, lo, 1), m)
    for _ in range(64):
        if v not in exclude and (not avoid8 or v % 8):
            return v
        v += m
    return _round_up(max(start, lo, 1), m)


def _plan_sizes(model, opts: ExportOptions) -> tuple[tuple[int, int], list[tuple[int, int, int]]]:
    """(trace size, [(batch, h, w), ...]) for the verification."""
    if opts.static_size:
        h, w = opts.static_size
        return (h, w), [(1, h, w), (1, h, w)]  # two different images at the one size
    m = max(1, int(model.multiple_of))
    lo = max(1, int(model.min_size))
    s = _round_up(max(opts.export_size, lo), m)
    sizes = [(1, s, s)]
    can_avoid8 = m % 8 != 0
    if model.square:
        a = _pick(40, lo, m, False, {s})
        b = _pick(29, lo, m, can_avoid8, {s, a})
        sizes += [(2, a, a), (1, b, b)]
    else:
        a = _pick(40, lo, m, False, {s})
        b = _pick(56, lo, m, False, {a})
        h3 = _pick(29, lo, m, can_avoid8, {s})
        w3 = _pick(43, lo, m, can_avoid8, {s, h3})
        sizes += [(2, a, b), (1, h3, w3)]
    return (s, s), sizes


# --------------------------------------------------------------------------- ONNX surgery


def _set_io(proto, channels_in: int, channels_out: int, scale: int, static: tuple[int, int] | None) -> None:
    """Name and shape the graph's I/O exactly as the contract says (tools may have renamed dims)."""
    inp, out = proto.graph.input[0], proto.graph.output[0]
    if static:
        h, w = static
        in_dims = [1, channels_in, h, w]
        out_dims = [1, channels_out, h * scale, w * scale]
    else:
        in_dims = ["batch", channels_in, "height", "width"]
        out_dims = ["batch", channels_out, "height_out", "width_out"]
    for vi, dims in ((inp, in_dims), (out, out_dims)):
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            nd = shape.dim.add()
            if isinstance(d, str):
                nd.dim_param = d
            else:
                nd.dim_value = int(d)


def _toposort(graph) -> None:
    """Order ``graph.node`` topologically (the fp16 converter appends its input Casts at the end,
    which onnxruntime accepts but the ONNX checker and other runtimes do not)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a dangling input: leave the rest as it was
            ordered.extend(rest)
            break
        pending = rest
    if [id(n) for n in ordered] != [id(n) for n in graph.node]:
        nodes = [copy.deepcopy(n) for n in ordered]
        del graph.node[:]
        graph.node.extend(nodes)


def _initializer_names(proto) -> set[str]:
    names = {i.name for i in proto.graph.initializer}
    for node in proto.graph.node:
        names.update(node.input)
    return names


# --------------------------------------------------------------------------- calibration data


def _list_images(folder: Path) -> list[Path]:
    from .data.images import scan_folder

    return sorted(scan_folder(folder, recursive=False))


def _check_calibration(path) -> list[Path]:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"calibration folder {str(p)!r} does not exist",
                             hint="give a folder of images, or leave out --calibration for dynamic int8")
    if not p.is_dir():
        raise UsageError(f"--calibration {str(p)!r} is not a folder")
    imgs = _list_images(p)
    if not imgs:
        from .data.images import IMAGE_EXTENSIONS

        raise SrDistillError(f"calibration folder {str(p)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})",
                             hint="add a few representative images, or leave out --calibration for dynamic int8")
    return imgs


def _read_rgb(path: Path) -> np.ndarray:
    """A calibration image as H x W x 3 uint8 (the one image reader: 16-bit, gray, EXIF, alpha dropped)."""
    from .data.datasets import to_uint8_chw
    from .data.images import read_image

    try:
        img = read_image(path)
    except SrDistillError as e:
        raise ImageError(f"cannot read calibration image {path.name}: {_first_line(e)}") from None
    return np.ascontiguousarray(to_uint8_chw(img.rgb, 3).permute(1, 2, 0).numpy())


@dataclass
class _Pair:
    lr: np.ndarray  # (1, C, h, w) float32 in [0, 1], uint8-quantised
    hr: np.ndarray | None  # (H, W, 3) uint8, None when the image was too small to downscale


def _make_pairs(images: list[np.ndarray], model, patch: tuple[int, int], static: bool) -> list[_Pair]:
    """Centre crops: an HR crop of ``scale * patch`` and its bicubic LR (paper protocol)."""
    from .data.resize import downscale_for_sr, quantize_uint8

    s = model.scale
    m = max(1, model.multiple_of)
    lo = max(1, model.min_size)
    pairs = []
    for hr in images:
        if model.input_channels == 1:  # grayscale models: BT.601 luma
            hr = np.round(hr.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None].astype(np.uint8)
        H, W = hr.shape[:2]
        ph, pw = patch
        if not static:  # shrink to the image (keeping the size rules) if it is smaller
            ph = min(ph, (H // s) // m * m)
            pw = min(pw, (W // s) // m * m)
        if ph >= lo and pw >= lo and ph > 0 and pw > 0 and ph * s <= H and pw * s <= W:
            top, left = (H - ph * s) // 2, (W - pw * s) // 2
            crop = hr[top: top + ph * s, left: left + pw * s]
            lr = downscale_for_sr(torch.from_numpy(np.array(crop)).permute(2, 0, 1).contiguous(), s)
            lr = quantize_uint8(lr).to(torch.float32).numpy()[None]
            pairs.append(_Pair(np.ascontiguousarray(lr, dtype=np.float32), crop))
        else:  # too small to make an LR/HR pair: use the image itself as an LR input
            ph, pw = patch if static else (H // m * m, W // m * m)
            if ph < lo or pw < lo or ph < 1 or pw < 1 or ph > H or pw > W:
                continue
            top, left = (H - ph) // 2, (W - pw) // 2
            lr = hr[top: top + ph, left: left + pw].astype(np.float32).transpose(2, 0, 1)[None] / 255.0
            pairs.append(_Pair(np.ascontiguousarray(lr), None))
    return pairs


def _psnr(sr: np.ndarray, ref_uint8: np.ndarray, scale: int) -> float:
    from .metrics import psnr, to_uint8

    return float(psnr(to_uint8(torch.from_numpy(sr)), ref_uint8, scale, test_y_channel=True))


def _median_ms(sess, x: np.ndarray, runs: int) -> float:
    sess.run(None, {"input": x})  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


# --------------------------------------------------------------------------- the export


class _Exporter:
    def __init__(self, model, out_path: Path, opts: ExportOptions, reporter: Reporter):
        self.model = model
        self.out = out_path
        self.o = opts
        self.r = reporter
        self.verification: list[Verification] = []
        self.warnings: list[str] = []
        self.static = tuple(opts.static_size) if opts.static_size else None
        self.cin = int(model.input_channels)
        self.cout = int(model.output_channels)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        self.r.warn(msg)

    # -- references ------------------------------------------------------------------------

    def references(self, module: torch.nn.Module, sizes) -> None:
        self.inputs: dict[tuple, np.ndarray] = {}
        self.refs: dict[tuple, np.ndarray] = {}
        for i, (b, h, w) in enumerate(sizes):
            key = (i, b, h, w)
            x = _test_batch(b, self.cin, h, w, seed=1000 + i)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y = module(torch.from_numpy(x))
            if isinstance(y, (tuple, list)):
                y = y[0]
            y = y.detach().to("cpu", torch.float32).numpy()
            if y.shape != (b, self.cout, h * self.model.scale, w * self.model.scale):
                raise UnsupportedModelError(
                    f"{self.model.architecture} maps a {h}x{w} input to shape {tuple(y.shape)}, "
                    f"not an x{self.model.scale} image; it cannot be exported as an SR model")
            if not np.isfinite(y).all():
                raise ExportError(f"the PyTorch model itself outputs NaN/inf at {h}x{w}: nothing to export")
            self.inputs[key] = x
            self.refs[key] = y

    # -- verification ----------------------------------------------------------------------

    def verify(self, model_bytes: bytes, stage: str, tol: float | None) -> list[Verification]:
        rows: list[Verification] = []
        try:
            sess = _session(model_bytes)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            for (_, b, h, w) in self.refs:
                rows.append(Verification(stage, (h, w), b, None, tol, False, f"onnxruntime cannot load it: {_first_line(e)}"))
            self.verification += rows
            return rows
        with self.r.task(f"verifying ({stage})", total=len(self.refs)) as task:
            for key, ref in self.refs.items():
                _, b, h, w = key
                try:
                    (y,) = sess.run(["output"], {"input": self.inputs[key]})
                    y = np.asarray(y, dtype=np.float32)
                except Exception as e:  # noqa: BLE001
                    rows.append(Verification(stage, (h, w), b, None, tol, False, _first_line(e)))
                    task.advance(1)
                    continue
                if y.shape != ref.shape:
                    rows.append(Verification(stage, (h, w), b, None, tol, False,
                                             f"output shape {tuple(y.shape)}, expected {tuple(ref.shape)}"))
                elif not np.isfinite(y).all():
                    rows.append(Verification(stage, (h, w), b, float("inf"), tol, False, "output has NaN/inf"))
                else:
                    d = float(np.abs(y - ref).max())
                    rows.append(Verification(stage, (h, w), b, d, tol, tol is None or d <= tol))
                task.advance(1)
        self.verification += rows
        return rows

    def fail_message(self, rows: list[Verification], tol: float | None) -> str:
        bad = [v for v in rows if not v.ok]
        v = bad[0]
        where = f"{v.size[0]}x{v.size[1]}" + (f" (batch {v.batch})" if v.batch > 1 else "")
        if v.error:
            return f"at {where}: {v.error}"
        return f"at {where}: max abs diff {v.max_abs_diff:.3g} > {tol:g}"

    def check_export(self, model_bytes: bytes, stage: str) -> bool:
        """Verify an fp32 graph; raise on failure at the export size, report size-dependence."""
        rows = self.verify(model_bytes, stage, self.o.atol)
        if all(v.ok for v in rows):
            return True
        if stage != "export":
            return False  # the caller falls back to the previous, verified graph
        first = rows[0]
        arch = self.model.architecture
        if not first.ok or self.static:
            raise ExportError(f"onnxruntime does not reproduce the PyTorch {arch} model "
                              f"{self.fail_message(rows, self.o.atol)}")
        raise ExportError(
            f"the exported {arch} graph is only right at the size it was traced at "
            f"({first.size[0]}x{first.size[1]}): {self.fail_message(rows, self.o.atol)}",
            hint=f"export a fixed-size model with --static-size {_suggest_static(self.model)} "
                 f"and upscale with tiles of that size")

    # -- stages ----------------------------------------------------------------------------

    def torch_export(self, module: torch.nn.Module, trace_hw: tuple[int, int]) -> bytes:
        h, w = trace_hw
        example = torch.from_numpy(_test_batch(1, self.cin, h, w, seed=7))
        if self.static:
            axes = None  # fully fixed shape: window models also bake the batch size
        else:
            axes = {"input": {0: "batch", 2: "height", 3: "width"},
                    "output": {0: "batch", 2: "height_out", 3: "width_out"}}
        buf = io.BytesIO()
        try:
            with _quiet_export(), torch.no_grad():
                # Pinned to the TorchScript-based exporter (dynamo=False): torch's default switched
                # to the dynamo exporter, which needs onnxscript (not a dependency of srdistill)
                # and exports data-dependent shapes differently.
                torch.onnx.export(
                    module, (example,), buf,
                    input_names=["input"], output_names=["output"],
                    dynamic_axes=axes, opset_version=self.o.opset,
                    do_constant_folding=True, export_params=True,
                    training=torch.onnx.TrainingMode.EVAL,
                    dynamo=False,
                )
        except Exception as e:  # noqa: BLE001 - the exporter raises many types
            raise ExportError(f"torch.onnx.export failed for {self.model.architecture} at opset "
                              f"{self.o.opset}: {_first_line(e)}") from None
        return buf.getvalue()

    def simplify(self, proto):
        import onnxslim

        try:
            with _quiet_export(), contextlib.redirect_stdout(io.StringIO()):
                return onnxslim.slim(copy.deepcopy(proto))
        except Exception as e:  # noqa: BLE001
            self.warn(f"onnxslim failed ({_first_line(e, 160)}); keeping the unsimplified graph")
            return None

    def to_fp16(self, proto):
        try:
            from onnxruntime.transformers.float16 import convert_float_to_float16
        except ImportError as e:  # pragma: no cover - ships with onnxruntime
            raise ExportError(f"--fp16 needs onnxruntime.transformers.float16: {_first_line(e)}") from None
        try:
            with _quiet_export():
                half = convert_float_to_float16(copy.deepcopy(proto), keep_io_types=True)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"fp16 conversion failed: {_first_line(e)}") from None
        _toposort(half.graph)
        return half

    def quantize(self, fp32_bytes: bytes, calib_paths: list[Path] | None) -> tuple[bytes, Int8Report]:
        import onnx
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                              quantize_static)

        from .metrics import to_uint8

        o = self.o
        if self.cin not in (1, 3) or self.cout != self.cin:
            raise ExportError(f"int8 calibration needs an RGB or grayscale model; this one maps {self.cin} to "
                              f"{self.cout} channels")
        s = self.model.scale
        m = max(1, self.model.multiple_of)
        lo = max(1, self.model.min_size)
        patch = self.static or (_round_up(max(o.calibration_size, lo), m),) * 2
        if calib_paths is not None:
            paths = calib_paths[: o.max_calibration_images]
            if len(calib_paths) > len(paths):
                self.r.info(f"using the first {len(paths)} of {len(calib_paths)} calibration images")
            images = [_read_rgb(p) for p in paths]
            source = "calibration"
        else:
            images = _synthetic_hr(4, patch[0] * s, patch[1] * s, seed=123)
            source = "synthetic"
        pairs = _make_pairs(images, self.model, patch, bool(self.static))
        if not pairs:
            need = f"{patch[0]}x{patch[1]}" if self.static else f"{lo}x{lo}"
            raise ExportError(f"no calibration image is large enough for this model (each needs at least {need} "
                              "pixels after cropping)")
        mode = "static" if calib_paths is not None else "dynamic"
        with tempfile.TemporaryDirectory(prefix="srdistill-int8-") as tmp:
            src = Path(tmp) / "fp32.onnx"
            dst = Path(tmp) / "int8.onnx"
            src.write_bytes(fp32_bytes)
            self.r.info(f"int8: {mode} quantization" + (f", calibrating on {len(pairs)} patches" if mode == "static" else ""))
            try:
                with _quiet_export():
                    if mode == "static":
                        feeds = [{"input": p.lr} for p in pairs]

                        class _Reader(CalibrationDataReader):
                            def __init__(self):
                                self._it = iter(feeds)

                            def get_next(self):
                                return next(self._it, None)

                            def rewind(self):
                                self._it = iter(feeds)

                        quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                                        per_channel=True, activation_type=QuantType.QUInt8,
                                        weight_type=QuantType.QInt8)
                    else:
                        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)
            except Exception as e:  # noqa: BLE001
                raise ExportError(f"int8 quantization ({mode}) failed: {_first_line(e)}") from None
            int8_proto = onnx.load(str(dst))
        _set_io(int8_proto, self.cin, self.cout, s, self.static)
        int8_bytes = _serialize(int8_proto)

        try:
            s32 = _session(fp32_bytes)
            s8 = _session(int8_bytes)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"onnxruntime cannot run the int8 model: {_first_line(e)}") from None
        with_hr = [p for p in pairs if p.hr is not None]
        p32, p8, pvs = [], [], []
        with self.r.task("int8: measuring PSNR", total=len(pairs)) as task:
            for p in pairs:
                (y32,) = s32.run(["output"], {"input": p.lr})
                (y8,) = s8.run(["output"], {"input": p.lr})
                if not np.isfinite(y8).all():
                    raise ExportError("the int8 model outputs NaN/inf on the calibration images")
                ref32 = to_uint8(torch.from_numpy(np.asarray(y32, dtype=np.float32)))
                pvs.append(_psnr(np.asarray(y8, dtype=np.float32), ref32, s))
                if p.hr is not None:
                    p32.append(_psnr(np.asarray(y32, dtype=np.float32), p.hr, s))
                    p8.append(_psnr(np.asarray(y8, dtype=np.float32), p.hr, s))
                task.advance(1)

        def mean(v):
            finite = [x for x in v if math.isfinite(x)]
            return float(np.mean(finite)) if finite else (float("inf") if v else None)

        if with_hr:
            reference = "hr"
            psnr32, psnr8 = mean(p32), mean(p8)
            drop = psnr32 - psnr8
            if math.isnan(drop):  # both perfect (inf dB)
                drop = 0.0
        else:
            reference = "fp32"
            psnr32 = psnr8 = drop = None
            self.warn("calibration images are too small to make LR/HR pairs: PSNR is int8 vs the fp32 output, "
                      "and the PSNR drop cannot be measured")

        sp = self.static or (o.speed_size, o.speed_size)
        if not self.static:
            sp = (_round_up(max(sp[0], lo), m), _round_up(max(sp[1], lo), m))
        x = _test_batch(1, self.cin, sp[0], sp[1], seed=99)
        with self.r.task("int8: timing", total=2) as task:
            t32 = _median_ms(s32, x, o.speed_runs)
            task.advance(1)
            t8 = _median_ms(s8, x, o.speed_runs)
            task.advance(1)
        report = Int8Report(
            mode=mode, images=len(with_hr) if with_hr else len(pairs), image_source=source,
            psnr_reference=reference, psnr_fp32=psnr32, psnr_int8=psnr8, psnr_drop=drop,
            psnr_int8_vs_fp32=mean(pvs), calibration_images=len(pairs) if mode == "static" else 0,
            patch_size=tuple(int(v) for v in pairs[0].lr.shape[-2:]),
            fp32_ms=t32, int8_ms=t8, speedup=(t32 / t8) if t8 > 0 else float("inf"), speed_size=tuple(sp),
        )
        return int8_bytes, report

    def metadata(self, proto, *, precision: str, source_sha256: str, params: int, quant: Int8Report | None,
                 simplified: bool) -> None:
        model = self.model
        meta: dict[str, str] = {}
        for k, v in (model.metadata or {}).items():  # provenance from the student file
            if k.startswith("srdistill.") and k in ("srdistill.teacher", "srdistill.metrics", "srdistill.knobs",
                                                    "srdistill.config"):
                meta[k] = v
            elif k == "modelspec.title":
                meta[k] = v
        meta.update({
            "srdistill.version": json.dumps(__version__),
            "srdistill.scale": json.dumps(int(model.scale)),
            "srdistill.architecture": json.dumps(model.architecture),
            "srdistill.hyperparameters": json.dumps(jsonable(model.hyperparameters or {})),
            "srdistill.source_sha256": json.dumps(source_sha256),
            "srdistill.params": json.dumps(int(params)),
            "srdistill.min_size": json.dumps(int(model.min_size)),
            "srdistill.multiple_of": json.dumps(int(model.multiple_of)),
            "srdistill.precision": json.dumps(precision),
            "srdistill.export": json.dumps({"opset": self.o.opset, "simplified": simplified,
                                            "dynamic": self.static is None, "exporter": "torchscript",
                                            "torch": torch.__version__}),
        })
        if "srdistill.knobs" not in meta:
            from .models.families import get_family

            fam = get_family(model.architecture)
            if fam is not None:
                try:
                    meta["srdistill.knobs"] = json.dumps({"width": fam.get_width(model.hyperparameters),
                                                          "depth": fam.get_depth(model.hyperparameters)})
                except (KeyError, TypeError, ValueError):
                    pass
        if self.static:
            meta["srdistill.static_size"] = json.dumps(list(self.static))
        if quant is not None:
            meta["srdistill.quantization"] = json.dumps(_finite_or_none(quant.to_dict()))
        del proto.metadata_props[:]
        for k in sorted(meta):
            e = proto.metadata_props.add()
            e.key, e.value = k, meta[k]
        proto.producer_name = "srdistill"
        proto.producer_version = __version__
        proto.doc_string = (f"{model.architecture} x{model.scale} super-resolution; input 'input' NCHW float32 RGB "
                            f"in [0, 1]" + (f", fixed size {self.static[0]}x{self.static[1]}" if self.static else ""))


def _finite_or_none(d: dict) -> dict:
    """JSON-safe (metadata values must be strict JSON): non-finite floats become None."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else jsonable(v)) for k, v in d.items()}


def _load_source(model_or_path):
    """An SRModel from a path or an SRModel; ONNX files are refused with a clear message."""
    from .models.loading import SRModel, load_model

    if isinstance(model_or_path, SRModel):
        return model_or_path
    p = Path(model_or_path)
    if p.suffix.lower() == ".onnx":
        if not p.exists():
            raise BadPathError(f"model file {str(p)!r} does not exist")
        raise UnsupportedModelError(f"{p.name} is already an ONNX model",
                                    hint="export takes a PyTorch or safetensors checkpoint")
    return load_model(p, device="cpu")


def _source_hash(model) -> str:
    if model.sha256:
        return model.sha256
    from .models.checkpoint import tensor_hash

    return tensor_hash({k: v for k, v in model.module.state_dict().items()})


def export_onnx(model: Any, out_path: str | os.PathLike, options: ExportOptions | None = None,
                reporter: Reporter = NULL) -> ExportResult:
    """Export ``model`` (a checkpoint path or an :class:`SRModel`) to a verified ONNX file at ``out_path``.

    Raises :class:`UsageError` for bad options, :class:`ExportError` when the export, a
    verification, the fp16 safety check or int8 quantization fails, :class:`Int8QualityError`
    (exit 3) when int8 loses more than ``max_psnr_drop`` dB without ``force``, and the model
    loading errors. Nothing is written unless every check passed.
    """
    import onnx

    o = options or ExportOptions()
    _check_options(o)
    out = Path(out_path)
    check_writable(out, overwrite=o.overwrite)
    model = _load_source(model)
    calib_paths = _check_calibration(o.calibration) if (o.int8 and o.calibration is not None) else None

    ex = _Exporter(model, out, o, reporter)
    arch = model.architecture
    if _uses_window_attention(model) and not o.static_size:
        raise ExportError(
            f"{arch} uses window attention: its ONNX graph bakes in the input size it was traced at, so a "
            "dynamic-size export would be wrong at other sizes",
            hint=f"export a fixed-size model with --static-size {_suggest_static(model)} and upscale with tiles "
                 "of that size")
    if o.static_size:
        h, w = o.static_size
        if h < model.min_size or w < model.min_size:
            raise UsageError(f"--static-size {h}x{w} is below {arch}'s minimum input size {model.min_size}")
        if h % max(1, model.multiple_of) or w % max(1, model.multiple_of):
            raise UsageError(f"--static-size {h}x{w}: {arch} needs a multiple of {model.multiple_of}")
        if model.square and h != w:
            raise UsageError(f"--static-size {h}x{w}: {arch} needs a square input")
    if o.fp16 and not model.supports_half:
        ex.warn(f"spandrel does not mark {arch} as fp16-safe; checking it on test images")

    # 1. a CPU fp32 eval copy; references from it before any export-only change
    module = copy.deepcopy(model.module).to("cpu", torch.float32).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    trace_hw, sizes = _plan_sizes(model, o)
    reporter.info(f"exporting {arch} x{model.scale} ({model.params:,} parameters) to ONNX opset {o.opset}"
                  + (f", fixed size {trace_hw[0]}x{trace_hw[1]}" if ex.static else ", dynamic size"))
    ex.references(module, sizes)
    folded, train_only = _fold_reparameterized(module)
    _patch_for_export(module)

    raw = ex.torch_export(module, trace_hw)
    proto = onnx.load_from_string(raw)
    leaked = sorted(train_only & _initializer_names(proto))
    if leaked:
        raise ExportError(f"the exported graph still computes re-parameterisation training branches "
                          f"({leaked[0]}, ...)")
    _set_io(proto, ex.cin, ex.cout, model.scale, ex.static)
    cur_bytes = _serialize(proto)
    ex.check_export(cur_bytes, "export")

    # 2. simplify
    simplified = False
    if o.simplify:
        slim = ex.simplify(proto)
        if slim is not None:
            _set_io(slim, ex.cin, ex.cout, model.scale, ex.static)
            slim_bytes = _serialize(slim)
            if ex.check_export(slim_bytes, "simplified"):
                proto, cur_bytes, simplified = slim, slim_bytes, True
            else:
                ex.warn("the simplified graph failed verification "
                        f"({ex.fail_message([v for v in ex.verification if v.stage == 'simplified'], o.atol)}); "
                        "keeping the unsimplified graph")
    fp32_size = len(cur_bytes)

    # 3. precision
    quant = None
    precision = "fp32"
    if o.fp16:
        key0 = next(iter(ex.refs))
        hazard = _fp16_hazards(module, ex.inputs[key0], ex.refs[key0], o.atol_fp16)
        if hazard:
            raise ExportError(f"fp16 is not safe for this {arch} model: {hazard}", hint="export without --fp16")
        half = ex.to_fp16(proto)
        _set_io(half, ex.cin, ex.cout, model.scale, ex.static)
        half_bytes = _serialize(half)
        rows = ex.verify(half_bytes, "fp16", o.atol_fp16)
        if not all(v.ok for v in rows):
            bad = next(v for v in rows if not v.ok)
            where = f"{bad.size[0]}x{bad.size[1]}"
            if bad.error == "output has NaN/inf":
                reason = f"the fp16 model outputs NaN/inf at {where} (activations overflow float16)"
            elif bad.error:
                reason = f"the fp16 model fails at {where}: {bad.error}"
            else:
                reason = (f"the fp16 model differs from fp32 PyTorch by {bad.max_abs_diff:.3g} at {where} "
                          f"(more than {o.atol_fp16:g})")
            raise ExportError(f"fp16 is not safe for this {arch} model: {reason}",
                              hint="export without --fp16")
        proto, cur_bytes, precision = half, half_bytes, "fp16"
    elif o.int8:
        int8_bytes, quant = ex.quantize(cur_bytes, calib_paths)
        ex.verify(int8_bytes, "int8", None)
        bad = [v for v in ex.verification if v.stage == "int8" and not v.ok]
        if bad:
            raise ExportError(f"the int8 model fails {ex.fail_message(bad, None)}")
        if quant.psnr_drop is None:
            if not o.force:
                raise Int8QualityError(
                    "cannot measure the int8 PSNR drop: the calibration images are too small to make LR/HR pairs",
                    hint="use larger images, or pass --force to write the int8 model anyway")
        elif quant.psnr_drop > o.max_psnr_drop:
            msg = (f"int8 loses {quant.psnr_drop:.2f} dB PSNR ({quant.psnr_fp32:.2f} -> {quant.psnr_int8:.2f} dB "
                   f"on {quant.images} {quant.image_source} images), more than --max-psnr-drop {o.max_psnr_drop:g}")
            if not o.force:
                raise Int8QualityError(msg, hint="pass --force to write it anyway, or export fp32/fp16")
            ex.warn(msg + "; writing it anyway (--force)")
        proto, cur_bytes, precision = onnx.load_from_string(int8_bytes), int8_bytes, "int8"

    # 4. metadata, check, write
    params = model.params
    source_sha = _source_hash(model)
    ex.metadata(proto, precision=precision, source_sha256=source_sha, params=params, quant=quant,
                simplified=simplified)
    data = _serialize(proto)
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"the final ONNX model does not pass onnx.checker: {_first_line(e)}") from None
    with atomic_path(out, overwrite=o.overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    reporter.info(f"wrote {out} ({len(data) / 1e6:.2f} MB, {precision})")
    return ExportResult(
        path=out, architecture=arch, scale=int(model.scale), opset=o.opset, fp16=precision == "fp16",
        int8=precision == "int8", simplified=simplified, static_size=ex.static, verification=ex.verification,
        size_bytes=len(data), fp32_size_bytes=fp32_size, params=int(params), sha256=hashlib.sha256(data).hexdigest(),
        source_sha256=source_sha, reparameterized=folded, quantization=quant, warnings=ex.warnings,
    )
