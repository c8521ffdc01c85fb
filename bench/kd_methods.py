"""KD methods study: which recipe gives a student better than training from scratch?

One student (Compact 32/8), shared train data (../shared/data/train), LR patch 32,
batch 16 and the same steps for every run; each method with at least 2 seeds:

* DCTLSA_x4 -> Compact 32/8: ``scratch`` (alpha 0: ground truth only), ``output-kd``
  (alpha 0.5, srdistill's former default), ``eco`` (alpha 1 -> 0, ECO schedule),
  ``upcycle`` (data upcycling, alpha 0.5), ``upcycle+eco``, ``feature`` (FitNet
  features on top of output KD, --feature-weight 1);
* realesr-animevideov3 (Compact 64/16) -> Compact 32/8: ``scratch``, ``output-kd``,
  ``init-teacher`` (output KD from a teacher-initialised student); these are also
  scored against the teacher's outputs (``*_teacher_psnr``), since the teacher is a
  real-world model whose outputs are not the HR images.

Scores: Y-PSNR/SSIM at x4 on Set5 and Set14 with the paper conventions
(``srdistill.evaluate.score_pairs``). Every run writes one JSON row to the work folder
(``--work``), so runs can be spread over processes (``--seeds``, ``--methods``) and a
killed study loses one run at most; ``--merge`` gathers the rows into
bench/results/kd_methods.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from . import common
from .common import need_shared, save

DCTLSA = {"scratch": dict(alpha=0.0), "output-kd": dict(alpha=0.5),  # cross-family: random init
          "eco": dict(alpha_schedule="eco", alpha=1.0, alpha_end=0.0),
          "upcycle": dict(alpha=0.5, upcycle=True),
          "upcycle+eco": dict(alpha_schedule="eco", alpha=1.0, alpha_end=0.0, upcycle=True),
          "feature": dict(alpha=0.5, feature_weight=1.0)}
ANIME = {"scratch": dict(alpha=0.0, init="random"), "output-kd": dict(alpha=0.5, init="random"),
         "init-teacher": dict(alpha=0.5, init="teacher")}
PAIRS = {"DCTLSA_x4": ("DCTLSA_x4.pt", DCTLSA), "realesr-animevideov3": ("realesr-animevideov3.pth", ANIME)}


def _teacher_scores(student, teacher, pairs) -> float:
    """Mean Y-PSNR of the student against the teacher's output on the same LR images."""
    from srdistill.evaluate import score_pairs
    from srdistill.reference import teacher_reference

    return score_pairs(student, teacher_reference(pairs, teacher, 4), 4)["psnr"]


def train_and_score(teacher_file: str, overrides: dict, seed: int, steps: int, out: Path, cache: Path | None,
                    threads: int | None, quick: bool = False) -> tuple[dict, Path]:
    """One DCTLSA/anime -> Compact 32/8 run of the study recipe (train data, LR patch 32, batch 16,
    lr 1e-3, no re-parameterisation unless ``overrides`` say so) with ``overrides``; the row's common fields and Set5/Set14 scores, and the student file."""
    from srdistill.data.datasets import load_eval_pairs
    from srdistill.distill.trainer import DistillConfig, distill
    from srdistill.evaluate import score_pairs
    from srdistill.models.loading import load_model

    teacher = need_shared("weights", teacher_file)
    sets = {n: load_eval_pairs(need_shared("data", n, "HR"), 4) for n in ("Set5", "Set14")}
    if quick:
        sets = {n: v[:1] for n, v in sets.items()}
    for suffix in (".safetensors", ".ckpt", ".train.jsonl"):
        out.with_suffix(suffix).unlink(missing_ok=True)
    cfg = DistillConfig(teacher=str(teacher), student_arch="compact", student_width=32, student_depth=8,
                        data=[str(need_shared("data", "train"))], val=[], steps=steps, batch_size=16,
                        patch_size=32, lr=1e-3, out=str(out), seed=seed, checkpoint_every=10**9,
                        teacher_cache_dir=str(cache) if cache else None, threads=threads,
                        max_images=6 if quick else None, **{"reparam": False, **overrides})
    t0 = time.monotonic()
    r = distill(cfg)
    seconds = time.monotonic() - t0
    m = load_model(out)
    row = {"seed": seed, "steps": steps, "student": "compact 32/8", "params": m.params,
           "seconds": round(seconds, 1), "train_seconds": round(steps / r.steps_per_second, 1),
           "cache_seconds": round((r.teacher_cache.get("seconds") or 0.0)
                                  + (r.teacher_cache.get("upcycle") or {}).get("seconds", 0.0), 1),
           "threads": threads}
    for n, pairs in sets.items():
        s = score_pairs(m, pairs, 4)
        row[f"{n.lower()}_psnr"], row[f"{n.lower()}_ssim"] = s["psnr"], s["ssim"]
    out.with_suffix(".ckpt").unlink(missing_ok=True)
    return row, out


