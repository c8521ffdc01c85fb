"""The student file: safetensors that spandrel loads unchanged, plus string metadata.

Metadata follows the ModelSpec convention (``modelspec.*``) and adds
``srdistill.*`` entries whose values are JSON. ``modelspec.hash_sha256`` is
the SHA-256 of the tensor data: every tensor's raw bytes in sorted key order.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import __version__
from ..fileio import atomic_path
from ..metadata import json_safe
from .families import get_family
from .loading import SRModel

SPANDREL_IMPL = "https://github.com/chaiNNer-org/spandrel"


def tensor_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        # reshape first: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def clean_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies, no shared storage (safetensors refuses aliases)."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in module.state_dict().items()}


def build_metadata(model: SRModel, *, state: dict[str, torch.Tensor], title: str | None = None,
                   teacher: SRModel | None = None, config: dict | None = None, metrics: dict | None = None,
                   extra: dict | None = None) -> dict[str, str]:
    impl = "srdistill" if model.architecture == "EDSR" else SPANDREL_IMPL
    fam = get_family(model.architecture)
    knobs = {}
    if fam is not None:
        knobs = {"width": fam.get_width(model.hyperparameters), "depth": fam.get_depth(model.hyperparameters)}
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": model.architecture,
        "modelspec.implementation": impl,
        "modelspec.title": title or f"{model.architecture} x{model.scale} student (srdistill)",
        "modelspec.date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "modelspec.hash_sha256": "0x" + tensor_hash(state),
        "srdistill.version": json.dumps(__version__),
        "srdistill.scale": json.dumps(model.scale),
        "srdistill.architecture": json.dumps(model.architecture),
        "srdistill.hyperparameters": json.dumps(json_safe(model.hyperparameters)),
        "srdistill.knobs": json.dumps(knobs),
        "srdistill.params": json.dumps(model.params),
    }
    if teacher is not None:
        meta["srdistill.teacher"] = json.dumps({
            "architecture": teacher.architecture,
            "file": teacher.path.name if teacher.path else None,
            "sha256": teacher.sha256,
            "params": teacher.params,
            "scale": teacher.scale,
        })
    if config is not None:
        meta["srdistill.config"] = json.dumps(json_safe(config))
    if metrics is not None:
        meta["srdistill.metrics"] = json.dumps(json_safe(metrics))
    for k, v in (extra or {}).items():
        meta[k if "." in k else f"srdistill.{k}"] = v if isinstance(v, str) else json.dumps(json_safe(v))
    return meta


def save_student(path: str | os.PathLike, model: SRModel, *, overwrite: bool = False, title: str | None = None,
                 teacher: SRModel | None = None, config: dict | None = None, metrics: dict | None = None,
                 extra: dict | None = None) -> Path:
    """Write ``model`` as safetensors with metadata, atomically."""
    state = clean_state_dict(model.module)
    meta = build_metadata(model, state=state, title=title, teacher=teacher, config=config, metrics=metrics,
                          extra=extra)
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp), metadata=meta)
    model.metadata = meta
    return Path(path)
