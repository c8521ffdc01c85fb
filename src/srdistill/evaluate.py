"""Scoring models on image sets, the way SR papers do (one implementation for eval and distill).

``run_sr`` / ``score_pairs`` are the building blocks (validation during ``distill`` uses them);
:func:`evaluate` is ``srdistill eval``: several models, several datasets, a bicubic baseline
row, efficiency figures, a comparison image and a quality gate, returned as an
:class:`EvalReport` (no printing here: the CLI renders it).

Conventions (those of the SR literature, as in BasicSR):

* LR images: MATLAB bicubic downscale of the uint8 HR image cropped to a multiple of the scale
  (:func:`srdistill.data.datasets.load_eval_pairs`), or the LR files of a paired layout.
* Model outputs are clamped and rounded to uint8 before scoring.
* PSNR/SSIM on the Y channel of BT.601 (``--rgb``: on R, G, B), ``crop_border`` = scale
  pixels removed from every side, SSIM with the Gaussian 11/1.5 window, float64.
* PSNR of an output identical to the HR image is ``inf`` (MSE 0); JSON writes it as the
  string ``"inf"``, and means/deltas involving it are ``inf``/``None`` accordingly.
* The bicubic row is MATLAB ``imresize(lr, scale, 'bicubic')`` of the uint8 LR image, uint8
  out (:func:`srdistill.data.resize.imresize_uint8`).
* ``self_ensemble``: the x8 flip/rotate ensemble ("+" models in papers); the bicubic row never
  uses it.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .devices import resolve_device
from .tiling import parse_tile
from .errors import OutputExistsError, QualityGateError, SrDistillError, UsageError
from .metrics import psnr, rgb_to_y, ssim, to_uint8
from .progress import NULL, Reporter, Task

__all__ = [
    "run_sr",
    "score_pairs",
    "BicubicBaseline",
    "EvalOptions",
    "ModelRow",
    "EvalReport",
    "evaluate",
    "parse_crop",
    "parse_psnr_thresholds",
    "dataset_name",
]


def run_sr(model, lr_u8: torch.Tensor, scale: int, *, device: torch.device | str = "cpu",
           tile: int | None = None, self_ensemble: bool = False) -> torch.Tensor:
    """uint8 C x h x w LR -> float 1 x C x H x W SR output (clamped to [0, 1]) on the CPU."""
    from .tiling import upscale_tensor

    x = lr_u8.to(device=device, dtype=torch.float32).unsqueeze(0) / 255.0
    min_size = getattr(model, "min_size", 0)
    mult = getattr(model, "multiple_of", 1)

    def fn(t: torch.Tensor) -> torch.Tensor:
        return model(t)

    def once(t: torch.Tensor) -> torch.Tensor:
        return upscale_tensor(fn, t, scale, tile=tile, min_size=min_size, multiple_of=mult)

    with torch.no_grad():
        if not self_ensemble:
            y = once(x)
        else:
            from .data.datasets import augment, unaugment

            acc = None
            for code in range(8):
                out = unaugment(once(augment(x, code)), code)
                acc = out if acc is None else acc + out
            y = acc / 8
    return y.clamp(0, 1).float().cpu()


def _mean(values: Sequence[float]) -> float:
    """Mean PSNR: ``inf`` if any image is identical to its HR image (as ``np.mean`` gives)."""
    return float(np.mean(values)) if values else float("nan")


def score_pairs(model, pairs, scale: int, *, device: torch.device | str = "cpu", crop_border: int | None = None,
                y_channel: bool = True, tile: int | None = None, self_ensemble: bool = False,
                keep_outputs: bool = False,
                on_output: Callable[[int, Any, np.ndarray], None] | None = None,
                task: Task | None = None) -> dict:
    """Mean PSNR/SSIM of ``model`` over ``pairs`` (uint8-quantised output, BT.601 Y, crop = scale).

    ``on_output(index, pair, sr_uint8)`` is called with every output (H x W x 3 uint8, cropped to
    the HR size) after it is scored; ``task`` (a progress bar) advances by one per image.
    """
    crop = scale if crop_border is None else crop_border
    per = []
    outputs = []
    for i, p in enumerate(pairs):
        sr = to_uint8(run_sr(model, p.lr, scale, device=device, tile=tile, self_ensemble=self_ensemble))
        hr = p.hr
        if sr.shape != hr.shape:
            h, w = min(sr.shape[0], hr.shape[0]), min(sr.shape[1], hr.shape[1])
            sr, hr = sr[:h, :w], hr[:h, :w]
        per.append({"image": p.name, "psnr": psnr(sr, hr, crop, test_y_channel=y_channel),
                    "ssim": ssim(sr, hr, crop, test_y_channel=y_channel)})
        if keep_outputs:
            outputs.append(sr)
        if on_output is not None:
            on_output(i, p, sr)
        if task is not None:
            task.advance(1, psnr=per[-1]["psnr"])
    out = {
        "psnr": _mean([r["psnr"] for r in per]),
        "ssim": float(np.mean([r["ssim"] for r in per])) if per else float("nan"),
        "images": per,
    }
    if keep_outputs:
        out["outputs"] = outputs
    return out


class BicubicBaseline:
    """The papers' bicubic row as a model: MATLAB ``imresize`` of the uint8 LR image, uint8 out.

    Called like any model (NCHW float in [0, 1], on the uint8 grid since it comes from a uint8
    image); returns the uint8 result / 255, so quantising it gives back exactly the uint8 image.
    """

    architecture = "bicubic"
    params = 0
    min_size = 0
    multiple_of = 1
    name = "bicubic"

    def __init__(self, scale: int):
        self.scale = int(scale)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from .data.resize import imresize_uint8

        u8 = torch.round(x.detach().clamp(0, 1) * 255).to(torch.uint8)
        return imresize_uint8(u8, scale=self.scale).to(torch.float32) / 255.0


# --------------------------------------------------------------------------- options


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


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = True, maximum: int | None = None) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UsageError(f"invalid {name} {value!r}: expected an integer >= {minimum}")
    if maximum is not None and value > maximum:
        raise UsageError(f"invalid {name} {value!r}: expected at most {maximum}")
    return int(value)


#: largest LR side of the benchmark input (x4: an 8192 x 8192 output, 0.8 GB as float32)
MAX_BENCH_SIZE = 2048


@dataclass
class EvalOptions:
    """What ``srdistill eval`` was asked to do (the CLI fills it from its flags).

    ``models`` and ``teacher`` are model files (anything :func:`srdistill.onnx_model.load_any`
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
    reference: str = "hr"  # "teacher": score against the teacher's outputs (fidelity), not the HR images
    degradation: str | None = None  # degrade the HR into the inputs (realesrgan, light, a file)
    seed: int = 0  # of the degradation
    lr_only: bool = False  # the folders hold inputs, no HR (needs reference "teacher")


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


@dataclass
class _Entry:
    name: str
    model: Any
    role: str
    format: str
    path: str | None = None


def _format_of(model: Any) -> str:
    from .models.loading import SRModel
    from .onnx_model import OnnxModel

    if isinstance(model, BicubicBaseline):
        return "bicubic"
    if isinstance(model, OnnxModel):
        return "onnx"
    if isinstance(model, SRModel):
        return "pytorch"
    return "object"


def _load(spec: Any, device: torch.device, threads: int | None) -> tuple[Any, str | None]:
    from .models.loading import SRModel
    from .onnx_model import load_any

    if isinstance(spec, (str, os.PathLike)):
        p = Path(spec)
        model = load_any(p, device=str(device), threads=threads)
        if isinstance(model, SRModel):
            model.module.eval()
        return model, str(p)
    if not callable(spec) or not hasattr(spec, "scale"):
        raise UsageError(f"not a model: {spec!r} (expected a model file or an object with scale and __call__)")
    if isinstance(spec, SRModel):
        spec.to(device)
    return spec, None


def _model_name(model: Any, path: str | None) -> str:
    if path:
        return Path(path).name
    return str(getattr(model, "name", None) or type(model).__name__)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            n = f"{n}#{seen[n]}"
        else:
            seen[n] = 1
        out.append(n)
    return out


def _same_file(a: Any, b: Any) -> bool:
    if not isinstance(a, (str, os.PathLike)) or not isinstance(b, (str, os.PathLike)):
        return a is b
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _safe_dir_name(name: str) -> str:
    bad = '<>:"/\\|?*'
    out = "".join("_" if (c in bad or ord(c) < 32) else c for c in name).strip(" .")
    return out or "model"


def _error_map(sr: np.ndarray, hr: np.ndarray, y_channel: bool) -> np.ndarray:
    if y_channel and sr.ndim == 3 and sr.shape[2] == 3:
        d = rgb_to_y(sr) - rgb_to_y(hr)
        return d * d
    d = sr.astype(np.float64) - hr.astype(np.float64)
    return (d * d).mean(axis=2) if d.ndim == 3 else d * d


def _psnr_from_mse(mse: np.ndarray | float, floor: float = 0.0):
    m = np.maximum(np.asarray(mse, dtype=np.float64), floor)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 * 255.0 / m)


