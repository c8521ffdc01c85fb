"""Inference throughput, side by side: every runtime x precision of a model in one process, interleaved.

For each model (the bundled default model, Compact 32/8 trained; Compact 64/16 and SPAN 48 students
with random weights, which run at the speed of trained ones) and each input size (480x270 -> 1080p,
64x64), every available (runtime, precision) is loaded first, warmed up, then timed in turns
(A B C A B C ...) ``repeats`` times (at least 7), so a change in the machine's load hits every
variant alike; the median, min and max output MP/s are reported. Threads are pinned (torch,
onnxruntime and OpenVINO all get ``threads``) and stated.

Runtimes come from srdistill's runtime layer (:mod:`srdistill.runtimes`: torch, onnxruntime,
openvino, ncnn) when it is there; without it, torch eager and onnxruntime directly. Precisions:
fp32; fp16 where the runtime computes in fp16 on the device (CUDA; skipped with the reason on a
CPU); int8 from ``srdistill export --int8`` (static QDQ, calibrated on T91), with full-range and
7-bit-range (onnxruntime's reduce_range) weights when export offers the choice, run by onnxruntime
and by OpenVINO (which executes the QDQ graph in int8).

Also: GFLOP per frame (torch.utils.flop_counter, 2 FLOP per multiply-add) and each run's share of an
estimated fp32 peak; Set5 x4 Y-PSNR of the default model per runtime/precision (null for untrained
models); and ``srdistill upscale`` end to end on a folder of 480x270 PNGs (output MP/s, beside the
model-only MP/s of the runtime it used).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .common import SHARED, save

SIZES = {"480x270": (270, 480), "64x64": (64, 64)}
STUDENTS = {"Compact 64/16 (random weights)": ("compact", 64, 16), "SPAN 48 (random weights)": ("span", 48, None)}
DEFAULT_NAME = "default model (Compact 32/8, trained)"
MIN_REPEATS = 7


# --------------------------------------------------------------------------- the machine's limit


def peak_gflops(threads: int) -> dict:
    """fp32 peak estimate: cores x GHz x FMA units x SIMD fp32 lanes x 2 (an FMA is 2 FLOP)."""
    flags, ghz, name = set(), None, ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())
        name = re.search(r"^model name\s*:(.*)$", text, re.M).group(1).strip()
        m = re.search(r"@\s*([\d.]+)\s*GHz", name)
        mhz = re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
        ghz = float(m.group(1)) if m else (max(float(x) for x in mhz) / 1000 if mhz else None)
    except (OSError, AttributeError):
        pass
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags or "avx" in flags else 4
    fma_units = int(os.environ.get("BENCH_FMA_UNITS", "2"))
    cores = min(threads, os.cpu_count() or threads)
    peak = cores * (ghz or 0) * fma_units * lanes * 2 if ghz else None
    return {"gflops": round(peak, 1) if peak else None,
            "formula": "cores x GHz x FMA units x SIMD fp32 lanes x 2 (FLOP per FMA)",
            "cores": cores, "ghz": ghz, "fma_units": fma_units, "simd_fp32_lanes": lanes,
            "vnni": bool({"avx512_vnni", "avx_vnni"} & flags), "cpu": name,
            "assumptions": "GHz from the model name, else the highest 'cpu MHz' in /proc/cpuinfo (base, not "
                           "turbo); 2 FMA units per core (BENCH_FMA_UNITS overrides); lanes from avx512f/avx2"}


def gflops_per_frame(module: torch.nn.Module, h: int, w: int) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            module(torch.rand(1, 3, h, w))
        return round(fc.get_total_flops() / 1e9, 3)
    except Exception:  # noqa: BLE001 - an op the counter does not know: recorded as null
        return None


# --------------------------------------------------------------------------- loading the variants


def _layer():
    """srdistill's runtime layer, or None where this checkout has none yet."""
    try:
        from srdistill import runtimes
    except ImportError:
        return None
    return runtimes


