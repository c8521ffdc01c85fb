"""Record ``srdistill eval --json`` scores in a student's metadata (``srdistill.metrics.benchmarks``).

    python scripts/stamp_benchmarks.py student.safetensors eval.json

The eval report must have the student as a model row (the teacher, when present, gives
``teacher_psnr``; the bicubic row ``bicubic_psnr``). The file is rewritten atomically, tensors
unchanged. Used by scripts/make_default_model.sh for the bundled default model's card.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(student: str, report: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from srdistill.fileio import atomic_path

    doc = json.loads(Path(report).read_text())
    rows = {r["role"]: r for r in doc["models"]}
    stud = next(r for r in doc["models"] if r["role"] == "student")
    bench = {}
    for name, d in stud["datasets"].items():
        bench[name] = {"psnr": round(d["psnr"], 4), "ssim": round(d["ssim"], 4)}
        for role, key in (("teacher", "teacher_psnr"), ("baseline", "bicubic_psnr")):
            if role in rows:
                bench[name][key] = round(rows[role]["datasets"][name]["psnr"], 4)
    bench["convention"] = (f"srdistill eval: x{doc['scale']}, MATLAB bicubic LR, "
                           f"{'Y (BT.601)' if doc['y_channel'] else 'RGB'}, crop {doc['crop_border']}, uint8")
    with safe_open(student, "pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    metrics = json.loads(meta.get("srdistill.metrics", "{}") or "{}")
    metrics["benchmarks"] = bench
    meta["srdistill.metrics"] = json.dumps(metrics)
    with atomic_path(student, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    print(json.dumps(bench, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
