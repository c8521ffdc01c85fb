"""OpenVINO (the ``openvino`` extra): IR files (.xml + .bin), .onnx files, and checkpoints through an
in-memory ONNX graph. Runs in fp32 (``INFERENCE_PRECISION_HINT f32``: no silent bf16 on CPUs that
have it), latency mode, on the CPU."""

from __future__ import annotations

import functools
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..file_model import FileModel
from ..errors import BadPathError, ModelLoadError, UnsupportedModelError
from ..fileio import sha256_file
from ..metadata import metadata_int
from ..onnx_model import load_onnx
from .registry import Runtime, file_kind, register_runtime
from .convert import checkpoint_as_onnx, checkpoint_fields

# Lazy imports here: openvino is an optional extra (and 0.5 s to import); torch is imported where a tensor
# is made (the registry is on `info`'s torch-free path).

#: rt_info path of the srdistill metadata (one JSON object, the ONNX file's metadata_props) in an IR
RT_INFO_KEY = ["srdistill", "metadata"]


@dataclass(kw_only=True)
class OpenVinoModel(FileModel):
    """A model compiled by OpenVINO; call it with an NCHW float tensor in [0, 1]."""

    device: str = "cpu"
    inference_precision: str = "fp32"  # what OpenVINO computes in (bf16 under precision="fast" on such CPUs)

    def __call__(self, x):
        import torch  # lazy (see the note at the top)

        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        y = np.array(self.session(arr)[0], dtype=np.float32, copy=True)  # the request reuses its buffer
        return torch.from_numpy(y).to(x.device)

    def to(self, device) -> "OpenVinoModel":
        return self

    def eval(self) -> "OpenVinoModel":
        return self


@functools.lru_cache(maxsize=1)
def core():
    """The process's one OpenVINO Core. A Core per model unloads the device plugins (and their thread
    pools) whenever the last one is collected and loads them again for the next model; one Core that
    lives as long as the process keeps them loaded once."""
    import openvino as ov  # lazy (see the note at the top)

    return ov.Core()


def _devices() -> tuple[str, ...]:
    return tuple(d.split(".")[0].lower() for d in core().available_devices)


