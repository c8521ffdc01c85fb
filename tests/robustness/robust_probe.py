"""Run srdistill on hostile inputs, each in its own forked child, and measure each child.

Usage: ``python robust_probe.py JOBS.json RESULTS.json``. JOBS is a list of
``{"id": ..., "kind": "cli" | "load_model" | "read_image" | "noop", "argv": [...], "path": ...}``.

The parent imports everything first (torch, spandrel, onnxruntime, the CLI), runs no
torch op, then forks one child per job, so a child pays no start-up time and its
peak resident memory (``ru_maxrss`` from ``os.wait4``) minus that of the ``noop``
child is what the job itself needed. ``cli`` jobs run ``srdistill.cli.main`` -- the
console script's entry point -- with stdout and stderr captured at the file
descriptor level. A child gets an address-space cap (a safety net so that a
regression cannot take the CI machine down) and a time limit.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import shutil
import tempfile
import time
import traceback

SAFETY_AS_BYTES = 6 * 1024**3  # address space a child may add before allocations fail
TIME_LIMIT_S = 60.0


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(job: dict, out_path: str, err_path: str, res_path: str) -> int:
    fo = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    fe = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fo, 1)
    os.dup2(fe, 2)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + SAFETY_AS_BYTES, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass
    res: dict = {"outcome": "ok"}
    code = 0
    kind = job["kind"]
    try:
        if kind == "noop":
            pass
        elif kind == "cli":
            from srdistill.cli import main

            sys.argv = ["srdistill", *job["argv"]]
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        elif kind in ("load_model", "read_image"):
            from srdistill.errors import SrDistillError

            try:
                if kind == "load_model":
                    from srdistill.runtimes.select import load_any

                    load_any(job["path"])
                else:
                    from srdistill.data.images import read_image

                    read_image(job["path"])
            except SrDistillError as e:
                res = {"outcome": "error", "type": type(e).__name__, "message": str(e)}
        else:
            raise ValueError(kind)
    except BaseException as e:  # noqa: BLE001 - reported, the test decides
        res = {"outcome": "crash", "type": type(e).__name__, "message": str(e)[:500],
               "traceback": traceback.format_exc()[-2000:]}
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    with open(res_path, "w") as f:
        json.dump(res, f)
    return code


def main() -> None:
    jobs_path, results_path = sys.argv[1], sys.argv[2]
    with open(jobs_path) as f:
        jobs = json.load(f)
    import torch

    torch.set_num_threads(1)
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import safetensors.torch  # noqa: F401

    import srdistill.cli  # noqa: F401 - every command registered
    import srdistill.data.datasets  # noqa: F401
    import srdistill.data.images  # noqa: F401
    import srdistill.distill.trainer  # noqa: F401
    import srdistill.info  # noqa: F401
    import srdistill.models.loading  # noqa: F401
    import srdistill.onnx_model  # noqa: F401

    work = tempfile.mkdtemp(prefix="probe")
    results = []
    for i, job in enumerate([{"id": "__baseline__", "kind": "noop"}, *jobs]):
        out_p, err_p, res_p = (os.path.join(work, f"{i}.{s}") for s in ("out", "err", "res"))
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 98
            try:
                code = _child(job, out_p, err_p, res_p)
            finally:
                os._exit(code)
        timed_out = False
        while True:
            wpid, status, ru = os.wait4(pid, os.WNOHANG)
            if wpid:
                break
            if time.monotonic() - t0 > TIME_LIMIT_S:
                os.kill(pid, signal.SIGKILL)
                timed_out = True
                _, status, ru = os.wait4(pid, 0)
                break
            time.sleep(0.005)

        def read(p: str) -> str:
            try:
                with open(p, encoding="utf-8", errors="replace") as f:
                    return f.read()
            except OSError:
                return ""

        try:
            res = json.loads(read(res_p) or "{}")
        except ValueError:
            res = {}
        results.append({
            **job, **res,
            "exit_code": os.waitstatus_to_exitcode(status),
            "maxrss_kb": ru.ru_maxrss,
            "seconds": round(time.monotonic() - t0, 3),
            "timed_out": timed_out,
            "stdout": read(out_p),
            "stderr": read(err_p),
        })
    base = results[0]["maxrss_kb"]
    for r in results:
        r["extra_rss_mb"] = round((r["maxrss_kb"] - base) / 1024, 1)
    with open(results_path, "w") as f:
        json.dump(results[1:], f, indent=1)
    shutil.rmtree(work, ignore_errors=True)  # tests leave no litter in the system temp folder


if __name__ == "__main__":
    main()
