"""Render BENCHMARKS.md from bench/results/*.json (only numbers that were measured)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import common
from .common import ROOT

INTRO = """# Benchmarks

Every number here is written by `python -m bench all` (or `python -m bench NAME`) from the result
files in `bench/results/`; each section names the machine and date it was measured on. Nothing is
typed in by hand. Re-run a benchmark to refresh its section.
"""


def _load(name: str) -> dict | None:
    p = common.RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _machine(doc: dict) -> str:
    m = doc["machine"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    flags = f", flags {' '.join(m['cpu_flags'])}" if m.get("cpu_flags") else ""
    return (f"_Measured {m['date']} on {m['cpu']}{flags} ({m['cores']} cores, torch threads {m['torch_threads']}{gpu}); "
            f"Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}._")


def _f(v, nd=3) -> str:
    if isinstance(v, (int, float)):
        return f"{v:.{nd}f}"
    return str(v)


def _eval(doc: dict) -> list[str]:
    out = ["## Eval correctness: bicubic baseline vs published references", "", _machine(doc), "",
           "| set | PSNR | SSIM | published | Δ PSNR | Δ SSIM |", "|---|---|---|---|---|---|"]
    for k, r in doc["results"].items():
        out.append(f"| {k} | {r['psnr']:.3f} | {r['ssim']:.4f} | {r['published_psnr']:.2f} / "
                   f"{r['published_ssim']:.4f} | {r['delta_psnr']:+.3f} | {r['delta_ssim']:+.4f} |")
    out += ["", "Set14 x4 differs from the published 26.00 by design: the shared copy of Set14 is not the "
                "one the published number came from (see ../shared/README.md); 26.09 is what any correct "
                "implementation measures on these files.", ""]
    return out


def _distill(doc: dict) -> list[str]:
    s = doc["settings"]
    out = ["## Distillation step cost (CPU)", "", _machine(doc), "",
           f"Batch {s['batch']}, LR patch {s['lr_patch']}, {s['data']}, {s['threads']} threads; "
           f"{s['steps']} steps timed per cached/student-only case, {s['naive_steps']} for the naive loop. "
           f"{s['note']}.", "",
           "| teacher -> student | student alone s/step | KD cached s/step | KD naive s/step | cached / alone | "
           "naive / alone | cache fill s | 5,000 steps cached (incl. fill) | 5,000 steps naive | speed-up |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for k, r in doc["results"].items():
        t = r["run_5000_steps_s"]
        out.append(f"| {k} | {r['student_alone']['s_per_step']:.4f} | {r['kd_cached']['s_per_step']:.4f} | "
                   f"{r['kd_uncached']['s_per_step']:.4f} | {r['cached_step_vs_student_step']:.2f}x | "
                   f"{r['naive_step_vs_student_step']:.1f}x | {r['kd_cached']['cache_fill_s']:.1f} | "
                   f"{t['cached_incl_fill']:.0f} s | {t['naive']:.0f} s | {t['speedup']:.1f}x |")
    out.append("")
    return out


def _kd(doc: dict) -> list[str]:
    s = doc["settings"]
    out = ["## KD vs scratch (x4)", "", _machine(doc), "",
           f"Teacher {s['teacher']}, student {s['student']}, {s['steps']} steps, batch {s['batch']}, LR patch "
           f"{s['lr_patch']}, lr {s['lr']}, data {s['data']}; scored with `srdistill eval` conventions.", "",
           "| run | Set5 PSNR / SSIM | Set14 PSNR / SSIM |", "|---|---|---|"]
    rows = doc["results"]
    for k, r in rows.items():
        sc = r["scores"]
        cells = [f"{sc[n]['psnr']:.3f} / {sc[n]['ssim']:.4f}" if n in sc else "-" for n in ("Set5", "Set14")]
        out.append(f"| {r['label']} | {cells[0]} | {cells[1]} |")
    base = next((r for r in rows.values() if r["alpha"] == 0), None)
    if base:
        for r in rows.values():
            if r["alpha"] == 0:
                continue
            gains = [f"{n} {r['scores'][n]['psnr'] - base['scores'][n]['psnr']:+.3f} dB"
                     for n in ("Set5", "Set14") if n in r["scores"]]
            out.append(f"\nGain of {r['label']} over scratch: {', '.join(gains)}.")
    out.append("")
    return out


def _mean_spread(vals: list[float]) -> str:
    import statistics

    if not vals:
        return "-"
    m = statistics.mean(vals)
    return f"{m:.3f} ± {(max(vals) - min(vals)) / 2:.3f}" if len(vals) > 1 else f"{m:.3f}"


def _kd_methods(doc: dict) -> list[str]:
    """Mean ± half-range over seeds per (teacher, method), gains over scratch and output-kd."""
    import statistics
    from collections import defaultdict

    s = doc["settings"]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in doc["runs"]:
        groups[(r["teacher"], r["method"])].append(r)
    out = ["## KD methods: which recipe beats training from scratch (x4)", "", _machine(doc), "",
           f"Student {s['student']}, batch {s['batch']}, LR patch {s['lr_patch']}, lr {s['lr']}, data "
           f"{s['data']}; {s['scored']}. Mean ± half the range over the seeds; every row has the same steps. "
           "Wall-clock includes the teacher cache fill (`cache s`; 0 where the cache folder already held "
           "it). Runs ran two at a time, one thread each.", ""]
    for teacher in dict.fromkeys(t for t, _ in groups):
        rows = {m: v for (t, m), v in groups.items() if t == teacher}
        anime = any("set5_teacher_psnr" in r for v in rows.values() for r in v)
        mean = {m: {k: statistics.mean(r[k] for r in v) for k in ("set5_psnr", "set14_psnr")}
                for m, v in rows.items()}
        head = "| method | seeds | steps | Set5 PSNR | Set14 PSNR | Set5 SSIM | Set14 SSIM |"
        if anime:
            head += " Set5 vs teacher | Set14 vs teacher |"
        head += " Δ scratch (Set5 / Set14) | Δ output-kd (Set5 / Set14) | wall s | cache s |"
        out += [f"### {teacher} -> {s['student']}", "", head, "|" + "---|" * (head.count("|") - 1)]
        for m, v in rows.items():
            cells = [m, ",".join(str(r["seed"]) for r in v), str(v[0]["steps"])]
            cells += [_mean_spread([r[k] for r in v]) for k in ("set5_psnr", "set14_psnr")]
            cells += [f"{statistics.mean(r[k] for r in v):.4f}" for k in ("set5_ssim", "set14_ssim")]
            if anime:
                cells += [_mean_spread([r[k] for r in v if k in r]) for k in ("set5_teacher_psnr", "set14_teacher_psnr")]
            for ref in ("scratch", "output-kd"):
                if ref in mean and m != ref:
                    cells.append(f"{mean[m]['set5_psnr'] - mean[ref]['set5_psnr']:+.3f} / "
                                 f"{mean[m]['set14_psnr'] - mean[ref]['set14_psnr']:+.3f}")
                else:
                    cells.append("-")
            cells += [f"{statistics.mean(r['seconds'] for r in v):.0f}",
                      f"{statistics.mean(r['cache_seconds'] for r in v):.0f}"]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    for n in doc.get("not_run", []):
        out += [f"Not in the table: `{n['method']}` ({n['teacher']}): {n['reason']}", ""]
    for n in doc.get("notes", []):
        out += [n, ""]
    return out


def _reparam(doc: dict) -> list[str]:
    """bench/reparam.py: mean ± half-range per (method, kd, steps), gain over plain."""
    s = doc["settings"]
    out = ["## Re-parameterised training (`distill --reparam`) vs the plain student (x4)", "", _machine(doc), "",
           f"Teacher {s['teacher']}, student {s['student']}, batch {s['batch']}, LR patch {s['lr_patch']}, "
           f"lr {s['lr']}, data {s['data']}; {s['scored']}. Mean ± half the range over the seeds; rows "
           "compared have the same steps. Every saved student is the plain Compact (89,040 params).", "",
           "| method | branches | kd | steps | seeds | Set5 PSNR | Set14 PSNR | Set5 SSIM | Set14 SSIM "
           "| Δ plain (Set5 / Set14) | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in doc.get("summary", []):
        rows = [r for r in doc["runs"] if (r["method"], r["kd"], r["steps"]) == (g["method"], g["kd"], g["steps"])]
        gain = (f"{g['set5_gain_db']:+.3f} / {g['set14_gain_db']:+.3f}" if "set5_gain_db" in g else "-")
        out.append(f"| {g['method']} | {rows[0].get('branches') or '-'} | {g['kd']} | {g['steps']} | "
                   f"{','.join(map(str, g['seeds']))} | {_mean_spread([r['set5_psnr'] for r in rows])} | "
                   f"{_mean_spread([r['set14_psnr'] for r in rows])} | {g['set5_ssim']:.4f} | {g['set14_ssim']:.4f} | "
                   f"{gain} | {g['seconds']:.0f} |")
    out.append("")
    for n in doc.get("notes", []):
        out += [n, ""]
    return out


def _startup(doc: dict) -> list[str]:
    out = ["## Start-up time (first output on the terminal)", "", _machine(doc), "",
           f"{doc['settings']['note']}", "", "| command | median s | runs | torch imported |", "|---|---|---|---|"]
    for k, r in doc["results"].items():
        out.append(f"| `{k}` | {r['median_s']:.2f} | {r['runs']} | {'yes' if r['torch'] else 'no'} |")
    out.append("")
    return out


def _inference(doc: dict) -> list[str]:
    if "runs" in doc:
        return _inference_side_by_side(doc)
    s = doc["settings"]
    out = ["## Inference throughput (output megapixels per second)", "", _machine(doc), "",
           f"{s['threads']} threads, median of {s['repeats']} runs after a warm-up; int8 = {s['int8']}. "
           "`best` = int8 where it stays within 0.1 dB of fp32 on Set5, else fp32.", ""]
    for name, r in doc["results"].items():
        ps = r.get("set5_psnr", {})
        drop = r.get("int8_psnr_drop")
        out.append(f"### {name} ({r['params']:,} params)")
        if ps:
            out.append("Set5 x4 Y-PSNR: " + ", ".join(f"{k} {v:.3f} dB" for k, v in ps.items())
                       + (f" (int8 drop {drop:.3f} dB)" if drop is not None else ""))
        out.append("")
        cols = sorted({c for cells in r["sizes"].values() for c in cells if c not in ("best_deployable",)})
        out.append("| size | " + " | ".join(cols) + " |")
        out.append("|---|" + "---|" * len(cols))
        for sname, cells in r["sizes"].items():
            out.append(f"| {sname} | " + " | ".join(_f(cells.get(c, "-")) for c in cols) + " |")
        out.append("")
    return out


def _opt(v, nd=3) -> str:
    return "-" if v is None else _f(v, nd)


def _inference_side_by_side(doc: dict) -> list[str]:
    """bench/inference.py's interleaved runs: one table per model and input size, then end to end."""
    s, peak = doc["settings"], doc["peak_gflops_estimate"]
    out = ["## Inference throughput, side by side (output megapixels per second)", "", _machine(doc), "",
           f"{s['threads']} threads ({s['thread_pinning']}); {s['order']}, {s['repeats']} rounds after "
           f"{s['warmup']} warm-up; median (min-max). int8 = {s['int8']}. Peak estimate "
           f"{_f(peak.get('gflops'), 1)} GFLOP/s = {peak['formula']} ({peak['cores']} x {_f(peak.get('ghz'), 2)} x "
           f"{peak['fma_units']} x {peak['simd_fp32_lanes']} x 2).", ""]
    groups: dict = {}
    for r in doc["runs"]:
        groups.setdefault((r["model"], tuple(r["input_hw"])), []).append(r)
    for (model, hw), rows in groups.items():
        params = rows[0].get("params")
        out += [f"### {model}, {hw[1]}x{hw[0]} input ({params:,} params)", "",
                "| runtime | precision | MP/s median (min-max) | GFLOP/frame | peak share | Set5 PSNR |",
                "|---|---|---|---|---|---|"]
        for r in rows:
            if "output_mp_per_s_median" in r:
                speed = (f"{r['output_mp_per_s_median']:.3f} ({r['output_mp_per_s_min']:.3f}-"
                         f"{r['output_mp_per_s_max']:.3f})")
                share = "-" if r.get("peak_share") is None else f"{100 * r['peak_share']:.1f}%"
                out.append(f"| {r['runtime']} | {r['precision']} | {speed} | {_opt(r.get('gflops_per_frame'), 2)} | "
                           f"{share} | {_opt(r.get('psnr_set5'))} |")
            else:
                out.append(f"| {r['runtime']} | {r['precision']} | {r.get('skipped') or r.get('error')} | | | |")
        out.append("")
    if doc.get("end_to_end"):
        out += ["### `srdistill upscale` of a folder, end to end", "",
                "| command | runtime used | output MP/s median (min-max) | model-only MP/s | share |", "|---|---|---|---|---|"]
        for r in doc["end_to_end"]:
            share = "-" if r.get("share_of_model_only") is None else f"{100 * r['share_of_model_only']:.0f}%"
            out.append(f"| `{r['command']}` | {r['runtime_used']} | {r['output_mp_per_s_median']:.3f} "
                       f"({r['output_mp_per_s_min']:.3f}-{r['output_mp_per_s_max']:.3f}) | "
                       f"{_opt(r.get('model_only_mp_per_s_median'))} | {share} |")
        out.append("")
    return out