def load_runtime(name: str, path: Path, device: str, threads: int, **kw) -> Any:
    """A runnable (NCHW float in [0, 1] -> output) of ``path`` under runtime ``name``."""
    layer = _layer()
    if layer is not None:
        rt = layer.get_runtime(name)
        rt.require()
        return rt.load(path, device=device, threads=threads, **kw)
    if name == "torch":
        from srdistill.models.loading import load_model

        return load_model(path).to(device)
    if name == "onnxruntime":
        from srdistill.onnx_model import load_onnx

        return load_onnx(path, device=device, threads=threads)
    raise RuntimeError(f"runtime {name} needs srdistill's runtime layer (srdistill.runtimes)")


def _installed(name: str) -> bool:
    layer = _layer()
    if layer is None:
        return name in ("torch", "onnxruntime")
    try:
        return layer.get_runtime(name).installed()
    except Exception:  # noqa: BLE001 - not registered
        return False


def _exports(ckpt: Path, work: Path, quick: bool, device: str) -> dict[str, Path | str]:
    """precision -> .onnx file (or the reason there is none): fp32, fp16 (CUDA), int8 full/reduced range."""
    from srdistill.export import ExportOptions, export_onnx
    from srdistill.models.loading import load_model

    m = load_model(ckpt)
    out: dict[str, Path | str] = {}
    fp32 = work / f"{ckpt.stem}.fp32.onnx"
    export_onnx(m, fp32, ExportOptions(overwrite=True))
    out["fp32"] = fp32
    if device.startswith("cuda"):
        fp16 = work / f"{ckpt.stem}.fp16.onnx"
        export_onnx(m, fp16, ExportOptions(overwrite=True, fp16=True))
        out["fp16"] = fp16
    calib = SHARED / "data" / "train" / "T91"
    has_choice = "int8_weights" in {f.name for f in dataclasses.fields(ExportOptions)}
    for weights in ("full", "reduced"):
        if not has_choice and weights == "full":
            out["int8-full"] = "export has no full-range int8 option in this checkout"
            continue
        p = work / f"{ckpt.stem}.int8-{weights}.onnx"
        kw = {"int8_weights": weights} if has_choice else {}
        try:
            export_onnx(m, p, ExportOptions(overwrite=True, int8=True, calibration=calib if calib.exists() else None,
                                            force=True, max_calibration_images=4 if quick else 32, **kw))
            out[f"int8-{weights}"] = p
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            out[f"int8-{weights}"] = f"export failed: {str(e).splitlines()[0][:120]}"
    return out


def _torch_fp16(ckpt: Path, device: str) -> Callable:
    from srdistill.models.loading import load_model

    mod = load_model(ckpt).module.eval().half().to(device)
    return lambda x: mod(x.to(device).half()).float()


def variants(ckpt: Path, work: Path, quick: bool, device: str, threads: int) -> tuple[dict, dict]:
    """(label -> (runtime, precision, runnable), label -> reason skipped) for one model."""
    files = _exports(ckpt, work, quick, device)
    plan: list[tuple[str, str, Any]] = [("torch", "fp32", ckpt)]
    plan.append(("torch", "fp16", "fp16") if device.startswith("cuda") else
                ("torch", "fp16", "torch has no fast fp16 convolutions on the CPU"))
    for prec in ("fp32", "fp16", "int8-full", "int8-reduced"):
        f = files.get(prec, "onnxruntime computes fp16 graphs in fp16 only on CUDA")
        plan.append(("onnxruntime", prec, f))
    for prec in ("fp32", "int8-full", "int8-reduced"):
        plan.append(("openvino", prec, files.get(prec)))
    plan.append(("openvino", "bf16", files.get("fp32")))  # precision="fast": what upscale runs on a bf16 CPU
    if not quick:
        plan.append(("ncnn", "fp32", ckpt))
    loaded, skipped = {}, {}
    for rt, prec, src in plan:
        label = f"{rt} {prec}"
        if isinstance(src, str) and src != "fp16":
            skipped[label] = src
            continue
        if not _installed(rt):
            skipped[label] = f"{rt} is not installed" + ("" if _layer() else " or needs the runtime layer")
            continue
        try:
            fast = {"precision": "fast"} if (rt, prec) == ("openvino", "bf16") else {}
            fn = _torch_fp16(ckpt, device) if src == "fp16" else load_runtime(rt, src, device, threads, **fast)
            if fast and getattr(fn, "inference_precision", "fp32") != "bf16":
                skipped[label] = "this CPU has no native bf16 (OpenVINO computes in fp32 here)"
                continue
            loaded[label] = (rt, prec, fn)
        except Exception as e:  # noqa: BLE001 - one runtime failing must not stop the others
            skipped[label] = f"failed to load: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}"
    return loaded, skipped


