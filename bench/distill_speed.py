"""Distillation step cost: student alone vs KD with the teacher cache vs KD without it.

Runs the real ``srdistill.distill`` loop (data, augmentation, losses, EMA, optimiser)
for a fixed number of steps and reads its measured steps/s (the loop only; the
cache fill is timed separately). Cases:

* ESRGAN-size teacher (RRDBNet, 23 blocks, 64 ch, random weights: speed does not
  depend on the weights) -> Compact 32 ch student, batch 8, LR patch 32, T91.
* the real DCTLSA teacher -> Compact 32/8, same settings.
* the traiNNer-redux comparison pair: realesr-animevideov3 -> Compact 32/8, batch 8,
  LR patch 32, T91, L1, 2 threads, LR made on the fly.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from .common import need_shared, save


def _esrgan_teacher(path: Path, blocks: int) -> Path:
    from srdistill.models._compat import import_spandrel

    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    torch.save(ESRGAN(num_filters=64, num_blocks=blocks, scale=4).state_dict(), path)
    return path


def _run(teacher: Path, data: Path, work: Path, *, steps: int, cache: bool, alpha: float, width: int, depth: int,
         threads: int, max_images: int | None) -> dict:
    from srdistill.distill.trainer import DistillConfig, distill

    out = work / f"s_{cache}_{alpha}_{steps}.safetensors"
    cfg = DistillConfig(teacher=str(teacher), student_arch="compact", student_width=width, student_depth=depth,
                        data=[str(data)], val=[], steps=steps, batch_size=8, patch_size=32, alpha=alpha,
                        teacher_cache=cache, out=str(out), overwrite=True, threads=threads, seed=0,
                        checkpoint_every=10**9, max_images=max_images)
    r = distill(cfg)
    return {"steps": steps, "steps_per_s": r.steps_per_second, "s_per_step": 1 / r.steps_per_second,
            "cache_fill_s": r.teacher_cache.get("seconds", 0.0), "images": r.data["used"]}


def run(quick: bool = False) -> dict:
    t91 = need_shared("data", "train", "T91")
    steps = 8 if quick else 200
    naive_steps = 3 if quick else 20
    max_images = 4 if quick else None
    threads = 2
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = {
            "esrgan23_to_compact32": (_esrgan_teacher(work / "rrdb.pth", 1 if quick else 23), 32, 16),
            "dctlsa_to_compact32x8": (need_shared("weights", "DCTLSA_x4.pt"), 32, 8),
            "animevideov3_to_compact32x8": (need_shared("weights", "realesr-animevideov3.pth"), 32, 8),
        }
        for name, (teacher, width, depth) in cases.items():
            alone = _run(teacher, t91, work, steps=steps, cache=False, alpha=0.0, width=width, depth=depth,
                         threads=threads, max_images=max_images)
            cached = _run(teacher, t91, work, steps=steps, cache=True, alpha=0.5, width=width, depth=depth,
                          threads=threads, max_images=max_images)
            naive = _run(teacher, t91, work, steps=naive_steps, cache=False, alpha=0.5, width=width, depth=depth,
                         threads=threads, max_images=max_images)
            run_steps = 5000
            total_cached = cached["cache_fill_s"] + run_steps * cached["s_per_step"]
            total_naive = run_steps * naive["s_per_step"]
            results[name] = {
                "student_alone": alone, "kd_cached": cached, "kd_uncached": naive,
                "cached_step_vs_student_step": cached["s_per_step"] / alone["s_per_step"],
                "naive_step_vs_student_step": naive["s_per_step"] / alone["s_per_step"],
                "run_5000_steps_s": {"cached_incl_fill": total_cached, "naive": total_naive,
                                      "speedup": total_naive / total_cached},
            }
    doc = {"settings": {"batch": 8, "lr_patch": 32, "data": "T91", "threads": threads, "steps": steps,
                        "naive_steps": naive_steps, "quick": quick,
                        "note": "5,000-step totals = measured cache fill + 5,000 x measured s/step"},
           "results": results}
    save("distill_speed" + ("_quick" if quick else ""), doc)
    return doc


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    print(run(ap.parse_args().quick))
