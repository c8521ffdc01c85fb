"""Training packs where they cannot be written, and every damaged part reported as damaged.

* a complete pack is only read: nothing under the pack folder is opened for writing, no lock
  is taken (simulated read-only file system: every write-mode call under the folder fails
  with EROFS; with a real ``chmod -R a-w`` too where the tests do not run as root);
* an incomplete pack that cannot be written is one error line;
* every record field, the completion marker and every ``.npy`` is checked before training:
  a wrong type, shape, range, NaN, missing key, truncated or foreign array is one "damaged ...
  delete the pack folder" line, never a traceback;
* a DataLoader worker meeting a damaged file gives the same one line, and the workers leave no
  ``pymp-*`` folder in ``$TMPDIR``;
* a ``.lock`` that is a symbolic link (or not a plain file) is never followed: one line.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from robust_helpers import PYTHON, python_env
from srdistill.cli import app
from srdistill.data import pack as pack_mod
from srdistill.data.pack import PackError, PackRequest, open_pack
from srdistill.errors import SrDistillError, UsageError
from srdistill.models.loading import load_model

CATEGORY = "damaged and read-only packs"


# --------------------------------------------------------------------------- material


def _req(root: Path, data: Path, sha: str) -> PackRequest:
    return PackRequest(root=root, data=[str(data)], scale=2, patch_size=16, channels=3, lr_only=False,
                       max_images=None, teacher_sha256=sha)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_files, train_dir):
    """A complete pack (4 images, teacher outputs) built through the API, and its teacher's sha."""
    root = tmp_path_factory.mktemp("packs") / "p"
    teacher = load_model(tiny_model_files["pth"])
    _, _, _, info = open_pack(_req(root, train_dir, teacher.sha256), teacher)
    return root, teacher.sha256, info.key


@pytest.fixture
def pack(built, tmp_path, train_dir):
    """A fresh copy of the built pack: (request, pack folder)."""
    src, sha, key = built
    root = tmp_path / "packs"
    shutil.copytree(src, root, symlinks=True)
    return _req(root, train_dir, sha), root / f"pack-{key}"


def _one_damaged_line(e: BaseException, name: str = "") -> str:
    msg = str(e)
    assert isinstance(e, PackError), repr(e)
    assert "\n" not in msg and len(msg) < 1200, msg
    assert "damaged" in msg and "delete the pack folder" in msg and "rebuild" in msg, msg
    assert name in msg, msg
    return msg


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@contextlib.contextmanager
def _read_only(root: Path):
    """Every call that would write under ``root`` fails with EROFS, as on a read-only mount; the
    attempts are listed (what was tried, on which path)."""
    base = os.path.abspath(root)
    tried: list[tuple[str, str]] = []

    def under(path) -> bool:
        if isinstance(path, int):
            return False
        p = os.path.abspath(os.fsdecode(path))
        return p == base or p.startswith(base + os.sep)

    def refuse(what: str, path):
        tried.append((what, os.fsdecode(path)))
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real = {name: getattr(os, name) for name in ("open", "mkdir", "rename", "replace", "link", "symlink", "unlink",
                                                  "remove", "rmdir", "chmod", "utime", "truncate", "access")}
    real_open = builtins.open

    def os_open(path, flags, *a, **kw):
        if flags & _WRITE_FLAGS and under(path):
            refuse("os.open", path)
        return real["open"](path, flags, *a, **kw)

    def py_open(file, mode="r", *a, **kw):
        if any(c in mode for c in "wax+") and under(file):
            refuse(f"open({mode!r})", file)
        return real_open(file, mode, *a, **kw)

    def one_path(name):
        def f(path, *a, **kw):
            if under(path):
                refuse(name, path)
            return real[name](path, *a, **kw)
        return f

    def two_paths(name):
        def f(src, dst, *a, **kw):
            if under(src) or under(dst):
                refuse(name, dst if under(dst) else src)
            return real[name](src, dst, *a, **kw)
        return f

    def access(path, mode, *a, **kw):
        if mode & os.W_OK and under(path):
            return False
        return real["access"](path, mode, *a, **kw)

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(os, "open", os_open)
        mp.setattr(builtins, "open", py_open)
        mp.setattr(io, "open", py_open)
        for name in ("mkdir", "unlink", "remove", "rmdir", "chmod", "utime", "truncate"):
            mp.setattr(os, name, one_path(name))
        for name in ("rename", "replace", "link", "symlink"):
            mp.setattr(os, name, two_paths(name))
        mp.setattr(os, "access", access)
        yield tried
    finally:
        mp.undo()