# --------------------------------------------------------------------------- timing


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call, the variants taking turns (A B C A B C ...) after ``warmup`` calls each."""
    broken: dict[str, str] = {}
    for label, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
        except Exception as e:  # noqa: BLE001
            broken[label] = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    times: dict[str, list[float]] = {k: [] for k in fns if k not in broken}
    for _ in range(repeats):
        for label in times:
            t0 = time.perf_counter()
            fns[label]()
            times[label].append(time.perf_counter() - t0)
    return {**times, **{k: v for k, v in broken.items()}}


def _psnr(fn: Any, pairs, scale: int) -> float | None:
    from srdistill.evaluate import score_pairs

    try:
        return round(float(score_pairs(fn, pairs, scale)["psnr"]), 4)
    except Exception:  # noqa: BLE001 - a runnable score_pairs cannot drive: no figure
        return None


def _models(work: Path, quick: bool) -> dict[str, tuple[Path, bool]]:
    """name -> (checkpoint, trained)."""
    from srdistill.assets import BUNDLED_TEACHER, DEFAULT_MODEL
    from srdistill.models.checkpoint import save_student
    from srdistill.models.loading import load_model
    from srdistill.models.students import build_student

    out = {DEFAULT_NAME: (DEFAULT_MODEL, True)}
    teacher = load_model(BUNDLED_TEACHER)
    specs = {"Compact 8/2 (random weights)": ("compact", 8, 2)} if quick else STUDENTS
    for name, (arch, w, d) in specs.items():
        p = work / f"{arch}{w}.safetensors"
        save_student(p, build_student(teacher, w, d, arch, seed=0), overwrite=True)
        out[name] = (p, False)
    return out


def _model_runs(name: str, ckpt: Path, trained: bool, ctx: dict) -> list[dict]:
    from srdistill.models.loading import load_model

    m = load_model(ckpt)
    loaded, skipped = variants(ckpt, ctx["work"], ctx["quick"], ctx["device"], ctx["threads"])
    psnr = {k: _psnr(fn, ctx["pairs"], m.scale) for k, (_, _, fn) in loaded.items()} \
        if trained and ctx["pairs"] else {}
    rows = []
    for sname, (h, w) in ctx["sizes"].items():
        x = torch.rand(1, 3, h, w)
        gf = gflops_per_frame(m.module.eval(), h, w)
        with torch.no_grad():
            times = interleaved({k: (lambda fn=fn: fn(x)) for k, (_, _, fn) in loaded.items()}, ctx["repeats"])
        out_mp = h * w * m.scale ** 2 / 1e6
        for label, (rt, prec, _) in loaded.items():
            t = times[label]
            row = {"model": name, "params": m.params, "runtime": rt, "precision": prec, "device": ctx["device"],
                   "threads": ctx["threads"], "input_hw": [h, w], "gflops_per_frame": gf,
                   "psnr_set5": psnr.get(label) if trained else None}
            if isinstance(t, str):
                rows.append({**row, "error": t})
                continue
            med = statistics.median(t)
            row.update(output_mp_per_s_median=round(out_mp / med, 4), output_mp_per_s_min=round(out_mp / max(t), 4),
                       output_mp_per_s_max=round(out_mp / min(t), 4))
            peak = ctx["peak"]["gflops"]
            row["peak_share"] = round(gf / med / peak, 4) if gf and peak else None
            rows.append(row)
        for label, why in skipped.items():
            rt, prec = label.split(" ", 1)
            rows.append({"model": name, "params": m.params, "runtime": rt, "precision": prec,
                         "device": ctx["device"], "threads": ctx["threads"], "input_hw": [h, w], "skipped": why})
    return rows


# --------------------------------------------------------------------------- end to end


def _e2e_inputs(folder: Path, hw: tuple[int, int], n: int) -> Path:
    """``n`` photo-like PNGs of ``hw`` (16:9 crops of Set14, shrunk with MATLAB bicubic; noise without it)."""
    from PIL import Image as PILImage

    from srdistill.data.images import read_image
    from srdistill.data.resize import imresize

    folder.mkdir(parents=True, exist_ok=True)
    srcs = sorted((SHARED / "data" / "Set14" / "HR").glob("*.png"))
    for i in range(n):
        if srcs:
            x = read_image(srcs[i % len(srcs)]).to_tensor()[:, :3]
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            h, w = x.shape[-2:]
            ch = min(h, w * hw[0] // hw[1])
            cw = min(w, ch * hw[1] // hw[0])
            x = imresize(x[..., (h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw], size=hw)
            a = (x[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        else:
            a = np.random.default_rng(i).integers(0, 256, (*hw, 3), dtype=np.uint8)
        PILImage.fromarray(a).save(folder / f"{i:03d}.png")
    return folder


def end_to_end(ctx: dict, runs: list[dict]) -> list[dict]:
    """``srdistill upscale`` (the library call the CLI makes, so no start-up time) over a folder, the
    configurations interleaved; output MP/s over the files' wall time, beside model-only MP/s."""
    import shutil

    from srdistill.assets import DEFAULT_MODEL, DEFAULT_MODEL_ONNX
    from srdistill.upscale import UpscaleOptions, upscale_files

    hw = ctx["e2e_hw"]
    src = _e2e_inputs(ctx["work"] / "e2e_in", hw, ctx["e2e_images"])
    has_runtime = "runtime" in {f.name for f in dataclasses.fields(UpscaleOptions)}
    configs = {"--runtime torch": {"model": DEFAULT_MODEL, "runtime": "torch"} if has_runtime
               else {"model": DEFAULT_MODEL, "backend": "torch"},
               "--runtime auto": {"runtime": "auto"} if has_runtime
               else {"model": DEFAULT_MODEL_ONNX, "backend": "auto"}}
    got: dict[str, list] = {k: [] for k in configs}
    for r in range(ctx["e2e_repeats"]):
        for label, kw in configs.items():
            out = ctx["work"] / f"e2e_out_{r}_{label.split()[-1]}"
            res = upscale_files([src], UpscaleOptions(output=f"{out}/", threads=ctx["threads"], **kw))
            if res.exit_code:
                raise RuntimeError(f"upscale {label} failed: {[f.error for f in res.files if f.error][:1]}")
            got[label].append((res.output_mp_per_s, res.model))
            shutil.rmtree(out)
    rows = []
    for label, vals in got.items():
        mps = [v for v, _ in vals]
        used = vals[-1][1]
        rt = used.get("runtime") or used.get("backend")
        model_only = next((x["output_mp_per_s_median"] for x in runs if x["model"] == DEFAULT_NAME
                           and x["input_hw"] == list(hw) and x["runtime"] == rt and x["precision"] == "fp32"
                           and "output_mp_per_s_median" in x), None)
        med = statistics.median(mps)
        rows.append({"command": f"srdistill upscale DIR {label}" if has_runtime else
                     f"srdistill upscale DIR {' '.join(f'--{k} {Path(str(v)).name}' for k, v in configs[label].items())}",
                     "runtime_used": rt, "model": used.get("name"), "images": ctx["e2e_images"], "input_hw": list(hw),
                     "threads": ctx["threads"], "output_mp_per_s_median": round(med, 4),
                     "output_mp_per_s_min": round(min(mps), 4), "output_mp_per_s_max": round(max(mps), 4),
                     "model_only_mp_per_s_median": model_only,
                     "share_of_model_only": round(med / model_only, 4) if model_only else None})
    return rows


