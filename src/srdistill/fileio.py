"""Files in and out: the one check every input file passes (a regular file under a stated size,
opened without blocking), path errors worded as one line, and atomic, non-clobbering output (the
one way srdistill writes a file a user keeps)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import SHOWN_LIMIT, OutputExistsError, SrDistillError, UsageError

# --------------------------------------------------------------------------- input files

MiB = 1 << 20
GiB = 1 << 30
# the largest file of each kind srdistill reads; anything larger is refused before it is opened
MAX_MODEL_BYTES = 16 * GiB  # teacher, student, .pth/.safetensors/.onnx (the zip-bomb cap of .pth, too)
MAX_CHECKPOINT_BYTES = 16 * GiB  # a training checkpoint read on --resume (read into memory whole)
MAX_IMAGE_BYTES = 4 * GiB  # an image file (a 179 MP 16-bit RGBA TIFF is 1.4 GB)
MAX_DEGRADATION_BYTES = 1 * MiB  # a --degradation .toml/.json file
MAX_LOG_BYTES = 4 * GiB  # a training log read on --resume or before replacing it

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0) \
    | getattr(os, "O_BINARY", 0)


def shown_path(path: str | os.PathLike | bytes, limit: int = SHOWN_LIMIT) -> str:
    """A path as a message quotes it: like :func:`srdistill.errors.shown` (``repr``, so a newline shows
    as ``\\n``; about ``limit`` characters), but a long path keeps its end, where the file's name is."""
    text = repr(os.fsdecode(path) if isinstance(path, bytes) else os.fspath(path))
    if len(text) <= limit:
        return text
    head = limit * 2 // 5
    return f"{text[:head]}...{text[head - limit:]} ({len(text) - 2:,} characters)"


