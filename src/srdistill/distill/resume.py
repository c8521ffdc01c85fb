"""``--resume`` continues the run that is in the checkpoint, not a new one.

The checkpoint records the options of its run. On ``--resume`` an option the user did
not give is taken from there (``--data`` left out means the run's data, not the built-in
photos); one the user gave that differs is a usage error naming it, because the result
would credit one run's options with another's training. ``--steps`` alone may change,
to extend a run. A run with nothing left to do changes no file.

What the options name must be what the run trained on, too: the degradation file's
contents and a cheap fingerprint of the data and validation folders (names, sizes and
modification times) are recorded and compared, so an edited preset file or images
added, removed or replaced between the two runs are refused by name. Options that only
say *how* the same run executes (device, precision, workers, threads, checkpoint and log
intervals, the pack folder) may change.

A checkpoint is checked before anything in it is used: its entries, their types, the
tensors' names and shapes against the student and the optimiser being resumed, and the
RNG state. A damaged one is one error line, and no generator or weight is touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
from pathlib import Path

import torch

from ..data.datasets import builtin_train_dir, builtin_val_dir, list_train_entries
from ..data.degrade import load_degradation
from ..errors import SrDistillError, UsageError, shown
from ..fileio import MAX_CHECKPOINT_BYTES, read_input_bytes
from .state import check_rng_state

# options that define what a run trains: taken from the checkpoint, or must match it. The rest of
# DistillConfig may differ on resume: steps (extends the run), checkpoint_every, log_every, out, resume,
# overwrite, device, precision, threads, workers (the same batches), pack/teacher_cache_dir (where the
# same inputs are kept; the pack checks its own key), build_only and explicit.
RUN_FIELDS = ("student_width", "student_depth", "student_arch", "allow_wider", "data", "val", "lr_only",
              "batch_size", "patch_size", "gt_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "alpha",
              "alpha_schedule", "alpha_end", "upcycle", "upcycle_ratio", "init", "reparam", "reparam_branches",
              "degradation", "degradation_variants", "teacher_cache", "cache_tile", "loss", "feature_weight",
              "adversarial_weight", "terms", "ema_decay", "val_every", "seed", "max_images")
PATH_LISTS = ("data", "val")
CASELESS = ("init", "alpha_schedule", "loss")  # names the run reads case-insensitively
_HINT_NEW_RUN = "start again without --resume (with --overwrite)"


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


def damaged(path: Path, what: str) -> SrDistillError:
    return SrDistillError(f"{Path(path).name} is a damaged checkpoint: {what}", hint=_HINT_NEW_RUN)


def read_checkpoint(path: Path, fmt: int) -> dict:
    """The checkpoint as a dict whose entries have the types a resume reads, or a one-line error
    (truncated, list-shaped, another version, an entry missing or of the wrong type, a bad RNG state).
    Tensor names and shapes are checked against the models by :func:`check_against_models`."""
    data = read_input_bytes(path, "checkpoint", MAX_CHECKPOINT_BYTES)  # never a FIFO, a device, a folder
    try:
        ck = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except OSError as e:
        raise SrDistillError(f"cannot read the checkpoint {str(path)!r}: {e.strerror or e}") from None
    except Exception:  # noqa: BLE001 - truncated zip, unpickling refused, ...: one line, no traceback
        raise SrDistillError(f"{Path(path).name} is not a readable srdistill checkpoint (truncated or damaged)",
                             hint=_HINT_NEW_RUN) from None
    if not isinstance(ck, dict) or ck.get("format") != fmt:
        raise SrDistillError(f"{Path(path).name} is not a checkpoint this srdistill version can resume",
                             hint=_HINT_NEW_RUN)
    problem = _structure_problem(ck)
    if problem:
        raise damaged(path, problem)
    return ck


_ENTRIES = (("student_arch", str), ("student_hp", dict), ("student", dict), ("ema", dict), ("optimizer", dict),
            ("scheduler", dict), ("rng", dict))
_OPTIONAL = (("terms", dict), ("scaler", dict), ("config", str), ("best", dict), ("history", list))


def _structure_problem(ck: dict) -> str | None:
    step = ck.get("step")
    if type(step) is not int or not 0 <= step <= 10**12:
        return f"its step is {shown(step)}, not a count of steps"
    for key, typ in _ENTRIES:
        if key not in ck:
            return f"it has no {key!r} entry"
        if not isinstance(ck[key], typ):
            return f"its {key!r} entry is of type {type(ck[key]).__name__}, not {typ.__name__}"
    for key, typ in _OPTIONAL:
        if ck.get(key) is not None and not isinstance(ck[key], typ):
            return f"its {key!r} entry is of type {type(ck[key]).__name__}, not {typ.__name__}"
    for what, sd in (("student", ck["student"]), ("EMA student", ck["ema"].get("module"))):
        if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in sd.items()):
            return f"its {what} is not a dict of named tensors"
    if type(ck["ema"].get("updates")) is not int or ck["ema"]["updates"] < 0:
        return f"its EMA update count is {shown(ck['ema'].get('updates'))}"
    for rec in list(ck.get("history") or []) + ([ck["best"]] if ck.get("best") is not None else []):
        if not _score(rec):
            return f"its validation history holds {shown(rec)}, not a step with PSNR and SSIM"
    problem = check_rng_state(ck["rng"])
    if problem:
        return problem
    try:
        recorded_config(ck)
    except ValueError as e:
        return str(e)
    return None


def _number(v) -> bool:
    return type(v) in (int, float) and not math.isnan(v)


def _score(rec) -> bool:
    return (isinstance(rec, dict) and type(rec.get("step")) is int and _number(rec.get("psnr"))
            and _number(rec.get("ssim")))


def recorded_config(ck: dict) -> dict:
    """The run's options as the checkpoint records them ({} for a checkpoint without them);
    ValueError for a record that is not a JSON object."""
    text = ck.get("config")
    if text is None:
        return {}
    try:
        cfg = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        raise ValueError("its recorded options are not valid JSON") from None
    if not isinstance(cfg, dict):
        raise ValueError("its recorded options are not a JSON object")
    return cfg


# --------------------------------------------------------------------------- against the models


def check_against_models(ck: dict, path: Path, *, student: torch.nn.Module, ema: torch.nn.Module,
                         opt: torch.optim.Optimizer, sched, wsum, scaler) -> None:
    """Every tensor a resume loads has the name, shape and kind of the one it replaces; the optimiser's
    and the schedule's state fit this run's parameters; called before anything is loaded."""
    for what, saved, model in (("student", ck["student"], student), ("EMA student", ck["ema"]["module"], ema)):
        problem = tensors_problem(saved, model.state_dict())
        if problem:
            raise damaged(path, f"its {what} {problem}")
    problem = optimizer_problem(ck["optimizer"], opt) or scheduler_problem(ck["scheduler"], sched, ck["step"])
    if problem:
        raise damaged(path, problem)
    terms = ck.get("terms") or {}
    for name, term in wsum.terms.items():
        mine, saved = term.state_dict(), terms.get(name)
        if mine is None or saved is None:
            continue
        if not isinstance(saved, dict):
            raise damaged(path, f"the state of its {name!r} term is a {type(saved).__name__}, not a dict")
        for key, value in mine.items():
            if isinstance(value, dict) and key not in saved:
                raise damaged(path, f"the state of its {name!r} term has no {key!r}")
            if isinstance(value, dict):
                opt_attr = getattr(term, key, None)
                problem = (optimizer_problem(saved[key], opt_attr) if isinstance(opt_attr, torch.optim.Optimizer)
                           else tensors_problem(saved[key], value) if isinstance(saved[key], dict)
                           else f"is a {type(saved[key]).__name__}, not a dict")
                if problem:
                    raise damaged(path, f"the {key!r} of its {name!r} term {problem}")
    if scaler.is_enabled() and ck.get("scaler"):
        bad = [k for k, v in ck["scaler"].items() if not (_number(v) and math.isfinite(v))]
        if bad or not ck["scaler"].get("scale", 1) > 0:
            raise damaged(path, f"its gradient scaler state {shown(ck['scaler'])} is not a set of finite numbers")


def tensors_problem(saved: dict, current: dict) -> str | None:
    """What keeps ``saved`` from replacing the state dict ``current`` (names, shapes, kinds, finiteness)."""
    if not isinstance(saved, dict):
        return f"is a {type(saved).__name__}, not a dict of tensors"
    missing = [k for k in current if k not in saved]
    if missing:
        return f"has no {shown(missing[0])}" + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else "")
    extra = [k for k in saved if k not in current]
    if extra:
        return f"has an unexpected {shown(extra[0])}"
    for k, cur in current.items():
        problem = _tensor_problem(saved[k], cur)
        if problem:
            return f"{k} {problem}"
    return None


def _tensor_problem(t, like: torch.Tensor) -> str | None:
    if not isinstance(t, torch.Tensor):
        return f"is a {type(t).__name__}, not a tensor"
    if t.shape != like.shape:
        return f"has shape {list(t.shape)}, not {list(like.shape)}"
    if t.is_floating_point() != like.is_floating_point() or t.is_complex():
        return f"is {t.dtype}, not {like.dtype}"
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        return "holds non-finite values"
    return None


def _fits_like(saved, current) -> bool:
    """A saved optimiser/schedule setting of the kind the current one is."""
    if current is None or isinstance(current, bool):
        return saved is None or isinstance(saved, bool)
    if isinstance(current, (int, float)):
        return _number(saved) and math.isfinite(saved)
    if isinstance(current, torch.Tensor):
        return (isinstance(saved, torch.Tensor) and saved.numel() == current.numel() and not saved.is_complex()
                and bool(torch.isfinite(saved.float()).all())) or (_number(saved) and math.isfinite(saved))
    if isinstance(current, (tuple, list)):
        return (isinstance(saved, (tuple, list)) and len(saved) == len(current)
                and all(_fits_like(a, b) for a, b in zip(saved, current)))
    if isinstance(current, str):
        return isinstance(saved, str)
    return True


def optimizer_problem(saved, opt: torch.optim.Optimizer) -> str | None:
    """What keeps ``saved`` (an optimiser state dict) from resuming ``opt``: its groups, the settings
    in them, and the per-parameter state (AdamW's moments have the shape of their parameter)."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
            or not isinstance(saved.get("param_groups"), list):
        return "its optimiser state is not a dict with 'state' and 'param_groups'"
    groups = saved["param_groups"]
    if len(groups) != len(opt.param_groups):
        return f"its optimiser has {len(groups)} parameter group(s), not {len(opt.param_groups)}"
    params: dict = {}
    for g, cur in zip(groups, opt.param_groups):
        if not isinstance(g, dict) or not isinstance(g.get("params"), list) or len(g["params"]) != len(cur["params"]):
            return f"its optimiser's parameter group does not hold the {len(cur['params'])} parameters of this run"
        for key, value in cur.items():
            if key != "params" and key in g and not _fits_like(g[key], value):
                return f"its optimiser's {key} is {shown(g[key])}"
        for i, p in zip(g["params"], cur["params"]):
            if type(i) is not int or i in params:
                return f"its optimiser's parameter ids are damaged ({shown(i)})"
            params[i] = p
    for i, st in saved["state"].items():
        if i not in params or not isinstance(st, dict):
            return f"its optimiser holds state for an unknown parameter {shown(i)}"
        for name, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                problem = _tensor_problem(v, params[i].detach())
                if not problem and name.endswith("exp_avg_sq") and bool((v < 0).any()):
                    problem = "holds negative values"
            elif isinstance(v, torch.Tensor):
                problem = None if v.is_floating_point() and math.isfinite(v.item()) and v.item() >= 0 \
                    else f"is {shown(v)}"
            else:
                problem = None if _number(v) and math.isfinite(v) else f"is {shown(v)}"
            if problem:
                return f"its optimiser's {name} of parameter {i} {problem}"
    return None


def scheduler_problem(saved: dict, sched, step: int) -> str | None:
    """What keeps ``saved`` from resuming the learning-rate schedule at ``step``."""
    cur = sched.state_dict()
    if type(saved.get("last_epoch")) is not int or saved["last_epoch"] != step:
        return f"its learning-rate schedule is at step {shown(saved.get('last_epoch'))}, the checkpoint at {step}"
    for key in ("base_lrs", "lr_lambdas"):
        if key in cur and key not in saved:
            return f"its learning-rate schedule has no {key!r}"
    for key, value in saved.items():
        if key in cur and key != "lr_lambdas" and not _fits_like(value, cur[key]):
            return f"its learning-rate schedule's {key} is {shown(value)}"
    lambdas = saved.get("lr_lambdas", cur.get("lr_lambdas"))
    if not isinstance(lambdas, list) or len(lambdas) != len(cur.get("lr_lambdas", lambdas)) \
            or not all(x is None or isinstance(x, dict) for x in lambdas):
        return f"its learning-rate schedule's lr_lambdas are {shown(lambdas)}"
    return None


def scheduler_state(saved: dict, sched) -> dict:
    """``saved`` without keys this torch's schedule does not have (LambdaLR puts every key it is given
    into its attributes)."""
    cur = sched.state_dict()
    return {k: v for k, v in saved.items() if k in cur}


# --------------------------------------------------------------------------- recorded options


def _same(field: str, a, b) -> bool:
    if field in PATH_LISTS:
        norm = (lambda v: None if v is None else [os.path.realpath(str(x)) for x in v])
        return norm(a) == norm(b)
    if field in CASELESS and isinstance(a, str) and isinstance(b, str):
        return a.strip().lower() == b.strip().lower()
    if isinstance(a, float) or isinstance(b, float):
        try:
            return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


_PAIRED_FLAGS = ("teacher_cache", "reparam")  # --X/--no-X options


def _given_flag(field: str, value) -> str:
    if field in _PAIRED_FLAGS and isinstance(value, bool):
        return _flag(field) if value else "--no-" + _flag(field)[2:]
    return _flag(field)


def _as_given(field: str, value) -> str:
    """An option's value as the command line says it (``--no-teacher-cache``, ``no --reparam``)."""
    if isinstance(value, bool):
        return _given_flag(field, value) if value or field in _PAIRED_FLAGS else f"no {_flag(field)}"
    if value is None:
        return f"no {_flag(field)}"
    return f"{_flag(field)} {shown(value)}"


# what each recorded option may be, from DistillConfig's annotations
_KINDS = {
    "int": lambda v: type(v) is int,
    "float": lambda v: type(v) in (int, float),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: type(v) is bool,
    "None": lambda v: v is None,
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "dict": lambda v: isinstance(v, dict) and all(isinstance(k, str) and type(w) in (int, float) for k, w in v.items()),
}


def _fits_field(annotation, value) -> bool:
    kinds = [_KINDS.get(part.strip()) for part in str(annotation).split("|")]
    return any(k is None or k(value) for k in kinds)


def apply_checkpoint_config(cfg, ck: dict, explicit: set[str], teacher_sha256: str | None, world: int = 1,
                            path: Path | None = None) -> None:
    """Fill ``cfg`` with the checkpoint's run options; refuse an explicit option that differs, and a
    degradation file whose contents changed. ``world``: ranks of this run; the batch that must match is
    the global one (a 2-rank run may resume in 1 process with twice the per-rank batch)."""
    name = Path(path).name if path is not None else "the checkpoint"
    try:
        rec = recorded_config(ck)
    except ValueError as e:
        raise damaged(Path(name), str(e)) from None
    gb = rec.get("global_batch")
    if type(gb) is int and gb > 0 and gb % world == 0:
        rec["batch_size"] = gb // world
    recorded_sha = rec.get("teacher_sha256")
    if recorded_sha and teacher_sha256 and recorded_sha != teacher_sha256:
        raise UsageError(f"--resume: TEACHER {Path(cfg.teacher).name} is not the teacher this run was started "
                         f"with ({shown(rec.get('teacher'))})",
                         hint="give the same teacher, or start a new run with another --output")
    types = {f.name: f.type for f in dataclasses.fields(cfg)}
    if "reparam" not in rec and "reparam" not in explicit:
        rec["reparam"] = False  # a run from before --reparam existed trained without it
    for field in RUN_FIELDS:
        if field not in rec:
            continue  # a checkpoint of an older version: nothing recorded to compare with
        if not _fits_field(types[field], rec[field]):
            raise damaged(Path(name), f"its recorded {_flag(field)} is {shown(rec[field])}")
        if field in explicit and not _same(field, getattr(cfg, field), rec[field]):
            raise UsageError(f"--resume: {_as_given(field, getattr(cfg, field))} differs from the run in the "
                             f"checkpoint ({_as_given(field, rec[field])})",
                             hint=f"drop {_given_flag(field, getattr(cfg, field))} to continue the run as it was, "
                                  "or start a new run with another --output")
        setattr(cfg, field, rec[field])
    if "steps" not in explicit and type(rec.get("steps")) is int:
        cfg.steps = rec["steps"]
    if "degradation_params" in rec:
        _check_degradation(cfg, rec["degradation_params"])


def _check_degradation(cfg, recorded) -> None:
    """The degradation the run trained with is the one a resume would use (a preset file edited since
    the run started would give other inputs from here on)."""
    spec = cfg.degradation
    try:
        deg = load_degradation(spec)
    except SrDistillError as e:
        raise UsageError(f"--resume: the run's --degradation {shown(spec)} cannot be used now: {e}",
                         hint="restore the file, or start a new run with another --output") from None
    now = json.loads(json.dumps(deg.params)) if deg is not None else None
    if now != recorded:
        is_file = deg is not None and Path(str(spec).strip()).is_file()
        what = f"the degradation file {shown(spec)} changed" if is_file else \
            f"--degradation {shown(spec)} means other settings in this srdistill version than"
        raise UsageError(f"--resume: {what} since the run started (its contents are part of the run)",
                         hint="restore the file as it was, or start a new run with another --output")


# --------------------------------------------------------------------------- inputs' fingerprints


def input_fingerprints(cfg, scale: int) -> dict:
    """A cheap key of the files the run reads: training and validation images (names, sizes and, for
    the user's folders, modification times), as :func:`list_train_entries` lists them."""
    val = cfg.val if cfg.val is not None else [str(builtin_val_dir())]
    return {"data": _fingerprint(cfg.data, scale, cfg.lr_only, cfg.max_images, builtin=not cfg.data),
            "val": _fingerprint(val, scale, False, None, builtin=cfg.val is None) if val else None}


def _fingerprint(folders, scale: int, lr_only: bool, max_images: int | None, builtin: bool) -> dict:
    h = hashlib.sha256()
    files = size = 0
    for folder in (folders or [builtin_train_dir()]):
        try:
            entries = list_train_entries([folder], scale, lr_only=lr_only)
        except SrDistillError:
            entries = []  # no images there: the run itself says so
        base = os.path.realpath(folder)
        for pair in entries:
            if max_images is not None and files >= max_images:
                break
            for p in pair:
                if p is None:
                    continue
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                rel = os.path.relpath(os.path.realpath(p), base) if not os.path.isfile(base) else os.path.basename(p)
                h.update(f"{rel}\0{st.st_size}\0{0 if builtin else st.st_mtime_ns}\n".encode("utf-8", "replace"))
                size += st.st_size
            files += 1
    return {"files": files, "bytes": size, "key": h.hexdigest()[:32]}


def check_inputs(rec: dict, now: dict) -> None:
    """Refuse a resume whose training or validation images differ from the run's (when recorded)."""
    then = rec.get("inputs")
    if not isinstance(then, dict):
        return  # a checkpoint of an older version
    for key, flag in (("data", "--data"), ("val", "--val")):
        a, b = then.get(key), now.get(key)
        if a == b:
            continue
        detail = ""
        if isinstance(a, dict) and isinstance(b, dict):
            detail = f": {b.get('files')} image file(s) now, {shown(a.get('files'))} then" if a.get("files") != \
                b.get("files") else ": the same number of files, but names, sizes or times differ"
        raise UsageError(f"--resume: the images in {flag} changed since the run started{detail}",
                         hint="restore them, or start a new run on the new images with another --output")