def _cli(teacher: Path, data: Path, root: Path, out: Path, *extra: str):
    args = ["distill", str(teacher), "-w", "4", "-d", "1", "--data", str(data), "--steps", "2", "-p", "16",
            "--no-val", "--pack", str(root), "-o", str(out), "--init", "random", "--overwrite", *extra]
    return CliRunner().invoke(app, args)


def _error_lines(r) -> list[str]:
    assert "Traceback" not in r.output, r.output
    return [ln for ln in r.output.splitlines() if ln.startswith("error:")]


@pytest.fixture(scope="module")
def cli_pack(tmp_path_factory, tiny_model_files, train_dir):
    """A pack built by ``distill --build-only`` (the key a CLI run asks for)."""
    root = tmp_path_factory.mktemp("clipacks") / "p"
    r = _cli(tiny_model_files["pth"], train_dir, root, root.parent / "unused.safetensors", "--build-only")
    assert r.exit_code == 0, r.output
    return root


# --------------------------------------------------------------------------- read-only


@pytest.mark.parametrize("extra", [(), ("--workers", "2"), ("--upcycle",), ("--build-only",)],
                         ids=["plain", "workers", "upcycle", "build-only"])
def test_a_complete_pack_is_used_where_nothing_can_be_written(cli_pack, tiny_model_files, train_dir, tmp_path,
                                                              tally, extra):
    with tally.case(CATEGORY, f"read-only complete pack {' '.join(extra) or 'plain'}"):
        root = tmp_path / "ro"
        shutil.copytree(cli_pack, root)
        before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
        with _read_only(root) as tried:
            r = _cli(tiny_model_files["pth"], train_dir, root, tmp_path / "out" / "s.safetensors", *extra)
            r2 = _cli(tiny_model_files["pth"], train_dir, root, tmp_path / "out" / "s2.safetensors", *extra)
        assert r.exit_code == 0 and r2.exit_code == 0, r.output + r2.output
        assert "pack: reused" in r.output and "pack: reused" in r2.output, r.output
        opened = [t for t in tried if "open" in t[0]]
        assert not opened, opened  # nothing under the pack folder was even tried for writing
        if "--upcycle" not in extra:
            assert not tried, tried
        assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through chmod a-w")
def test_a_complete_pack_in_a_folder_without_write_permission(pack, tally):
    req, folder = pack
    with tally.case(CATEGORY, "chmod -R a-w complete pack"):
        modes = {p: p.stat().st_mode for p in [req.root, *Path(req.root).rglob("*")]}
        try:
            for p in modes:
                p.chmod(modes[p] & ~0o222)
            for _ in range(2):
                images, _, _, info = open_pack(req)
                assert info.reused and len(images) == 4
        finally:
            for p in sorted(modes, key=lambda q: -len(q.parts)):
                p.chmod(modes[p])


@pytest.mark.parametrize("state", ["no complete.json", "a record missing", "no pack folder yet", "lock missing too"])
def test_an_incomplete_pack_that_cannot_be_written_is_one_line(pack, tally, state):
    req, folder = pack
    with tally.case(CATEGORY, f"read-only incomplete pack: {state}"):
        if state == "no pack folder yet":
            shutil.rmtree(folder)
        else:
            (folder / "complete.json").unlink()
        if state == "a record missing":
            (folder / "items" / "0000002.json").unlink()
        if state == "lock missing too":
            (folder / ".lock").unlink()
        with _read_only(req.root):
            with pytest.raises(SrDistillError) as ei:
                open_pack(req)
        msg = str(ei.value)
        assert "\n" not in msg and "Read-only file system" in msg, msg
        if state == "no pack folder yet":
            assert isinstance(ei.value, UsageError) and "write access" in msg, msg
        else:
            assert "incomplete and cannot be written" in msg, msg


