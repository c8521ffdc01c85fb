"""Atomic, non-clobbering file output: the one way srdistill writes a file a user keeps."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError, SrDistillError


def check_writable(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Fail early (before any work) if ``path`` exists and may not be replaced, or its folder is unusable."""
    p = Path(path)
    if p.is_dir():
        raise OutputExistsError(f"output path {str(p)!r} is a directory", hint="give a file name")
    if p.exists() and not overwrite:
        raise OutputExistsError(
            f"{str(p)!r} already exists", hint="pass --overwrite to replace it, or choose another name"
        )
    parent = p.parent if str(p.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise SrDistillError(f"cannot write {str(p)!r}: {str(parent)!r} is not a folder")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False, mkdir: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    If the body raises (or the process dies), the final name is never created or
    changed; the temporary file is removed. Without ``overwrite`` an existing file
    is never replaced, even one that appeared while the body ran.
    """
    final = check_writable(path, overwrite=overwrite)
    parent = final.parent if str(final.parent) else Path(".")
    try:
        if mkdir:
            parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file gets the usual mode
    except OSError as e:
        raise SrDistillError(f"cannot write to folder {str(parent)!r}: {e.strerror or e}") from e
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # again: a writer may have replaced the file (safetensors writes its own, 0600)
        os.chmod(tmp_path, 0o666 & ~_umask())
        if not overwrite:
            try:  # link() fails if the final name exists: no race with another writer
                os.link(tmp_path, final)
            except FileExistsError:
                raise OutputExistsError(
                    f"{str(final)!r} already exists", hint="pass --overwrite to replace it"
                ) from None
            except OSError:  # file systems without hard links
                if final.exists():
                    raise OutputExistsError(f"{str(final)!r} already exists") from None
                os.replace(tmp_path, final)
        else:
            os.replace(tmp_path, final)
    except OSError as e:
        raise _write_error(final, e.errno, e.strerror or str(e)) from e
    except SrDistillError:
        raise
    except Exception as e:  # writers in Rust (safetensors) report I/O errors as their own exception types
        code = _os_error_code(e)
        if code is None:
            raise
        raise _write_error(final, code, os.strerror(code)) from e
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_error(final: Path, code: int | None, reason: str) -> SrDistillError:
    if code == errno.ENOSPC:
        return SrDistillError(f"no space left on device while writing {str(final)!r}")
    return SrDistillError(f"cannot write {str(final)!r}: {reason}")


def _os_error_code(e: BaseException) -> int | None:
    """The errno in a Rust ``std::io::Error`` message (``... (os error 28)``), if any."""
    m = re.search(r"\(os error (\d+)\)", str(e))
    return int(m.group(1)) if m else None


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
