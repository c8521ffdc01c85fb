"""Training packs (issue: data larger than memory): keyed, resumable, shared, checked, exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from srdistill.cli import app
from srdistill.data.pack import PackError, PackRequest, open_pack, pack_key
from srdistill.distill.run import TrainHooks
from srdistill.distill.trainer import DistillConfig, distill
from srdistill.errors import Interrupted
from srdistill.models.loading import load_model

from test_distill import _cfg, data_dir, teacher_path, write_natural_images  # noqa: F401  (fixtures)


@pytest.fixture
def own_data(tmp_path):
    return write_natural_images(tmp_path / "hr", 4, 64, 80, seed=1, prefix="im")


def _req(root, data, **kw):
    base = dict(root=root, data=[str(data)], scale=2, patch_size=16, channels=3, lr_only=False, max_images=None,
                teacher_sha256="t1")
    base.update(kw)
    return PackRequest(**base)


def _key(req):
    from srdistill.data.datasets import list_train_entries

    return pack_key(req.spec(list_train_entries(req.data, req.scale)))


def test_the_key_changes_when_any_input_changes(tmp_path, own_data):
    from srdistill.data.degrade import load_degradation

    base = _key(_req(tmp_path, own_data))
    assert _key(_req(tmp_path, own_data)) == base
    assert _key(_req(tmp_path, own_data, teacher_sha256="t2")) != base
    assert _key(_req(tmp_path, own_data, scale=4)) != base
    assert _key(_req(tmp_path, own_data, degradation=load_degradation("light"))) != base
    assert _key(_req(tmp_path, own_data, degradation=load_degradation("light"), seed=1)) != \
        _key(_req(tmp_path, own_data, degradation=load_degradation("light")))
    f = own_data / "im0.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a touched image
    assert _key(_req(tmp_path, own_data)) != base


def test_a_killed_build_is_completed_not_trusted(teacher_path, own_data, tmp_path):  # noqa: F811
    from srdistill.models.loading import load_model as lm

    teacher = lm(teacher_path)
    req = _req(tmp_path / "p", own_data, teacher_sha256=teacher.sha256)
    images, _, _, info = open_pack(req, teacher)
    folder = tmp_path / "p" / f"pack-{info.key}"
    (folder / "complete.json").unlink()  # as if killed before the end ...
    (folder / "items" / "0000002.json").unlink()  # ... with image 2 not done
    (folder / "items" / "0000002.0.tg.npy").write_bytes(b"half")  # and a half-written array
    images2, _, _, info2 = open_pack(req, teacher)
    assert info2.reused is False and info2.built_here == 1
    for a, b in zip(images, images2):
        assert torch.equal(a.target.load(), b.target.load()) and torch.equal(a.lr.load(), b.lr.load())


def test_two_concurrent_runs_on_one_pack_do_not_corrupt_it(teacher_path, own_data, tmp_path):  # noqa: F811
    from srdistill.models.loading import load_model as lm

    teacher = lm(teacher_path)
    req = _req(tmp_path / "p", own_data, teacher_sha256=teacher.sha256)
    results, errors = [], []

    def run():
        try:
            results.append(open_pack(req, lm(teacher_path)))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=run) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert sorted(r[3].built_here for r in results) == [0, 4]  # one built, the other waited and reused
    ref = open_pack(req, teacher)[0]
    for (imgs, *_rest) in results:
        assert all(torch.equal(a.target.load(), b.target.load()) for a, b in zip(imgs, ref))


def test_a_truncated_pack_file_is_a_one_line_error(teacher_path, own_data, tmp_path):  # noqa: F811
    out = tmp_path / "s.safetensors"
    args = ["distill", str(teacher_path), "-w", "4", "-d", "1", "--data", str(own_data), "--steps", "2", "-p", "16",
            "--no-val", "--pack", str(tmp_path / "p"), "-o", str(out), "--init", "random"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    victim = sorted((tmp_path / "p").glob("pack-*/items/*.tg.npy"))[1]
    victim.write_bytes(victim.read_bytes()[:200])
    r = CliRunner().invoke(app, args + ["--overwrite"])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "truncated" in lines[0] and "rebuild" in lines[0], r.output


def test_resume_from_a_checkpoint_with_the_pack_is_exact(teacher_path, data_dir, tmp_path, monkeypatch):  # noqa: F811
    pack = str(tmp_path / "pack")
    full = distill(_cfg(teacher_path, data_dir, tmp_path / "full", steps=12, pack=pack, checkpoint_every=4))
    cfg = _cfg(teacher_path, data_dir, tmp_path / "cut", steps=12, pack=pack, checkpoint_every=4, workers=2)
    with pytest.raises(Interrupted):
        distill(cfg, hooks=TrainHooks(sigterm_at_step=5))
    cfg.resume = True
    resumed = distill(cfg)
    assert resumed.resumed_from == 5 and resumed.pack["reused"]
    a, b = load_model(full.out), load_model(resumed.out)
    for (k, va), (_, vb) in zip(a.module.state_dict().items(), b.module.state_dict().items()):
        assert torch.equal(va, vb), k


def test_workers_give_the_same_student_as_the_main_process(teacher_path, data_dir, tmp_path):  # noqa: F811
    a = distill(_cfg(teacher_path, data_dir, tmp_path / "a", steps=6, workers=0))
    b = distill(_cfg(teacher_path, data_dir, tmp_path / "b", steps=6, workers=2))
    wa, wb = load_model(a.out).module.state_dict(), load_model(b.out).module.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_build_only_builds_without_training(teacher_path, data_dir, tmp_path):  # noqa: F811
    r = CliRunner().invoke(app, ["distill", str(teacher_path), "-w", "4", "--data", str(data_dir), "-p", "16",
                                 "--pack", str(tmp_path / "p"), "--build-only", "-o", str(tmp_path / "s.safetensors")])
    assert r.exit_code == 0, r.output
    assert "6 images" in r.output and not (tmp_path / "s.safetensors").exists()
    assert len(list((tmp_path / "p").glob("pack-*/complete.json"))) == 1
    r = CliRunner().invoke(app, ["distill", str(teacher_path), "-w", "4", "--build-only"])
    assert r.exit_code == 2 and "--pack" in r.output


def test_pack_reads_keep_resident_memory_bounded(tmp_path):
    from srdistill.data.pack import PackArray

    arr = np.random.default_rng(0).integers(0, 255, (3, 512, 512), dtype=np.uint8)
    np.save(tmp_path / "a.npy", arr)
    pa = PackArray(tmp_path / "a.npy", (3, 512, 512))
    assert torch.equal(pa[:, 10:20, 30:40], torch.from_numpy(arr[:, 10:20, 30:40]))
    assert pa.numel() == arr.size and pa.shape == torch.Size((3, 512, 512))
    rng = np.random.default_rng(1)
    for _ in range(50):  # patch reads (pread of rows) agree with numpy slicing, edges included
        y0, x0 = rng.integers(0, 512, 2)
        y1, x1 = y0 + rng.integers(1, 600), x0 + rng.integers(1, 600)
        assert torch.equal(pa[:, y0:y1, x0:x1], torch.from_numpy(arr[:, y0:y1, x0:x1].copy()))
    assert torch.equal(pa[1], torch.from_numpy(arr[1].copy())) and torch.equal(pa.load(), torch.from_numpy(arr))
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(PackError, match="rebuild"):
        pa[:, 400:500, :10]
    (tmp_path / "a.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(PackError, match="rebuild"):
        PackArray(tmp_path / "a.npy", (3, 512, 512))[:, :2, :2]


@pytest.mark.slow
def test_two_gloo_ranks_fill_half_each_and_match_one_process(teacher_path, data_dir, tmp_path):  # noqa: F811
    common = ["--student-width", "8", "--student-depth", "2", "--data", str(data_dir), "--no-val", "--steps", "6",
              "--patch-size", "16", "--seed", "3", "--device", "cpu", "--threads", "1", "--init", "random"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    out2 = tmp_path / "two.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "srdistill",
           "distill", str(teacher_path), *common, "--batch-size", "2", "--pack", str(tmp_path / "p2"), "-o",
           str(out2), "--json"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout[r.stdout.index("{"):])
    assert doc["pack"]["built_here"] == 3 and doc["pack"]["images"] == 6  # rank 0 built half of the 6
    one = distill(DistillConfig(teacher=str(teacher_path), student_width=8, student_depth=2, data=[str(data_dir)],
                                val=[], steps=6, patch_size=16, seed=3, threads=1, init="random", batch_size=4,
                                pack=str(tmp_path / "p1"), out=str(tmp_path / "one.safetensors")))
    assert one.pack["built_here"] == 6
    a, b = load_model(out2).module.state_dict(), load_model(one.out).module.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