#: Largest side of the automatically chosen comparison window (HR pixels).
COMPARISON_WINDOW = 96
#: When choosing the window, window MSEs below this (PSNR above 34.2 dB) count as equal: flat
#: regions where every model is near-perfect would otherwise give meaningless PSNR gains.
COMPARISON_MSE_FLOOR = 25.0
#: The teacher-student gap of a window is measured with this lower floor (PSNR up to 48.1 dB), or a
#: window where the teacher reaches 36 dB would look as close to the student as one at 34 dB.
COMPARISON_GAP_MSE_FLOOR = 1.0


def evaluate(opts: EvalOptions, reporter: Reporter = NULL) -> EvalReport:
    """Score the bicubic baseline and every model on every dataset; see the module docstring."""
    from .report import benchmark, save_png

    t_start = time.monotonic()
    rep = reporter or NULL

    # ---- options that can be checked before anything is loaded
    crop = parse_crop(opts.crop) if opts.crop is not None else None
    thresholds = parse_psnr_thresholds(opts.fail_under_psnr)
    _check_int("--scale", opts.scale, 1)
    _check_int("--crop-border", opts.crop_border, 0)
    tile = parse_tile(opts.tile, allow_auto=False)
    bench_size = _check_int("--bench-size", opts.bench_size, 1, allow_none=False, maximum=MAX_BENCH_SIZE)
    repeats = _check_int("--repeats", opts.bench_repeats, 1, allow_none=False, maximum=10_000)
    threads = _check_int("--threads", opts.threads, 1, maximum=4096)
    deg = _check_reference_options(opts)
    if not opts.data:
        raise UsageError("no dataset given", hint="pass --data FOLDER (HR images, or an HR/ + LR_bicubic/ layout)")
    for d in opts.data:
        if not Path(d).exists():
            raise UsageError(f"data folder {str(d)!r} does not exist")
    device = resolve_device(opts.device)
    if threads:
        torch.set_num_threads(threads)
    comparison_path = Path(opts.comparison) if opts.comparison is not None else None
    if comparison_path is not None:
        if comparison_path.suffix.lower() != ".png":
            raise UsageError(f"--comparison {str(comparison_path)!r}: the comparison image is written as PNG",
                             hint="give a file name ending in .png")
        from .fileio import check_writable

        check_writable(comparison_path, overwrite=opts.overwrite)
    if crop is not None and comparison_path is None:
        raise UsageError("--crop chooses the region of the --comparison image", hint="add --comparison out.png")

    # ---- models
    specs = list(opts.models or [])
    teacher_index: int | None = None
    if opts.teacher is not None:
        for i, s in enumerate(specs):
            if _same_file(s, opts.teacher):
                teacher_index = i
                break
        if teacher_index is None:
            specs.insert(0, opts.teacher)
            teacher_index = 0
    elif len(specs) >= 2:
        teacher_index = 0
    if opts.reference == "teacher" and teacher_index is None:
        raise UsageError("--reference teacher needs a teacher to compare with",
                         hint="give the teacher as the first model, or pass --teacher FILE")
    loaded = []
    for s in specs:
        model, path = _load(s, device, threads)
        loaded.append((model, path))
    names = _unique([_model_name(m, p) for m, p in loaded])
    entries: list[_Entry] = []
    for i, ((model, path), name) in enumerate(zip(loaded, names)):
        role = "teacher" if i == teacher_index else "student"
        entries.append(_Entry(name, model, role, _format_of(model), path))
    if teacher_index is not None:  # the teacher comes first after the baseline
        entries.insert(0, entries.pop(teacher_index))

    # ---- scale
    scales = {e.name: int(getattr(e.model, "scale", 0) or 0) for e in entries}
    distinct = sorted(set(scales.values()))
    if len(distinct) > 1:
        listing = ", ".join(f"{n} x{s}" for n, s in scales.items())
        raise UsageError(f"the models have different scales ({listing})", hint="evaluate models of one scale together")
    model_scale = distinct[0] if distinct else None
    if model_scale is not None and model_scale < 1:
        raise UsageError(f"cannot tell the scale of {entries[0].name}", hint="pass --scale")
    if opts.scale is not None:
        if model_scale is not None and int(opts.scale) != model_scale:
            raise UsageError(f"--scale {opts.scale} does not match the models' scale x{model_scale}")
        scale = int(opts.scale)
    elif model_scale is not None:
        scale = model_scale
    else:
        raise UsageError("no model given, so the scale is unknown", hint="pass --scale to score the bicubic baseline alone")
    crop_border = scale if opts.crop_border is None else int(opts.crop_border)

    # ---- datasets
    ds_names = _unique([dataset_name(d) for d in opts.data])
    teacher_entry = entries[0] if teacher_index is not None else None
    datasets = [_load_dataset(d, name, scale, crop_border, opts, deg, teacher_entry, device, tile, rep)
                for d, name in zip(opts.data, ds_names)]
    unknown = [n for n in thresholds if n is not None and n not in ds_names]
    if unknown:
        raise UsageError(f"--fail-under-psnr names unknown dataset(s) {', '.join(map(repr, unknown))}",
                         hint=f"datasets: {', '.join(ds_names)}")
    if crop is not None:
        first = datasets[0]["pairs"][0]
        h, w = first.hr.shape[:2]
        x, y, cw, ch = crop
        if x + cw > w or y + ch > h:
            raise UsageError(f"--crop {x},{y},{cw},{ch} does not fit in {datasets[0]['name']}/{first.name} "
                             f"({w}x{h} HR pixels after cropping to a multiple of the scale)")

    rows_spec: list[_Entry] = [_Entry("bicubic", BicubicBaseline(scale), "baseline", "bicubic")]
    if any(e.name == "bicubic" for e in entries):
        for e in entries:
            if e.name == "bicubic":
                e.name = "bicubic (model)"
    rows_spec += entries

    # ---- where outputs go (checked before any work)
    save_root = Path(opts.save_images) if opts.save_images is not None else None
    save_plan: dict[tuple[int, int], list[Path]] = {}
    if save_root is not None:
        if save_root.exists() and not save_root.is_dir():
            raise UsageError(f"--save-images {str(save_root)!r} is a file, not a folder")
        from .fileio import check_writable

        dir_names = _unique([_safe_dir_name(r.name) for r in rows_spec])
        ds_dirs = _unique([_safe_dir_name(d["name"]) for d in datasets])
        for ri, dn in enumerate(dir_names):
            for di, ds in enumerate(datasets):
                stems = _unique([Path(p.name).stem for p in ds["pairs"]])
                paths = [save_root / dn / ds_dirs[di] / f"{s}.png" for s in stems]
                for p in paths:
                    check_writable(p, overwrite=opts.overwrite)
                save_plan[(ri, di)] = paths

    # ---- comparison window bookkeeping (first dataset)
    auto_window = comparison_path is not None and crop is None
    grids: dict[int, dict[int, tuple]] = {}
    win = 0
    if auto_window:
        inner = [min(p.hr.shape[0], p.hr.shape[1]) - 2 * crop_border for p in datasets[0]["pairs"]]
        win = max(1, min(COMPARISON_WINDOW, min(inner)))

    # ---- scoring
    rows: list[ModelRow] = []
    for ri, e in enumerate(rows_spec):
        se = bool(opts.self_ensemble) and e.role != "baseline"
        params = getattr(e.model, "params", None)
        row = ModelRow(name=e.name, role=e.role, format=e.format,
                       architecture=str(getattr(e.model, "architecture", None) or type(e.model).__name__),
                       path=e.path, params=int(params) if params is not None else None, self_ensemble=se)
        for di, ds in enumerate(datasets):
            paths = save_plan.get((ri, di))
            if opts.reference == "teacher" and e.role == "teacher":  # the reference itself: not run twice
                for i, pair in enumerate(ds["pairs"] if paths is not None else []):
                    save_png(paths[i], pair.hr, overwrite=opts.overwrite)
                row.datasets[ds["name"]] = {"psnr": float("inf"), "ssim": 1.0, "delta_psnr": None, "images": [],
                                            "reference": True}
                continue

            def on_output(i, pair, sr, _di=di, _ri=ri, _paths=paths):
                if _paths is not None:
                    save_png(_paths[i], sr, overwrite=opts.overwrite)
                if auto_window and _di == 0:
                    h, w = sr.shape[:2]
                    err = _error_map(sr, pair.hr[:h, :w], opts.y_channel)
                    region = (crop_border, crop_border, h - crop_border, w - crop_border)
                    grids.setdefault(_ri, {})[i] = _window_grid(err, win, region)

            with rep.task(f"{e.name} on {ds['name']}", total=len(ds["pairs"])) as task:
                res = score_pairs(e.model, ds["pairs"], scale, device=device, crop_border=crop_border,
                                  y_channel=opts.y_channel, tile=tile if e.role != "baseline" else None,
                                  self_ensemble=se, on_output=on_output, task=task)
            row.datasets[ds["name"]] = {"psnr": res["psnr"], "ssim": res["ssim"], "delta_psnr": None,
                                        "images": res["images"]}
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    teacher_row = next((r for r in rows if r.role == "teacher"), None)
    for r in rows:
        if teacher_row is None:
            continue
        for name, d in r.datasets.items():
            if opts.reference == "teacher":
                break  # the scores are already relative to the teacher
            t = teacher_row.datasets[name]["psnr"]
            delta = d["psnr"] - t
            d["delta_psnr"] = None if math.isnan(delta) else delta
        if r.role != "baseline" and teacher_row.params and r.params:
            r.compression = teacher_row.params / r.params

    # ---- efficiency
    bench_info = None
    notes: list[str] = []
    if opts.benchmark:
        with rep.task("benchmark", total=len(rows_spec)) as task:
            for e, r in zip(rows_spec, rows):
                fmt = e.format
                b = benchmark(e.model, scale=scale, device=device, size=bench_size,
                              min_size=int(getattr(e.model, "min_size", 0) or 0),
                              multiple_of=int(getattr(e.model, "multiple_of", 1) or 1),
                              channels=int(getattr(e.model, "input_channels", 3) or 3),
                              warmup=2 if device.type == "cuda" else 1, repeats=repeats,
                              macs=fmt not in ("onnx", "bicubic"), memory=fmt != "onnx")
                r.benchmark = b.to_dict()
                r.latency_ms_per_mp = b.latency_ms_per_mp
                r.peak_memory_mib = b.peak_memory_mib
                r.macs_per_mp = b.macs_per_mp
                for n in b.notes:
                    rep.warn(f"{e.name}: {n}")
                task.advance(1)
        bench_info = {
            "input": f"1x3x{bench_size}x{bench_size} LR (raised to a model's size requirements)",
            "output_megapixels": (bench_size * scale) ** 2 / 1e6,
            "latency": f"median ms per output megapixel over up to {repeats} timed runs after warm-up, "
                       f"on {device}" + (" (CUDA synchronised)" if device.type == "cuda" else ""),
            "memory": ("extra CUDA memory allocated during one run (torch.cuda.max_memory_allocated; "
                       "weights and input excluded; not measurable for ONNX)") if device.type == "cuda" else
                      "not measured on the CPU (a process's peak RSS cannot be attributed to one model)",
            "macs": "multiply-accumulates per output megapixel counted by torch.utils.flop_counter."
                    "FlopCounterMode (convolutions and matrix products; None for ONNX and bicubic)",
            "self_ensemble": "latency, memory and MACs are for one forward pass; x8 self-ensemble costs 8 times "
                             "as much" if opts.self_ensemble else None,
        }
        if device.type != "cuda":
            notes.append("peak memory is reported on CUDA only")

    # ---- comparison image
    comparison = None
    if comparison_path is not None:
        comparison = _make_comparison(comparison_path, rows_spec, rows, datasets[0], crop, grids, win, scale,
                                      device, tile, opts, rep)

    # ---- quality gate
    gate = None
    if thresholds:
        gated = [r for r in rows if r.role == "student"]
        failures = []
        for r in gated:
            for ds in datasets:
                thr = thresholds.get(ds["name"], thresholds.get(None))
                if thr is None:
                    continue
                v = r.datasets[ds["name"]]["psnr"]
                if math.isnan(v) or v < thr:
                    failures.append({"model": r.name, "dataset": ds["name"], "psnr": v, "threshold": thr})
        gate = {"thresholds": {(k if k is not None else "*"): v for k, v in thresholds.items()},
                "models": [r.name for r in gated], "passed": not failures, "failures": failures}
        if not gated:
            rep.warn("--fail-under-psnr: no student to check (the only model is the teacher)")
            notes.append("quality gate: no student model to check")

    base = next((r for r in rows if r.role == "baseline"), None)
    if base is not None:
        for r in rows:
            if r.role != "student":
                continue
            for ds in datasets:
                v, b = r.datasets[ds["name"]]["psnr"], base.datasets[ds["name"]]["psnr"]
                if v < b:
                    msg = (f"{r.name} scores below bicubic on {ds['name']} ({v:.2f} < {b:.2f} dB): "
                           "it is undertrained; distill with more --steps or data")
                    rep.warn(msg)
                    notes.append(msg)
    for d in datasets:
        d.pop("pairs", None)
    return EvalReport(
        scale=scale, crop_border=crop_border, y_channel=bool(opts.y_channel), self_ensemble=bool(opts.self_ensemble),
        device=str(device), datasets=datasets, models=rows, teacher=teacher_row.name if teacher_row else None,
        benchmark=bench_info, comparison=comparison, saved_images=str(save_root) if save_root is not None else None,
        quality_gate=gate, notes=notes, seconds=time.monotonic() - t_start, reference=opts.reference,
    )


