"""The few collective operations the trainer needs, valid for one process or many (torchrun).

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) a process group is started: NCCL on
CUDA with one GPU per process, gloo on CPU. A single process runs without any process group, and
every function here is then a no-op, so one code path serves both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes dvclive files and checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


@contextmanager
def distributed() -> Iterator[DistContext]:
    """The process group of this run (started from torchrun's environment), torn down on exit."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    started = world_size > 1 and not dist.is_initialized()
    if started:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        log.info("rank %d of %d on %s (%s)", rank, world_size, device, backend)
    try:
        yield DistContext(rank=rank, world_size=world_size, device=device)
    finally:
        if started:
            dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The elementwise sum of ``values`` over all ranks (a copy; the input is not modified)."""
    total = values.clone()
    if ctx.is_distributed:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def all_gather_1d(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """``(N_rank,)`` tensors of possibly different lengths -> ``(sum N,)``, in rank order.

    Tensors only (no pickled objects): shorter ones are padded to the longest, then trimmed.
    """
    if not ctx.is_distributed:
        return values
    length = torch.tensor([values.numel()], device=values.device)
    lengths = [torch.zeros_like(length) for _ in range(ctx.world_size)]
    dist.all_gather(lengths, length)
    longest = int(max(int(n) for n in lengths))
    padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
    padded[: values.numel()] = values
    parts = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n)] for part, n in zip(parts, lengths, strict=True)])


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here."""
    if ctx.is_distributed:
        # NCCL wants the device, or it guesses one per rank
        dist.barrier(device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