PRECISIONS = ("fp32", "fast")


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """AVX512-BF16 or AMX-BF16: OpenVINO computes in bf16 at about twice the fp32 speed there."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def inference_precision(precision: str, device: str = "cpu") -> str:
    """``fp32`` (exact: export checks, eval) or ``fast`` -> what OpenVINO is told to compute in: bf16 on
    a CPU with native bf16 (the default model loses 0.006 dB on Set5 that way, bench/inference.py),
    else fp32."""
    if precision == "fast" and device.split(":")[0] == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def compile_options(threads: int | None, precision: str = "fp32") -> dict:
    hint = {"bf16": "bf16", "fp32": "f32"}[inference_precision(precision)]
    opts: dict = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        opts["INFERENCE_NUM_THREADS"] = int(threads)
    return opts


def ir_metadata(ov_model) -> dict:
    """The srdistill metadata an IR carries in its rt_info ({} for a foreign IR)."""
    if not ov_model.has_rt_info(RT_INFO_KEY):
        return {}
    try:
        meta = json.loads(ov_model.get_rt_info(RT_INFO_KEY).astype(str))
    except (ValueError, RuntimeError):
        return {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def _read(path: Path, core) -> tuple[Any, dict, dict]:
    """(the ov.Model, its metadata, runnable fields) for an .xml, .onnx or checkpoint file."""
    import openvino as ov  # lazy (see the note at the top)

    kind = file_kind(path)
    if kind == "checkpoint":
        model, data = checkpoint_as_onnx(path)
        fields = checkpoint_fields(model)
        return ov.convert_model(io.BytesIO(data)), fields.pop("metadata"), fields
    if not path.is_file():
        raise BadPathError(f"model file {str(path)!r} does not exist")
    if kind == "openvino" and not path.with_suffix(".bin").is_file():
        raise BadPathError(f"{path.name}'s weights {path.with_suffix('.bin').name} are missing",
                           hint="keep the .bin next to the .xml")
    try:
        m = core.read_model(str(path))
    except Exception as e:  # noqa: BLE001 - openvino raises RuntimeError and friends
        raise ModelLoadError(f"OpenVINO cannot read {path.name}: {(str(e).splitlines() or ['?'])[0][:200]}") from None
    if kind == "onnx":
        from ..onnx_model import load_onnx_proto  # lazy: onnx costs 1.5 s; IR files do not need it

        meta = {p.key: p.value for p in load_onnx_proto(path).metadata_props}
    else:
        meta = ir_metadata(m)
    return m, meta, {"path": path}


def load(path, *, device: str = "cpu", threads: int | None = None, precision: str = "fp32") -> OpenVinoModel:
    """``precision``: ``fp32`` (exact) or ``fast`` (bf16 where the CPU computes it natively)."""
    p = Path(path)
    m, meta, fields = _read(p, core())
    if len(m.inputs) != 1 or m.inputs[0].get_partial_shape().rank.get_length() != 4:
        raise UnsupportedModelError(f"{p.name} is not an SR model: it needs one NCHW (rank-4) input")
    shape = m.inputs[0].get_partial_shape()
    static = None
    if shape[2].is_static and shape[3].is_static:
        static = (shape[2].get_length(), shape[3].get_length())
    channels = shape[1].get_length() if shape[1].is_static else 3
    try:
        compiled = core().compile_model(m, device.split(":")[0].upper(), compile_options(threads, precision))
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"OpenVINO cannot compile {p.name}: {(str(e).splitlines() or ['?'])[0][:200]}") from None
    fields.setdefault("sha256", sha256_file(p) if p.is_file() else None)
    model = OpenVinoModel(session=compiled, metadata=meta, static_size=static, device=device,
                          scale=fields.pop("scale", 0), architecture=fields.pop("architecture", None)
                          or str(meta.get("srdistill.architecture", "openvino")).strip('"'),
                          input_channels=fields.pop("input_channels", channels),
                          inference_precision=inference_precision(precision, device), **fields)
    for key, attr in (("srdistill.params", "params"), ("srdistill.min_size", "min_size"),
                      ("srdistill.multiple_of", "multiple_of")):
        v = metadata_int(meta, key, minimum=0)
        if v is not None and getattr(model, attr) in (None, 0, 1):
            setattr(model, attr, v)
    model.scale = model.scale or metadata_int(meta, "srdistill.scale")
    if not model.scale and file_kind(p) == "onnx":
        # a foreign graph without a scale: onnxruntime's probe is stopped after a few seconds, which
        # an OpenVINO inference cannot be (a Loop with a 10^12 trip count would never come back)
        model.scale = load_onnx(p, threads=threads).scale
    model.scale = model.scale or _probe_scale(model, static, channels)
    return model


def _probe_scale(model: OpenVinoModel, static, channels: int) -> int:
    h, w = static or (16, 16)
    y = model.session(np.random.default_rng(0).random((1, channels, h, w), dtype=np.float32))[0]
    if y.ndim != 4 or y.shape[-1] % w or y.shape[-1] < w:
        raise UnsupportedModelError(f"{model.name} does not map an image to an upscaled image "
                                    f"(output {tuple(y.shape)})")
    return int(y.shape[-1] // w)


register_runtime(Runtime(name="openvino", packages=("openvino",), extra="openvino",
                         runs=("openvino", "onnx", "checkpoint"), devices=_devices, load=load,
                         auto=("openvino", "onnx", "checkpoint"), note="Intel OpenVINO (CPU here; GPU/NPU where present)"))


def describe_ir(path: str | os.PathLike) -> dict:
    """What an IR .xml says about itself, read as XML (no openvino needed): inputs, outputs, layer count
    and the srdistill metadata."""
    import xml.etree.ElementTree as ET  # lazy: only `info x.xml` reads XML

    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except (ET.ParseError, OSError) as e:
        raise ModelLoadError(f"{p.name} is not an OpenVINO IR file: {e}") from None
    if root.tag != "net":
        raise ModelLoadError(f"{p.name} is not an OpenVINO IR file (its root element is <{root.tag}>)")
    layers = root.findall("./layers/layer")

    def ports(kind: str) -> list[dict]:
        out = []
        for layer in layers:
            if layer.get("type") == kind:
                port = layer.find("./output/port" if kind == "Parameter" else "./input/port")
                dims = [int(d.text) if d.text and d.text.lstrip("-").isdigit() and int(d.text) >= 0 else "?"
                        for d in (port.findall("dim") if port is not None else [])]
                out.append({"name": layer.get("name"), "shape": dims})
        return out

    meta_el = root.find("./rt_info/srdistill/metadata")
    meta: dict = {}
    if meta_el is not None:
        try:
            meta = json.loads(meta_el.get("value", "{}"))
        except ValueError:
            meta = {}
    return {"format": "openvino", "inputs": ports("Parameter"), "outputs": ports("Result"),
            "layers": len(layers), "ir_version": root.get("version"), "weights": str(p.with_suffix(".bin")),
            "metadata": meta, "sha256": sha256_file(p)}
