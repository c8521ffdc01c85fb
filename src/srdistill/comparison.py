"""The comparison picture of ``srdistill eval``: which crop a reader should see, and the grid."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .metrics import psnr, rgb_to_y, to_uint8
from .progress import Reporter
from .report import comparison_grid, save_png, window_mse
from .runner import run_sr

if TYPE_CHECKING:
    from .eval_report import EvalOptions, ModelEntry, ModelRow


def error_map(sr: np.ndarray, hr: np.ndarray, y_channel: bool) -> np.ndarray:
    if y_channel and sr.ndim == 3 and sr.shape[2] == 3:
        d = rgb_to_y(sr) - rgb_to_y(hr)
        return d * d
    d = sr.astype(np.float64) - hr.astype(np.float64)
    return (d * d).mean(axis=2) if d.ndim == 3 else d * d


def _psnr_from_mse(mse: np.ndarray | float, floor: float = 0.0):
    m = np.maximum(np.asarray(mse, dtype=np.float64), floor)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 * 255.0 / m)


#: Largest side of the automatically chosen comparison window (HR pixels).
COMPARISON_WINDOW = 96
#: When choosing the window, window MSEs below this (PSNR above 34.2 dB) count as equal: flat
#: regions where every model is near-perfect would otherwise give meaningless PSNR gains.
COMPARISON_MSE_FLOOR = 25.0
#: The teacher-student gap of a window is measured with this lower floor (PSNR up to 48.1 dB), or a
#: window where the teacher reaches 36 dB would look as close to the student as one at 34 dB.
COMPARISON_GAP_MSE_FLOOR = 1.0


def window_grid(err: np.ndarray, win: int, region: tuple[int, int, int, int]):
    y0, x0, y1, x1 = region
    wh, ww = min(win, y1 - y0), min(win, x1 - x0)
    if wh < 1 or ww < 1:
        return None
    return window_mse(err, (wh, ww), max(1, min(wh, ww) // 4), region), (wh, ww)


#: A window's teacher-student gap counts as representative within this many dB of the mean gap.
COMPARISON_GAP_TOLERANCE = 0.5


def _representative_crop(rows: list[ModelRow], ds: dict, grids: dict, pairs) -> tuple:
    """The crop a reader should see: among windows whose gap between the first model (the teacher)
    and the last one (the student) is within COMPARISON_GAP_TOLERANCE of that gap over the whole
    dataset, the one where the first model gains most over bicubic. Not the window where the
    student fails worst, which says nothing about the student on average."""
    base = [i for i, r in enumerate(rows) if r.role == "baseline"]
    models_idx = [i for i, r in enumerate(rows) if r.role != "baseline"]
    if not base or not models_idx:
        compare, mean_gap = list(range(len(rows)))[:1], None
    elif len(models_idx) >= 2:
        t, s_ = models_idx[0], models_idx[-1]
        compare = [t, base[0], s_]
        name = ds["name"]
        mean_gap = rows[t].datasets[name]["psnr"] - rows[s_].datasets[name]["psnr"]
        if not math.isfinite(mean_gap):
            mean_gap = None
    else:
        compare, mean_gap = [models_idx[0], base[0]], None
    best = None
    for i in range(len(pairs)):
        cells = [grids.get(r, {}).get(i) for r in compare]
        if any(c is None for c in cells):
            continue
        (ys, xs, _), (wh, ww) = cells[0]
        stack = np.stack([_psnr_from_mse(c[0][2], COMPARISON_MSE_FLOOR) for c in cells])
        if len(compare) == 1:
            score = -stack[0]
        else:
            score = stack[0] - stack[1]  # the teacher's gain over bicubic
            if mean_gap is not None:  # far from the typical teacher-student gap: ranked last
                gap = (_psnr_from_mse(cells[0][0][2], COMPARISON_GAP_MSE_FLOOR)
                       - _psnr_from_mse(cells[2][0][2], COMPARISON_GAP_MSE_FLOOR))
                off = np.abs(gap - mean_gap) - COMPARISON_GAP_TOLERANCE
                score = np.where(off <= 0, score, -1e6 - off)
        k = int(np.argmax(score))
        a, b = divmod(k, score.shape[1])
        val = float(score[a, b])
        if best is None or val > best[0]:
            best = (val, i, int(xs[b]), int(ys[a]), ww, wh)
    if best is None:  # images too small for a window inside the border: the whole image
        h, w = pairs[0].hr.shape[:2]
        best = (0.0, 0, 0, 0, w, h)
    _, i, x, y, cw, ch = best
    if len(compare) == 1:
        how = "lowest bicubic PSNR"
    elif mean_gap is None:
        how = f"largest gain of {rows[compare[0]].name} over bicubic"
    else:
        how = (f"largest gain of {rows[compare[0]].name} over bicubic among windows where its lead over "
               f"{rows[compare[2]].name} is within {COMPARISON_GAP_TOLERANCE} dB of the mean ({mean_gap:.2f} dB)")
    return i, x, y, cw, ch, how


def make_comparison(path: Path, rows_spec: list[ModelEntry], rows: list[ModelRow], ds: dict,
                     crop: tuple[int, int, int, int] | None, grids: dict, scale: int,
                     device: torch.device, tile: int | None, opts: EvalOptions, rep: Reporter) -> dict:
    pairs = ds["pairs"]
    to_teacher = opts.reference == "teacher"
    if crop is not None:
        img_index, (x, y, cw, ch) = 0, crop
        how = "given (--crop)"
    elif to_teacher:  # the teacher row is the reference: pick where bicubic is farthest from it
        img_index, x, y, cw, ch, how = _representative_crop(rows[:1], ds, grids, pairs)
        how = "where bicubic is farthest from the teacher"
    else:
        img_index, x, y, cw, ch, how = _representative_crop(rows, ds, grids, pairs)
    pair = pairs[img_index]
    hr_crop = pair.hr[y:y + ch, x:x + cw]
    panels = []
    psnrs: dict[str, float] = {}
    if to_teacher:  # input | teacher | students
        lr = pair.lr.permute(1, 2, 0).numpy()
        inp = np.repeat(np.repeat(lr, scale, 0), scale, 1)[y:y + ch, x:x + cw]
        panels.append(("input", inp, f"{pair.name} {x},{y} {cw}x{ch}"))
        panels.append((next(r.name for r in rows if r.role == "teacher") + " (teacher)", hr_crop, "reference"))
    with rep.task("comparison image", total=len(rows)) as task:
        for e, r in zip(rows_spec, rows):
            if to_teacher and r.role != "student":
                task.advance(1)
                continue
            sr = to_uint8(run_sr(e.model, pair.lr, scale, device=device,
                                 tile=tile if e.role != "baseline" else None, self_ensemble=r.self_ensemble))
            c = sr[y:y + ch, x:x + cw]
            v = psnr(c, hr_crop, 0, test_y_channel=opts.y_channel)
            psnrs[r.name] = v
            label = r.name + ("+" if r.self_ensemble else "")
            if r.role == "teacher":
                label += " (teacher)"
            panels.append((label, c, f"{v:.2f} dB" if math.isfinite(v) else "inf dB (identical)"))
            task.advance(1)
    if not to_teacher:
        panels.append(("HR", hr_crop, f"{pair.name} {x},{y} {cw}x{ch}"))
    save_png(path, comparison_grid(panels), overwrite=opts.overwrite)
    return {"path": str(path), "dataset": ds["name"], "image": pair.name, "crop": [x, y, cw, ch],
            "chosen": how, "psnr": psnrs,
            "panels": [p[0] for p in panels]}
