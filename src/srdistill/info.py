"""What a model file is: the library side of ``srdistill info``."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .metadata import decode_srdistill_metadata, json_safe, metadata_int
from .models.families import get_family
from .onnx_model import onnx_info


@dataclass
class ModelInfo:
    path: str
    format: str
    architecture: str | None
    scale: int | None
    params: int | None = None
    params_total: int | None = None
    knobs: dict = field(default_factory=dict)
    input_channels: int | None = None
    output_channels: int | None = None
    size_requirements: dict = field(default_factory=dict)
    fp16_safe: bool | None = None
    bf16_safe: bool | None = None
    tiling: str | None = None
    hyperparameters: dict = field(default_factory=dict)
    srdistill: dict = field(default_factory=dict)
    modelspec: dict = field(default_factory=dict)
    onnx: dict = field(default_factory=dict)
    runtime_file: dict = field(default_factory=dict)  # OpenVINO IR / ncnn: inputs, outputs, layers, weights
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_info(path: str | os.PathLike) -> ModelInfo:
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        d = onnx_info(p)
        meta = d.pop("metadata")
        srd = decode_srdistill_metadata(meta)
        return ModelInfo(path=str(p), format="onnx", architecture=d["architecture"], scale=d["scale"],
                         params=metadata_int(meta, "srdistill.params", 0), hyperparameters=srd.get("hyperparameters", {}) or {},
                         knobs=srd.get("knobs", {}) or {}, srdistill=srd, sha256=d["sha256"],
                         onnx={k: d[k] for k in ("opset", "inputs", "outputs", "dynamic_axes", "producer")})
    if p.suffix.lower() in (".xml", ".param"):
        return _runtime_file_info(p)
    from .models.loading import load_model  # lazy: torch (seconds); `info x.onnx` must not import it

    m = load_model(p, require_sr=False)
    fam = get_family(m.architecture)
    knobs: dict = {}
    if fam is not None:
        knobs = {"width": {"name": fam.width, "value": fam.get_width(m.hyperparameters)},
                 "depth": {"name": fam.depth or "(fixed)", "value": fam.get_depth(m.hyperparameters)}}
    return ModelInfo(
        path=str(p), format=p.suffix.lower().lstrip("."), architecture=m.architecture, scale=m.scale,
        params=m.params, params_total=m.params_total, knobs=knobs, input_channels=m.input_channels,
        output_channels=m.output_channels,
        size_requirements={"minimum": m.min_size, "multiple_of": m.multiple_of, "square": m.square},
        fp16_safe=m.supports_half, bf16_safe=m.supports_bfloat16, tiling=m.tiling,
        hyperparameters=json_safe(m.hyperparameters), srdistill=m.srdistill,
        modelspec={k[10:]: v for k, v in m.metadata.items() if k.startswith("modelspec.")}, sha256=m.sha256,
    )


def _runtime_file_info(p: Path) -> ModelInfo:
    """An OpenVINO IR (.xml + .bin) or an ncnn model (.param + .bin), read as text: no runtime needed."""
    from .errors import BadPathError  # lazy: kept beside the only use, on the torch-free path
    from .runtimes.ncnn_runtime import describe_param  # lazy: the runtime registry is needed by these files only
    from .runtimes.openvino_runtime import describe_ir  # lazy: as above

    if not p.is_file():
        raise BadPathError(f"model file {str(p)!r} does not exist")
    d = describe_ir(p) if p.suffix.lower() == ".xml" else describe_param(p)
    meta = d.pop("metadata")
    srd = decode_srdistill_metadata(meta)
    return ModelInfo(path=str(p), format=d["format"], architecture=srd.get("architecture"),
                     scale=metadata_int(meta, "srdistill.scale"), params=metadata_int(meta, "srdistill.params", 0),
                     hyperparameters=srd.get("hyperparameters", {}) or {}, knobs=srd.get("knobs", {}) or {},
                     srdistill=srd, sha256=d.pop("sha256"), runtime_file=d)
