"""Re-parameterisation study: does ``distill --reparam`` beat the plain student, and which branches?

DCTLSA_x4 -> Compact 32/8 with the kd-methods study's recipe (shared/data/train, LR patch 32,
batch 16, lr 1e-3, the same steps for every run, 2 seeds each):

* ``method``: ``plain`` (no branches), ``reparam`` (3x3 + 1x1 + expand-squeeze, extra branches
  zero at start), ``reparam-1x1`` (3x3 + 1x1 only: does the expand-squeeze
  branch matter?) and ``reparam-ecb`` (ECBSR's set: 3x3 + 1x1 + expand + Sobel-x/y + Laplacian
  paths, zero at start: the one the study kept as the families' default);
* ``kd``: ``scratch`` (alpha 0) or ``output-kd`` (alpha 0.5).

Each run writes one JSON row to the work folder (``--work``), so runs can be spread over processes
(``--items``) and a killed study loses one run at most; ``--merge`` gathers the rows into
bench/results/reparam.json. Scores: Y-PSNR/SSIM x4 on Set5 and Set14 (paper conventions).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import common
from .common import save
from .kd_methods import train_and_score

METHODS = {"plain": dict(reparam=False), "reparam": dict(reparam=True, reparam_branches="1x1,expand"), "reparam-1x1": dict(reparam=True, reparam_branches="1x1"),
           "reparam-ecb": dict(reparam=True, reparam_branches="1x1,expand,sobel,laplacian")}
KD = {"scratch": dict(alpha=0.0), "output-kd": dict(alpha=0.5)}
DEFAULT_ITEMS = [f"{m}:{k}" for m in ("plain", "reparam") for k in KD] + ["reparam-1x1:scratch", "reparam-ecb:scratch"]


def one_run(method: str, kd: str, seed: int, steps: int, work: Path, cache: Path | None, threads: int | None,
            quick: bool = False) -> dict:
    base, _ = train_and_score("DCTLSA_x4.pt", {**METHODS[method], **KD[kd]}, seed, steps,
                              work / f"{method}_{kd}_{steps}_s{seed}.safetensors", cache, threads, quick)
    row = {"method": method, "branches": METHODS[method].get("reparam_branches"), "kd": kd, "teacher": "DCTLSA_x4", **base}
    (work / f"{method}_{kd}_{steps}_s{seed}.json").write_text(json.dumps(row, indent=1))
    return row


def merge(work: Path, quick: bool = False) -> dict:
    rows = [json.loads(p.read_text()) for p in sorted(work.glob("*.json")) if p.name != "study_notes.json"]
    doc = {"settings": {"teacher": "DCTLSA_x4", "student": "compact 32/8", "batch": 16, "lr_patch": 32, "lr": 1e-3,
                        "data": "shared/data/train", "scored": "Y-PSNR/SSIM x4, Set5 and Set14"},
           "runs": rows, "summary": summarise(rows)}
    extra = work / "study_notes.json"
    if extra.exists():
        doc.update(json.loads(extra.read_text()))
    save("reparam" + ("_quick" if quick else ""), doc)
    return doc


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and spread per (method, kd, steps), and each reparam row's gain over plain."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["kd"], r["steps"]), []).append(r)
    out = []
    for (method, kd, steps), rs in sorted(groups.items()):
        item = {"method": method, "kd": kd, "steps": steps, "seeds": sorted(r["seed"] for r in rs)}
        for k in ("set5_psnr", "set14_psnr", "set5_ssim", "set14_ssim", "seconds"):
            vals = [r[k] for r in rs]
            item[k] = statistics.fmean(vals)
            item[k + "_spread"] = (max(vals) - min(vals)) / 2
        plain = groups.get(("plain", kd, steps))
        if method != "plain" and plain:
            for k in ("set5_psnr", "set14_psnr"):
                item[k.replace("_psnr", "_gain_db")] = item[k] - statistics.fmean(r[k] for r in plain)
        out.append(item)
    return out


def run(quick: bool = False, steps: int | None = None, seeds=(0, 1), items: list[str] | None = None,
        work: str | None = None, cache: str | None = None, threads: int | None = None) -> dict:
    steps = steps or (4 if quick else 2000)
    workdir = Path(work or (common.RESULTS / ("reparam_quick_runs" if quick else "reparam_runs")))
    workdir.mkdir(parents=True, exist_ok=True)
    cache = cache or os.environ.get("SRDISTILL_BENCH_TEACHER_CACHE")
    todo = items or DEFAULT_ITEMS
    if quick:
        todo, seeds = todo[:1], seeds[:1]
    for item in todo:
        method, kd = item.split(":")
        for seed in seeds:
            if (workdir / f"{method}_{kd}_{steps}_s{seed}.json").exists() and not quick:
                continue  # done in an earlier (killed) invocation
            print(f"== {method} {kd} {steps} steps seed {seed}", flush=True)
            print(json.dumps(one_run(method, kd, seed, steps, workdir, Path(cache) if cache else None, threads,
                                     quick)), flush=True)
    return merge(workdir, quick)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--items", help="comma-separated METHOD:KD items (default: " + ",".join(DEFAULT_ITEMS) + ")")
    ap.add_argument("--work", help="folder for per-run rows and students")
    ap.add_argument("--teacher-cache-dir")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--merge", action="store_true", help="only gather the rows into the results file")
    a = ap.parse_args()
    if a.merge:
        print(json.dumps(merge(Path(a.work or common.RESULTS / "reparam_runs")), indent=1))
    else:
        run(a.quick, a.steps, tuple(int(s) for s in a.seeds.split(",")),
            a.items.split(",") if a.items else None, a.work, a.teacher_cache_dir, a.threads)
