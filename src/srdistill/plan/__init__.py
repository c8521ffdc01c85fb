"""``srdistill plan``: which student fits a budget, measured on this machine.

1. :func:`~.candidates.list_candidates`: every registered family that can be built for the teacher
   over a grid of widths and depths, plus the teacher's own family shrunk; params, MB and GFLOPs
   of each (``torch.utils.flop_counter``). ``--max-params``/``--max-mb`` rule candidates out here.
2. Latency, measured (:mod:`.latency`) through :mod:`srdistill.runtimes` at the requested input size,
   cheapest first within each family. A candidate whose FLOPs, at the best milliseconds per GFLOP
   measured so far in its family (or in any family, before its first), predict more than
   ``PRUNE_FACTOR`` times the budget is pruned unmeasured.
3. A short proxy distillation (:mod:`.proxy`) of the candidates that fit: the teacher labels the
   training images once, every candidate trains a few hundred steps and is scored on the validation
   images. At most ``max_proxy`` of them (the most FLOPs per family first: inside a family the larger
   fitting student is the likelier winner), so the plan stays short.
4. The pick: the best proxy PSNR among the candidates that fit, and its ``srdistill distill`` command.
"""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..models.loading import check_model_path, load_model
from ..progress import NULL, Reporter
from .budget import Budget, input_size, parse_budget, parse_size  # noqa: F401  (re-exported)
from .candidates import Candidate, check_families, count, list_candidates
from .latency import measure
from .proxy import ProxyRunner, ProxySettings
from ..runtimes.select import check_runtime_name

PRUNE_FACTOR = 2.0  # "far over the budget": predicted from FLOPs at more than this times the budget
MAX_PROXY = 6
REPEATS = 5


@dataclass
class PlanOptions:
    teacher: str
    budget: Budget
    size: tuple[int, int] = (1920, 1080)  # the OUTPUT (width, height)
    device: str = "auto"
    runtime: str = "auto"
    families: list[str] | None = None
    threads: int | None = None
    repeats: int = REPEATS
    max_proxy: int = MAX_PROXY
    proxy: ProxySettings = field(default_factory=ProxySettings)


@dataclass
class PlanResult:
    teacher: dict
    size: list[int]  # output width, height
    input_size: list[int]
    budget: dict
    device: str
    runtime: str
    candidates: list[Candidate]
    pick: Candidate | None
    command: str
    proxy: dict
    seconds: float

    def to_dict(self) -> dict:
        return {"teacher": self.teacher, "size": self.size, "input_size": self.input_size, "budget": self.budget,
                "device": self.device, "runtime": self.runtime,
                "candidates": [c.to_dict() for c in self.candidates],
                "pick": self.pick.to_dict() if self.pick else None, "command": self.command, "proxy": self.proxy,
                "seconds": self.seconds}

    def summary(self) -> dict:
        """What a student's metadata keeps of the plan that chose it."""
        keep = ("family", "width", "depth", "params", "gflops", "ms", "proxy_psnr", "runtime")
        return {"budget": self.budget, "size": self.size, "device": self.device, "runtime": self.runtime,
                "pick": {k: getattr(self.pick, k) for k in keep} if self.pick else None,
                "candidates": [{k: getattr(c, k) for k in (*keep, "fits", "status")} for c in self.candidates
                               if c.status != "failed"], "proxy": self.proxy}


def plan_options(teacher, *, budget: str | None = None, max_params=None, max_mb=None, size: str | None = None,
                 device: str = "auto", runtime: str = "auto", families: list[str] | None = None,
                 threads: int | None = None, repeats: int = REPEATS, max_proxy: int = MAX_PROXY,
                 proxy: ProxySettings | None = None) -> PlanOptions:
    """:class:`PlanOptions` from the command line's words, every bad one a :class:`UsageError`."""
    b = parse_budget(budget, max_params=max_params, max_mb=max_mb)
    wh = parse_size(size) if size is not None else (1920, 1080)
    rt = check_runtime_name(runtime)
    if rt == "native":
        rt = "torch"  # a plan builds checkpoints: their own runtime is torch
    for flag, v, lo in (("--repeats", repeats, 1), ("--max-proxy", max_proxy, 1), ("--threads", threads, 1)):
        if v is not None and not lo <= int(v) <= 1000:
            raise UsageError(f"{flag} must be between {lo} and 1000, not {v}")
    s = proxy or ProxySettings()
    s.device, s.threads = device, threads
    if not 1 <= s.steps <= 10**6:
        raise UsageError(f"--proxy-steps must be between 1 and 1000000, not {s.steps}")
    return PlanOptions(str(teacher), b, wh, device, rt, check_families(families), threads, repeats, max_proxy, s)


