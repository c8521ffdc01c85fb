"""srdistill: compress pretrained super-resolution models by knowledge distillation."""

__version__ = "0.3.0"

from .errors import SrDistillError

__all__ = ["SrDistillError", "__version__"]
