"""``--resume`` continues the run that is in the checkpoint, not a new one.

The checkpoint records the options of its run. On ``--resume`` an option the user did
not give is taken from there (``--data`` left out means the run's data, not the built-in
photos); one the user gave that differs is a usage error naming it, because the result
would credit one run's options with another's training. ``--steps`` alone may change,
to extend a run. A run with nothing left to do changes no file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from pathlib import Path

import torch

from ..errors import SrDistillError, UsageError

# options that define what a run trains: taken from the checkpoint, or must match it
RUN_FIELDS = ("student_width", "student_depth", "student_arch", "allow_wider", "data", "val", "lr_only",
              "batch_size", "patch_size", "gt_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "alpha",
              "alpha_schedule", "alpha_end", "upcycle", "upcycle_ratio", "init", "reparam", "reparam_branches", "degradation", "degradation_variants", "loss", "feature_weight",
              "adversarial_weight", "terms", "ema_decay", "val_every", "seed", "max_images")
PATH_LISTS = ("data", "val")


def explicit_fields(cfg) -> set[str]:
    """The options the caller chose: ``cfg.explicit`` when the CLI filled it in, else every field
    that differs from its default (a library caller's config)."""
    if cfg.explicit is not None:
        return set(cfg.explicit)
    out = set()
    for f in dataclasses.fields(cfg):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else object())
        if getattr(cfg, f.name) != default:
            out.add(f.name)
    return out


def read_checkpoint(path: Path, fmt: int) -> dict:
    """The checkpoint as a dict, or a one-line error (truncated, list-shaped, another version)."""
    try:
        data = Path(path).read_bytes()
        ck = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except OSError as e:
        raise SrDistillError(f"cannot read the checkpoint {str(path)!r}: {e.strerror or e}") from None
    except Exception:  # noqa: BLE001 - truncated zip, unpickling refused, ...: one line, no traceback
        raise SrDistillError(f"{Path(path).name} is not a readable srdistill checkpoint (truncated or damaged)",
                             hint="start again without --resume (with --overwrite)") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("step"), int) or ck.get("format") != fmt:
        raise SrDistillError(f"{Path(path).name} is not a checkpoint this srdistill version can resume",
                             hint="start again without --resume (with --overwrite)")
    return ck


def recorded_config(ck: dict) -> dict:
    try:
        cfg = json.loads(ck.get("config") or "{}")
    except ValueError:
        cfg = {}
    return cfg if isinstance(cfg, dict) else {}


def _same(field: str, a, b) -> bool:
    if field in PATH_LISTS:
        norm = (lambda v: None if v is None else [os.path.realpath(str(x)) for x in v])
        return norm(a) == norm(b)
    if isinstance(a, float) or isinstance(b, float):
        try:
            return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def apply_checkpoint_config(cfg, ck: dict, explicit: set[str], teacher_sha256: str | None, world: int = 1) -> None:
    """Fill ``cfg`` with the checkpoint's run options; refuse an explicit option that differs.
    ``world``: ranks of this run; the batch that must match is the global one (a 2-rank run may
    resume in 1 process with twice the per-rank batch)."""
    rec = recorded_config(ck)
    if isinstance(rec.get("global_batch"), int) and rec["global_batch"] % world == 0:
        rec["batch_size"] = rec["global_batch"] // world
    name = rec.get("teacher")
    recorded_sha = rec.get("teacher_sha256")
    if recorded_sha and teacher_sha256 and recorded_sha != teacher_sha256:
        raise UsageError(f"--resume: TEACHER {Path(cfg.teacher).name} is not the teacher this run was started "
                         f"with ({name})", hint="give the same teacher, or start a new run with another --output")
    for field in RUN_FIELDS:
        if field not in rec:
            continue  # a checkpoint of an older version: nothing recorded to compare with
        if field in explicit and not _same(field, getattr(cfg, field), rec[field]):
            raise UsageError(f"--resume: {_flag(field)} {getattr(cfg, field)!r} differs from the run in the "
                             f"checkpoint ({rec[field]!r})",
                             hint=f"drop {_flag(field)} to continue the run as it was, or start a new run "
                                  "with another --output")
        setattr(cfg, field, rec[field])
    if "steps" not in explicit and isinstance(rec.get("steps"), int):
        cfg.steps = rec["steps"]
