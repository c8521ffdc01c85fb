"""JSON values in and out: srdistill's metadata entries read from untrusted files, and the one helper
that makes any result, config or hyperparameter JSON-safe (no torch import: ``info`` on ONNX is fast)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

# srdistill.* entries whose value must be a JSON object: a file that says otherwise (edited, damaged,
# hostile) has the entry dropped from what srdistill reads, instead of breaking every reader
_META_OBJECTS = ("config", "teacher", "metrics", "knobs", "hyperparameters", "data", "benchmarks")

#: deepest nesting of lists and objects read from a user's file (metadata, a training log line): far
#: more than srdistill writes (3-4 levels), far less than would exhaust Python's recursion limit in the
#: decoder or in any reader that walks the value afterwards
MAX_JSON_DEPTH = 32


class JSONTooDeep(ValueError):
    """JSON nested deeper than :data:`MAX_JSON_DEPTH` (valid JSON, but no file srdistill wrote)."""


def json_depth(v: Any) -> int:
    """How deeply lists and objects nest in a decoded JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(v, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, dict):
            x = list(x.values())
        if isinstance(x, list):
            deepest = max(deepest, d)
            stack.extend((y, d + 1) for y in x if isinstance(y, (list, dict)))
    return deepest


def loads_bounded(text: Any, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for text from a user's file: nesting deeper than ``max_depth`` is a ValueError
    (:class:`JSONTooDeep`, as malformed JSON is), never a RecursionError in the decoder or in a later reader."""
    try:
        v = json.loads(text)
    except RecursionError:
        raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels") from None
    if json_depth(v) > max_depth:
        raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels")
    return v


def decode_srdistill_metadata(metadata: dict) -> dict[str, Any]:
    """The ``srdistill.*`` metadata entries, JSON-decoded, with malformed structured entries left out."""
    out: dict[str, Any] = {}
    for k, v in metadata.items():
        if not (isinstance(k, str) and k.startswith("srdistill.")):
            continue
        key = k[len("srdistill."):]
        try:
            val = loads_bounded(v)
        except JSONTooDeep:  # valid but absurd: malformed, left out like an entry of the wrong shape
            continue
        except (TypeError, ValueError):
            val = v
        if key in _META_OBJECTS and not isinstance(val, dict):
            continue
        out[key] = val
    return out


def metadata_int(metadata: dict, key: str, minimum: int = 1) -> int | None:
    """An integer entry such as ``srdistill.scale``; None when absent or not an integer >= ``minimum``."""
    try:
        v = loads_bounded(metadata[key])
    except (KeyError, TypeError, ValueError):
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        return None
    return v


def json_safe(v: Any, *, nonfinite: str = "null") -> Any:
    """``v`` as plain JSON values: dict keys as text, tuples as lists, objects with ``to_dict`` through
    it, paths as text, classes and functions by name (spandrel keeps some hyperparameters as such),
    anything else as its text. Non-finite floats become null (``nonfinite="null"``, strict JSON for
    metadata) or the strings "inf"/"-inf" with NaN as null (``"string"``, the CLI's --json)."""
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return None if (nonfinite == "null" or math.isnan(v)) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): json_safe(x, nonfinite=nonfinite) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x, nonfinite=nonfinite) for x in v]
    if hasattr(v, "to_dict"):
        return json_safe(v.to_dict(), nonfinite=nonfinite)
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    name = getattr(v, "__qualname__", None) or getattr(v, "__name__", None)
    if isinstance(v, type) or callable(v):
        return name if isinstance(name, str) else str(v)
    return str(v)
