"""``upscale`` over a folder as a pipeline (decode ahead, model, encode in worker threads): the same
bytes as one file at a time, per-file errors in input order, no partial file after an interrupt,
and ``--png-level``."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from srdistill import upscale as up
from srdistill.cli import app
from srdistill.data.images import read_image
from srdistill.progress import RecordingReporter
from srdistill.upscale_pipeline import run_pipeline


pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.usefixtures("one_torch_thread")]


def _folder(root: Path, n: int = 6) -> Path:
    """RGB, RGBA, gray, 16-bit and palette images of different sizes."""
    src = root / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 16 + 3 * i, 20 + 5 * i
        kind = i % 4
        if kind == 0:
            im = PILImage.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        elif kind == 1:
            im = PILImage.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8))
        elif kind == 2:
            im = PILImage.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        else:
            im = PILImage.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
        im.save(src / f"{i:02d}.png")
    return src


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_pipeline_writes_the_same_bytes_as_one_file_at_a_time(c2, tmp_path):
    src = _folder(tmp_path)
    a = up.upscale_files([src], up.UpscaleOptions(model=c2, output=f"{tmp_path}/seq/", workers=0))
    b = up.upscale_files([src], up.UpscaleOptions(model=c2, output=f"{tmp_path}/pipe/", workers=3))
    assert a.exit_code == b.exit_code == 0
    assert _files(tmp_path / "seq") == _files(tmp_path / "pipe")
    assert [(f.input, f.status, f.input_size, f.output_size) for f in a.files] == \
           [(f.input, f.status, f.input_size, f.output_size) for f in b.files]
    assert b.files_seconds is not None and b.busy_seconds == b.files_seconds


def test_errors_stay_per_file_and_in_input_order(c2, tmp_path):
    src = _folder(tmp_path, 5)
    (src / "02.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    out.mkdir()
    (out / "03_x2.png").write_bytes(b"keep me")
    rep = RecordingReporter()
    res = up.upscale_files([src], up.UpscaleOptions(model=c2, output=f"{out}/", workers=2), rep)
    assert [Path(f.input).name for f in res.files] == [f"{i:02d}.png" for i in range(5)]
    assert [f.status for f in res.files] == ["ok", "ok", "failed", "skipped", "ok"]
    assert "cannot read image" in res.files[2].error and "already exists" in res.files[3].error
    assert res.exit_code == 1 and (out / "03_x2.png").read_bytes() == b"keep me"
    r = CliRunner().invoke(app, ["upscale", str(src), "-m", str(c2), "-o", f"{tmp_path}/cli/"])
    assert r.exit_code == 1
    lines = [ln.split()[0] + " " + Path(ln.split()[1]).name for ln in r.stdout.splitlines()[:5]]
    assert lines == ["ok 00.png", "ok 01.png", "failed 02.png", "ok 03.png", "ok 04.png"]


def test_an_interrupt_leaves_no_partial_file(c2, tmp_path, monkeypatch):
    src = _folder(tmp_path, 8)
    out = tmp_path / "out"
    real_image, calls = up._Runner.image, []

    def image(self, *a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_image(self, *a, **k)

    slow_write = up.write_image

    def write_image(*a, **k):  # writers still busy when the interrupt comes
        time.sleep(0.2)
        return slow_write(*a, **k)

    monkeypatch.setattr(up._Runner, "image", image)
    monkeypatch.setattr(up, "write_image", write_image)
    with pytest.raises(KeyboardInterrupt):
        up.upscale_files([src], up.UpscaleOptions(model=c2, output=f"{out}/", workers=2))
    assert not [t for t in threading.enumerate() if t.name.startswith("srdistill-")]  # all stopped
    names = sorted(p.name for p in out.iterdir())
    assert all(not n.startswith(".") and not n.endswith(".partial") for n in names), names
    assert len(names) <= 3
    for n in names:  # every file there is whole
        read_image(out / n)


def test_outcomes_come_back_in_order_with_their_messages():
    seen: list[tuple[int, list]] = []
    rnd = random.Random(0)

    def read(i, rep):
        time.sleep(rnd.random() * 0.01)
        rep.warn(f"read {i}")
        if i == 3:
            raise ValueError("bad 3")
        return i

    def model(i, v, rep):
        rep.info(f"model {i}")
        return v * 10

    def write(i, v, rep):
        time.sleep(rnd.random() * 0.02)
        rep.info(f"write {i}")
        if i == 5:
            raise OSError("disk")

    def finish(o):
        seen.append((o.item, type(o.error).__name__ if o.error else None, list(o.messages.messages)))

    run_pipeline(range(8), read=read, model=model, write=write, finish=finish, workers=3, prefetch=2)
    assert [s[0] for s in seen] == list(range(8))
    assert seen[3][1] == "ValueError" and seen[5][1] == "OSError"
    assert seen[2][2] == [("warn", "read 2"), ("info", "model 2"), ("info", "write 2")]


def test_png_level_changes_the_size_not_the_pixels(c2, tmp_path):
    src = _folder(tmp_path, 1)
    cli = CliRunner()
    for lv in (1, 9):
        r = cli.invoke(app, ["upscale", str(src), "-m", str(c2), "-o", f"{tmp_path}/l{lv}/", "--png-level", str(lv)])
        assert r.exit_code == 0, r.output
    a, b = tmp_path / "l1" / "00_x2.png", tmp_path / "l9" / "00_x2.png"
    assert np.array_equal(np.asarray(PILImage.open(a)), np.asarray(PILImage.open(b)))
    assert a.stat().st_size != b.stat().st_size
    r = cli.invoke(app, ["upscale", str(src), "-m", str(c2), "-o", f"{tmp_path}/bad/", "--png-level", "10"])
    assert r.exit_code == 2


def test_the_stages_overlap():
    """Stages that wait (as zlib and the decoders do, with the GIL released) run side by side: with
    read 20 ms, model 20 ms and write 60 ms a file, 10 files take ~0.2-0.35 s, not 1 s."""
    def run(workers):
        t0 = time.monotonic()
        run_pipeline(range(10), read=lambda i, r: time.sleep(0.02), model=lambda i, v, r: time.sleep(0.02),
                     write=lambda i, v, r: time.sleep(0.06), finish=lambda o: None, workers=workers, prefetch=2)
        return time.monotonic() - t0

    sequential, overlapped = run(0), run(3)
    assert sequential >= 0.95 and overlapped < 0.6 * sequential, (sequential, overlapped)


def test_the_default_png_level_is_the_measured_one():
    """DEFAULT_PNG_LEVEL is what bench/png_level.py's rule chose: re-measuring updates both."""
    import json

    from srdistill.data.images import DEFAULT_PNG_LEVEL

    results = Path(__file__).resolve().parents[1] / "bench" / "results" / "png_level.json"
    if not results.exists():
        pytest.skip("bench/results/png_level.json is not there")
    assert json.loads(results.read_text())["chosen_level"] == DEFAULT_PNG_LEVEL
