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
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .comparison import COMPARISON_WINDOW, error_map, make_comparison, window_grid
from .data.datasets import find_lr_dir, load_eval_pairs
from .data.degrade import load_degradation
from .data.resize import imresize_uint8
from .devices import resolve_device
from .errors import SrDistillError, UsageError, nonempty
from .eval_report import (MAX_BENCH_SIZE, EvalOptions, EvalReport, ModelEntry, ModelRow, check_int, dataset_name,
                          parse_crop, parse_psnr_thresholds)
from .fileio import check_writable
from .metrics import psnr, quantize_u8, ssim, to_uint8
from .models.loading import SRModel
from .onnx_model import OnnxModel
from .progress import NULL, Reporter, Task
from .reference import degrade_pairs, lr_only_pairs, teacher_reference
from .report import benchmark, save_png
from .runner import run_sr  # noqa: F401  (re-exported: eval's building blocks)
from .runtimes.select import check_runtime_name, open_model
from .tiling import parse_tile

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
        u8 = quantize_u8(x.detach())
        return imresize_uint8(u8, scale=self.scale).to(torch.float32) / 255.0


# --------------------------------------------------------------------------- options


def _format_of(model: Any) -> str:
    if isinstance(model, BicubicBaseline):
        return "bicubic"
    if isinstance(model, OnnxModel):
        return "onnx"
    if isinstance(model, SRModel):
        return "pytorch"
    if hasattr(model, "session"):  # OpenVINO, ncnn: no torch module to count MACs or memory on
        return "runtime"
    return "object"


def _load(spec: Any, device: torch.device, threads: int | None, opts: EvalOptions | None = None,
          rep: Reporter = NULL) -> tuple[Any, str | None]:
    if isinstance(spec, (str, os.PathLike)):
        p = Path(spec)
        runtime = opts.runtime if opts is not None else "native"
        size = (opts.bench_size,) * 2 if opts is not None else None
        try:
            model, _ = open_model(p, runtime=runtime, device=str(device), threads=threads, size=size, reporter=rep)
        except UsageError:
            if device.type != "cuda" or runtime == "torch" or p.suffix.lower() not in (".onnx", ".xml", ".param"):
                raise
            # as before the runtime layer: a file whose runtime has no CUDA here is scored on the CPU
            model, _ = open_model(p, runtime=runtime, device="cpu", threads=threads, size=size, reporter=rep)
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


def evaluate(opts: EvalOptions, reporter: Reporter = NULL) -> EvalReport:
    """Score the bicubic baseline and every model on every dataset; see the module docstring."""
    return _Evaluation(opts, reporter or NULL).run()