def size_text(n: int) -> str:
    """Bytes for a message: ``1 MiB``, ``3.0 GiB``, ``512 bytes``."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} bytes"


def refusal(st: os.stat_result, max_bytes: int) -> str | None:
    """Why a file with this ``stat`` is not read (not a regular file, too large), or None."""
    for test, kind in _KINDS:
        if test(st.st_mode):
            return f"it is {kind}, not a regular file"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_size > max_bytes:
        return f"it is {size_text(st.st_size)}, over the {size_text(max_bytes)} limit"
    return None


def _refused(error: type[SrDistillError], what: str, path: str, reason: str) -> SrDistillError:
    hint = "give a file" if "not a regular file" in reason else None
    exc = error(f"{what} {shown_path(path)}: {reason}", hint=hint)
    exc.reason = reason  # the words without the path, for callers that name the file themselves
    return exc


def too_long(path: str | os.PathLike | bytes, what: str = "path") -> UsageError:
    """ENAMETOOLONG as one line: which limit the path breaks (a name over 255 bytes, or the whole path)."""
    raw = os.fsencode(path) if not isinstance(path, bytes) else path
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if longest > 255:
        why = f"a name in it is {longest:,} bytes, over the 255-byte limit of file names"
    else:
        why = f"it is {len(raw):,} bytes, over the system's path length limit"
    exc = UsageError(f"{what} {shown_path(os.fsdecode(raw))} is too long: {why}", hint="use a shorter name or path")
    exc.reason = f"the path is too long ({why})"
    return exc


def check_path_length(path: str | os.PathLike, what: str = "path") -> None:
    """Refuse (exit 2) a path with a name over 255 bytes or longer than the system allows, before a
    caller that words OSErrors as failures (exit 1) meets it. Nothing else is checked."""
    try:
        os.lstat(path)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise too_long(path, what) from None


def path_error(path: str | os.PathLike, e: OSError, what: str, *,
               error: type[SrDistillError] = SrDistillError) -> SrDistillError:
    """An OSError about ``path`` as one of our errors: a missing file or a too-long path is ``error``
    (give a UsageError subclass for exit 2); other reasons (permission denied, I/O error) are a
    failure to read the file (exit 1)."""
    s = os.fspath(path)
    if e.errno == errno.ENAMETOOLONG:
        exc = too_long(s, what)
        return exc if issubclass(error, UsageError) else error(str(exc))
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        exc = error(f"{what} {shown_path(s)} does not exist")
        exc.reason = "no such file"
        return exc
    reason = e.strerror or type(e).__name__
    exc = SrDistillError(f"cannot read {what} {shown_path(s)}: {reason}")
    exc.reason = reason.lower() if reason.startswith("Permission") else reason
    return exc


def check_input_file(path: str | os.PathLike, what: str, max_bytes: int, *,
                     error: type[SrDistillError] = UsageError) -> os.stat_result:
    """Refuse at once, as ``error`` (a usage error, exit 2, unless the caller says otherwise), a
    ``path`` that does not exist, is too long, or is not a regular file of at most ``max_bytes``
    (a folder, a device such as /dev/zero, a FIFO, a socket). Nothing is opened: a FIFO cannot
    block. ``what`` names the file in the message ("degradation file", "model file", ...)."""
    s = os.fspath(path)
    try:
        st = os.stat(s)
    except OSError as e:
        raise path_error(s, e, what, error=error) from None
    reason = refusal(st, max_bytes)
    if reason:
        raise _refused(error, what, s, reason)
    return st


def open_input_file(path: str | os.PathLike, what: str, max_bytes: int, *,
                    error: type[SrDistillError] = UsageError) -> BinaryIO:
    """:func:`check_input_file`, then the file opened for binary reading. It is opened with
    O_NONBLOCK (a FIFO swapped in after the check cannot hang the open) and checked again by
    ``fstat``: the file read is the file checked."""
    s = os.fspath(path)
    check_input_file(s, what, max_bytes, error=error)
    try:
        fd = os.open(s, _OPEN_FLAGS)
    except OSError as e:
        raise path_error(s, e, what, error=error) from None
    try:
        reason = refusal(os.fstat(fd), max_bytes)
        if reason:
            raise _refused(error, what, s, reason)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input_bytes(path: str | os.PathLike, what: str, max_bytes: int, *,
                     error: type[SrDistillError] = UsageError) -> bytes:
    """The whole of a checked input file (:func:`open_input_file`), never more than ``max_bytes``."""
    with open_input_file(path, what, max_bytes, error=error) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise path_error(path, e, what, error=error) from None
    if len(data) > max_bytes:  # it grew after the check
        raise _refused(error, what, os.fspath(path), f"it is over the {size_text(max_bytes)} limit")
    return data


# --------------------------------------------------------------------------- output files


def check_writable(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Fail early (before any work) if ``path`` exists and may not be replaced, or its folder is unusable."""
    p = Path(path)
    try:
        os.stat(p)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise too_long(p, "output path") from None
    if p.is_dir():
        raise OutputExistsError(f"output path {shown_path(str(p))} is a directory", hint="give a file name")
    if p.exists() and not overwrite:
        raise OutputExistsError(
            f"{shown_path(str(p))} already exists", hint="pass --overwrite to replace it, or choose another name"
        )
    parent = p.parent if str(p.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise SrDistillError(f"cannot write {shown_path(str(p))}: {shown_path(str(parent))} is not a folder")
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
        raise SrDistillError(f"cannot write to folder {shown_path(str(parent))}: {e.strerror or e}") from e
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
                    f"{shown_path(str(final))} already exists", hint="pass --overwrite to replace it"
                ) from None
            except OSError:  # file systems without hard links
                if final.exists():
                    raise OutputExistsError(f"{shown_path(str(final))} already exists") from None
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
        return SrDistillError(f"no space left on device while writing {shown_path(str(final))}")
    return SrDistillError(f"cannot write {shown_path(str(final))}: {reason}")


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


def sha256_file(path: str | os.PathLike, what: str = "file", max_bytes: int = MAX_MODEL_BYTES) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks: a regular file (:func:`open_input_file`;
    hashing a FIFO or /dev/zero would never end)."""
    h = hashlib.sha256()
    with open_input_file(path, what, max_bytes) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
