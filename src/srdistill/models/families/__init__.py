"""Per-architecture knobs: which keyword is the width, which the depth, where to tap features.

A *tap* names a module whose output (``"path"``) or input (``"in:path"``) is a
4-D feature map at LR resolution. ``blocks`` lists the repeated blocks of a
model, evenly sampled for same-family feature distillation; ``head`` and
``tail`` are the first and the last LR feature maps, used across families.
"""

from __future__ import annotations

from .registry import (ALIASES, FAMILIES, Family, family_names, family_table, get_family, register_family,  # noqa: F401  (the package's API)
                       ReparamSpec, resolve_arch, spandrel_module, tail_tap)

# the built-in families, one module each (importing one registers it)
from . import edsr, esrgan, rcan, swinir, span, compact, plksr, safmn, omnisr, dctlsa  # noqa: F401
