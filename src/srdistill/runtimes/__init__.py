"""The runtimes that run a model, one module each, registered here (as ``models/families`` are).

A :class:`Runtime` says which files it runs (``checkpoint``, ``onnx``, ``openvino``, ``ncnn``), which
devices it can use on this machine, whether it is installed, and loads a file into a *runnable*: the
contract of :mod:`srdistill.runner` (called on an NCHW float tensor in [0, 1], ``scale``, ``min_size``,
``multiple_of``, ``static_size``, ``input_channels``). ``upscale`` and ``eval`` open models through
:func:`srdistill.runtimes.select.open_model`, which also implements ``--runtime auto`` (a short
measurement, cached per model, device and input size).

A runtime that is not installed is one error line naming the extra that installs it
(``pip install "srdistill[openvino]"``). Adding one: a module beside ``torch_runtime.py`` that calls
:func:`register_runtime`, and its import line at the bottom of this file.
"""

from __future__ import annotations

from .registry import (FILE_KINDS, file_kind, get_runtime, native_runtime, register_runtime, Runtime,  # noqa: F401  (the package's API)
                       runtime_names, RuntimeMissingError)

# the built-in runtimes, one module each (importing one registers it)
from . import torch_runtime, onnxruntime_runtime, openvino_runtime, ncnn_runtime  # noqa: F401
