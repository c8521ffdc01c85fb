"""torchrun: 2 CPU processes with gloo on loopback agree with each other and with one process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from srdistill.distill.trainer import RANK_DUMP_ENV, DistillConfig, distill
from srdistill.models.loading import load_model

from test_distill import data_dir, teacher_path  # noqa: F401  (fixtures)


def _torchrun(args, env, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "srdistill", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_gloo_ranks_match_each_other_and_a_single_process(teacher_path, data_dir, tmp_path):  # noqa: F811
    common = ["--student-width", "8", "--student-depth", "2", "--data", str(data_dir), "--no-val",
              "--steps", "8", "--patch-size", "16", "--lr", "2e-3", "--seed", "3", "--checkpoint-every", "4",
              "--device", "cpu", "--threads", "1"]
    env = {**os.environ, RANK_DUMP_ENV: str(tmp_path / "ranks"), "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1"}
    r = _torchrun(["distill", str(teacher_path), *common, "--batch-size", "2", "-o",
                   str(tmp_path / "ddp.safetensors"), "--json"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"world_size": 2' in r.stdout and '"global_batch": 4' in r.stdout
    r0 = torch.load(tmp_path / "ranks" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "ranks" / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # DDP keeps the ranks identical
    # one process with the same global batch follows the same trajectory (up to float reduction order)
    single = distill(DistillConfig(teacher=str(teacher_path), student_width=8, student_depth=2, data=[str(data_dir)],
                                   val=[], steps=8, batch_size=4, patch_size=16, lr=2e-3, seed=3, device="cpu",
                                   out=str(tmp_path / "single.safetensors"), checkpoint_every=4))
    a = load_model(tmp_path / "ddp.safetensors").module.state_dict()
    b = load_model(single.out).module.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-3), (k, (a[k] - b[k]).abs().max())
    # a 2-rank checkpoint resumes in 1 process
    ck = torch.load(tmp_path / "ddp.ckpt", weights_only=True)
    assert ck["step"] == 8
    res = distill(DistillConfig(teacher=str(teacher_path), student_width=8, student_depth=2, data=[str(data_dir)],
                                val=[], steps=10, batch_size=4, patch_size=16, lr=2e-3, seed=3, device="cpu",
                                out=str(tmp_path / "ddp.safetensors"), resume=True, checkpoint_every=4))
    assert res.resumed_from == 8 and res.steps == 10