# --------------------------------------------------------------------------- the run


def _summary(runs: list[dict], e2e: list[dict]) -> dict:
    """Per model and input: the fastest run, its ratio to torch eager fp32 and its peak share."""
    out: dict = {}
    for r in runs:
        if "output_mp_per_s_median" not in r:
            continue
        key = f"{r['input_hw'][1]}x{r['input_hw'][0]}"
        cell = out.setdefault(r["model"], {}).setdefault(key, {"runs": {}})
        cell["runs"][f"{r['runtime']} {r['precision']}"] = r["output_mp_per_s_median"]
    for cells in out.values():
        for cell in cells.values():
            best = max(cell["runs"], key=cell["runs"].get)
            torch32 = cell["runs"].get("torch fp32")
            cell.update(best=best, best_vs_torch_fp32=round(cell["runs"][best] / torch32, 3) if torch32 else None)
    if e2e:
        out["end_to_end"] = {r["command"]: r["output_mp_per_s_median"] for r in e2e}
    return out


def run(quick: bool = False, threads: int = 2, repeats: int | None = None, device: str = "cpu") -> dict:
    from srdistill.data.datasets import load_eval_pairs

    torch.set_num_threads(threads)
    repeats = max(MIN_REPEATS, repeats or MIN_REPEATS) if not quick else (repeats or 2)
    set5 = SHARED / "data" / "Set5" / "HR"
    pairs = load_eval_pairs(set5, 4) if set5.exists() else None
    peak = peak_gflops(threads)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = {"work": Path(tmp), "quick": quick, "device": device, "threads": threads, "repeats": repeats,
               "sizes": {"64x64": (64, 64)} if quick else SIZES, "pairs": pairs[:1] if quick and pairs else pairs,
               "peak": peak, "e2e_hw": (64, 64) if quick else SIZES["480x270"],
               "e2e_images": 2 if quick else 12, "e2e_repeats": 1 if quick else 3}
        runs: list[dict] = []
        for name, (ckpt, trained) in _models(ctx["work"], quick).items():
            print(f"== {name}", flush=True)
            runs += _model_runs(name, ckpt, trained, ctx)
        e2e = end_to_end(ctx, runs)
    doc = {"settings": {"threads": threads, "thread_pinning": "torch.set_num_threads, onnxruntime intra-op and "
                        "OpenVINO INFERENCE_NUM_THREADS all set to `threads`; one process",
                        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                        "repeats": repeats, "order": "interleaved: every variant once per round, rounds repeated",
                        "warmup": 1, "quick": quick, "unit": "output MP/s", "device": device,
                        "runtime_layer": _layer() is not None,
                        "int8": "srdistill export --int8: static QDQ, per-channel, calibrated on T91; int8-full: "
                                "8-bit weights, int8-reduced: 7-bit (onnxruntime reduce_range)",
                        "psnr_set5": "Set5 x4 Y-PSNR of the default model per runtime/precision; null for "
                                     "untrained (random-weight) students",
                        "provisional": quick},
           "peak_gflops_estimate": peak, "runs": runs, "end_to_end": e2e, "results": _summary(runs, e2e)}
    save("inference" + ("_quick" if quick else ""), doc)
    return doc


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    d = run(a.quick, a.threads, a.repeats, a.device)
    print(d["results"])