def plan(opts: PlanOptions, reporter: Reporter = NULL) -> PlanResult:
    """Scan the candidates for ``opts.teacher`` and pick the best that fits ``opts.budget``."""
    t0 = time.monotonic()
    check_model_path(opts.teacher)
    families = check_families(opts.families)
    teacher = load_model(opts.teacher, device="cpu")
    lr = input_size(opts.size, teacher.scale)
    reporter.info(f"plan: {teacher.architecture} x{teacher.scale} teacher, output {opts.size[0]}x{opts.size[1]} "
                  f"(input {lr[0]}x{lr[1]}), budget {opts.budget.describe()}, runtime {opts.runtime}")
    cands = list_candidates(teacher, families)
    models = _count_all(cands, teacher, lr, reporter)
    _limits(cands, opts.budget)
    _scan(cands, models, opts, lr, reporter)
    fitting = [c for c in cands if c.fits]
    if not fitting:
        raise UsageError(f"no candidate fits the budget ({opts.budget.describe()}) at {opts.size[0]}x{opts.size[1]}",
                         hint=_closest(cands))
    _proxy_all(fitting, opts, reporter)
    scored = [c for c in fitting if c.proxy_psnr is not None and math.isfinite(c.proxy_psnr)]
    pick = max(scored, key=lambda c: (c.proxy_psnr, -c.gflops)) if scored else None
    command = distill_command(opts.teacher, pick, opts) if pick else ""
    return PlanResult(
        teacher={"file": str(opts.teacher), "architecture": teacher.architecture, "scale": teacher.scale,
                 "params": teacher.params},
        size=list(opts.size), input_size=list(lr), budget=opts.budget.to_dict(), device=opts.device,
        runtime=opts.runtime, candidates=cands, pick=pick, command=command, proxy=opts.proxy.to_dict(),
        seconds=round(time.monotonic() - t0, 1))


def _count_all(cands: list[Candidate], teacher, lr, rep: Reporter) -> dict:
    models = {}
    with rep.task("counting FLOPs", total=len(cands)) as task:
        for c in cands:
            m = count(c, teacher, lr)
            if m is not None:
                models[id(c)] = m
            task.advance(1)
    built = sum(1 for c in cands if c.status != "failed")
    rep.info(f"candidates: {built} buildable of {len(cands)} listed")
    return models


def _limits(cands: list[Candidate], b: Budget) -> None:
    for c in cands:
        if c.status == "failed":
            continue
        if b.max_params is not None and c.params > b.max_params:
            c.status, c.reason = "over budget", f"{c.params:,} params > {b.max_params:,}"
        elif b.max_mb is not None and c.mb > b.max_mb:
            c.status, c.reason = "over budget", f"{c.mb:.3f} MB > {b.max_mb:g}"


def _scan(cands: list[Candidate], models: dict, opts: PlanOptions, lr, rep: Reporter) -> None:
    """Measure the candidates still in the running, cheapest first, pruning by FLOPs."""
    todo = sorted((c for c in cands if c.status == "listed"), key=lambda c: c.gflops)
    budget = opts.budget.ms
    ratio: dict[str, float] = {}  # family -> best ms per GFLOP measured
    with rep.task("measuring latency", total=len(todo)) as task:
        for c in todo:
            best = ratio.get(c.family, min(ratio.values(), default=None))
            if budget is not None and best is not None and c.gflops * best > PRUNE_FACTOR * budget:
                c.status, c.reason = "pruned", f"~{c.gflops * best:.0f} ms predicted from {c.gflops:.2f} GFLOPs"
                task.advance(1)
                continue
            _measure_one(c, models[id(c)], opts, lr, rep)
            if c.ms is not None and c.gflops > 0:
                ratio[c.family] = min(ratio.get(c.family, math.inf), c.ms / c.gflops)
            task.advance(1, candidate=c.name)
    for c in cands:
        if c.status == "measured":
            c.fits = budget is None or c.ms <= budget
            if not c.fits:
                c.status, c.reason = "over budget", f"{c.ms:.1f} ms > {budget:g}"


