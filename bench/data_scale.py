"""Data larger than memory: build a training pack of >= 5,000 images and train from it.

Phases (each records into ``--work``/phases.json; run the timed ones alone on the machine):

* ``gen``: synthetic HR images (random textures: smooth noise at several scales, edges, grain),
  640 x 640 by default, PNG, into ``--work``/images (not committed);
* ``build``: ``srdistill distill TEACHER --pack P --build-only`` with a tiny random Compact x4
  teacher; build seconds, pack size on disk, peak RSS of the process tree;
* ``train``: a few hundred steps reading from that pack: steps/s and peak RSS of the process tree;
* ``speed``: steps/s from a pack vs the in-memory path on T91 (../shared/data/train/T91), the
  same student and settings;
* ``fill``: the fill time of a pack of ``--fill-images`` images with 1 process vs 2 gloo ranks
  (torchrun, one thread each).

``--merge`` writes bench/results/data_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import common
from .common import save

STUDENT = ["-a", "compact", "-w", "32", "-d", "8"]


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (from /proc)."""
    kids: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            ppid, pages = int(parts[1]), int(parts[21])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
        rss[int(d)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += kids.get(p, [])
    return total


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; wall seconds, peak RSS of its process tree (sampled every 50 ms), stdout."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, **(env or {})})
    peak = [0]

    def watch():
        while p.poll() is None:
            peak[0] = max(peak[0], _tree_rss(p.pid))
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    out, err = p.communicate()
    t.join()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({p.returncode}): {err[-2000:]}")
    return {"seconds": time.monotonic() - t0, "peak_rss_gb": peak[0] / 1e9, "stdout": out}


def gen(work: Path, n: int, size: int) -> dict:
    import numpy as np
    from PIL import Image

    folder = work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t0 = time.monotonic()
    for i in range(n):
        f = folder / f"{i:05d}.png"
        if f.exists():
            continue
        img = np.zeros((size, size, 3), np.float32)
        for s in (8, 32, 128):  # smooth noise at three scales
            small = rng.random((size // s + 2, size // s + 2, 3), dtype=np.float32)
            img += np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
                              np.float32) / 255 / 3
        yy, xx = np.mgrid[0:size, 0:size]
        img[((xx + i * 7) // 40 + (yy // 40)) % 2 == 0] *= 0.8  # edges
        img += rng.normal(0, 0.02, img.shape).astype(np.float32)  # grain
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(f, compress_level=1)
    gb = sum(f.stat().st_size for f in folder.iterdir()) / 1e9
    return {"images": n, "size": f"{size}x{size}", "png_gb": gb, "gen_seconds": time.monotonic() - t0}


def teacher(work: Path) -> Path:
    import torch

    from srdistill.models._compat import import_spandrel

    import_spandrel()
    from spandrel.architectures.Compact import Compact

    p = work / "teacher_compact48x4.pth"
    if not p.exists():
        torch.manual_seed(0)
        torch.save(Compact(num_feat=48, num_conv=4, upscale=4).state_dict(), p)
    return p


def _sr(*args: str) -> list[str]:
    return [sys.executable, "-m", "srdistill", *args]


def build(work: Path, threads: int) -> dict:
    pack = work / "pack"
    shutil.rmtree(pack, ignore_errors=True)
    r = run_measured(_sr("distill", str(teacher(work)), *STUDENT, "--data", str(work / "images"), "--pack",
                         str(pack), "--build-only", "--threads", str(threads), "--json", "-q"))
    doc = json.loads(r["stdout"])
    disk = sum(f.stat().st_size for f in pack.rglob("*") if f.is_file())
    return {"build_seconds": r["seconds"], "build_peak_rss_gb": r["peak_rss_gb"], "pack_disk_gb": disk / 1e9,
            "dataset_gb": doc["pack"]["bytes"] / 1e9, "pack_images": doc["pack"]["images"]}


def train(work: Path, threads: int, steps: int) -> dict:
    out = work / "student.safetensors"
    r = run_measured(_sr("distill", str(teacher(work)), *STUDENT, "--data", str(work / "images"), "--pack",
                         str(work / "pack"), "--steps", str(steps), "--no-val", "--threads", str(threads),
                         "-o", str(out), "--overwrite", "--json", "-q", "--init", "random"))
    doc = json.loads(r["stdout"])
    assert doc["pack"]["reused"], "the pack should have been reused"
    return {"train_steps": steps, "train_peak_rss_gb": r["peak_rss_gb"],
            "steps_per_s_big_pack": doc["steps_per_second"]}


def speed(work: Path, threads: int, steps: int) -> dict:
    """steps/s on T91: in memory vs from a pack (the pack built first, untimed)."""
    t91 = common.need_shared("data", "train", "T91")
    tch = str(teacher(work))
    base = ["distill", tch, *STUDENT, "--data", str(t91), "--steps", str(steps), "--no-val", "--threads",
            str(threads), "--overwrite", "--json", "-q", "--init", "random"]
    pack = work / "pack_t91"
    subprocess.run(_sr("distill", tch, *STUDENT, "--data", str(t91), "--pack", str(pack), "--build-only", "-q"),
                   check=True, capture_output=True)
    out = {}
    for name, extra in (("memory", []), ("pack", ["--pack", str(pack)])):
        r = run_measured(_sr(*base, *extra, "-o", str(work / f"t91_{name}.safetensors")))
        out[f"steps_per_s_{name}"] = json.loads(r["stdout"])["steps_per_second"]
        out[f"peak_rss_gb_t91_{name}"] = r["peak_rss_gb"]
    return out


def workers(work: Path, threads: int, steps: int, n: int = 2) -> dict:
    """steps/s from the T91 pack with ``n`` DataLoader workers (the CPU default is 0: is that right?)."""
    t91 = common.need_shared("data", "train", "T91")
    r = run_measured(_sr("distill", str(teacher(work)), *STUDENT, "--data", str(t91), "--steps", str(steps),
                         "--no-val", "--threads", str(threads), "--overwrite", "--json", "-q", "--init", "random",
                         "--pack", str(work / "pack_t91"), "--workers", str(n),
                         "-o", str(work / "t91_workers.safetensors")))
    return {f"steps_per_s_pack_workers_{n}": json.loads(r["stdout"])["steps_per_second"]}


def fill(work: Path, images: int) -> dict:
    tch = str(teacher(work))
    common_args = [*STUDENT, "--data", str(work / "images"), "--max-images", str(images), "--build-only",
                   "--threads", "1", "-q", "--json"]
    out = {"fill_images": images}
    p1, p2 = work / "fill1", work / "fill2"
    for p in (p1, p2):
        shutil.rmtree(p, ignore_errors=True)
    def pack_seconds(stdout: str) -> float:  # the fill itself, from rank 0's report (no process start-up)
        return json.loads(stdout[stdout.index("{"):])["pack"]["seconds"]

    r = run_measured(_sr("distill", tch, *common_args, "--pack", str(p1)))
    out["fill_seconds_1_rank"], out["fill_wall_seconds_1_rank"] = pack_seconds(r["stdout"]), r["seconds"]
    r = run_measured([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                      "-m", "srdistill", "distill", tch, *common_args, "--pack", str(p2), "--device", "cpu"],
                     env={"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"})
    out["fill_seconds_2_ranks"], out["fill_wall_seconds_2_ranks"] = pack_seconds(r["stdout"]), r["seconds"]
    out["fill_speedup"] = out["fill_seconds_1_rank"] / out["fill_seconds_2_ranks"]
    return out


def merge(work: Path) -> dict:
    ph = json.loads((work / "phases.json").read_text())
    doc = {"images": ph.get("images"), "image_size": ph.get("size"), "dataset_gb": ph.get("dataset_gb"),
           "pack_disk_gb": ph.get("pack_disk_gb"),
           "peak_rss_gb": max(ph.get("build_peak_rss_gb", 0), ph.get("train_peak_rss_gb", 0)),
           "build_peak_rss_gb": ph.get("build_peak_rss_gb"), "train_peak_rss_gb": ph.get("train_peak_rss_gb"),
           "build_seconds": ph.get("build_seconds"), "train_steps": ph.get("train_steps"),
           "steps_per_s_big_pack": ph.get("steps_per_s_big_pack"),
           "steps_per_s_pack": ph.get("steps_per_s_pack"), "steps_per_s_memory": ph.get("steps_per_s_memory"),
           "steps_per_s_pack_workers_2": ph.get("steps_per_s_pack_workers_2"),
           "fill_images": ph.get("fill_images"), "fill_seconds_1_rank": ph.get("fill_seconds_1_rank"),
           "fill_seconds_2_ranks": ph.get("fill_seconds_2_ranks"), "fill_speedup": ph.get("fill_speedup"),
           "teacher": "random Compact 48/4 x4 (cheap)", "student": "Compact 32/8", "threads": ph.get("threads"),
           "workers": "default (0 on CPU)"}
    if doc["dataset_gb"] and doc["peak_rss_gb"]:
        doc["dataset_over_peak_rss"] = doc["dataset_gb"] / doc["peak_rss_gb"]
    if doc["steps_per_s_pack"] and doc["steps_per_s_memory"]:
        doc["pack_over_memory_speed"] = doc["steps_per_s_pack"] / doc["steps_per_s_memory"]
    save("data_scale", doc)
    return doc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/srdistill-data-scale")
    ap.add_argument("--phase", choices=["gen", "build", "train", "speed", "workers", "fill"], action="append")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--fill-images", type=int, default=400)
    ap.add_argument("--merge", action="store_true")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    phases = work / "phases.json"
    state = json.loads(phases.read_text()) if phases.exists() else {}
    for ph in a.phase or []:
        print(f"== {ph}", flush=True)
        res = {"gen": lambda: gen(work, a.images, a.size), "build": lambda: build(work, a.threads),
               "train": lambda: train(work, a.threads, a.steps), "speed": lambda: speed(work, a.threads, a.steps),
               "workers": lambda: workers(work, a.threads, a.steps),
               "fill": lambda: fill(work, a.fill_images)}[ph]()
        state.update(res, threads=a.threads)
        phases.write_text(json.dumps(state, indent=1))
        print(json.dumps(res), flush=True)
    if a.merge:
        print(json.dumps(merge(work), indent=1))
    return 0


def run(quick: bool = False) -> dict:
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="srdistill-data-scale-")) if quick else Path("/tmp/srdistill-data-scale")
    if quick:
        try:
            main(["--work", str(work), "--images", "6", "--size", "160", "--steps", "3", "--fill-images", "4",
                  "--phase", "gen", "--phase", "build", "--phase", "train"])
            return json.loads((work / "phases.json").read_text())
        finally:
            shutil.rmtree(work, ignore_errors=True)
    main(["--work", str(work), *sum((["--phase", p] for p in ("gen", "build", "train", "speed", "workers", "fill")),
                                    []),
          "--merge"])
    return json.loads((common.RESULTS / "data_scale.json").read_text())


if __name__ == "__main__":
    raise SystemExit(main())
