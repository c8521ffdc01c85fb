"""Run and describe exported ONNX models with onnxruntime (the same interface as SRModel)."""

from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadPathError, ModelLoadError, UnsupportedModelError
from .file_model import FileModel
from .fileio import MAX_MODEL_BYTES, check_input_file, sha256_file
from .metadata import metadata_int

# Lazy imports here: torch is imported where a tensor is made -- describing or running an .onnx file
# through onnxruntime needs no torch, and importing it costs seconds of start-up (`srdistill info x.onnx`);
# onnx (1.5 s) and onnxruntime are imported where a graph is read or run, because eval and upscale
# import this module for .pth checkpoints too.


def cuda_provider_available() -> bool:
    """Whether this onnxruntime can run on CUDA (onnxruntime-gpu)."""
    import onnxruntime as ort  # lazy (see the note at the top)

    return "CUDAExecutionProvider" in ort.get_available_providers()


def ort_providers(device: str) -> list[str]:
    if str(device).startswith("cuda") and cuda_provider_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_onnx_proto(path: str | os.PathLike):
    import onnx  # lazy (see the note at the top)

    p = Path(path)
    check_input_file(p, "model file", MAX_MODEL_BYTES, error=BadPathError)  # not a FIFO, device or folder
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise ModelLoadError(f"{p.name} is not a valid ONNX file: {(str(e).splitlines() or [type(e).__name__])[0][:160]}") from None
    if not proto.graph.input or not proto.graph.output:
        raise ModelLoadError(f"{p.name} is not a usable ONNX model: it has no graph inputs/outputs")
    return proto


