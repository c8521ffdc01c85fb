"""onnxruntime (a core dependency): .onnx files, and checkpoints through an in-memory ONNX graph; CPU,
and CUDA with onnxruntime-gpu."""

from __future__ import annotations

from typing import Any

from ..onnx_model import OnnxModel, cuda_provider_available, load_onnx, ort_providers, session_options
from .registry import Runtime, file_kind, register_runtime
from .convert import checkpoint_as_onnx, checkpoint_fields


def _devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if cuda_provider_available() else ("cpu",)


def load(path, *, device: str = "cpu", threads: int | None = None) -> Any:
    if file_kind(path) == "onnx":
        return load_onnx(path, device=device, threads=threads)
    import onnxruntime as ort  # lazy: onnx_model imports it where a graph is run, for the same reason

    model, data = checkpoint_as_onnx(path)
    sess = ort.InferenceSession(data, sess_options=session_options(threads), providers=ort_providers(device))
    return OnnxModel(session=sess, **checkpoint_fields(model))


register_runtime(Runtime(name="onnxruntime", packages=("onnxruntime",), extra=None, runs=("onnx", "checkpoint"),
                         devices=_devices, load=load, auto=("onnx", "checkpoint"),
                         note="onnxruntime (checkpoints through an in-memory ONNX graph)"))
