"""Batches for the training loop, made in this process or in DataLoader workers.

The plan of every step (which image, where, which flip) is drawn from the run's one generator in
this process, in step order, so a run is the same with any ``--workers`` and a resumed run
continues the exact sequence: the checkpoint stores the generator's state *before* the next
step's plan, even when workers have already been handed plans further ahead.

A worker that meets srdistill's own error (a damaged pack file) hands it back as a value, and this
process raises it as it is: one line, not the worker's traceback wrapped into a message. The
workers are shut down on the way out (so they exit cleanly and remove their ``pymp-*`` folders).
"""

from __future__ import annotations

import os
from typing import Iterator

import torch

from ..data.datasets import Batch
from ..errors import SrDistillError


def default_workers(device: torch.device) -> int:
    """0 on the CPU (crops are cheap there and workers would compete with training for the cores;
    measured in bench/data_scale.py), else up to 4 so a GPU is not starved."""
    if device.type != "cuda":
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class PlanStream(torch.utils.data.Sampler):
    """Each step's plan slice for this rank, drawn lazily and in order; remembers the generator's
    state before every plan it drew that has not been trained on yet."""

    def __init__(self, sampler, gen: torch.Generator, global_batch: int, per_rank: int, rank: int,
                 start: int, stop: int):
        self.sampler, self.gen = sampler, gen
        self.global_batch, self.per_rank, self.rank = global_batch, per_rank, rank
        self.start, self.stop = start, stop
        self.states: dict[int, torch.Tensor] = {}

    def __iter__(self):
        for step in range(self.start, self.stop):
            self.states[step] = self.gen.get_state()
            plan = self.sampler.plan(self.global_batch, self.gen)
            yield step, plan[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    def __len__(self) -> int:
        return self.stop - self.start

    def state_before(self, step: int) -> torch.Tensor:
        """The generator state a resumed run needs to start at ``step``."""
        for k in [k for k in self.states if k < step]:
            del self.states[k]
        return self.states.get(step, self.gen.get_state())


class _Crops(torch.utils.data.Dataset):
    def __init__(self, sampler):
        self.sampler = sampler

    def __getitem__(self, item):
        step, plan = item
        try:
            b = self.sampler.crop(plan, torch.device("cpu"))
        except SrDistillError as e:  # returned, not raised: DataLoader would wrap it in its traceback
            return step, plan, e, None, None
        return step, plan, b.lr, b.hr, b.target


def _identity(x):
    return x


def batches(stream: PlanStream, device: torch.device, workers: int) -> Iterator[tuple[list, Batch]]:
    """(this rank's plan, its batch on ``device``) for every step of ``stream``."""
    if workers <= 0:
        for _, plan in stream:
            yield plan, stream.sampler.crop(plan, device)
        return
    loader = torch.utils.data.DataLoader(_Crops(stream.sampler), sampler=stream, batch_size=None,
                                         num_workers=workers, collate_fn=_identity, prefetch_factor=2,
                                         persistent_workers=False, pin_memory=device.type == "cuda")

    def move(t):
        return None if t is None else t.to(device, non_blocking=True)

    it = iter(loader)
    try:
        for _, plan, lr, hr, tg in it:
            if isinstance(lr, BaseException):
                raise lr
            yield plan, Batch(move(lr), move(hr), move(tg))
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)  # now, not when the iterator is collected
        if shutdown is not None:
            shutdown()
