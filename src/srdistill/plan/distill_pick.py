"""``distill --budget``: run the plan, then distill its pick; the plan goes into the student's metadata
(``srdistill.config`` -> ``plan``). Explicit ``--student-width``/``--student-depth`` win over the pick,
with a notice."""

from __future__ import annotations

from dataclasses import dataclass

from ..distill.trainer import DistillConfig, DistillResult, distill
from ..errors import UsageError
from ..progress import NULL, Reporter
from . import PlanOptions, PlanResult, plan


@dataclass
class BudgetDistillResult:
    plan: PlanResult
    distill: DistillResult

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict(), "distill": self.distill.to_dict()}


def apply_pick(cfg: DistillConfig, res: PlanResult, explicit: set[str], rep: Reporter = NULL) -> None:
    """Set the student options of ``cfg`` from the plan's pick, unless the user gave them."""
    pick = res.pick
    if pick is None:
        raise UsageError("the plan found no fitting candidate it could score", hint="raise the budget")
    given = [f for f in ("student_width", "student_depth", "student_arch") if f in explicit]
    if given:
        flags = ", ".join("--" + f.replace("_", "-") for f in given)
        rep.info(f"notice: {flags} given: they win over the plan's pick ({pick.name})")
    if "student_arch" not in explicit:
        cfg.student_arch = None if pick.same_family else pick.family.lower()
    if "student_width" not in explicit:
        cfg.student_width = pick.width
    if "student_depth" not in explicit:
        cfg.student_depth = pick.depth
    cfg.plan = {**res.summary(), "overridden": given}


def distill_within_budget(cfg: DistillConfig, opts: PlanOptions, reporter: Reporter = NULL,
                          explicit: set[str] | None = None, hooks=None) -> BudgetDistillResult:
    """Plan for ``opts.budget`` on ``cfg``'s data, then distill the pick with ``cfg``'s options."""
    if cfg.resume:
        raise UsageError("--resume continues the run in the checkpoint, whose student is fixed",
                         hint="drop --budget (and its --size/--runtime/--families) to resume")
    explicit = set(explicit or ())
    opts.proxy.data = list(cfg.data)
    opts.proxy.val = cfg.val if cfg.val else None
    opts.proxy.seed, opts.proxy.device, opts.proxy.threads = cfg.seed, cfg.device, cfg.threads
    opts.proxy.max_images = cfg.max_images
    res = plan(opts, reporter)
    p = res.pick
    if p is not None:
        reporter.info(f"plan: picked {p.name} ({p.ms:.1f} ms, proxy PSNR {p.proxy_psnr:.3f} dB); distilling it")
    apply_pick(cfg, res, explicit, reporter)
    return BudgetDistillResult(res, distill(cfg, reporter, hooks))