def _dims(value_info) -> list:
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        out.append(d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?"))
    return out


@dataclass(kw_only=True)
class OnnxModel(FileModel):
    """An ONNX SR model run by onnxruntime; call it with an NCHW float tensor in [0, 1]."""

    input_name: str = "input"
    output_name: str = "output"
    fp16: bool = False
    supports_half: bool = False

    def __call__(self, x):
        import torch  # lazy (see the note at the top)

        arr = x.detach().to("cpu", torch.float32).numpy()
        if self.fp16:
            arr = arr.astype(np.float16)
        (y,) = self.session.run([self.output_name], {self.input_name: arr})
        return torch.from_numpy(np.asarray(y, dtype=np.float32)).to(x.device)

    def to(self, device) -> "OnnxModel":
        return self

    def eval(self) -> "OnnxModel":
        return self


def session_options(threads: int | None = None):
    import onnxruntime as ort  # lazy (see the note at the top)

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return so


def load_onnx(path: str | os.PathLike, *, device: str = "cpu", threads: int | None = None) -> OnnxModel:
    """Open an ONNX SR model; its scale comes from metadata or one tiny probe run."""
    import onnxruntime as ort  # lazy (see the note at the top)

    p = Path(path)
    proto = load_onnx_proto(p)
    meta = {m.key: m.value for m in proto.metadata_props}
    inp = proto.graph.input[0]
    dims = _dims(inp)
    if len(dims) != 4:
        raise UnsupportedModelError(f"{p.name} takes a rank-{len(dims)} input; an SR model takes NCHW (rank 4)")
    elem = inp.type.tensor_type.elem_type
    fp16 = elem == 10  # TensorProto.FLOAT16
    static = None
    if isinstance(dims[2], int) and isinstance(dims[3], int) and dims[2] > 0 and dims[3] > 0:
        static = (int(dims[2]), int(dims[3]))
    try:
        sess = ort.InferenceSession(str(p), sess_options=session_options(threads), providers=ort_providers(device))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelLoadError(f"onnxruntime cannot open {p.name}: {(str(e).splitlines() or ['?'])[0][:200]}") from None
    channels = dims[1] if isinstance(dims[1], int) and dims[1] > 0 else 3
    scale = metadata_int(meta, "srdistill.scale") or static_scale(proto) or 0
    model = OnnxModel(path=p, session=sess, scale=scale, architecture=meta.get("srdistill.architecture", "onnx").strip('"'),
                      metadata=meta, sha256=sha256_file(p), input_name=sess.get_inputs()[0].name,
                      output_name=sess.get_outputs()[0].name, fp16=fp16, static_size=static, input_channels=channels)
    for key, attr in (("srdistill.params", "params"), ("srdistill.min_size", "min_size"),
                      ("srdistill.multiple_of", "multiple_of")):
        v = metadata_int(meta, key, minimum=0)
        if v is not None:
            setattr(model, attr, v)
    if model.scale < 1:
        model.scale = _probe_scale(p, sess, model, static, channels, fp16)
    return model


#: a graph whose scale is neither in its metadata nor in its static shapes is run once on a tiny input;
#: a run longer than this is stopped (a Loop with a 10**12 trip count must not hang ``upscale``)
PROBE_SECONDS = 5.0


def _probe_scale(p: Path, sess, model, static, channels: int, fp16: bool) -> int:
    import onnxruntime as ort  # lazy (see the note at the top)

    h, w = static or (16, 16)
    probe = np.random.default_rng(0).random((1, channels, h, w), dtype=np.float32)
    opts = ort.RunOptions()
    timer = threading.Timer(PROBE_SECONDS, lambda: setattr(opts, "terminate", True))
    timer.start()
    try:
        (y,) = sess.run([model.output_name], {model.input_name: probe.astype(np.float16) if fp16 else probe}, opts)
        y = np.asarray(y)
    except Exception as e:  # noqa: BLE001
        why = "took longer than %g s" % PROBE_SECONDS if opts.terminate else (str(e).splitlines() or ["?"])[0][:200]
        raise ModelLoadError(f"{p.name} failed a probe run in onnxruntime: {why}",
                             hint="an SR model upscales a 16x16 input in milliseconds; this graph is not one") from None
    finally:
        timer.cancel()
    if y.ndim != 4 or y.shape[-1] % w:
        raise UnsupportedModelError(f"{p.name} does not map an image to an upscaled image (output {tuple(y.shape)})")
    return y.shape[-1] // w


def static_scale(proto, size: int = 16) -> int | None:
    """The scale read from the graph's shapes without running it: ONNX shape inference with the
    input fixed to ``size`` x ``size`` (None when the shapes do not say)."""
    import onnx  # lazy (see the note at the top)

    try:
        m = copy.deepcopy(proto)
        dims = m.graph.input[0].type.tensor_type.shape.dim
        if len(dims) != 4:
            return None
        for d, v in zip(dims, (1, None, size, size)):
            if v is not None and not (d.HasField("dim_value") and d.dim_value > 0):
                d.Clear()
                d.dim_value = v
        w = dims[3].dim_value
        m.graph.output[0].type.tensor_type.ClearField("shape")
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
        out = [d.dim_value if d.HasField("dim_value") else None
               for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    except Exception:  # noqa: BLE001 - shape inference refuses some graphs: then we do not know
        return None
    if len(out) != 4 or not out[3] or out[3] % w or out[3] < w:
        return None
    return out[3] // w


def onnx_info(path: str | os.PathLike) -> dict:
    import onnxruntime as ort  # lazy (see the note at the top)

    proto = load_onnx_proto(path)
    meta = {m.key: m.value for m in proto.metadata_props}
    p = Path(path)
    if len(_dims(proto.graph.input[0]) if proto.graph.input else []) != 4:
        raise UnsupportedModelError(f"{p.name} takes a rank-{len(_dims(proto.graph.input[0])) if proto.graph.input else 0} "
                                    "input; an SR model takes NCHW (rank 4)")
    try:  # onnxruntime's own checks (external data outside the folder, unknown ops): opening, not running
        ort.InferenceSession(str(p), sess_options=session_options(1), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelLoadError(f"onnxruntime cannot open {p.name}: {(str(e).splitlines() or ['?'])[0][:200]}") from None

    def io(vi):
        return {"name": vi.name, "shape": _dims(vi), "dtype": _elem_name(vi.type.tensor_type.elem_type)}

    inputs = [io(v) for v in proto.graph.input]
    outputs = [io(v) for v in proto.graph.output]
    dynamic = {v["name"]: [i for i, d in enumerate(v["shape"]) if isinstance(d, str)] for v in inputs + outputs}
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    # never run an untrusted graph to describe it: the metadata, else the static shapes, else unknown
    scale = metadata_int(meta, "srdistill.scale") or static_scale(proto)
    return {
        "path": str(path),
        "format": "onnx",
        "architecture": str(meta.get("srdistill.architecture", "")).strip('"') or None,
        "scale": scale,
        "opset": opset,
        "inputs": inputs,
        "outputs": outputs,
        "dynamic_axes": dynamic,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "metadata": meta,
        "sha256": sha256_file(path),
    }


def _elem_name(t: int) -> str:
    import onnx  # lazy (see the note at the top)

    try:
        return onnx.TensorProto.DataType.Name(t).lower()
    except ValueError:
        return str(t)
