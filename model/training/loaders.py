"""The data loaders of a training run, built one way for the trainer and the loader benchmark.

Batches come through :func:`grid_store.dataset.collate_grids`: ``GridDataset.__getitems__``
lays a batch out in one tensor per key (in shared memory inside worker processes) and the
collate hands those tensors over as they are, so a batch of ``(B, 4, S, S, S)`` grids is
written once, by the worker that decodes it, and never copied on the host again. Tasks
read and convert keys on the device; they do not collate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from grid_store.dataset import collate_grids
from model.training.distributed import DistributedContext, ResumableDistributedSampler


def loader_options(micro_batch: int, num_workers: int, device: torch.device) -> dict[str, Any]:
    """The DataLoader settings every loader of a run shares."""
    return {
        "batch_size": micro_batch,
        "num_workers": num_workers,
        "pin_memory": device.type == "cuda",
        "collate_fn": collate_grids,
    }


def train_loader(
    dataset: Dataset,
    sampler: ResumableDistributedSampler,
    micro_batch: int,
    num_workers: int,
    device: torch.device,
    seed: int,
) -> DataLoader:
    """This rank's training batches in the sampler's (resumable) order, whole batches only."""
    # A private generator: creating an iterator must not draw from the global RNG.
    return DataLoader(dataset, sampler=sampler, drop_last=True,
                      generator=torch.Generator().manual_seed(seed),
                      **loader_options(micro_batch, num_workers, device))  # fmt: skip


def validation_loader(
    dataset: Dataset,
    ctx: DistributedContext,
    micro_batch: int,
    num_workers: int,
    seed: int,
) -> DataLoader:
    """This rank's disjoint share of the validation scenes (every ``world_size``-th), in order."""
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    return DataLoader(shard, generator=torch.Generator().manual_seed(seed),
                      **loader_options(micro_batch, num_workers, ctx.device))  # fmt: skip
