"""Where ``upscale`` writes each output: one file, a folder, mirrored subfolders, names and formats."""

from __future__ import annotations

import glob as _glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .data.images import IMAGE_EXTENSIONS, WRITE_FORMATS, output_format
from .errors import UsageError


class OutputOptions(Protocol):
    """What planning the outputs reads of :class:`srdistill.upscale.UpscaleOptions` (a protocol, so this
    module need not import the one that imports it)."""

    output: str | os.PathLike | None
    outscale: float | None
    suffix: str | None
    ext: str | None


def _key(p: Path) -> str:
    """One spelling per file: symlinks and ``..`` resolved, case folded where the OS does."""
    return os.path.normcase(os.path.realpath(p))


def _glob_root(pattern: str) -> Path:
    """The folder part of a pattern before its first wildcard (``photos/*/a.png`` -> ``photos``)."""
    parts = Path(pattern).parts
    root: list[str] = []
    for part in parts:
        if _glob.has_magic(part):
            break
        root.append(part)
    return Path(*root) if root else Path(".")


def _relative_dirs(inputs: list[str], files: list[Path]) -> dict[str, Path]:
    """For each file found under a folder (or a pattern's folder), its subfolder relative to
    that folder, so that ``-o OUT -r`` keeps the tree; files named directly get none."""
    roots: list[str] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            roots.append(os.path.abspath(p))
        elif not p.is_file() and _glob.has_magic(s):
            roots.append(os.path.abspath(_glob_root(s)))
    out: dict[str, Path] = {}
    for f in files:
        af = os.path.abspath(f)
        rel = Path()
        for r in roots:
            try:
                if os.path.commonpath([af, r]) == r:
                    rel = Path(os.path.relpath(os.path.dirname(af), r))
                    break
            except ValueError:  # different drives
                continue
        out[_key(f)] = rel if str(rel) != "." else Path()
    return out


def _dir_like(s: str) -> bool:
    return s.endswith("/") or s.endswith(os.sep) or (os.altsep is not None and s.endswith(os.altsep))


def output_mode(inputs: list[str], n_files: int, output: str | None) -> str:
    """"beside" (no -o), "file" (-o names the one output file) or "folder"."""
    if output is None:
        return "beside"
    o = Path(output)
    single_file = len(inputs) == 1 and Path(inputs[0]).is_file()
    if o.is_dir() or _dir_like(output):
        if o.exists() and not o.is_dir():
            raise UsageError(f"-o {output!r} ends with a slash but is a file")
        return "folder"
    if single_file:
        return "file"
    what = f"there are {n_files} inputs" if n_files > 1 else "the input is a folder or pattern"
    if o.exists():
        raise UsageError(f"-o {output!r} is a file, but {what}", hint="give a folder")
    if o.suffix.lower() in WRITE_FORMATS or o.suffix.lower() in IMAGE_EXTENSIONS:
        raise UsageError(f"-o {output!r} names a file, but {what}",
                         hint="give a folder (end it with / to make that clear)")
    return "folder"


def _out_ext(src: Path, ext: str | None) -> str:
    if ext is None:
        return ".png"
    if ext == "auto":
        return src.suffix if src.suffix.lower() in WRITE_FORMATS else ".png"
    return "." + ext


@dataclass
class _Plan:
    pairs: list[tuple[Path, Path]]
    dropped: list[tuple[Path, Path]]  # (input left out, the input whose output it is)


def plan_outputs(inputs: list[str], files: list[Path], opts: OutputOptions, scale: int) -> _Plan:
    """Every input's output path, checked before any work (UsageError on conflicts)."""
    outscale = float(scale) if opts.outscale is None else opts.outscale
    suffix = opts.suffix if opts.suffix is not None else f"_x{outscale:g}"
    mode = output_mode(inputs, len(files), None if opts.output is None else os.fspath(opts.output))
    pairs: list[tuple[Path, Path]] = []
    if mode == "file":
        dst = Path(os.fspath(opts.output))
        output_format(dst)  # a known image extension, or UsageError
        if opts.ext not in (None, "auto") and WRITE_FORMATS.get("." + opts.ext) != WRITE_FORMATS[dst.suffix.lower()]:
            raise UsageError(f"--ext {opts.ext} contradicts the -o file name {dst.name!r}")
        pairs.append((files[0], dst))
    else:
        rel = _relative_dirs(inputs, files) if mode == "folder" else {}
        out_dir = Path(os.fspath(opts.output)) if mode == "folder" else None
        for f in files:
            name = f"{f.stem}{suffix}{_out_ext(f, opts.ext)}"
            if out_dir is None:
                dst = f.parent / name
            else:
                dst = out_dir / rel.get(_key(f), Path()) / name
            pairs.append((f, dst))
    # an input that is another input's output (a previous run's result in the same folder): leave it out
    out_of = {_key(d): s for s, d in pairs if _key(d) != _key(s)}
    kept, dropped = [], []
    for s, d in pairs:
        origin = out_of.get(_key(s))
        if origin is not None:
            dropped.append((s, origin))
        else:
            kept.append((s, d))
    seen: dict[str, Path] = {}
    for s, d in kept:
        if _key(d) == _key(s):
            raise UsageError(f"the output for {str(s)!r} would replace the input file",
                             hint="choose another --suffix, --ext or -o")
        if _key(d) in seen:
            raise UsageError(f"{str(seen[_key(d)])!r} and {str(s)!r} would both be written to {str(d)!r}",
                             hint="upscale them separately or into different folders")
        seen[_key(d)] = s
    return _Plan(kept, dropped)


