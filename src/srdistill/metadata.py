"""Reading srdistill's own metadata entries from untrusted files (no torch import: ``info`` on ONNX is fast)."""

from __future__ import annotations

import json
from typing import Any

# srdistill.* entries whose value must be a JSON object: a file that says otherwise (edited, damaged,
# hostile) has the entry dropped from what srdistill reads, instead of breaking every reader
_META_OBJECTS = ("config", "teacher", "metrics", "knobs", "hyperparameters", "data", "benchmarks")


def decode_srdistill_metadata(metadata: dict) -> dict[str, Any]:
    """The ``srdistill.*`` metadata entries, JSON-decoded, with malformed structured entries left out."""
    out: dict[str, Any] = {}
    for k, v in metadata.items():
        if not (isinstance(k, str) and k.startswith("srdistill.")):
            continue
        key = k[len("srdistill."):]
        try:
            val = json.loads(v)
        except (TypeError, ValueError):
            val = v
        if key in _META_OBJECTS and not isinstance(val, dict):
            continue
        out[key] = val
    return out


def metadata_int(metadata: dict, key: str, minimum: int = 1) -> int | None:
    """An integer entry such as ``srdistill.scale``; None when absent or not an integer >= ``minimum``."""
    try:
        v = json.loads(metadata[key])
    except (KeyError, TypeError, ValueError):
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        return None
    return v