def _realworld(doc: dict) -> list[str]:
    """Fidelity to a real-world teacher: bicubic-trained vs degradation-trained students."""
    conds = list(doc["fidelity_degraded_psnr"])
    out = ["## Real-world teacher: training on degraded inputs (x4)", "", _machine(doc), "",
           f"Teacher {doc['teacher']}, student {doc['student']}, alpha {doc['alpha']}, init {doc['init']}, "
           f"{doc['steps']} steps, seeds {doc['seeds']}, data {doc['data']}. Scored: {doc['scored']}; degraded "
           f"inputs: {doc['eval_degradation']} (training never used that seed); Set5 is a check set the clean "
           "share was not chosen on. Mean ± half the range over the seeds.", "",
           "| training inputs | Set14 degraded | Set14 clean | Set5 degraded | Set5 clean | wall s |",
           "|---|---|---|---|---|---|"]
    for c in conds:
        cells = [f"`{c}`"]
        for k in ("fidelity_degraded_psnr", "fidelity_clean_psnr", "fidelity_set5_degraded_psnr",
                  "fidelity_set5_clean_psnr"):
            v, sp = doc.get(k, {}).get(c), doc.get(k + "_spread", {}).get(c)
            cells.append("-" if v is None else f"{v:.3f} ± {sp:.3f}")
        cells.append(f"{doc['seconds'][c]:.0f}")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    if "gain_degraded_db" in doc:
        out += [f"Degradation-trained (`realesrgan`) vs bicubic-trained, Set14: {doc['gain_degraded_db']:+.3f} dB "
                f"on degraded inputs (goal >= +0.5), {-doc['loss_clean_db']:+.3f} dB on clean inputs (goal: no "
                "more than 0.3 dB lost).", ""]
    if "step_seconds_cached_variants" in doc:
        out += [f"Seconds per step ({doc.get('timing_threads')} threads, alone on the machine, 40 images, batch 16, "
                f"LR patch 32): student only (alpha 0) {doc['step_seconds_student_only']:.4f}, cached variants "
                f"{doc['step_seconds_cached_variants']:.4f} ({doc['cached_over_student_only']:.2f}x; goal <= 1.25x), "
                f"live teacher with on-the-fly degradation (`--no-teacher-cache`) "
                f"{doc['step_seconds_live_teacher']:.4f}.", ""]
    ex = doc.get("clean_share_exploration")
    if ex:
        out += ["How the clean share (`clean_prob`) was chosen: seed 0, Set14, one degraded draw per image, an "
                "earlier build where each cached variant was clean with that probability: "
                + "; ".join(f"{r['condition']}: {r['fidelity_degraded_psnr']:.2f} degraded / "
                            f"{r['fidelity_clean_psnr']:.2f} clean" for r in ex) + ".", ""]
    if doc.get("picture"):
        out += [f"![degraded input, teacher, bicubic-trained and degradation-trained students]({doc['picture']})", ""]
    return out


