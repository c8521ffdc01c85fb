"""PNG compression level: Pillow's encode time and file size of a 1080p frame at levels 0-9.

``srdistill upscale`` spends most of a folder's time in Pillow's PNG encoder (zlib). This measures
what each ``--png-level`` costs on frames like the ones upscale writes: Set14 photos cropped to
16:9, shrunk to 480x270 (MATLAB bicubic) and upscaled x4 by the bundled default model to
1920x1080 (without the shared data: the bundled sample photo, bicubic-upscaled to 1080p).

The default is chosen by a rule the results apply, so a re-run on another machine re-derives it:
among levels 1-9, the one with the smallest files whose median encode time is at most
``RULE_TIME_FACTOR`` x level 1's (level 0 stores the pixels uncompressed: files ~3x larger).
Timings on a loaded machine are marked ``provisional``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

import numpy as np
from PIL import Image as PILImage

from .common import SHARED, save

LEVELS = list(range(10))
RULE_TIME_FACTOR = 1.5
FRAME_SOURCES = ("barbara.png", "monarch.png", "baboon.png")


def _frames(quick: bool) -> tuple[list[np.ndarray], str]:
    """uint8 HxWx3 frames (1080p, or 270x480 with ``quick``) and how they were made."""
    import torch  # heavy: only the frame preparation needs it

    from srdistill.assets import DEFAULT_MODEL, SAMPLE_IMAGE
    from srdistill.data.images import read_image
    from srdistill.data.resize import imresize
    from srdistill.models.loading import load_model

    lr_hw = (68, 120) if quick else (270, 480)
    srcs = [SHARED / "data" / "Set14" / "HR" / n for n in FRAME_SOURCES]
    srcs = [p for p in srcs if p.exists()][: 1 if quick else 3]
    model = load_model(DEFAULT_MODEL)
    frames = []
    with torch.no_grad():
        for p in srcs:
            x = read_image(p).to_tensor()
            h, w = x.shape[-2:]
            ch = min(h, w * 9 // 16)  # a 16:9 crop from the middle
            cw = ch * 16 // 9
            x = x[..., (h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
            lr = imresize(x, size=lr_hw).clamp(0, 1)
            y = model(lr).clamp(0, 1)
            frames.append((y[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
        how = f"Set14 {', '.join(p.name for p in srcs)}: 16:9 crop -> {lr_hw[1]}x{lr_hw[0]} -> default model x4"
        if not frames:
            x = read_image(SAMPLE_IMAGE).to_tensor()
            y = imresize(x, size=(lr_hw[0] * 4, lr_hw[1] * 4)).clamp(0, 1)
            frames.append((y[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
            how = "the bundled sample photo, bicubic to 1080p (no shared Set14)"
    return frames, how


def measure(frames: list[np.ndarray], repeats: int) -> list[dict]:
    """Per level: median/min encode seconds per frame (interleaved over levels) and mean bytes."""
    ims = [PILImage.fromarray(f) for f in frames]
    times: dict[int, list[float]] = {lv: [] for lv in LEVELS}
    sizes: dict[int, list[int]] = {lv: [] for lv in LEVELS}
    for _ in range(repeats):  # levels interleaved, so a change of the machine's load hits them all
        for lv in LEVELS:
            for im in ims:
                buf = io.BytesIO()
                t0 = time.perf_counter()
                im.save(buf, format="PNG", compress_level=lv)
                times[lv].append(time.perf_counter() - t0)
                sizes[lv].append(buf.tell())
    return [{"level": lv, "encode_s_median": round(statistics.median(times[lv]), 4),
             "encode_s_min": round(min(times[lv]), 4), "encode_s_max": round(max(times[lv]), 4),
             "mean_bytes": int(statistics.mean(sizes[lv]))} for lv in LEVELS]


def choose(rows: list[dict]) -> int:
    """The rule in the module docstring."""
    t1 = next(r["encode_s_median"] for r in rows if r["level"] == 1)
    ok = [r for r in rows if r["level"] >= 1 and r["encode_s_median"] <= RULE_TIME_FACTOR * t1]
    return min(ok, key=lambda r: (r["mean_bytes"], r["encode_s_median"]))["level"]


def run(quick: bool = False, repeats: int | None = None, provisional: bool | None = None) -> dict:
    frames, how = _frames(quick)
    repeats = repeats or (1 if quick else 5)
    rows = measure(frames, repeats)
    level = choose(rows)
    base = next(r for r in rows if r["level"] == 6)
    for r in rows:
        r["bytes_vs_level6"] = round(r["mean_bytes"] / base["mean_bytes"], 4)
        r["time_vs_level6"] = round(r["encode_s_median"] / base["encode_s_median"], 4)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    doc = {"settings": {"frames": how, "frame_hw": list(frames[0].shape[:2]), "n_frames": len(frames),
                        "repeats": repeats, "encoder": f"Pillow {PILImage.__version__} PNG (zlib), RGB 8-bit",
                        "rule": f"smallest files among levels 1-9 whose median encode time is at most "
                                f"{RULE_TIME_FACTOR}x level 1's", "load_average_1min": load},
           "provisional": bool(provisional) if provisional is not None else quick,
           "results": rows, "chosen_level": level}
    save("png_level" + ("_quick" if quick else ""), doc)
    return doc


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--provisional", action="store_true", help="mark the figures as taken on a loaded machine")
    a = ap.parse_args()
    d = run(a.quick, a.repeats, a.provisional or None)
    for r in d["results"]:
        print(r)
    print("chosen level:", d["chosen_level"])
