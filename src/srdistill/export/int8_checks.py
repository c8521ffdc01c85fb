"""int8 quality and speed checks any format shares: the LR/HR pairs, PSNR of fp32 and int8 against HR (the
guard's figure) and their speed. ``ex`` is the format's exporter (model, options, reporter, fixed size);
``s32``/``s8`` are sessions with onnxruntime's ``run(names, feeds)``."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ExportError
from ..metrics import psnr, to_uint8
from .calibration import make_pairs, read_rgb, synthetic_hr
from .verify import round_up, synthetic_batch


def int8_pairs(ex, calib_paths: list[Path] | None):
    """LR/HR pairs for calibration and the PSNR check: the calibration images, else synthetic ones."""
    o, s = ex.o, ex.model.scale
    m, lo = max(1, ex.model.multiple_of), max(1, ex.model.min_size)
    patch = ex.static or (round_up(max(o.calibration_size, lo), m),) * 2
    if calib_paths is not None:
        paths = calib_paths[: o.max_calibration_images]
        if len(calib_paths) > len(paths):
            ex.r.info(f"using the first {len(paths)} of {len(calib_paths)} calibration images")
        images, source = [read_rgb(p) for p in paths], "calibration"
    else:
        images, source = synthetic_hr(4, patch[0] * s, patch[1] * s, seed=123), "synthetic"
    pairs = make_pairs(images, ex.model, patch, bool(ex.static))
    if not pairs:
        need = f"{patch[0]}x{patch[1]}" if ex.static else f"{lo}x{lo}"
        raise ExportError(f"no calibration image is large enough for this model (each needs at least {need} "
                          "pixels after cropping)")
    return pairs, source


def int8_psnr(ex, s32, s8, pairs):
    """PSNR of fp32 and int8 against HR (the drop the guard judges), and int8 against fp32."""
    s = ex.model.scale
    with_hr = [p for p in pairs if p.hr is not None]
    p32, p8, pvs = [], [], []
    with ex.r.task("int8: measuring PSNR", total=len(pairs)) as task:
        for p in pairs:
            (y32,) = s32.run(["output"], {"input": p.lr})
            (y8,) = s8.run(["output"], {"input": p.lr})
            if not np.isfinite(y8).all():
                raise ExportError("the int8 model outputs NaN/inf on the calibration images")
            u32 = to_uint8(torch.from_numpy(np.asarray(y32, dtype=np.float32)))  # each output quantised once
            u8 = to_uint8(torch.from_numpy(np.asarray(y8, dtype=np.float32)))
            pvs.append(float(psnr(u8, u32, s, test_y_channel=True)))
            if p.hr is not None:
                p32.append(float(psnr(u32, p.hr, s, test_y_channel=True)))
                p8.append(float(psnr(u8, p.hr, s, test_y_channel=True)))
            task.advance(1)

    def mean(v):
        finite = [x for x in v if math.isfinite(x)]
        return float(np.mean(finite)) if finite else (float("inf") if v else None)

    if not with_hr:
        ex.warn("calibration images are too small to make LR/HR pairs: PSNR is int8 vs the fp32 output, "
                  "and the PSNR drop cannot be measured")
        return "fp32", None, None, None, mean(pvs), 0
    psnr32, psnr8 = mean(p32), mean(p8)
    drop = psnr32 - psnr8
    if math.isnan(drop):  # both perfect (inf dB)
        drop = 0.0
    return "hr", psnr32, psnr8, drop, mean(pvs), len(with_hr)


def int8_speed(ex, s32, s8):
    o = ex.o
    m, lo = max(1, ex.model.multiple_of), max(1, ex.model.min_size)
    sp = ex.static or (o.speed_size, o.speed_size)
    if not ex.static:
        sp = (round_up(max(sp[0], lo), m), round_up(max(sp[1], lo), m))
    x = synthetic_batch(1, ex.cin, sp[0], sp[1], seed=99)
    with ex.r.task("int8: timing", total=2) as task:
        t32 = _median_ms(s32, x, o.speed_runs)
        task.advance(1)
        t8 = _median_ms(s8, x, o.speed_runs)
        task.advance(1)
    return t32, t8, sp


def _median_ms(sess, x: np.ndarray, runs: int) -> float:
    sess.run(None, {"input": x})  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0
