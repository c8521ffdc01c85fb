"""Real-world teacher study: does training on degraded inputs make a student follow the teacher there?

Teacher ``realesr-animevideov3`` (a real-world Compact 64/16 in ../shared/weights), student
Compact 32/8, data ../shared/data/train, the same steps for every run, 2 seeds per row:

* ``bicubic``: clean bicubic LR (srdistill's default);
* ``realesrgan``: ``--degradation realesrgan`` (4 cached variants per image).

Both use alpha 1 (the teacher's output is the only target: the community's way of
compressing a real-world model, whose outputs are not the HR images) and ``--init auto``
(teacher initialisation: the student is the teacher's family). Scored against the
teacher's outputs (``srdistill.reference``) on Set14, with inputs degraded by the
``realesrgan`` pipeline at seed 12345 (training used seeds 0 and 1) and with clean bicubic
LR: Y-PSNR/SSIM, 4 px border. ``--timing`` measures, alone on the machine, the seconds per
step of a student-only step (alpha 0), a step on cached variants and a live-teacher
on-the-fly step (``--no-teacher-cache``). Per-run rows go to ``--work``; ``--merge``
writes bench/results/realworld.json and the comparison picture.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

from . import common
from .common import need_shared, save

PRESETS = Path(__file__).parent / "presets"
CONDITIONS = {"bicubic": dict(degradation="bicubic"), "realesrgan": dict(degradation="realesrgan"),
              # Real-ESRGAN's own stream, no clean inputs (clean_prob 0): what chose the clean share
              "realesrgan-pure": dict(degradation=str(PRESETS / "realesrgan_pure.json"))}
EVAL_SEED = 12345
EVAL_DRAWS = 4  # degraded inputs per benchmark image: one draw of a random pipeline is a noisy sample
TEACHER = "realesr-animevideov3.pth"


@functools.lru_cache(maxsize=1)
def _sets():
    """Set14 (the study's benchmark) and Set5 (a check set: the clean share was not chosen on it),
    each with degraded and clean inputs, the teacher's outputs as references (computed once per process:
    every run, the picture and a re-score share them)."""
    from srdistill.data.datasets import load_eval_pairs
    from srdistill.data.degrade import load_degradation
    from srdistill.models.loading import load_model
    from srdistill.reference import degrade_pairs, teacher_reference

    teacher = load_model(need_shared("weights", TEACHER))
    out = {}
    for name, prefix in (("Set14", ""), ("Set5", "set5_")):
        clean = load_eval_pairs(need_shared("data", name, "HR"), 4)
        degraded = degrade_pairs(clean, load_degradation("realesrgan"), 4, EVAL_SEED, draws=EVAL_DRAWS)
        out[prefix + "clean"] = teacher_reference(clean, teacher, 4)
        out[prefix + "degraded"] = teacher_reference(degraded, teacher, 4)
    return teacher, out


def rescore(work: Path) -> None:
    """Score every finished run again on every set (after a set was added)."""
    from srdistill.evaluate import score_pairs
    from srdistill.models.loading import load_model

    _, sets = _sets()
    for p in sorted(work.glob("*_s*.json")):
        row = json.loads(p.read_text())
        student = work / f"{row['condition']}_s{row['seed']}.safetensors"
        if not student.exists():
            continue
        m = load_model(student)
        for name, pairs in sets.items():
            s = score_pairs(m, pairs, 4)
            row[f"fidelity_{name}_psnr"], row[f"fidelity_{name}_ssim"] = s["psnr"], s["ssim"]
        p.write_text(json.dumps(row, indent=1))


def _config(cond: str, seed: int, steps: int, out: Path, threads: int | None, cache: str | None, **extra):
    from srdistill.distill.trainer import DistillConfig

    kw = dict(teacher=str(need_shared("weights", TEACHER)), student_arch="compact", student_width=32,
              student_depth=8, data=[str(need_shared("data", "train"))], val=[], steps=steps, batch_size=16,
              patch_size=32, lr=1e-3, alpha=1.0, out=str(out), seed=seed, checkpoint_every=10**9,
              teacher_cache_dir=cache, threads=threads, overwrite=True, **CONDITIONS[cond])
    kw.update(extra)
    return DistillConfig(**kw)


def one_run(cond: str, seed: int, steps: int, work: Path, threads: int | None, cache: str | None) -> dict:
    from srdistill.distill.trainer import distill
    from srdistill.evaluate import score_pairs
    from srdistill.models.loading import load_model

    out = work / f"{cond}_s{seed}.safetensors"
    t0 = time.monotonic()
    r = distill(_config(cond, seed, steps, out, threads, cache))
    seconds = time.monotonic() - t0
    _, sets = _sets()
    m = load_model(out)
    row = {"condition": cond, "seed": seed, "steps": steps, "seconds": round(seconds, 1),
           "train_seconds": round(steps / r.steps_per_second, 1), "threads": threads,
           "cache_seconds": round(r.teacher_cache.get("seconds") or 0.0, 1),
           "degrade_seconds": (r.teacher_cache.get("degradation") or {}).get("seconds", 0.0)}
    for name, pairs in sets.items():
        s = score_pairs(m, pairs, 4)
        row[f"fidelity_{name}_psnr"], row[f"fidelity_{name}_ssim"] = s["psnr"], s["ssim"]
    (work / f"{cond}_s{seed}.json").write_text(json.dumps(row, indent=1))
    out.with_suffix(".ckpt").unlink(missing_ok=True)
    return row


def timing(work: Path, steps: int = 200, threads: int | None = None) -> dict:
    """Seconds per step (after set-up) of three kinds of step; run it alone on the machine."""
    from srdistill.distill.trainer import distill

    kinds = {"student_only": dict(alpha=0.0),
             "cached_variants": dict(degradation="realesrgan"),
             "live_teacher": dict(degradation="realesrgan", teacher_cache=False)}
    out = {}
    for name, extra in kinds.items():
        extra = {**extra}
        cond = extra.pop("degradation", "bicubic")
        cfg = _config(cond, 0, steps, work / f"timing_{name}.safetensors", threads, None, max_images=40,
                      init="random", **extra)
        out[name] = round(1.0 / distill(cfg).steps_per_second, 4)
        print(name, out[name], flush=True)
    out["threads"] = threads
    (work / "timing.json").write_text(json.dumps(out, indent=1))
    return out


def _picture(work: Path) -> str | None:
    """degraded input | teacher | bicubic-trained | degradation-trained, one Set14 crop."""
    import numpy as np

    from srdistill.evaluate import run_sr
    from srdistill.metrics import psnr, to_uint8
    from srdistill.models.loading import load_model
    from srdistill.report import comparison_grid, save_png

    students = {c: work / f"{c}_s0.safetensors" for c in CONDITIONS}
    if not all(p.exists() for p in students.values()):
        return None
    teacher, sets = _sets()
    pair = next(p for p in sets["degraded"] if p.name.startswith("comic")) if any(
        p.name.startswith("comic") for p in sets["degraded"]) else sets["degraded"][0]
    outs = {c: to_uint8(run_sr(load_model(p), pair.lr, 4)) for c, p in students.items()}
    h, w = pair.hr.shape[:2]
    cw, ch = min(160, w), min(160, h)
    # the window where the two students differ most (the reader should see the difference)
    best, pos = -1.0, (0, 0)
    for y in range(0, h - ch + 1, 16):
        for x in range(0, w - cw + 1, 16):
            d = np.abs(outs["bicubic"][y:y + ch, x:x + cw].astype(float) - outs["realesrgan"][y:y + ch, x:x + cw]).mean()
            if d > best:
                best, pos = d, (x, y)
    x, y = pos
    lr = pair.lr.permute(1, 2, 0).numpy()
    inp = np.repeat(np.repeat(lr[y // 4:(y + ch) // 4, x // 4:(x + cw) // 4], 4, 0), 4, 1)
    ref = pair.hr[y:y + ch, x:x + cw]
    panels = [("degraded input", inp, "nearest x4"), ("teacher", ref, "reference")]
    for c, label in (("bicubic", "trained on bicubic"), ("realesrgan", "trained on realesrgan")):
        crop = outs[c][y:y + ch, x:x + cw]
        panels.append((label, crop, f"{psnr(crop, ref, 0):.2f} dB vs teacher"))
    path = common.RESULTS / "realworld_comparison.png"
    save_png(path, comparison_grid(panels), overwrite=True)
    return str(path.relative_to(common.RESULTS.parent.parent))


def merge(work: Path) -> dict:
    rows = [json.loads(p.read_text()) for p in sorted(work.glob("*_s*.json"))]
    steps = sorted({r["steps"] for r in rows})
    doc: dict = {"steps": steps[0] if len(steps) == 1 else steps, "seeds": sorted({r["seed"] for r in rows}),
                 "teacher": TEACHER, "student": "compact 32/8", "alpha": 1.0, "init": "auto (teacher)",
                 "data": "shared/data/train", "scored": "Y-PSNR/SSIM vs the teacher's output, Set14, 4 px border",
                 "eval_degradation": f"realesrgan, seed {EVAL_SEED}, {EVAL_DRAWS} draws per image"}
    for key in ("fidelity_degraded_psnr", "fidelity_clean_psnr", "fidelity_degraded_ssim", "fidelity_clean_ssim",
                "fidelity_set5_degraded_psnr", "fidelity_set5_clean_psnr", "seconds"):
        doc[key] = {}
        doc[key + "_spread"] = {}
        for c in CONDITIONS:
            vals = [r[key] for r in rows if r["condition"] == c and key in r]
            if vals:
                doc[key][c] = statistics.mean(vals)
                doc[key + "_spread"][c] = (max(vals) - min(vals)) / 2
    t = work / "timing.json"
    if t.exists():
        tm = json.loads(t.read_text())
        doc["step_seconds_student_only"] = tm["student_only"]
        doc["step_seconds_cached_variants"] = tm["cached_variants"]
        doc["step_seconds_live_teacher"] = tm["live_teacher"]
        doc["timing_threads"] = tm.get("threads")
        doc["cached_over_student_only"] = tm["cached_variants"] / tm["student_only"]
    d, c = doc["fidelity_degraded_psnr"], doc["fidelity_clean_psnr"]
    if "bicubic" in d and "realesrgan" in d:
        doc["gain_degraded_db"] = d["realesrgan"] - d["bicubic"]
        doc["loss_clean_db"] = c["bicubic"] - c["realesrgan"]
    doc["picture"] = _picture(work)
    doc["runs"] = rows
    threads = {r.get("threads") for r in rows}
    if len(threads) == 1 and isinstance(next(iter(threads)), int):
        import torch

        torch.set_num_threads(next(iter(threads)))  # the machine line records the runs' threads
    explore = sorted((work / "explore").glob("*_s*.json")) if (work / "explore").is_dir() else []
    if explore:  # how the clean share was chosen (seed 0, Set14; each variant clean with that probability)
        doc["clean_share_exploration"] = [
            {k: json.loads(p.read_text()).get(k) for k in ("condition", "seed", "fidelity_degraded_psnr",
                                                            "fidelity_clean_psnr")} for p in explore]
    save("realworld", doc)
    return doc


def run(quick: bool = False, steps: int | None = None, seeds=(0, 1), conditions=None, work: str | None = None,
        threads: int | None = None, cache: str | None = None) -> dict:
    steps = steps or (4 if quick else 2000)
    workdir = Path(work or (common.RESULTS / "realworld_runs"))
    workdir.mkdir(parents=True, exist_ok=True)
    for cond in conditions or list(CONDITIONS):
        for seed in seeds:
            if (workdir / f"{cond}_s{seed}.json").exists() and not quick:
                continue
            print(f"== {cond} seed {seed}", flush=True)
            print(json.dumps(one_run(cond, seed, steps, workdir, threads, cache)), flush=True)
    return merge(workdir)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--conditions", help="comma-separated: bicubic,realesrgan")
    ap.add_argument("--work")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--teacher-cache-dir")
    ap.add_argument("--timing", action="store_true", help="only the per-step timing (run it alone)")
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("--rescore", action="store_true", help="score the finished runs again on every set")
    a = ap.parse_args()
    work = Path(a.work or common.RESULTS / "realworld_runs")
    work.mkdir(parents=True, exist_ok=True)
    if a.timing:
        print(json.dumps(timing(work, threads=a.threads)))
    elif a.rescore:
        rescore(work)
    elif a.merge:
        print(json.dumps(merge(work), indent=1))
    else:
        run(steps=a.steps, seeds=tuple(int(s) for s in a.seeds.split(",")),
            conditions=a.conditions.split(",") if a.conditions else None, work=str(work), threads=a.threads,
            cache=a.teacher_cache_dir)