def _check_reference_options(opts: EvalOptions):
    """--reference / --degradation / --lr-only / --seed, checked before anything is loaded."""
    from .data.degrade import load_degradation

    opts.reference = str(opts.reference or "hr").strip().lower()
    if opts.reference not in ("hr", "teacher"):
        raise UsageError(f"unknown --reference {opts.reference!r}", hint="use hr (ground truth) or teacher")
    _check_int("--seed", opts.seed, 0, allow_none=False)
    if opts.lr_only and opts.reference != "teacher":
        raise UsageError("--lr-only folders have no ground truth to score against",
                         hint="add --reference teacher (scores are then fidelity to the teacher)")
    deg = load_degradation(opts.degradation)
    if deg is not None and opts.lr_only:
        raise UsageError("--degradation makes inputs from HR images; --lr-only folders are inputs already",
                         hint="drop one of them")
    return deg


def _load_dataset(d: Any, name: str, scale: int, crop_border: int, opts: EvalOptions, deg, teacher: "_Entry | None",
                  device: torch.device, tile: int | None, rep: Reporter) -> dict:
    """One dataset's input/reference pairs: HR folders or paired layouts (LR made as papers do, or
    degraded with ``--degradation``), or with ``--lr-only`` the folder's images as inputs; with
    ``--reference teacher`` the teacher's outputs replace the HR images."""
    from .data.datasets import find_lr_dir, load_eval_pairs
    from .reference import degrade_pairs, lr_only_pairs, teacher_reference

    skipped: list[str] = []
    if opts.lr_only:
        pairs = lr_only_pairs(d, reporter=rep, skipped=skipped)
        lr_desc = "the folder's images (LR-only, no ground truth)"
    else:
        pairs = load_eval_pairs(d, scale, reporter=rep, skipped=skipped)
        folder = Path(d)
        if folder.is_dir() and (folder / "HR").is_dir() and not any(True for _ in folder.glob("*.png")):
            folder = folder / "HR"
        paired = folder.is_dir() and find_lr_dir(folder, scale) is not None
        lr_desc = "paired LR images" if paired else "MATLAB bicubic downscale of the uint8 HR"
        if deg is not None:
            pairs = degrade_pairs(pairs, deg, scale, opts.seed)
            lr_desc = f"{deg.describe()} degradation of the HR, seed {opts.seed}"
    if not pairs and skipped:
        raise SrDistillError(f"no readable images in {str(d)!r}: {skipped[0]}" +
                             (f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""))
    if not pairs:
        raise UsageError(f"no usable images in {str(d)!r} (all smaller than the scale {scale})")
    if opts.reference == "teacher":
        with rep.task(f"teacher reference on {name}", total=len(pairs)) as task:
            pairs = teacher_reference(pairs, teacher.model, scale, device=device, tile=tile, task=task)
    for p in pairs:
        h, w = p.hr.shape[:2]
        if h - 2 * crop_border < 11 or w - 2 * crop_border < 11:
            raise UsageError(f"{name}/{p.name} is {w}x{h}: too small to score with a {crop_border} px border "
                             "(SSIM needs 11x11 pixels)")
    return {"name": name, "path": str(d), "images": len(pairs), "skipped": skipped, "lr": lr_desc,
            "pairs": pairs}


