"""PyTorch: checkpoints run eagerly on the CPU or CUDA; ``compile=True`` wraps the module in
``torch.compile`` (minutes of compilation on first use and a C++ compiler on the CPU, so ``auto``
never picks it; the library's option for long runs)."""

from __future__ import annotations

from typing import Any

from .registry import Runtime, register_runtime

# Lazy imports here: torch is imported where a model is loaded -- this module is imported by the runtime
# registry, which `srdistill info x.onnx` and `--help` reach without torch (seconds of start-up).


def _devices() -> tuple[str, ...]:
    import torch  # lazy (see the note at the top)

    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


class CompiledModel:
    """An SRModel whose forward is ``torch.compile``'d; every other attribute is the SRModel's."""

    def __init__(self, model: Any):
        import torch  # lazy (see the note at the top)

        self._model = model
        self._compiled = torch.compile(model.module.eval())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, x):
        import torch  # lazy (see the note at the top)

        with torch.no_grad():
            return self._compiled(x)


def load(path, *, device: str = "cpu", threads: int | None = None, compile: bool = False) -> Any:
    from ..models.loading import load_model  # lazy: torch (see the note at the top)

    model = load_model(path, device=device)
    model.module.eval()
    return CompiledModel(model) if compile else model


register_runtime(Runtime(name="torch", packages=("torch",), extra=None, runs=("checkpoint",), devices=_devices,
                         load=load, auto=("checkpoint",), note="eager PyTorch (torch.compile optional)"))
