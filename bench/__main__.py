"""``python -m bench [all|distill|kd|inference|eval|startup|png|report] [--quick]``

Runs benchmarks (results in bench/results/*.json) and rewrites BENCHMARKS.md from
every result file present. ``--quick`` runs each at toy size (the smoke test does
this) and never touches BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib

from .report import write_report

NAMES = {"eval": "eval_correctness", "distill": "distill_speed", "kd": "kd_vs_scratch", "inference": "inference",
         "startup": "startup", "png": "png_level"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("what", nargs="?", default="all", choices=["all", "report", *NAMES])
    ap.add_argument("--quick", action="store_true", help="toy sizes; results go to *_quick.json, no report")
    a = ap.parse_args(argv)
    todo = list(NAMES) if a.what == "all" else ([] if a.what == "report" else [a.what])
    for name in todo:
        mod = importlib.import_module(f"bench.{NAMES[name]}")
        print(f"== {name}", flush=True)
        mod.run(quick=a.quick)
    if not a.quick:
        print(f"wrote {write_report()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
