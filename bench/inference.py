"""Inference throughput: output megapixels per second, PyTorch eager vs ONNX Runtime fp32/int8.

For each model: PyTorch eager fp32 (srdistill's runner), the same model through a
plain spandrel loop (``descriptor(x)``, the way chaiNNer-style tools run it),
``torch.compile`` where it works, and ONNX Runtime with the file ``srdistill export``
writes (fp32, simplified) and its int8 static-QDQ version. Sizes: 256x256 LR and a
1080p output (480x270 LR at x4), whole image and tiled (128 px tiles). The int8
PSNR change is measured on Set5 x4 (Y channel) against the fp32 ONNX model.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from .common import SHARED, median_time, save

SIZES = {"256x256": (256, 256), "1080p-out": (270, 480)}


def _mps(seconds: float, h: int, w: int, scale: int) -> float:
    return (h * scale) * (w * scale) / 1e6 / seconds


def _models(work: Path, quick: bool) -> dict[str, Path]:
    from srdistill.assets import DEFAULT_MODEL
    from srdistill.models.checkpoint import save_student
    from srdistill.models.loading import load_model
    from srdistill.models.students import build_student

    out: dict[str, Path] = {}
    if DEFAULT_MODEL.exists():
        out["default (Compact 32/8, trained)"] = DEFAULT_MODEL
    teacher = load_model(Path(__file__).resolve().parents[1] / "src/srdistill/assets/models/teacher_dctlsa_x4.safetensors")
    specs = {"Compact 32/8 student": ("compact", 32, 8), "Compact 64/16 student": ("compact", 64, 16),
             "SPAN 48 student": ("span", 48, None)}
    if quick:
        specs = {"Compact 8/2 student": ("compact", 8, 2)}
    for name, (arch, w, d) in specs.items():
        p = work / f"{arch}{w}.safetensors"
        save_student(p, build_student(teacher, w, d, arch, seed=0), overwrite=True)
        out[name] = p
    return out


def _calibration(quick: bool) -> Path | None:
    p = SHARED / "data" / "train" / "T91"
    return p if p.exists() else None


def run(quick: bool = False, threads: int = 2) -> dict:
    from srdistill.data.datasets import load_eval_pairs
    from srdistill.evaluate import score_pairs
    from srdistill.export import ExportOptions, export_onnx
    from srdistill.models._compat import import_spandrel
    from srdistill.models.loading import load_model
    from srdistill.onnx_model import load_onnx
    from srdistill.tiling import upscale_tensor

    torch.set_num_threads(threads)
    spandrel = import_spandrel()
    sizes = {"64x64": (64, 64)} if quick else SIZES
    repeats = 1 if quick else 5
    set5 = SHARED / "data" / "Set5" / "HR"
    pairs = load_eval_pairs(set5, 4) if set5.exists() else None
    if quick and pairs:
        pairs = pairs[:1]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, path in _models(work, quick).items():
            m = load_model(path)
            s = m.scale
            row: dict = {"params": m.params, "file": path.name, "sizes": {}}
            fp32 = work / f"{path.stem}.onnx"
            export_onnx(m, fp32, ExportOptions(overwrite=True))
            calib = _calibration(quick)
            int8 = work / f"{path.stem}.int8.onnx"
            int8_ok = True
            try:
                r8 = export_onnx(m, int8, ExportOptions(overwrite=True, int8=True, calibration=calib, force=True,
                                                        max_calibration_images=8 if quick else 32))
                row["int8_export"] = r8.quantization.__dict__ if r8.quantization else None
            except Exception as e:  # noqa: BLE001 - recorded, not fatal
                int8_ok = False
                row["int8_export"] = {"error": str(e)}
            ort32 = load_onnx(fp32, threads=threads)
            ort8 = load_onnx(int8, threads=threads) if int8_ok else None
            if pairs:
                p32 = score_pairs(ort32, pairs, s)["psnr"]
                row["set5_psnr"] = {"torch": score_pairs(m, pairs, s)["psnr"], "onnx_fp32": p32}
                if ort8:
                    p8 = score_pairs(ort8, pairs, s)["psnr"]
                    row["set5_psnr"]["onnx_int8"] = p8
                    row["int8_psnr_drop"] = p32 - p8
            desc = spandrel.ModelLoader().load_from_file(str(path)) if m.architecture != "EDSR" else None
            compiled = None
            if not quick:
                try:
                    compiled = torch.compile(m.module.eval())
                except Exception:  # noqa: BLE001
                    compiled = None
            for sname, (h, w) in sizes.items():
                x = torch.rand(1, 3, h, w)
                cells: dict = {}

                def timed(label, fn):
                    try:
                        t = median_time(fn, repeats=repeats, warmup=1)
                        cells[label] = round(_mps(t, h, w, s), 3)
                    except Exception as e:  # noqa: BLE001
                        cells[label] = f"failed: {str(e).splitlines()[0][:80]}"

                with torch.no_grad():
                    timed("torch_eager", lambda: m(x))
                    if desc is not None:
                        timed("spandrel_loop", lambda: desc(x))
                    if compiled is not None:
                        timed("torch_compile", lambda: compiled(x))
                    timed("onnx_fp32", lambda: ort32(x))
                    if ort8:
                        timed("onnx_int8", lambda: ort8(x))
                    timed("torch_eager_tiled128", lambda: upscale_tensor(m, x, s, tile=128))
                    timed("onnx_fp32_tiled128", lambda: upscale_tensor(ort32, x, s, tile=128))
                    if ort8:
                        timed("onnx_int8_tiled128", lambda: upscale_tensor(ort8, x, s, tile=128))
                best_key = "onnx_fp32"
                if ort8 and isinstance(cells.get("onnx_int8"), float) and row.get("int8_psnr_drop", 9) <= 0.1:
                    best_key = "onnx_int8"
                if isinstance(cells.get(best_key), float) and isinstance(cells.get("torch_eager"), float):
                    cells["best_deployable"] = best_key
                    cells["best_vs_torch"] = round(cells[best_key] / cells["torch_eager"], 3)
                row["sizes"][sname] = cells
            results[name] = row
        # the teacher the default model was distilled from: window attention, so no dynamic ONNX;
        # its best CPU path is PyTorch eager (and the same through spandrel)
        if not quick:
            from srdistill.assets import BUNDLED_TEACHER

            t = load_model(BUNDLED_TEACHER)
            x = torch.rand(1, 3, 256, 256)
            with torch.no_grad():
                tt = median_time(lambda: t(x), repeats=2, warmup=1)
                desc = spandrel.ModelLoader().load_from_file(str(BUNDLED_TEACHER))
                ts = median_time(lambda: desc(x), repeats=2, warmup=1)
            results["teacher DCTLSA x4 (bundled)"] = {
                "params": t.params, "file": BUNDLED_TEACHER.name,
                "sizes": {"256x256": {"torch_eager": round(_mps(tt, 256, 256, 4), 4),
                                      "spandrel_loop": round(_mps(ts, 256, 256, 4), 4)}}}
    doc = {"settings": {"threads": threads, "repeats": repeats, "quick": quick, "unit": "output MP/s",
                        "int8": "static QDQ, per-channel, reduce_range (7-bit weights), calibrated on T91 LR patches"}, "results": results}
    save("inference" + ("_quick" if quick else ""), doc)
    return doc


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    a = ap.parse_args()
    print(run(a.quick, a.threads))