class _Evaluation:
    """The stages of :func:`evaluate`, each readable alone; the state they share lives here."""

    def __init__(self, opts: EvalOptions, rep: Reporter):
        self.opts, self.rep = opts, rep
        self.t_start = time.monotonic()
        self.notes: list[str] = []
        self.grids: dict[int, dict[int, tuple]] = {}
        self.win = 0

    def run(self) -> EvalReport:
        self.check_options()
        self.load_models()
        self.resolve_scale()
        self.load_datasets()
        self.plan_outputs()
        self.score()
        self.relate_to_teacher()
        bench_info = self.benchmark() if self.opts.benchmark else None
        comparison = None
        if self.comparison_path is not None:
            comparison = make_comparison(self.comparison_path, self.rows_spec, self.rows, self.datasets[0],
                                          self.crop, self.grids, self.scale, self.device, self.tile,
                                          self.opts, self.rep)
        gate = self.quality_gate()
        self.warn_below_bicubic()
        for d in self.datasets:
            d.pop("pairs", None)
        opts = self.opts
        return EvalReport(
            scale=self.scale, crop_border=self.crop_border, y_channel=bool(opts.y_channel),
            self_ensemble=bool(opts.self_ensemble), device=str(self.device), datasets=self.datasets, models=self.rows,
            teacher=self.teacher_row.name if self.teacher_row else None, benchmark=bench_info, comparison=comparison,
            saved_images=str(self.save_root) if self.save_root is not None else None, quality_gate=gate,
            notes=self.notes, seconds=time.monotonic() - self.t_start, reference=opts.reference)

    def check_options(self) -> None:
        """Everything that can be checked before anything is loaded."""
        opts = self.opts
        self.crop = parse_crop(opts.crop) if opts.crop is not None else None
        self.thresholds = parse_psnr_thresholds(opts.fail_under_psnr)
        check_int("--scale", opts.scale, 1)
        check_int("--crop-border", opts.crop_border, 0)
        self.tile = parse_tile(opts.tile, allow_auto=False)
        self.bench_size = check_int("--bench-size", opts.bench_size, 1, allow_none=False, maximum=MAX_BENCH_SIZE)
        self.repeats = check_int("--repeats", opts.bench_repeats, 1, allow_none=False, maximum=10_000)
        self.threads = check_int("--threads", opts.threads, 1, maximum=4096)
        opts.runtime = check_runtime_name(opts.runtime)
        self.deg = _check_reference_options(opts)
        if not opts.data:
            raise UsageError("no dataset given", hint="pass --data FOLDER (HR images, or an HR/ + LR_bicubic/ layout)")
        for d in opts.data:
            if not Path(d).exists():
                raise UsageError(f"data folder {str(d)!r} does not exist")
        self.device = resolve_device(opts.device)
        if self.threads:
            torch.set_num_threads(self.threads)
        self.comparison_path = Path(opts.comparison) if opts.comparison is not None else None
        if self.comparison_path is not None:
            if self.comparison_path.suffix.lower() != ".png":
                raise UsageError(f"--comparison {str(self.comparison_path)!r}: the comparison image is written as PNG",
                                 hint="give a file name ending in .png")
            check_writable(self.comparison_path, overwrite=opts.overwrite)
        if self.crop is not None and self.comparison_path is None:
            raise UsageError("--crop chooses the region of the --comparison image", hint="add --comparison out.png")

    def load_models(self) -> None:
        """The models as entries, the teacher (the first, or --teacher) first."""
        opts = self.opts
        specs = list(opts.models or [])
        teacher_index: int | None = None
        if opts.teacher is not None:
            teacher_index = next((i for i, s in enumerate(specs) if _same_file(s, opts.teacher)), None)
            if teacher_index is None:
                specs.insert(0, opts.teacher)
                teacher_index = 0
        elif len(specs) >= 2:
            teacher_index = 0
        if opts.reference == "teacher" and teacher_index is None:
            raise UsageError("--reference teacher needs a teacher to compare with",
                             hint="give the teacher as the first model, or pass --teacher FILE")
        loaded = [_load(s, self.device, self.threads, opts, self.rep) for s in specs]
        names = _unique([_model_name(m, p) for m, p in loaded])
        entries = [ModelEntry(name, model, "teacher" if i == teacher_index else "student", _format_of(model), path)
                   for i, ((model, path), name) in enumerate(zip(loaded, names))]
        if teacher_index is not None:  # the teacher comes first after the baseline
            entries.insert(0, entries.pop(teacher_index))
        self.entries, self.has_teacher = entries, teacher_index is not None

    def resolve_scale(self) -> None:
        opts, entries = self.opts, self.entries
        scales = {e.name: int(getattr(e.model, "scale", 0) or 0) for e in entries}
        distinct = sorted(set(scales.values()))
        if len(distinct) > 1:
            listing = ", ".join(f"{n} x{s}" for n, s in scales.items())
            raise UsageError(f"the models have different scales ({listing})",
                             hint="evaluate models of one scale together")
        model_scale = distinct[0] if distinct else None
        if model_scale is not None and model_scale < 1:
            raise UsageError(f"cannot tell the scale of {entries[0].name}", hint="pass --scale")
        if opts.scale is not None:
            if model_scale is not None and int(opts.scale) != model_scale:
                raise UsageError(f"--scale {opts.scale} does not match the models' scale x{model_scale}")
            self.scale = int(opts.scale)
        elif model_scale is not None:
            self.scale = model_scale
        else:
            raise UsageError("no model given, so the scale is unknown",
                             hint="pass --scale to score the bicubic baseline alone")
        self.crop_border = self.scale if opts.crop_border is None else int(opts.crop_border)

    def load_datasets(self) -> None:
        opts = self.opts
        ds_names = _unique([dataset_name(d) for d in opts.data])
        teacher_entry = self.entries[0] if self.has_teacher else None
        self.datasets = [_load_dataset(d, name, self.scale, self.crop_border, opts, self.deg, teacher_entry,
                                       self.device, self.tile, self.rep) for d, name in zip(opts.data, ds_names)]
        unknown = [n for n in self.thresholds if n is not None and n not in ds_names]
        if unknown:
            raise UsageError(f"--fail-under-psnr names unknown dataset(s) {', '.join(map(repr, unknown))}",
                             hint=f"datasets: {', '.join(ds_names)}")
        if self.crop is not None:
            first = self.datasets[0]["pairs"][0]
            h, w = first.hr.shape[:2]
            x, y, cw, ch = self.crop
            if x + cw > w or y + ch > h:
                raise UsageError(f"--crop {x},{y},{cw},{ch} does not fit in {self.datasets[0]['name']}/{first.name} "
                                 f"({w}x{h} HR pixels after cropping to a multiple of the scale)")
        self.rows_spec: list[ModelEntry] = [ModelEntry("bicubic", BicubicBaseline(self.scale), "baseline", "bicubic")]
        for e in self.entries:
            if e.name == "bicubic":
                e.name = "bicubic (model)"
        self.rows_spec += self.entries

    def plan_outputs(self) -> None:
        """Where --save-images outputs go (checked before any work), and the comparison window's size."""
        opts = self.opts
        self.save_root = Path(opts.save_images) if opts.save_images is not None else None
        self.save_plan: dict[tuple[int, int], list[Path]] = {}
        if self.save_root is not None:
            if self.save_root.exists() and not self.save_root.is_dir():
                raise UsageError(f"--save-images {str(self.save_root)!r} is a file, not a folder")
            dir_names = _unique([_safe_dir_name(r.name) for r in self.rows_spec])
            ds_dirs = _unique([_safe_dir_name(d["name"]) for d in self.datasets])
            for ri, dn in enumerate(dir_names):
                for di, ds in enumerate(self.datasets):
                    stems = _unique([Path(p.name).stem for p in ds["pairs"]])
                    paths = [self.save_root / dn / ds_dirs[di] / f"{s}.png" for s in stems]
                    for p in paths:
                        check_writable(p, overwrite=opts.overwrite)
                    self.save_plan[(ri, di)] = paths
        self.auto_window = self.comparison_path is not None and self.crop is None
        if self.auto_window:
            inner = [min(p.hr.shape[0], p.hr.shape[1]) - 2 * self.crop_border for p in self.datasets[0]["pairs"]]
            self.win = max(1, min(COMPARISON_WINDOW, min(inner)))

    def score(self) -> None:
        self.rows: list[ModelRow] = []
        for ri, e in enumerate(self.rows_spec):
            params = getattr(e.model, "params", None)
            row = ModelRow(name=e.name, role=e.role, format=e.format,
                           architecture=str(getattr(e.model, "architecture", None) or type(e.model).__name__),
                           path=e.path, params=int(params) if params is not None else None,
                           self_ensemble=bool(self.opts.self_ensemble) and e.role != "baseline")
            for di, ds in enumerate(self.datasets):
                row.datasets[ds["name"]] = self.score_one(ri, e, row, di, ds)
            self.rows.append(row)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def score_one(self, ri: int, e: "ModelEntry", row: ModelRow, di: int, ds: dict) -> dict:
        """One model on one dataset (saving outputs and comparison windows on the way)."""
        opts, paths = self.opts, self.save_plan.get((ri, di))
        if opts.reference == "teacher" and e.role == "teacher":  # the reference itself: not run twice
            for i, pair in enumerate(ds["pairs"] if paths is not None else []):
                save_png(paths[i], pair.hr, overwrite=opts.overwrite)
            return {"psnr": float("inf"), "ssim": 1.0, "delta_psnr": None, "images": [], "reference": True}

        def on_output(i, pair, sr):
            if paths is not None:
                save_png(paths[i], sr, overwrite=opts.overwrite)
            if self.auto_window and di == 0:
                h, w = sr.shape[:2]
                err = error_map(sr, pair.hr[:h, :w], opts.y_channel)
                region = (self.crop_border, self.crop_border, h - self.crop_border, w - self.crop_border)
                self.grids.setdefault(ri, {})[i] = window_grid(err, self.win, region)

        with self.rep.task(f"{e.name} on {ds['name']}", total=len(ds["pairs"])) as task:
            res = score_pairs(e.model, ds["pairs"], self.scale, device=self.device, crop_border=self.crop_border,
                              y_channel=opts.y_channel, tile=self.tile if e.role != "baseline" else None,
                              self_ensemble=row.self_ensemble, on_output=on_output, task=task)
        return {"psnr": res["psnr"], "ssim": res["ssim"], "delta_psnr": None, "images": res["images"]}

    def relate_to_teacher(self) -> None:
        """Delta PSNR and compression against the teacher row."""
        self.teacher_row = t_row = next((r for r in self.rows if r.role == "teacher"), None)
        if t_row is None:
            return
        for r in self.rows:
            if self.opts.reference != "teacher":  # else the scores are already relative to the teacher
                for name, d in r.datasets.items():
                    delta = d["psnr"] - t_row.datasets[name]["psnr"]
                    d["delta_psnr"] = None if math.isnan(delta) else delta
            if r.role != "baseline" and t_row.params and r.params:
                r.compression = t_row.params / r.params

    def benchmark(self) -> dict:
        dev, size, repeats = self.device, self.bench_size, self.repeats
        with self.rep.task("benchmark", total=len(self.rows_spec)) as task:
            for e, r in zip(self.rows_spec, self.rows):
                b = benchmark(e.model, scale=self.scale, device=dev, size=size,
                              min_size=int(getattr(e.model, "min_size", 0) or 0),
                              multiple_of=int(getattr(e.model, "multiple_of", 1) or 1),
                              channels=int(getattr(e.model, "input_channels", 3) or 3),
                              warmup=2 if dev.type == "cuda" else 1, repeats=repeats,
                              macs=e.format in ("pytorch", "object"), memory=e.format in ("pytorch", "object"))
                r.benchmark = b.to_dict()
                r.latency_ms_per_mp, r.peak_memory_mib, r.macs_per_mp = b.latency_ms_per_mp, b.peak_memory_mib, \
                    b.macs_per_mp
                for n in b.notes:
                    self.rep.warn(f"{e.name}: {n}")
                task.advance(1)
        if dev.type != "cuda":
            self.notes.append("peak memory is reported on CUDA only")
        return {
            "input": f"1x3x{size}x{size} LR (raised to a model's size requirements)",
            "output_megapixels": (size * self.scale) ** 2 / 1e6,
            "latency": f"median ms per output megapixel over up to {repeats} timed runs after warm-up, "
                       f"on {dev}" + (" (CUDA synchronised)" if dev.type == "cuda" else ""),
            "memory": ("extra CUDA memory allocated during one run (torch.cuda.max_memory_allocated; "
                       "weights and input excluded; not measurable for ONNX)") if dev.type == "cuda" else
                      "not measured on the CPU (a process's peak RSS cannot be attributed to one model)",
            "macs": "multiply-accumulates per output megapixel counted by torch.utils.flop_counter."
                    "FlopCounterMode (convolutions and matrix products; None for ONNX and bicubic)",
            "self_ensemble": "latency, memory and MACs are for one forward pass; x8 self-ensemble costs 8 times "
                             "as much" if self.opts.self_ensemble else None,
        }

    def quality_gate(self) -> dict | None:
        if not self.thresholds:
            return None
        gated = [r for r in self.rows if r.role == "student"]
        failures = []
        for r in gated:
            for ds in self.datasets:
                thr = self.thresholds.get(ds["name"], self.thresholds.get(None))
                if thr is None:
                    continue
                v = r.datasets[ds["name"]]["psnr"]
                if math.isnan(v) or v < thr:
                    failures.append({"model": r.name, "dataset": ds["name"], "psnr": v, "threshold": thr})
        if not gated:
            self.rep.warn("--fail-under-psnr: no student to check (the only model is the teacher)")
            self.notes.append("quality gate: no student model to check")
        return {"thresholds": {(k if k is not None else "*"): v for k, v in self.thresholds.items()},
                "models": [r.name for r in gated], "passed": not failures, "failures": failures}

    def warn_below_bicubic(self) -> None:
        base = next((r for r in self.rows if r.role == "baseline"), None)
        if base is None:
            return
        for r in (r for r in self.rows if r.role == "student"):
            for ds in self.datasets:
                v, b = r.datasets[ds["name"]]["psnr"], base.datasets[ds["name"]]["psnr"]
                if v < b:
                    msg = (f"{r.name} scores below bicubic on {ds['name']} ({v:.2f} < {b:.2f} dB): "
                           "it is undertrained; distill with more --steps or data")
                    self.rep.warn(msg)
                    self.notes.append(msg)


