"""What every model file run outside PyTorch is (an ONNX graph in onnxruntime, an OpenVINO IR, an
ncnn .param): its path, the runtime's session, the size facts of the runnable contract and the
srdistill metadata it carries. Each runtime adds its own fields and ``__call__``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metadata import decode_srdistill_metadata


@dataclass(kw_only=True)
class FileModel:
    path: Path
    session: Any  # the runtime's session / compiled model / net
    scale: int
    architecture: str
    metadata: dict = field(default_factory=dict)
    sha256: str | None = None
    params: int | None = None
    min_size: int = 0
    multiple_of: int = 1
    static_size: tuple[int, int] | None = None
    input_channels: int = 3
    tiling: str = "supported"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def hyperparameters(self) -> dict:
        try:
            return decode_srdistill_metadata(self.metadata).get("hyperparameters", {})
        except ValueError:
            return {}