def _data_scale(doc: dict) -> list[str]:
    out = ["## Data larger than memory: training packs", "", _machine(doc), "",
           f"{doc['images']:,} generated {doc['image_size']} images; teacher {doc['teacher']}; student "
           f"{doc['student']}; {doc['threads']} threads, DataLoader workers {doc['workers']}. Peak RSS is the "
           "whole process tree's, sampled every 50 ms.", "",
           "| measure | value |", "|---|---|"]
    rows = [("dataset with teacher outputs (GB)", doc.get("dataset_gb"), 2),
            ("pack on disk (GB)", doc.get("pack_disk_gb"), 2),
            ("build: seconds", doc.get("build_seconds"), 1), ("build: peak RSS (GB)", doc.get("build_peak_rss_gb"), 2),
            (f"train {doc.get('train_steps')} steps from it: peak RSS (GB)", doc.get("train_peak_rss_gb"), 2),
            ("train from it: steps/s", doc.get("steps_per_s_big_pack"), 2),
            ("dataset / peak RSS", doc.get("dataset_over_peak_rss"), 1),
            ("T91: steps/s in memory", doc.get("steps_per_s_memory"), 2),
            ("T91: steps/s from a pack", doc.get("steps_per_s_pack"), 2),
            ("T91: pack / memory speed", doc.get("pack_over_memory_speed"), 3),
            ("T91: steps/s from the pack, 2 DataLoader workers", doc.get("steps_per_s_pack_workers_2"), 2),
            (f"fill of {doc.get('fill_images')} images, 1 process (s)", doc.get("fill_seconds_1_rank"), 1),
            (f"fill of {doc.get('fill_images')} images, 2 gloo ranks (s)", doc.get("fill_seconds_2_ranks"), 1),
            ("fill speed-up", doc.get("fill_speedup"), 2)]
    for name, v, nd in rows:
        out.append(f"| {name} | {'-' if v is None else _f(v, nd)} |")
    out.append("")
    return out


