"""One process or many: the process group, the data split across ranks, rank-0-only side effects.

The same training script runs on one CPU, one GPU or many GPUs. Under ``torchrun``
(``WORLD_SIZE`` and friends in the environment) it joins a process group (NCCL on CUDA,
gloo on CPU); without those variables it is a plain single process and nothing here
touches ``torch.distributed``.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from nerfmae_common.devices import resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: its rank among ``world_size`` and the device it drives."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes checkpoints, TensorBoard events and pictures."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks (in place, and returned); a no-op in one process."""
        if self.is_distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.all_reduce_sum(tensor).div_(self.world_size)

    def all_gather_objects(self, obj: object) -> list[object]:
        """``obj`` of every rank, index = rank (picklable objects; used for RNG states)."""
        if not self.is_distributed:
            return [obj]
        gathered: list[object] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the ``torchrun`` process group when there is one, else describe a single process.

    Each rank drives ``cuda:LOCAL_RANK`` on a GPU machine; on CPU all ranks share the CPU.
    """
    base = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(rank=0, world_size=1, local_rank=0, device=base)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if base.type == "cuda":
        torch.cuda.set_device(local_rank)
        base = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if base.type == "cuda" else "gloo")
    logger.debug("rank %d/%d joined the process group on %s", rank, world_size, base)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=base)


def shutdown_distributed(ctx: DistributedContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_micro_batch(global_batch: int, world_size: int, grad_accum_steps: int) -> int:
    """Samples per forward pass on one rank: the global batch split over ranks and accumulation."""
    parts = world_size * grad_accum_steps
    if global_batch % parts:
        raise ValueError(
            f"batch_size: global batch {global_batch} is not divisible by "
            f"world_size ({world_size}) x grad_accum_steps ({grad_accum_steps})"
        )
    return global_batch // parts


def wrap_ddp(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """``DistributedDataParallel`` across ranks; the model itself in one process."""
    if not ctx.is_distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DDP wrapper (what checkpoints and validation use)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def no_gradient_sync(model: nn.Module, last_micro_batch: bool) -> AbstractContextManager:
    """Skip DDP's all-reduce on all but the last micro-batch of an accumulated step."""
    if last_micro_batch or not isinstance(model, nn.parallel.DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled per epoch from ``seed + epoch``) that can start mid-epoch.

    ``set_position(epoch, start)`` makes the next iteration yield this rank's indices of
    ``epoch`` from the ``start``-th on: a resumed run sees exactly the samples the
    uninterrupted run would have seen next, without loading the ones it skips. The
    tail that does not divide evenly over ranks is dropped (never duplicated).
    """

    def __init__(self, dataset: Dataset, ctx: DistributedContext, seed: int) -> None:
        super().__init__(
            dataset,
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start: {start} outside [0, {self.num_samples}] samples of this rank")
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start
