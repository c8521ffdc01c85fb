"""Eval correctness: the bicubic baseline through srdistill's eval path vs the published references."""

from __future__ import annotations

import argparse

from .common import need_shared, save

PUBLISHED = {("Set5", 2): (33.66, 0.9299), ("Set5", 4): (28.42, 0.8104),
             ("Set14", 2): (30.24, 0.8688), ("Set14", 4): (26.00, 0.7027)}


def run(quick: bool = False) -> dict:
    from srdistill.data.datasets import load_eval_pairs
    from srdistill.evaluate import BicubicBaseline, score_pairs

    rows = {}
    for (name, scale), (p_psnr, p_ssim) in PUBLISHED.items():
        if quick and (name, scale) != ("Set5", 4):
            continue
        pairs = load_eval_pairs(need_shared("data", name, "HR"), scale)
        if quick:
            pairs = pairs[:1]
        r = score_pairs(BicubicBaseline(scale), pairs, scale)
        rows[f"{name} x{scale}"] = {"psnr": r["psnr"], "ssim": r["ssim"], "published_psnr": p_psnr,
                                    "published_ssim": p_ssim, "delta_psnr": r["psnr"] - p_psnr,
                                    "delta_ssim": r["ssim"] - p_ssim, "images": len(pairs)}
    doc = {"settings": {"quick": quick, "convention": "MATLAB bicubic down+up, uint8, Y (BT.601), crop = scale"},
           "results": rows}
    save("eval_correctness" + ("_quick" if quick else ""), doc)
    return doc


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    print(run(ap.parse_args().quick))
