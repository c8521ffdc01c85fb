"""Which files are images: folder scans and command-line inputs (files, folders, globs)."""

from __future__ import annotations

import glob as _glob
import os
from pathlib import Path
from typing import Iterable

from ..errors import UsageError
from ..fileio import shown_path
from .image_type import IMAGE_EXTENSIONS

def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def scan_folder(folder: Path, recursive: bool) -> list[Path]:
    """Image files (``IMAGE_EXTENSIONS``, hidden files and folders skipped) in ``folder``, unsorted."""
    found: list[Path] = []
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found.extend(Path(root) / n for n in files if _is_image_name(Path(n)))
    else:
        try:
            entries = list(folder.iterdir())
        except OSError as e:
            raise UsageError(f"cannot list folder {shown_path(folder)}: {e.strerror or e}") from e
        found.extend(e for e in entries if _is_image_name(e) and e.is_file())
    return [p for p in found if p.is_file()]


def list_images(inputs: Iterable[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Expand files, folders (``recursive``: subfolders too) and glob patterns into a
    sorted, de-duplicated list of image files. Files named explicitly are kept whatever
    their extension; folders and patterns contribute files with ``IMAGE_EXTENSIONS``
    (hidden files skipped). An input that yields nothing is a :class:`UsageError`.
    """
    found: dict[str, Path] = {}
    for inp in inputs:
        s = os.fspath(inp)
        p = Path(s)
        if p.is_dir():
            matches = scan_folder(p, recursive)
            if not matches:
                hint = None if recursive else "pass --recursive to look in subfolders"
                raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {shown_path(s)}", hint=hint)
        elif p.is_file():
            matches = [p]
        elif _glob.has_magic(s):
            matches = []
            for m in _glob.glob(s, recursive=recursive):
                mp = Path(m)
                if mp.is_dir():
                    matches.extend(scan_folder(mp, recursive))
                elif mp.is_file() and _is_image_name(mp):
                    matches.append(mp)
            if not matches:
                raise UsageError(f"pattern {shown_path(s)} matches no images")
        elif p.exists():
            raise UsageError(f"{shown_path(s)} is not a file or folder")
        else:
            raise UsageError(f"{shown_path(s)}: no such file or folder")
        for m in matches:
            found.setdefault(os.path.normcase(os.path.abspath(m)), m)
    return sorted(found.values(), key=lambda q: str(q))
