"""The runtime registry: what a runtime is (:class:`Runtime`), registering one, and finding one by name or file."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import SrDistillError, UsageError


class RuntimeMissingError(SrDistillError):
    """The runtime asked for is not installed (exit 1: the environment, not the command line, is wrong)."""


#: file kind -> suffixes (anything else is a PyTorch checkpoint)
FILE_KINDS = {"onnx": (".onnx",), "openvino": (".xml",), "ncnn": (".param",)}


def file_kind(path: str | Path) -> str:
    """``onnx``, ``openvino`` (IR .xml), ``ncnn`` (.param) or ``checkpoint``."""
    suffix = Path(path).suffix.lower()
    return next((k for k, v in FILE_KINDS.items() if suffix in v), "checkpoint")


@dataclass(frozen=True, kw_only=True)
class Runtime:
    name: str
    packages: tuple[str, ...]  # import names that must be present
    extra: str | None  # the srdistill extra that installs it (None: a core dependency)
    runs: tuple[str, ...]  # file kinds it opens (see file_kind)
    devices: Callable[[], tuple[str, ...]]  # device kinds it can use here ("cpu", "cuda", ...)
    load: Callable[..., Any]  # (path, *, device, threads, **options) -> runnable
    auto: tuple[str, ...] = ()  # file kinds ``--runtime auto`` measures it on (converting costs seconds)
    note: str = ""

    def installed(self) -> bool:
        return all(importlib.util.find_spec(p) is not None for p in self.packages)

    def require(self) -> None:
        """A one-line error naming the extra when the runtime is not installed."""
        if not self.installed():
            hint = f'pip install "srdistill[{self.extra}]"' if self.extra else f"pip install {self.packages[0]}"
            raise RuntimeMissingError(f"the {self.name} runtime is not installed", hint=hint)

    def can_run(self, path: str | Path) -> bool:
        return file_kind(path) in self.runs


_RUNTIMES: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime) -> Runtime:
    _RUNTIMES[runtime.name] = runtime
    return runtime


def runtime_names() -> tuple[str, ...]:
    return tuple(_RUNTIMES)


def get_runtime(name: str) -> Runtime:
    key = str(name or "").strip().lower()
    if key not in _RUNTIMES:
        raise UsageError(f"unknown runtime {name!r}", hint=f"use auto, native, {', '.join(_RUNTIMES)}")
    return _RUNTIMES[key]


def native_runtime(path: str | Path) -> Runtime:
    """The runtime of a file's own format: checkpoints torch, .onnx onnxruntime, .xml openvino,
    .param ncnn (what ``--runtime native`` picks, and eval's default)."""
    kind = file_kind(path)
    name = {"checkpoint": "torch", "onnx": "onnxruntime", "openvino": "openvino", "ncnn": "ncnn"}[kind]
    return _RUNTIMES[name]
