"""KD vs scratch: the same student, data, steps and seed, trained with the teacher and without it.

"Without" is ground truth only (alpha = 0: the teacher is never run); "with" is
srdistill's default output distillation. Both train on ../shared/data/train (T91,
BSD200 train, General100 half) and are scored at x4 on Set5 and Set14 with the
paper conventions (``srdistill.evaluate.score_pairs``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .common import need_shared, save


def run(quick: bool = False, steps: int | None = None, alphas: tuple[float, ...] = (0.0, 0.5),
        teacher_cache_dir: str | None = None) -> dict:
    from srdistill.data.datasets import load_eval_pairs
    from srdistill.distill.trainer import DistillConfig, distill
    from srdistill.evaluate import score_pairs
    from srdistill.models.loading import load_model

    teacher = need_shared("weights", "DCTLSA_x4.pt")
    train = need_shared("data", "train")
    sets = {n: load_eval_pairs(need_shared("data", n, "HR"), 4) for n in ("Set5", "Set14")}
    if quick:
        sets = {"Set5": sets["Set5"][:1]}
    steps = steps or (6 if quick else 2000)
    import os

    teacher_cache_dir = teacher_cache_dir or os.environ.get("SRDISTILL_BENCH_TEACHER_CACHE")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for alpha in alphas:
            out = Path(tmp) / f"a{alpha}.safetensors"
            cfg = DistillConfig(teacher=str(teacher), student_arch="compact", student_width=32, student_depth=8,
                                data=[str(train)], val=[], steps=steps, batch_size=16, patch_size=32, lr=1e-3,
                                alpha=alpha, out=str(out), seed=0, checkpoint_every=10**9,
                                teacher_cache_dir=None if quick else teacher_cache_dir,
                                max_images=6 if quick else None)
            r = distill(cfg)
            m = load_model(out)
            scores = {n: {k: v for k, v in score_pairs(m, pairs, 4).items() if k != "images"}
                      for n, pairs in sets.items()}
            rows[f"alpha={alpha}"] = {"alpha": alpha, "label": "scratch (ground truth only)" if alpha == 0
                                      else f"KD alpha {alpha}", "scores": scores,
                                      "steps_per_s": r.steps_per_second, "cache_fill_s": r.teacher_cache.get("seconds")}
    doc = {"settings": {"teacher": "DCTLSA_x4", "student": "Compact 32 ch / 8 convs", "steps": steps, "batch": 16,
                        "lr_patch": 32, "lr": 1e-3, "data": "shared/data/train", "quick": quick},
           "results": rows}
    save("kd_vs_scratch" + ("_quick" if quick else ""), doc)
    return doc


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--teacher-cache-dir")
    a = ap.parse_args()
    print(run(a.quick, a.steps, teacher_cache_dir=a.teacher_cache_dir))
