"""Import spandrel even where torchvision is installed but broken.

spandrel imports ``torchvision.transforms.functional`` for two non-SR
architectures (LaMa inpainting, RestoreFormer face restoration). A very common
install -- a CPU build of torch next to the CUDA build of torchvision from PyPI --
makes ``import torchvision`` itself fail, and with it every spandrel import.
If that happens we put a minimal pure-torch stand-in for the three functions
spandrel uses in place of torchvision and import spandrel again. A working
torchvision is always preferred and never replaced.
"""

from __future__ import annotations

import enum
import sys
import types

import torch

_spandrel = None


def _shim_torchvision() -> None:
    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    def rotate(img, angle, interpolation=InterpolationMode.NEAREST, expand=False, center=None, fill=None):
        k = int(round(angle / 90.0)) % 4
        if abs(angle - 90.0 * round(angle / 90.0)) > 1e-6:
            raise NotImplementedError("srdistill's torchvision stand-in only rotates by multiples of 90 degrees")
        return torch.rot90(img, k, dims=(-2, -1))

    def normalize(tensor, mean, std, inplace=False):
        mean_t = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std_t = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        return (tensor - mean_t) / std_t

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    tv = types.ModuleType("torchvision")
    tv.__srdistill_stand_in__ = True
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = InterpolationMode
    functional.rotate = rotate
    functional.normalize = normalize
    tv.transforms = transforms
    transforms.functional = functional
    sys.modules.update(
        {"torchvision": tv, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}
    )


def import_spandrel():
    """Return the ``spandrel`` module, working around a broken torchvision."""
    global _spandrel
    if _spandrel is not None:
        return _spandrel
    try:
        import spandrel  # lazy: the import is the point here (retried after the torchvision stand-in)
    except Exception as e:  # noqa: BLE001 - torchvision raises RuntimeError/ImportError/OSError
        if "torchvision" not in repr(e) and not _torchvision_broken():
            raise
        for name in [m for m in sys.modules if m == "spandrel" or m.startswith("spandrel.")]:
            del sys.modules[name]
        _shim_torchvision()
        import spandrel  # noqa: F811  (again, with the stand-in in place)
    _spandrel = spandrel
    return spandrel


def _torchvision_broken() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001
        return True
    return False