def test_an_incomplete_read_only_pack_through_the_cli(cli_pack, tiny_model_files, train_dir, tmp_path, tally):
    with tally.case(CATEGORY, "read-only incomplete pack through distill"):
        root = tmp_path / "ro"
        shutil.copytree(cli_pack, root)
        next(root.glob("pack-*/complete.json")).unlink()
        with _read_only(root):
            r = _cli(tiny_model_files["pth"], train_dir, root, tmp_path / "s.safetensors")
        lines = _error_lines(r)
        assert r.exit_code == 1 and len(lines) == 1 and "cannot be written" in lines[0], r.output


# --------------------------------------------------------------------------- damaged records

_DEEP = "[" * 100_000 + "]" * 100_000


def _edit(**kw):
    def f(rec):
        rec = dict(rec)
        rec.update(kw)
        return json.dumps(rec)
    return f


def _edit_input(**kw):
    def f(rec):
        rec = json.loads(json.dumps(rec))
        rec["inputs"][0].update(kw)
        return json.dumps(rec)
    return f


def _drop(key, inner=False):
    def f(rec):
        rec = json.loads(json.dumps(rec))
        (rec["inputs"][0] if inner else rec).pop(key)
        return json.dumps(rec)
    return f


RECORDS = {
    "a list [1]": lambda rec: "[1]",
    "an empty object": lambda rec: "{}",
    "null": lambda rec: "null",
    "a string": lambda rec: '"x"',
    "a number": lambda rec: "1e999",
    "not JSON": lambda rec: "{",
    "empty file": lambda rec: "",
    "binary": lambda rec: "\x00\xff\x13",
    "nested 100000 deep": lambda rec: _DEEP,
    "over 1 MB": lambda rec: json.dumps({**rec, "pad": "x" * 2_000_000}),
    "name a number": _edit(name=5),
    "name another file": _edit(name="other.png"),
    "no name": _drop("name"),
    "hr of two numbers": _edit(hr=[3, 2]),
    "hr of strings": _edit(hr=["3", "96", "112"]),
    "hr of floats": _edit(hr=[3.0, 48.0, 48.0]),
    "hr true": _edit(hr=True),
    "hr negative": _edit(hr=[3, -48, 48]),
    "hr zero": _edit(hr=[3, 0, 48]),
    "hr huge": _edit(hr=[3, 10**30, 10**30]),
    "hr a 5000-digit number": lambda rec: json.dumps(rec).replace('"hr": [3, 48', '"hr": [3, ' + "9" * 5000),
    "hr 1 channel": _edit(hr=[1, 48, 48]),
    "hr not 2x the LR": _edit(hr=[3, 50, 48]),
    "no hr": _drop("hr"),
    "no inputs": _drop("inputs"),
    "inputs empty": _edit(inputs=[]),
    "inputs [1]": _edit(inputs=[1]),
    "inputs a string": _edit(inputs="abc"),
    "inputs an object": _edit(inputs={"lr": [3, 24, 24]}),
    "100 inputs": lambda rec: json.dumps({**rec, "inputs": rec["inputs"] * 100}),
    "lr under one patch": lambda rec: json.dumps({**rec, "hr": [3, 16, 16],
                                                  "inputs": [{"lr": [3, 8, 8], "weight": 1.0,
                                                              "target": [3, 16, 16]}]}),
    "lr wrong shape": _edit_input(lr=[3, 24]),
    "lr huge": _edit_input(lr=[3, 2**62, 24]),
    "no lr": _drop("lr", inner=True),
    "weight NaN": lambda rec: json.dumps(rec).replace('"weight": 1.0', '"weight": NaN'),
    "weight Infinity": lambda rec: json.dumps(rec).replace('"weight": 1.0', '"weight": Infinity'),
    "weight -1": _edit_input(weight=-1),
    "weight 1e308": _edit_input(weight=1e308),
    "weight a string": _edit_input(weight="1"),
    "weight true": _edit_input(weight=True),
    "weight a list": _edit_input(weight=[1]),
    "no weight": _drop("weight", inner=True),
    "no target": _drop("target", inner=True),
    "target wrong shape": _edit_input(target=[3, 1, 1]),
    "target null": _edit_input(target=None),
    "skipped a number": _edit(skipped=5),
    "skipped unknown": _edit(skipped="other"),
    "skipped, reason a list": _edit(skipped="unreadable", reason=[1]),
    "skipped, reason 10000 characters": _edit(skipped="unreadable", reason="r" * 10_000),
}


