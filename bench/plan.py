"""plan study: is ``srdistill plan`` honest about latency, does its proxy rank like full training, and
does its pick beat the obvious hand choice? (issue 23)

Stages, each writing one JSON row per run to the work folder (``--work``), so a killed study loses one
run at most and an invocation continues where the last one stopped:

1. ``plan.json``: ``plan`` for DCTLSA_x4 at a CPU budget (``--budget``, output ``--size``), its wall time
   (the goal: <= 10 minutes on a 2-core machine) and every candidate;
2. ``upscale_<cand>.json``: for the pick and 3 other measured candidates, the latency ``upscale`` sees:
   the same runtime and size, the model run through srdistill's ``Runner`` as ``upscale`` runs it
   (goal: within +-20% of ``ms_plan``);
3. ``full_<cand>_s<seed>.json``: each proxy-scored candidate (>= 6) and the hand choice (the design card's
   Compact 32/8, or the widest Compact that fits) distilled for 2,000 steps with the recipe of
   ``bench/kd_methods.py`` on the shared training images, 2 seeds, scored on Set5/Set14 x4.

``--merge`` (also the last step of a run) writes bench/results/plan.json: ``candidates`` with
``ms_plan``, ``ms_upscale``, ``proxy_psnr``, ``full_psnr`` (mean of the seeds' Set5/Set14 mean), the
Kendall tau between proxy and full PSNR (goal >= 0.7) and ``pick`` vs ``hand``. ``--quick`` is a toy run
(tiny budget and sizes, a few steps, one seed; results in plan_quick.json) that proves the plumbing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from . import common
from .common import need_shared, save

TEACHER = "DCTLSA_x4.pt"
HAND = ("Compact", 32, 8)  # the design card's --student-width 32 Compact student
FULL_STEPS = 2000


def _key(c: dict) -> str:
    return f"{c['family'].lower()}{c['width']}" + (f"d{c['depth']}" if c.get("depth") is not None else "")


def stage_plan(work: Path, a) -> dict:
    """Run the plan once (resumable: a finished plan.json is kept)."""
    path = work / "plan.json"
    if path.exists():
        return json.loads(path.read_text())
    from srdistill.plan import plan, plan_options  # lazy: the bench's CLI parses before torch loads
    from srdistill.plan.proxy import ProxySettings  # lazy: as above

    # the proxy as a user's plan runs it (the built-in photos) unless --proxy-data names a folder
    data = [str(need_shared("data", "train"))] if a.quick or a.proxy_data == "shared" else \
        [a.proxy_data] if a.proxy_data else []
    proxy = ProxySettings(steps=a.proxy_steps, data=data, max_images=6 if a.quick else None)
    opts = plan_options(need_shared("weights", TEACHER), budget=a.budget, size=a.size, device="cpu",
                        runtime=a.runtime, families=a.families.split(",") if a.families else None,
                        threads=a.threads, repeats=2 if a.quick else 5, max_proxy=a.max_proxy, proxy=proxy)
    t0 = time.monotonic()
    res = plan(opts)
    doc = {**res.to_dict(), "wall_seconds": round(time.monotonic() - t0, 1)}
    path.write_text(json.dumps(doc, indent=1))
    return doc


def stage_upscale(work: Path, doc: dict, a) -> None:
    """The pick and 3 other measured candidates, timed as upscale runs them."""
    import torch  # lazy: as above

    from srdistill.models.loading import load_model  # lazy: as above
    from srdistill.models.students import build_student  # lazy: as above
    from srdistill.plan.latency import model_file  # lazy: as above
    from srdistill.runner import Runner  # lazy: as above
    from srdistill.runtimes.select import open_model  # lazy: as above

    measured = [c for c in doc["candidates"] if c.get("ms") is not None]
    pick = doc.get("pick")
    chosen = ([pick] if pick else []) + [c for c in measured if not pick or _key(c) != _key(pick)][:3]
    teacher = load_model(need_shared("weights", TEACHER))
    w, h = doc["input_size"]
    for c in chosen:
        row_path = work / f"upscale_{_key(c)}.json"
        if row_path.exists():
            continue
        student = build_student(teacher, c["width"], c["depth"], None if c["same_family"] else c["family"], seed=0)
        folder = work / f"files_{_key(c)}"
        folder.mkdir(exist_ok=True)
        path = model_file(student, c["runtime"] if doc["runtime"] == "auto" else doc["runtime"], folder)
        runnable, _ = open_model(path, runtime=c["runtime"], device="cpu", threads=a.threads, size=(h, w), fast=True)
        runner = Runner(runnable, tile="auto", scale=teacher.scale)
        x = torch.rand(1, 3, h, w)
        ms = common.median_time(lambda: runner.sr(x), repeats=2 if a.quick else 5) * 1000
        row = {"key": _key(c), "ms_plan": c["ms"], "ms_upscale": round(ms, 3), "runtime": c["runtime"],
               "ratio": round(ms / c["ms"], 3)}
        row_path.write_text(json.dumps(row, indent=1))
        print(json.dumps(row), flush=True)


def _full_run(work: Path, fam: str, width: int, depth, same: bool, seed: int, a) -> None:
    key = f"{fam.lower()}{width}" + (f"d{depth}" if depth is not None else "")
    row_path = work / f"full_{key}_s{seed}.json"
    if row_path.exists():
        return
    from srdistill.data.datasets import load_eval_pairs  # lazy: as above
    from srdistill.distill.trainer import DistillConfig, distill  # lazy: as above
    from srdistill.evaluate import score_pairs  # lazy: as above
    from srdistill.models.loading import load_model  # lazy: as above

    out = work / f"full_{key}_s{seed}.safetensors"
    cfg = DistillConfig(teacher=str(need_shared("weights", TEACHER)), student_arch=None if same else fam.lower(),
                        student_width=width, student_depth=depth, data=[str(need_shared("data", "train"))], val=[],
                        steps=a.full_steps, batch_size=16, patch_size=32, lr=1e-3, out=str(out), seed=seed,
                        checkpoint_every=500, overwrite=True, threads=a.threads, pack=a.pack or str(work / "pack"),
                        max_images=6 if a.quick else None, device="cpu")
    t0 = time.monotonic()
    distill(cfg)
    m = load_model(out)
    row = {"key": key, "seed": seed, "steps": a.full_steps, "seconds": round(time.monotonic() - t0, 1)}
    scores = []
    for n in ("Set5", "Set14"):
        pairs = load_eval_pairs(need_shared("data", n, "HR"), 4)[:1 if a.quick else None]
        row[f"{n.lower()}_psnr"] = score_pairs(m, pairs, 4)["psnr"]
        scores.append(row[f"{n.lower()}_psnr"])
    row["psnr"] = sum(scores) / len(scores)
    out.with_suffix(".ckpt").unlink(missing_ok=True)
    row_path.write_text(json.dumps(row, indent=1))
    print(json.dumps(row), flush=True)


def hand_choice(doc: dict) -> tuple[str, int, int | None, bool]:
    """Compact 32/8, or the widest Compact (depth 8 first) that fits."""
    compact = [c for c in doc["candidates"] if c["family"] == "Compact" and c["fits"]]
    if any(c["width"] == 32 and c["depth"] == 8 for c in compact) or not compact:
        return (*HAND, doc["teacher"]["architecture"] == "Compact")
    c = max(compact, key=lambda c: (c["depth"] == 8, c["width"], c["depth"]))
    return c["family"], c["width"], c["depth"], c["same_family"]


def stage_full(work: Path, doc: dict, a) -> None:
    seeds = (0,) if a.quick else (0, 1)
    scored = [c for c in doc["candidates"] if c.get("proxy_psnr") is not None]
    for seed in seeds:
        for c in scored:
            _full_run(work, c["family"], c["width"], c["depth"], c["same_family"], seed, a)
        _full_run(work, *hand_choice(doc), seed, a)


def kendall_tau(xs: list[float], ys: list[float]) -> float | None:
    """Kendall's tau-a over the pairs (no scipy needed)."""
    n = len(xs)
    if n < 2:
        return None
    s = 0
    for i in range(n):
        for j in range(i + 1, n):
            d = (xs[i] - xs[j]) * (ys[i] - ys[j])
            s += (d > 0) - (d < 0)
    return s / (n * (n - 1) / 2)