def _window_grid(err: np.ndarray, win: int, region: tuple[int, int, int, int]):
    from .report import window_mse

    y0, x0, y1, x1 = region
    wh, ww = min(win, y1 - y0), min(win, x1 - x0)
    if wh < 1 or ww < 1:
        return None
    return window_mse(err, (wh, ww), max(1, min(wh, ww) // 4), region), (wh, ww)


#: A window's teacher-student gap counts as representative within this many dB of the mean gap.
COMPARISON_GAP_TOLERANCE = 0.5


def _representative_crop(rows: list[ModelRow], ds: dict, grids: dict, pairs) -> tuple:
    """The crop a reader should see: among windows whose gap between the first model (the teacher)
    and the last one (the student) is within COMPARISON_GAP_TOLERANCE of that gap over the whole
    dataset, the one where the first model gains most over bicubic. Not the window where the
    student fails worst, which says nothing about the student on average."""
    base = [i for i, r in enumerate(rows) if r.role == "baseline"]
    models_idx = [i for i, r in enumerate(rows) if r.role != "baseline"]
    if not base or not models_idx:
        compare, mean_gap = list(range(len(rows)))[:1], None
    elif len(models_idx) >= 2:
        t, s_ = models_idx[0], models_idx[-1]
        compare = [t, base[0], s_]
        name = ds["name"]
        mean_gap = rows[t].datasets[name]["psnr"] - rows[s_].datasets[name]["psnr"]
        if not math.isfinite(mean_gap):
            mean_gap = None
    else:
        compare, mean_gap = [models_idx[0], base[0]], None
    best = None
    for i in range(len(pairs)):
        cells = [grids.get(r, {}).get(i) for r in compare]
        if any(c is None for c in cells):
            continue
        (ys, xs, _), (wh, ww) = cells[0]
        stack = np.stack([_psnr_from_mse(c[0][2], COMPARISON_MSE_FLOOR) for c in cells])
        if len(compare) == 1:
            score = -stack[0]
        else:
            score = stack[0] - stack[1]  # the teacher's gain over bicubic
            if mean_gap is not None:  # far from the typical teacher-student gap: ranked last
                gap = (_psnr_from_mse(cells[0][0][2], COMPARISON_GAP_MSE_FLOOR)
                       - _psnr_from_mse(cells[2][0][2], COMPARISON_GAP_MSE_FLOOR))
                off = np.abs(gap - mean_gap) - COMPARISON_GAP_TOLERANCE
                score = np.where(off <= 0, score, -1e6 - off)
        k = int(np.argmax(score))
        a, b = divmod(k, score.shape[1])
        val = float(score[a, b])
        if best is None or val > best[0]:
            best = (val, i, int(xs[b]), int(ys[a]), ww, wh)
    if best is None:  # images too small for a window inside the border: the whole image
        h, w = pairs[0].hr.shape[:2]
        best = (0.0, 0, 0, 0, w, h)
    _, i, x, y, cw, ch = best
    if len(compare) == 1:
        how = "lowest bicubic PSNR"
    elif mean_gap is None:
        how = f"largest gain of {rows[compare[0]].name} over bicubic"
    else:
        how = (f"largest gain of {rows[compare[0]].name} over bicubic among windows where its lead over "
               f"{rows[compare[2]].name} is within {COMPARISON_GAP_TOLERANCE} dB of the mean ({mean_gap:.2f} dB)")
    return i, x, y, cw, ch, how


def _make_comparison(path: Path, rows_spec: list[_Entry], rows: list[ModelRow], ds: dict,
                     crop: tuple[int, int, int, int] | None, grids: dict, win: int, scale: int,
                     device: torch.device, tile: int | None, opts: EvalOptions, rep: Reporter) -> dict:
    from .report import comparison_grid, save_png

    pairs = ds["pairs"]
    to_teacher = opts.reference == "teacher"
    if crop is not None:
        img_index, (x, y, cw, ch) = 0, crop
        how = "given (--crop)"
    elif to_teacher:  # the teacher row is the reference: pick where bicubic is farthest from it
        img_index, x, y, cw, ch, how = _representative_crop(rows[:1], ds, grids, pairs)
        how = "where bicubic is farthest from the teacher"
    else:
        img_index, x, y, cw, ch, how = _representative_crop(rows, ds, grids, pairs)
    pair = pairs[img_index]
    hr_crop = pair.hr[y:y + ch, x:x + cw]
    panels = []
    psnrs: dict[str, float] = {}
    if to_teacher:  # input | teacher | students
        lr = pair.lr.permute(1, 2, 0).numpy()
        inp = np.repeat(np.repeat(lr, scale, 0), scale, 1)[y:y + ch, x:x + cw]
        panels.append(("input", inp, f"{pair.name} {x},{y} {cw}x{ch}"))
        panels.append((next(r.name for r in rows if r.role == "teacher") + " (teacher)", hr_crop, "reference"))
    with rep.task("comparison image", total=len(rows)) as task:
        for e, r in zip(rows_spec, rows):
            if to_teacher and r.role != "student":
                task.advance(1)
                continue
            sr = to_uint8(run_sr(e.model, pair.lr, scale, device=device,
                                 tile=tile if e.role != "baseline" else None, self_ensemble=r.self_ensemble))
            c = sr[y:y + ch, x:x + cw]
            v = psnr(c, hr_crop, 0, test_y_channel=opts.y_channel)
            psnrs[r.name] = v
            label = r.name + ("+" if r.self_ensemble else "")
            if r.role == "teacher":
                label += " (teacher)"
            panels.append((label, c, f"{v:.2f} dB" if math.isfinite(v) else "inf dB (identical)"))
            task.advance(1)
    if not to_teacher:
        panels.append(("HR", hr_crop, f"{pair.name} {x},{y} {cw}x{ch}"))
    save_png(path, comparison_grid(panels), overwrite=opts.overwrite)
    return {"path": str(path), "dataset": ds["name"], "image": pair.name, "crop": [x, y, cw, ch],
            "chosen": how, "psnr": psnrs,
            "panels": [p[0] for p in panels]}
