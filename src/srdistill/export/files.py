"""Writing a format made of several files (.xml + .bin, .param + .bin + metadata): every file staged in a
temporary folder beside the output and moved into place, the main file last, so a reader never finds the
main file without its weights; nothing is left behind on failure."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ..fileio import check_writable


@contextlib.contextmanager
def staged(out: Path, companions: list[Path], *, overwrite: bool) -> Iterator[Path]:
    """Yields a temporary folder; the caller writes ``<folder>/<name>`` for ``out`` and each companion.
    On success they replace their targets (companions first)."""
    for p in (*companions, out):
        check_writable(p, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".srdistill-", dir=out.parent) as tmp:
        yield Path(tmp)
        for p in (*companions, out):
            staged_file = Path(tmp) / p.name
            with open(staged_file, "rb") as f:
                os.fsync(f.fileno())
            os.replace(staged_file, p)


def digest(paths: list[Path]) -> tuple[str, int]:
    """(sha256 over the files in order, their total size)."""
    h, n = hashlib.sha256(), 0
    for p in paths:
        data = p.read_bytes()
        h.update(data)
        n += len(data)
    return h.hexdigest(), n