def one_run(teacher_name: str, method: str, seed: int, steps: int, work: Path, cache: Path | None,
            threads: int | None, quick: bool = False) -> dict:
    from srdistill.data.datasets import load_eval_pairs
    from srdistill.models.loading import load_model

    file, methods = PAIRS[teacher_name]
    base, out = train_and_score(file, methods[method], seed, steps,
                                work / f"{teacher_name}_{method}_s{seed}.safetensors", cache, threads, quick)
    row = {"method": method, "teacher": teacher_name, **base}
    if teacher_name != "DCTLSA_x4":
        t, m = load_model(need_shared("weights", file)), load_model(out)
        for n in ("Set5", "Set14"):
            pairs = load_eval_pairs(need_shared("data", n, "HR"), 4)[:1 if quick else None]
            row[f"{n.lower()}_teacher_psnr"] = _teacher_scores(m, t, pairs)
    (work / f"{teacher_name}_{method}_s{seed}.json").write_text(json.dumps(row, indent=1))
    return row


def merge(work: Path, quick: bool = False) -> dict:
    rows = [json.loads(p.read_text()) for p in sorted(work.glob("*.json")) if p.name != "study_notes.json"]
    doc = {"settings": {"student": "compact 32/8", "batch": 16, "lr_patch": 32, "lr": 1e-3,
                        "data": "shared/data/train", "scored": "Y-PSNR/SSIM x4, Set5 and Set14"},
           "runs": rows}
    extra = work / "study_notes.json"  # {"not_run": [...], "notes": [...]}, written by whoever ran the study
    if extra.exists():
        doc.update(json.loads(extra.read_text()))
    threads = {r.get("threads") for r in rows}
    if len(threads) == 1 and isinstance(next(iter(threads)), int):
        import torch

        torch.set_num_threads(next(iter(threads)))  # the machine line records the runs' threads
    save("kd_methods" + ("_quick" if quick else ""), doc)
    return doc


def run(quick: bool = False, steps: int | None = None, seeds=(0, 1), methods: list[str] | None = None,
        work: str | None = None, cache: str | None = None, threads: int | None = None) -> dict:
    steps = steps or (4 if quick else 2000)
    workdir = Path(work or (common.RESULTS / ("kd_methods_quick_runs" if quick else "kd_methods_runs")))
    workdir.mkdir(parents=True, exist_ok=True)
    cache = cache or os.environ.get("SRDISTILL_BENCH_TEACHER_CACHE")
    todo = methods or [f"{t}:{m}" for t, (_, ms) in PAIRS.items() for m in ms]
    if quick:
        todo = todo[:1]
        seeds = seeds[:1]
    for item in todo:
        t, m = item.split(":")
        for seed in seeds:
            if (workdir / f"{t}_{m}_s{seed}.json").exists() and not quick:
                continue  # done in an earlier (killed) invocation
            print(f"== {t} {m} seed {seed}", flush=True)
            print(json.dumps(one_run(t, m, seed, steps, workdir, Path(cache) if cache else None, threads,
                                     quick)), flush=True)
    return merge(workdir, quick)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--methods", help="comma-separated TEACHER:METHOD items (default: all)")
    ap.add_argument("--work", help="folder for per-run rows and students")
    ap.add_argument("--teacher-cache-dir")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--merge", action="store_true", help="only gather the rows into the results file")
    a = ap.parse_args()
    if a.merge:
        print(json.dumps(merge(Path(a.work or common.RESULTS / "kd_methods_runs")), indent=1))
    else:
        run(a.quick, a.steps, tuple(int(s) for s in a.seeds.split(",")),
            a.methods.split(",") if a.methods else None, a.work, a.teacher_cache_dir, a.threads)