def merge(work: Path, quick: bool = False) -> dict:
    doc = json.loads((work / "plan.json").read_text())
    ups = {json.loads(p.read_text())["key"]: json.loads(p.read_text()) for p in work.glob("upscale_*.json")}
    full: dict[str, list[dict]] = {}
    for p in sorted(work.glob("full_*_s*.json")):
        r = json.loads(p.read_text())
        full.setdefault(r["key"], []).append(r)
    rows = []
    for c in doc["candidates"]:
        if c.get("ms") is None and c.get("proxy_psnr") is None:
            continue
        k = _key(c)
        runs = full.get(k, [])
        rows.append({"family": c["family"], "width": c["width"], "depth": c["depth"], "params": c["params"],
                     "gflops": c["gflops"], "ms_plan": c["ms"], "ms_upscale": ups.get(k, {}).get("ms_upscale"),
                     "fits": c["fits"], "proxy_psnr": c.get("proxy_psnr"),
                     "full_psnr": statistics.mean(r["psnr"] for r in runs) if runs else None,
                     "full_runs": runs})
    ranked = [r for r in rows if r["proxy_psnr"] is not None and r["full_psnr"] is not None]
    fam, w, d, _ = hand_choice(doc)
    hk = f"{fam.lower()}{w}" + (f"d{d}" if d is not None else "")
    pick = doc.get("pick")
    out = {"settings": {"teacher": TEACHER, "budget": doc["budget"], "size": doc["size"], "runtime": doc["runtime"],
                        "proxy": doc["proxy"], "full_steps": FULL_STEPS if not quick else "quick",
                        "plan_wall_seconds": doc.get("wall_seconds")},
           "candidates": rows,
           "kendall_tau": kendall_tau([r["proxy_psnr"] for r in ranked], [r["full_psnr"] for r in ranked]),
           "ranked_candidates": len(ranked),
           "pick": {"key": _key(pick) if pick else None,
                    "full_runs": full.get(_key(pick), []) if pick else []},
           "hand": {"key": hk, "full_runs": full.get(hk, [])},
           "latency_within_20pct": all(abs(u["ms_upscale"] / u["ms_plan"] - 1) <= 0.2 for u in ups.values())
           if ups else None}
    save("plan" + ("_quick" if quick else ""), out)
    return out


