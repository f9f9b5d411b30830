"""NeRF-MAE pretraining: the masked-autoencoding task on the shared training engine.

Schedule (facts section 5, ``run_swin_mae3d.py``): AdamW (lr 1e-4, weight decay 1e-3 on
every parameter), ``OneCycleLR`` over ``epochs x steps_per_epoch`` optimiser steps
(pct_start 0.3, cosine, beta1 cycled 0.95 -> 0.85 -> 0.95), gradient clipping at norm
0.1, a global batch of 32 split over ranks (and over accumulation steps). Unlike the
reference (fp32), CUDA runs use bf16 autocast. The loop, checkpoints, logs and the run
folder are :mod:`model.trainer`'s; reconstruction pictures go to ``RUN/recon/``.

Masks: the model draws its block mask from a generator the task owns and the engine
checkpoints (one per rank). All micro-batches of one optimiser step reuse the same mask,
as the reference uses one mask for the whole batch, so accumulating ``k`` micro-batches is
the same update as one batch ``k`` times larger, up to the loss being a ratio per
micro-batch (exact when the micro-batches have equal opaque and masked voxel counts). With
the model's ``mask_per_sample`` the i-th grid of every micro-batch shares a mask.
Validation uses a fixed-seed generator, so every evaluation scores the same masks.

Command line: ``python -m model.engine --store URL --out RUN [--field value ...]`` (every
:class:`PretrainConfig` field is a flag), also under ``torchrun --nproc_per_node=N``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from grid_store.dataset import GridDataset
from model.distributed import DistributedContext
from model.metrics import ReconstructionMetrics
from model.trainer import (
    Task,
    accumulate_task_gradients,
    autocast,
    optimizer_step,
    resolve_amp_dtype,
    run_task,
)
from model.training_config import (
    TrainingConfig,
    config_arg_parser,
    fit_batch_to_scenes,
    json_ready,
    run_config_command,
    split_scenes,
)
from model.visualize import save_reconstruction

logger = logging.getLogger(__name__)

LOSS_TERMS = ("loss", "loss_rgb", "loss_alpha")

__all__ = [
    "MAETask",
    "PretrainConfig",
    "accumulate_gradients",
    "build_arg_parser",
    "evaluate",
    "fit_batch_to_scenes",
    "optimizer_step",
    "pretrain",
    "resolve_amp_dtype",
    "split_scenes",
]


@dataclass
class PretrainConfig(TrainingConfig):
    """Everything a pretraining run needs (the paper's schedule by default); saved
    resolved as ``RUN/config.json``. See :class:`model.training_config.TrainingConfig`."""


def collate_rgba(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch only what pretraining reads (some scenes also carry ``semantic``)."""
    return {
        "rgba": torch.stack([s["rgba"] for s in samples]),  # (B, 4, S, S, S)
        "valid": torch.stack([s["valid"] for s in samples]),  # (B, S, S, S)
        "scene_id": [s["scene_id"] for s in samples],
    }


def mae_losses(
    model: nn.Module, batch: dict[str, Any], device: torch.device, generator: torch.Generator | None
) -> dict[str, torch.Tensor]:
    """The MAE's loss terms on one micro-batch (``rgba`` ``(B, 4, S, S, S)``, ``valid``)."""
    rgba = batch["rgba"].to(device, non_blocking=True)  # (b, 4, S, S, S)
    valid = batch["valid"].to(device, non_blocking=True)  # (b, S, S, S)
    out = model(rgba, valid, generator=generator)
    return {"loss": out.loss, "loss_rgb": out.loss_rgb, "loss_alpha": out.loss_alpha}


def accumulate_gradients(
    model: nn.Module,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    mask_generator: torch.Generator | None,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Forward and backward of the MAE over the micro-batches of one optimiser step, all
    with one mask (``mask_generator`` restarted per micro-batch).

    Returns:
        ``(3,)`` detached mean of ``(loss, loss_rgb, loss_alpha)`` over the micro-batches.
    """
    generators = {"mask": mask_generator} if mask_generator is not None else {}

    def losses(m: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return mae_losses(m, batch, device, mask_generator)

    return accumulate_task_gradients(
        model, micro_batches, losses, LOSS_TERMS, device, amp_dtype, generators
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    ctx: DistributedContext,
    seed: int,
    amp_dtype: torch.dtype | None = None,
    recon_path: Path | None = None,
    title: str = "",
) -> dict[str, float | None]:
    """Validation over this rank's share of ``loader``, reduced over ranks.

    Masks come from a generator seeded with ``seed`` afresh, so every call scores the
    same masks. Rank 0 draws the first grid's reconstruction to ``recon_path``.
    Returns ``{"psnr", "alpha_mse", "loss"}`` (means over grids; ``None`` if nothing scored).
    """
    generator = torch.Generator(device=ctx.device).manual_seed(seed)
    metrics = ReconstructionMetrics()
    for i, batch in enumerate(loader):
        rgba = batch["rgba"].to(ctx.device)  # (B, 4, S, S, S)
        valid = batch["valid"].to(ctx.device)  # (B, S, S, S)
        with autocast(ctx.device, amp_dtype):
            out = model(rgba, valid, generator=generator)
        pred = out.pred.float()  # (B, 4, S, S, S)
        metrics.update(pred, rgba, out.mask, valid, loss=out.loss)
        if i == 0 and recon_path is not None and ctx.is_main:
            label = f"{title} scene {batch['scene_id'][0]}".strip()
            save_reconstruction(recon_path, rgba[0], valid[0], pred[0], out.mask[0], title=label)
    total = ctx.all_reduce_sum(metrics.as_tensor(ctx.device))
    return ReconstructionMetrics.from_tensor(total).summary()


class MAETask(Task):
    """Masked autoencoding of the store's grids (no labels needed)."""

    name = "pretrain"
    loss_terms = LOSS_TERMS
    val_keys = ("psnr", "alpha_mse", "loss")
    picture_dir = "recon"

    def __init__(self, config: TrainingConfig, ctx: DistributedContext) -> None:
        from model import get_config

        self.config = config
        overrides = dict(config.model_overrides)
        if config.resolution is not None:
            overrides["resolution"] = config.resolution
        self.mae_config = get_config(config.preset, **overrides)  # validates before data work
        self.resolution = self.mae_config.resolution
        self.mask_generator = torch.Generator(device=ctx.device).manual_seed(
            config.seed * 1_000_003 + ctx.rank
        )

    def datasets(self, train_scenes, val_scenes):
        c = self.config
        train = GridDataset(c.store_url, train_scenes, size=self.resolution, crop=c.crop,
                            augment=c.augment, seed=c.seed)  # fmt: skip
        val = GridDataset(c.store_url, val_scenes, size=self.resolution) if val_scenes else None
        return train, val

    def collate(self, samples):
        return collate_rgba(samples)

    def build_model(self) -> nn.Module:
        from model import build_mae

        return build_mae(self.mae_config)

    def model_config(self) -> dict[str, Any]:
        return json_ready(dataclasses.asdict(self.mae_config))

    def step_generators(self) -> dict[str, torch.Generator]:
        return {"mask": self.mask_generator}

    def losses(self, model, batch, device):
        return mae_losses(model, batch, device, self.mask_generator)

    def evaluate(self, model, loader, ctx, amp_dtype, picture_path, title):
        return evaluate(model, loader, ctx, self.config.seed + 7919, amp_dtype,
                        recon_path=picture_path, title=title)  # fmt: skip


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Pretrain the MAE on the store's grids; returns the summary (also ``RUN/metrics.json``).

    Under ``torchrun`` every rank calls this; rank 0 writes the run folder.
    """
    return run_task(config, MAETask)


# ---------------------------------------------------------------------- entry point
def build_arg_parser() -> argparse.ArgumentParser:
    """One flag per :class:`PretrainConfig` field (``--store``/``--out`` name the first two)."""
    return config_arg_parser(
        PretrainConfig, "python -m model.engine",
        "NeRF-MAE pretraining (single process, or one rank under torchrun).",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_config_command(build_arg_parser(), PretrainConfig, pretrain, argv)


if __name__ == "__main__":
    sys.exit(main())
