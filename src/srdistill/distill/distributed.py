"""Data-parallel distillation under ``torchrun``: PyTorch's own engine, no launcher of ours.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; we
initialise ``torch.distributed`` from them (NCCL on CUDA, gloo on CPU), wrap the
student in DistributedDataParallel, and let rank 0 alone write files and draw
the progress bar. Every rank draws the same global batch plan from the same
seeded generator and trains on its own slice, so a run on N ranks with batch B
per rank follows the same trajectory as one process with batch N*B, and a
checkpoint can be resumed with any number of ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass
class DistContext:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        if self.device.type == "cuda":
            return DDP(module, device_ids=[self.device.index], output_device=self.device.index)
        return DDP(module)

    def any_flag(self, flag) -> int:
        """The largest signal number any rank received (0 for none), agreed by all ranks."""
        t = torch.tensor([int(flag or 0)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def _dev(self):
        return self.device if self.device.type == "cuda" else "cpu"

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self._dev())
        dist.all_reduce(t)
        return t.tolist()

    def all_true(self, flag: bool) -> bool:
        t = torch.tensor([1 if flag else 0], device=self._dev())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def barrier(self) -> None:
        dist.barrier()

    def mean(self, value: float) -> float:
        t = torch.tensor([float(value)], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t.item()) / self.world_size


_CTX: DistContext | None = None


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def context() -> DistContext:
    """The process group of this run, initialised once (a single-process context otherwise)."""
    global _CTX
    if _CTX is not None:
        return _CTX
    if not launched_by_torchrun():
        _CTX = DistContext()
        return _CTX
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    _CTX = DistContext(True, rank, world, local, device)
    return _CTX


def shutdown() -> None:
    global _CTX
    if _CTX is not None and _CTX.enabled:
        if dist.is_initialized():
            dist.destroy_process_group()
    _CTX = None