@pytest.mark.parametrize("how", list(RECORDS))
def test_a_damaged_record_is_one_damaged_line(pack, tally, how):
    req, folder = pack
    with tally.case(CATEGORY, f"record: {how}"):
        path = folder / "items" / "0000001.json"
        rec = json.loads(path.read_text())
        path.write_text(RECORDS[how](rec))
        with pytest.raises(PackError) as ei:
            open_pack(req)
        _one_damaged_line(ei.value, "0000001.json")


@pytest.mark.parametrize("how", ["missing", "a folder", "a FIFO"])
def test_a_record_that_is_not_a_file_is_one_damaged_line(pack, tally, how):
    req, folder = pack
    with tally.case(CATEGORY, f"record {how}"):
        path = folder / "items" / "0000003.json"
        path.unlink()
        if how == "a folder":
            path.mkdir()
        elif how == "a FIFO":
            if not hasattr(os, "mkfifo"):
                pytest.skip("no FIFOs here")
            os.mkfifo(path)
        with pytest.raises(PackError) as ei:
            open_pack(req)  # a FIFO must not hang
        _one_damaged_line(ei.value, "0000003.json")


MARKERS = {
    "a list": lambda d: [1],
    "images a string": lambda d: {**d, "images": str(d["images"])},
    "images one fewer": lambda d: {**d, "images": d["images"] - 1},
    "images huge": lambda d: {**d, "images": 10**18},
    "images true": lambda d: {**d, "images": True},
    "format true": lambda d: {**d, "format": True},
    "format 2": lambda d: {**d, "format": 2},
    "another key": lambda d: {**d, "key": "0" * 16},
    "no key": lambda d: {k: v for k, v in d.items() if k != "key"},
    "nested": lambda d: {**d, "images": [[[[d["images"]]]]]},
}


@pytest.mark.parametrize("how", list(MARKERS))
def test_a_damaged_completion_marker_is_one_damaged_line(pack, tally, how):
    req, folder = pack
    with tally.case(CATEGORY, f"complete.json: {how}"):
        path = folder / "complete.json"
        path.write_text(json.dumps(MARKERS[how](json.loads(path.read_text()))))
        with pytest.raises(PackError) as ei:
            open_pack(req)
        _one_damaged_line(ei.value, "complete.json")


def test_an_incomplete_pack_with_a_damaged_record_rebuilds_that_image(pack, tiny_model_files, tally):
    req, folder = pack
    with tally.case(CATEGORY, "incomplete pack, record [1]: rebuilt"):
        good = (folder / "items" / "0000002.json").read_text()
        (folder / "complete.json").unlink()
        (folder / "items" / "0000002.json").write_text("[1]")
        images, _, _, info = open_pack(req, load_model(tiny_model_files["pth"]))
        assert info.built_here == 1 and len(images) == 4
        assert (folder / "items" / "0000002.json").read_text() == good