def _measure_one(c: Candidate, model, opts: PlanOptions, lr, rep: Reporter) -> None:
    try:
        c.ms, c.runtime = measure(model, runtime=opts.runtime, device=opts.device, threads=opts.threads,
                                  lr_size=lr, repeats=opts.repeats)
    except UsageError:
        raise  # the runtime or device asked for cannot be used here: the whole plan is wrong
    except Exception as e:  # noqa: BLE001 - one family failing in one runtime is that candidate's result
        c.status, c.reason = "failed", (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        rep.warn(f"{c.name}: could not be measured ({c.reason})")
        return
    c.ms = round(c.ms, 3)
    c.fps = round(1000 / c.ms, 2) if c.ms > 0 else None
    c.status = "measured"
    rep.info(f"{c.name}: {c.ms:.1f} ms ({c.runtime}), {c.gflops:.2f} GFLOPs, {c.params:,} params")


def _proxy_order(fitting: list[Candidate], limit: int) -> list[Candidate]:
    """The candidates the proxy trains: round-robin over families, largest FLOPs first in each."""
    by_family: dict[str, list[Candidate]] = {}
    for c in sorted(fitting, key=lambda c: -c.gflops):
        by_family.setdefault(c.family, []).append(c)
    order = []
    while any(by_family.values()) and len(order) < limit:
        for fam in list(by_family):
            if by_family[fam] and len(order) < limit:
                order.append(by_family[fam].pop(0))
    return order


def _proxy_all(fitting: list[Candidate], opts: PlanOptions, rep: Reporter) -> None:
    chosen = _proxy_order(fitting, max(1, opts.max_proxy))
    for c in fitting:
        if c not in chosen:
            c.reason = c.reason or f"fits; not trained by the proxy (--max-proxy {opts.max_proxy})"
    runner = ProxyRunner(opts.teacher, opts.proxy, rep)
    try:
        runner.label()
        with rep.task("proxy distillation", total=len(chosen)) as task:
            for i, c in enumerate(chosen):
                args = {"student_arch": None if c.same_family else c.family.lower(), "student_width": c.width,
                        "student_depth": c.depth}
                c.proxy_psnr = round(runner.score(args, f"c{i}"), 4)
                c.status = "proxy"
                rep.info(f"{c.name}: proxy PSNR {c.proxy_psnr:.3f} dB after {opts.proxy.steps} steps")
                task.advance(1, candidate=c.name)
    finally:
        runner.close()


def _closest(cands: list[Candidate]) -> str:
    measured = [c for c in cands if c.ms is not None]
    if measured:
        c = min(measured, key=lambda c: c.ms)
        return f"the fastest measured, {c.name}, takes {c.ms:.1f} ms; raise the budget or lower --size"
    built = [c for c in cands if c.status != "failed"]
    if built:
        c = min(built, key=lambda c: c.params)
        return f"the smallest, {c.name}, has {c.params:,} params ({c.mb:.3f} MB)"
    return "no family could be built for this teacher; try --families compact"


def distill_command(teacher: str, pick: Candidate, opts: PlanOptions) -> str:
    """The exact ``srdistill distill`` command that trains the pick (on the plan's data)."""
    args = ["srdistill", "distill", str(teacher), *pick.student_args()]
    for d in opts.proxy.data:
        args += ["--data", str(d)]
    if opts.device != "auto":
        args += ["--device", opts.device]
    args += ["-o", f"{Path(teacher).stem}-{pick.family.lower()}{pick.width}.safetensors"]
    return shlex.join(args)