def _png_level(doc: dict) -> list[str]:
    s = doc["settings"]
    out = ["## PNG compression level (`upscale --png-level`)", "", _machine(doc), "",
           f"{s['encoder']}; {s['n_frames']} frames of {s['frame_hw'][1]}x{s['frame_hw'][0]} ({s['frames']}); "
           f"levels interleaved, {s['repeats']} rounds; rule: {s['rule']}. Chosen: **{doc['chosen_level']}**."
           + (" **Provisional**: measured on a loaded machine (1-min load average "
              f"{s.get('load_average_1min') or 0:.1f})." if doc.get("provisional") else ""), "",
           "| level | encode s median (min-max) | bytes | bytes vs level 6 | time vs level 6 |", "|---|---|---|---|---|"]
    for r in doc["results"]:
        out.append(f"| {r['level']} | {r['encode_s_median']:.3f} ({r['encode_s_min']:.3f}-{r['encode_s_max']:.3f}) | "
                   f"{r['mean_bytes']:,} | {r['bytes_vs_level6']:.3f} | {r['time_vs_level6']:.3f} |")
    out.append("")
    return out


def write_report(path: Path | None = None) -> Path:
    path = path or ROOT / "BENCHMARKS.md"
    lines = [INTRO]
    for name, fn in (("eval_correctness", _eval), ("distill_speed", _distill), ("kd_vs_scratch", _kd),
                     ("kd_methods", _kd_methods), ("reparam", _reparam), ("realworld", _realworld), ("data_scale", _data_scale),
                     ("startup", _startup), ("inference", _inference), ("png_level", _png_level)):
        doc = _load(name)
        if doc:
            lines += fn(doc)
        else:
            lines += [f"## {name}", "", f"Not measured yet: run `python -m bench {name.split('_')[0]}`.", ""]
    extra = ROOT / "bench" / "NOTES.md"
    if extra.exists():
        lines += [extra.read_text()]
    tmp = path.with_suffix(".md.partial")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path
