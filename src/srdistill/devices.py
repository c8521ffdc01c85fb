"""``--device`` parsing, shared by every command."""

from __future__ import annotations

import torch

from .errors import UsageError, nonempty


def resolve_device(name: str | None) -> torch.device:
    """auto (CUDA when present, else CPU), cpu, cuda or cuda:N -> a torch.device, or a UsageError."""
    name = (nonempty("--device", name, "auto, cpu, cuda or cuda:N") or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is available", hint="use --device cpu or auto")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise UsageError(f"invalid --device {name!r}", hint="use auto, cpu, cuda or cuda:N") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise UsageError(f"invalid --device {name!r}", hint="use auto, cpu, cuda or cuda:N")
