"""Atomic, non-clobbering writes: the one way srdistill writes a file a user keeps."""

from __future__ import annotations

import os
import stat

import pytest

from srdistill.errors import OutputExistsError, SrDistillError
from srdistill.fileio import atomic_path, atomic_write_text


def test_written_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "a.txt", "hi")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644


def test_failure_inside_leaves_nothing_and_never_clobbers(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert not target.exists() and not list(tmp_path.iterdir())
    target.write_text("mine")
    with pytest.raises(OutputExistsError):
        atomic_write_text(target, "theirs")
    assert target.read_text() == "mine"
    atomic_write_text(target, "theirs", overwrite=True)
    assert target.read_text() == "theirs"


def test_parent_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SrDistillError, match="not a folder|cannot write"):
        atomic_write_text(tmp_path / "f" / "out.txt", "x")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_student_file_follows_the_umask_too(tmp_path, umask, mode):
    """safetensors writes its own file (0600) in place of the temporary: the mode is set after it."""
    import torch

    from srdistill.models.checkpoint import save_student
    from srdistill.models.loading import model_from_state_dict
    from srdistill.models._compat import import_spandrel

    import_spandrel()
    from spandrel.architectures.Compact import Compact

    m = model_from_state_dict(Compact(num_feat=4, num_conv=1, upscale=2).state_dict(), name="t")
    old = os.umask(umask)
    try:
        save_student(tmp_path / "s.safetensors", m)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "s.safetensors").st_mode) == mode
