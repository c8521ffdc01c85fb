"""What runtimes share: a checkpoint turned into an in-memory ONNX graph (the export package's tracing),
the runnable fields a checkpoint gives, and silencing native libraries that print on their own."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator


def checkpoint_as_onnx(path: str | os.PathLike) -> tuple[Any, bytes]:
    """(the SRModel, its dynamic-size fp32 ONNX graph as bytes)."""
    # lazy: torch and the exporter cost seconds; only runtimes that run a checkpoint through ONNX need them
    from ..export.onnx import onnx_bytes
    from ..models.loading import load_model  # lazy: torch (as above)

    model = load_model(path, device="cpu")
    return model, onnx_bytes(model)


def checkpoint_fields(model: Any) -> dict:
    """The runnable contract's fields of a loaded checkpoint (for a runnable built from it)."""
    return {"path": Path(model.path) if model.path else Path(model.architecture), "scale": int(model.scale),
            "architecture": model.architecture, "metadata": dict(model.metadata or {}), "sha256": model.sha256,
            "params": model.params, "min_size": int(model.min_size), "multiple_of": int(model.multiple_of),
            "input_channels": int(model.input_channels)}


@contextlib.contextmanager
def quiet_fds() -> Iterator[None]:
    """Send what native code writes to fds 1 and 2 (pnnx's passes, ncnn's Vulkan probing) to /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