def run(quick: bool = False, **kw) -> dict:
    a = argparse.Namespace(quick=quick, budget=kw.get("budget") or ("2000ms" if quick else "250ms"),
                           size=kw.get("size") or ("128x128" if quick else "1920x1080"),
                           runtime=kw.get("runtime") or "auto", families=kw.get("families"),
                           max_proxy=kw.get("max_proxy") or (2 if quick else 6),
                           proxy_steps=kw.get("proxy_steps") or (4 if quick else 300),
                           full_steps=kw.get("full_steps") or (4 if quick else FULL_STEPS),
                           threads=kw.get("threads"), pack=kw.get("pack"), proxy_data=kw.get("proxy_data"),
                           stages=kw.get("stages") or "plan,upscale,full")
    if quick and not a.families:
        a.families = "compact"
    work = Path(kw.get("work") or common.RESULTS / ("plan_quick_runs" if quick else "plan_runs"))
    work.mkdir(parents=True, exist_ok=True)
    doc = stage_plan(work, a)
    if "upscale" in a.stages:  # timed: run it on a quiet machine
        stage_upscale(work, doc, a)
    if "full" in a.stages:  # untimed: may run beside other work
        stage_full(work, doc, a)
    return merge(work, quick)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget", help="plan's --budget (default 250ms: 4 fps at 1080p on a 2-core CPU)")
    ap.add_argument("--size", help="output size (default 1920x1080)")
    ap.add_argument("--runtime")
    ap.add_argument("--families", help="comma separated (default: all)")
    ap.add_argument("--max-proxy", type=int)
    ap.add_argument("--proxy-steps", type=int)
    ap.add_argument("--full-steps", type=int)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--work", help="folder for per-run rows (resumable)")
    ap.add_argument("--pack", help="training pack of the 2,000-step runs (reuse one labelled by the same teacher)")
    ap.add_argument("--proxy-data", help="HR folder for the proxy ('shared': the shared training images; "
                    "default: the built-in photos, as a user's plan)")
    ap.add_argument("--stages", help="comma separated subset of plan,upscale,full (default: all)")
    ap.add_argument("--merge", action="store_true", help="only gather the rows into the results file")
    x = ap.parse_args()
    if x.merge:
        print(json.dumps(merge(Path(x.work or common.RESULTS / "plan_runs"), x.quick), indent=1))
    else:
        print(json.dumps(run(**vars(x)), indent=1))