def _check_reference_options(opts: EvalOptions):
    """--reference / --degradation / --lr-only / --seed, checked before anything is loaded."""
    nonempty("--degradation", opts.degradation, "realesrgan, light or a file, or leave it out")
    opts.reference = str(nonempty("--reference", opts.reference, "hr or teacher") or "hr").strip().lower()
    if opts.reference not in ("hr", "teacher"):
        raise UsageError(f"unknown --reference {opts.reference!r}", hint="use hr (ground truth) or teacher")
    check_int("--seed", opts.seed, 0, allow_none=False, maximum=2**32 - 1)  # distill's --seed range
    if opts.lr_only and opts.reference != "teacher":
        raise UsageError("--lr-only folders have no ground truth to score against",
                         hint="add --reference teacher (scores are then fidelity to the teacher)")
    deg = load_degradation(opts.degradation)
    if deg is not None and opts.lr_only:
        raise UsageError("--degradation makes inputs from HR images; --lr-only folders are inputs already",
                         hint="drop one of them")
    return deg


def _scorable(pairs: list, scale: int, crop_border: int, lr_only: bool, rep: Reporter, skipped: list[str]) -> list:
    """The pairs whose scored image (the HR, or an LR-only input's output) keeps 11x11 pixels inside the
    border (SSIM's window); each other one is skipped like an unreadable image, with a warning naming
    its file, before any model runs on it."""
    out = []
    for p in pairs:
        if lr_only:  # the output of the input: the scale times its size
            h, w = (int(n) * scale for n in p.lr.shape[-2:])
        else:
            h, w = p.hr.shape[:2]
        if h - 2 * crop_border >= 11 and w - 2 * crop_border >= 11:
            out.append(p)
            continue
        what = f"its {w // scale}x{h // scale} input gives a {w}x{h} output" if lr_only else f"it is {w}x{h}"
        why = f"{what}, too small to score with a {crop_border} px border (SSIM needs 11x11 pixels)"
        rep.warn(f"skipping {p.name}: {why}")
        skipped.append(f"{p.name}: {why}")
    return out


def _load_dataset(d: Any, name: str, scale: int, crop_border: int, opts: EvalOptions, deg, teacher: "ModelEntry | None",
                  device: torch.device, tile: int | None, rep: Reporter) -> dict:
    """One dataset's input/reference pairs: HR folders or paired layouts (LR made as papers do, or
    degraded with ``--degradation``), or with ``--lr-only`` the folder's images as inputs; with
    ``--reference teacher`` the teacher's outputs replace the HR images."""
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
    pairs = _scorable(pairs, scale, crop_border, opts.lr_only, rep, skipped)
    if not pairs and skipped:
        raise SrDistillError(f"no usable images in {str(d)!r}: {skipped[0]}" +
                             (f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""))
    if not pairs:
        raise UsageError(f"no usable images in {str(d)!r} (all smaller than the scale {scale})")
    if opts.reference == "teacher":
        with rep.task(f"teacher reference on {name}", total=len(pairs)) as task:
            pairs = teacher_reference(pairs, teacher.model, scale, device=device, tile=tile, task=task)
    return {"name": name, "path": str(d), "images": len(pairs), "skipped": skipped, "lr": lr_desc,
            "pairs": pairs}