# --------------------------------------------------------------------------- damaged arrays


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _damage_npy(path: Path, how: str) -> None:
    data = path.read_bytes()
    arr = np.load(path)
    if how == "truncated":
        path.write_bytes(data[:200])
    elif how == "one byte short":
        path.write_bytes(data[:-1])
    elif how == "bytes appended":
        path.write_bytes(data + b"\0" * 7)
    elif how == "float32":
        path.write_bytes(_npy(arr.astype(np.float32)))
    elif how == "int8, same size":
        path.write_bytes(_npy(arr.astype(np.int8)))
    elif how == "HWC, same size":
        path.write_bytes(_npy(np.ascontiguousarray(arr.transpose(1, 2, 0))))
    elif how == "another shape":
        path.write_bytes(_npy(arr[:, :-2]))
    elif how == "Fortran order":
        path.write_bytes(_npy(np.asfortranarray(arr)))
    elif how == "object dtype":
        path.write_bytes(_npy(np.array([{"a": 1}] * 3, dtype=object)))
    elif how == "bad magic":
        path.write_bytes(b"XXXXXX" + data[6:])
    elif how == "header not a dict":
        head = b"[1, 2, 3]".ljust(118) + b"\n"
        path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + data[128:])
    elif how == "header claims 2 GB":
        path.write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{" + data[12:])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "missing":
        path.unlink()
    elif how == "a folder":
        path.unlink()
        path.mkdir()
    elif how == "a link to /dev/zero":
        path.unlink()
        path.symlink_to("/dev/zero")
    else:
        raise AssertionError(how)


NPY = ["truncated", "one byte short", "bytes appended", "float32", "int8, same size", "HWC, same size",
       "another shape", "Fortran order", "object dtype", "bad magic", "header not a dict", "header claims 2 GB",
       "empty", "missing", "a folder", "a link to /dev/zero"]


@pytest.mark.parametrize("kind", ["hr", "0.lr", "0.tg"])
@pytest.mark.parametrize("how", NPY)
def test_a_damaged_array_is_one_damaged_line_before_training(pack, tally, how, kind):
    req, folder = pack
    with tally.case(CATEGORY, f".npy {kind}: {how}"):
        name = f"0000002.{kind}.npy"
        _damage_npy(folder / "items" / name, how)
        with pytest.raises(PackError) as ei:
            open_pack(req)
        _one_damaged_line(ei.value, name)


def test_a_damaged_record_through_the_cli_is_one_line(cli_pack, tiny_model_files, train_dir, tmp_path, tally):
    for how in ("[1]", '{"name": "img1.png", "inputs": [{"lr": [3, 24, 24], "weight": NaN}]}'):
        with tally.case(CATEGORY, f"record {how[:20]} through distill"):
            root = tmp_path / f"p{len(how)}"
            shutil.copytree(cli_pack, root)
            next(root.glob("pack-*/items/0000001.json")).write_text(how)
            r = _cli(tiny_model_files["pth"], train_dir, root, tmp_path / "s.safetensors")
            lines = _error_lines(r)
            assert r.exit_code == 1 and len(lines) == 1, r.output
            assert "damaged" in lines[0] and "delete the pack folder" in lines[0], r.output


# --------------------------------------------------------------------------- workers

_WORKER_SCRIPT = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from srdistill.data.datasets import PatchSampler
    from srdistill.data.pack import PackRequest, open_pack
    from srdistill.distill.loader import PlanStream, batches
    from srdistill.errors import SrDistillError

    root, data, sha, how = sys.argv[1:5]
    req = PackRequest(root=root, data=[data], scale=2, patch_size=16, channels=3, lr_only=False,
                      max_images=None, teacher_sha256=sha)
    images = open_pack(req)[0]
    victim = Path(images[1].target.path)  # damaged after the checks: only a worker meets it
    if how == "truncated":
        victim.write_bytes(victim.read_bytes()[:300])
    else:
        victim.unlink()
    stream = PlanStream(PatchSampler(images, 2, 16), torch.Generator().manual_seed(0), 4, 4, 0, 0, 200)
    try:
        for _ in batches(stream, torch.device("cpu"), 2):
            pass
    except SrDistillError as e:
        print(f"error: {e}")
        sys.exit(1)
    print("no error")
""")


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_a_worker_meeting_a_damaged_file_gives_one_line_and_leaves_no_pymp(pack, tmp_path, tally, how):
    req, folder = pack
    with tally.case(CATEGORY, f"--workers 2, .npy {how} during training"):
        tmp = tmp_path / "tmpdir"
        tmp.mkdir()
        r = subprocess.run([PYTHON, "-c", _WORKER_SCRIPT, str(req.root), req.data[0], req.teacher_sha256, how],
                           env=python_env(TMPDIR=str(tmp)), capture_output=True, text=True, timeout=300)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "Traceback" not in r.stdout + r.stderr, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == 1 and "damaged" in lines[0] and "0000001.0.tg.npy" in lines[0], r.stdout
        assert "delete the pack folder" in lines[0] and "DataLoader" not in lines[0], lines[0]
        assert not list(tmp.glob("pymp-*")), list(tmp.iterdir())


def test_workers_2_on_a_damaged_pack_through_the_cli(cli_pack, tiny_model_files, train_dir, tmp_path, tally):
    with tally.case(CATEGORY, "--workers 2 through distill, .npy with a bad magic"):
        root = tmp_path / "p"
        shutil.copytree(cli_pack, root)
        victim = sorted(root.glob("pack-*/items/*.tg.npy"))[2]
        victim.write_bytes(b"XXXXXX" + victim.read_bytes()[6:])
        tmp = tmp_path / "tmpdir"
        tmp.mkdir()
        cmd = [PYTHON, "-m", "srdistill", "distill", str(tiny_model_files["pth"]), "-w", "4", "-d", "1", "--data",
               str(train_dir), "--steps", "4", "-p", "16", "--no-val", "--pack", str(root), "-o",
               str(tmp_path / "s.safetensors"), "--init", "random", "--workers", "2"]
        r = subprocess.run(cmd, env=python_env(TMPDIR=str(tmp)), capture_output=True, text=True, timeout=300)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "damaged" in errors[0] and victim.name in errors[0], r.stderr
        assert not list(tmp.glob("pymp-*")), list(tmp.iterdir())


# --------------------------------------------------------------------------- the lock


@pytest.mark.parametrize("complete", [True, False], ids=["complete", "incomplete"])
@pytest.mark.parametrize("how", ["link to a file", "dangling link", "a folder", "a FIFO"])
def test_a_lock_that_is_not_a_plain_file_is_refused(pack, tmp_path, tally, how, complete):
    req, folder = pack
    with tally.case(CATEGORY, f".lock {how}, {'complete' if complete else 'incomplete'} pack"):
        if not complete:
            (folder / "complete.json").unlink()
        lock = folder / ".lock"
        lock.unlink()
        target = tmp_path / "elsewhere"
        if how == "link to a file":
            target.write_text("keep")
            lock.symlink_to(target)
        elif how == "dangling link":
            lock.symlink_to(target)
        elif how == "a folder":
            lock.mkdir()
        elif not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        else:
            os.mkfifo(lock)
        with pytest.raises(PackError) as ei:
            open_pack(req)
        msg = str(ei.value)
        assert "\n" not in msg and ".lock" in msg, msg
        assert ("symbolic link" if "link" in how else "not a regular file") in msg, msg
        if how == "link to a file":
            assert target.read_text() == "keep"
        elif how == "dangling link":
            assert not target.exists()


def test_a_lock_link_made_after_the_check_is_not_followed(pack, tmp_path, tally):
    """O_NOFOLLOW: a link that appears between the check and the open is refused too."""
    req, folder = pack
    with tally.case(CATEGORY, ".lock link racing the check"):
        (folder / ".lock").unlink()
        target = tmp_path / "elsewhere"
        (folder / ".lock").symlink_to(target)
        with pytest.raises(PackError, match="symbolic link"):
            pack_mod._open_lock(folder)
        assert not target.exists()
