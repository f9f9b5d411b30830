"""NeRF-MAE pretraining: the masked-autoencoding task on the shared training engine.

Schedule (facts section 5, ``run_swin_mae3d.py``): AdamW (lr 1e-4, weight decay 1e-3 on
every parameter), ``OneCycleLR`` over ``epochs x steps_per_epoch`` optimiser steps
(pct_start 0.3, cosine, beta1 cycled 0.95 -> 0.85 -> 0.95), gradient clipping at norm
0.1, a global batch of 32 split over ranks (and over accumulation steps). Unlike the
reference (fp32), CUDA runs use bf16 autocast. The loop, checkpoints, logs and the run
folder are :mod:`model.training`'s; reconstruction pictures go to ``RUN/recon/``.

Masks: the model draws its block mask from a generator the task owns and the engine
checkpoints (one per rank). All micro-batches of one optimiser step reuse the same mask,
as the reference uses one mask for the whole batch, so accumulating ``k`` micro-batches is
the same update as one batch ``k`` times larger, up to the loss being a ratio per
micro-batch (exact when the micro-batches have equal opaque and masked voxel counts). With
the model's ``mask_per_sample`` the i-th grid of every micro-batch shares a mask.
Validation uses a fixed-seed generator, restarted for every pass, so every evaluation
scores the same masks.

Objectives (:mod:`model.tasks.objectives`): ``objective`` names the loss's settings and
the colour weight's schedule (``paper``: the reference's loss; ``structure_first``: the
colour weight ramped from 0 to 1); ``rgb_schedule`` / ``rgb_ramp`` and ``model_overrides``
(``--rgb-region``, ``--rgb-weighting``, ``--alpha-balance``) change one setting of it. The
resolved objective is recorded in ``config.json``, the summary and the checkpoint's model
config. Validation always scores the paper's loss (colour weight 1), so runs with different
objectives compare.

Command line: ``nerfmae pretrain`` or, one rank of ``torchrun``, ``python -m model.pretrain
--store URL --out RUN [--field value ...]`` (every :class:`PretrainConfig` field is a flag).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from grid_store.dataset import GridDataset
from model.metrics.reconstruction import ReconstructionMetrics
from model.networks.presets import build_mae
from model.pictures.reconstruction import save_reconstruction
from model.tasks.base import EncoderTask, encoder_config
from model.tasks.objectives import OBJECTIVES, Objective, shuffled_targets
from model.training.cli import Shortcut
from model.training.config import TrainingConfig, json_ready
from model.training.distributed import DistributedContext
from model.training.steps import accumulate_task_gradients, autocast
from model.training.task import Batch, report_value
from model.training.trainer import run_task
from model.training.validation import BatchMetric

LOSS_TERMS = ("loss", "loss_rgb", "loss_alpha", "loss_decorrelation")
VALIDATION_SEED_OFFSET = 7919
"""Validation masks come from a generator seeded ``seed + VALIDATION_SEED_OFFSET``."""


@dataclass
class PretrainConfig(TrainingConfig):
    """Everything a pretraining run needs (the paper's schedule by default); saved
    resolved as ``RUN/config.json``. See :class:`model.training.config.TrainingConfig`."""

    task = "pretrain"
    cli_shortcuts: ClassVar[dict[str, Any]] = {
        f"--{name.replace('_', '-')}": Shortcut("model_overrides", name, str, help)
        for name, help in (
            ("rgb_region", "where the colour loss applies: all_opaque | masked_opaque"),
            ("rgb_weighting", "colour loss voxel weights: gate | alpha"),
            ("alpha_balance", "alpha loss over masked voxels: none | occupied_empty | "
                              "shell_object_empty"),
            ("alpha_target", "what the alpha loss reconstructs: alpha | patch_normalised"),
            ("head", "prediction head: voxel (UNETR's full-resolution block) | token (a linear "
                     "map per token) | bottleneck (the deepest stage alone, then the linear map)"),
        )
    }  # fmt: skip
    trajectory_fields: ClassVar[tuple[str, ...]] = (
        *TrainingConfig.trajectory_fields, "objective", "rgb_schedule", "rgb_ramp",
        "shuffle_targets",
    )  # fmt: skip

    objective: str = "opacity_only_normalised_decorrelated"
    """The pretraining objective (:data:`model.tasks.objectives.OBJECTIVES`): ``paper`` (the
    reference's loss), ``structure_first`` (colour weight ramped 0 -> 1 with a cosine),
    ``structure_first_balanced`` (and alpha balanced between occupied and empty voxels),
    ``structure_first_decorrelated`` (the ramp and a penalty on the correlation of encoder
    stages 2-4), ``opacity_only_decorrelated`` (the penalty, no colour term),
    ``opacity_only_balanced_decorrelated``, ``opacity_only_objects_decorrelated`` (the alpha
    term balanced between the room's shell, the objects off it and free space) and
    ``opacity_only_normalised_decorrelated`` (each patch's alpha standardised, no colour
    term, the penalty: the default, the best measured at one labelled room, BENCHMARKS.md:
    −0.8 AP50 against scratch over 8 pairs where ``opacity_only_decorrelated`` gave −2.3
    on the same pairs; no objective measured there beats scratch). Its validation alpha
    error is mapped back with the truth's patch means, so it is optimistic."""
    rgb_schedule: str | None = None
    """Colour weight schedule, ``constant``, ``cosine`` or ``off`` (``None``: the objective's)."""
    rgb_ramp: float | None = None
    """Share of the run the cosine colour ramp lasts (``None``: the objective's)."""
    shuffle_targets: bool = False
    """Control run: reconstruct each grid's voxels in a fixed random order (structureless
    targets) instead of the grid itself."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            self.fail("objective", f"not one of {', '.join(OBJECTIVES)}")
        try:
            self.resolved_objective()
        except ValueError as exc:
            raise ValueError(f"{type(self).__name__}: {exc}") from None

    def resolved_objective(self) -> Objective:
        """The objective with this run's ``rgb_schedule`` / ``rgb_ramp`` and the loss fields
        of ``model_overrides`` applied."""
        base = OBJECTIVES[self.objective]
        changes = {k: v for k, v in (("rgb_schedule", self.rgb_schedule),
                                     ("rgb_ramp", self.rgb_ramp)) if v is not None}  # fmt: skip
        changes |= {k: v for k, v in self.model_overrides.items() if k in base.model_fields()}
        return dataclasses.replace(base, **changes)


def mae_losses(
    model: nn.Module,
    batch: Batch,
    device: torch.device,
    generator: torch.Generator | None,
    rgb_weight: float = 1.0,
    shuffle: bool = False,
) -> dict[str, torch.Tensor]:
    """The MAE's loss terms on one micro-batch (``rgba`` ``(B, 4, S, S, S)``, ``valid``),
    the colour term weighted by ``rgb_weight``; ``shuffle``: against shuffled targets."""
    rgba = batch["rgba"].to(device, non_blocking=True)  # (b, 4, S, S, S)
    valid = batch["valid"].to(device, non_blocking=True)  # (b, S, S, S)
    target = shuffled_targets(rgba, valid, batch["scene_id"]) if shuffle else None
    out = model(rgba, valid, generator=generator, target=target, rgb_weight=rgb_weight)
    return {"loss": out.loss, "loss_rgb": out.loss_rgb, "loss_alpha": out.loss_alpha,
            "loss_decorrelation": out.loss_decorrelation}


def accumulate_gradients(
    model: nn.Module,
    micro_batches: Sequence[Batch],
    mask_generator: torch.Generator | None,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Forward and backward of the MAE over the micro-batches of one optimiser step, all
    with one mask (``mask_generator`` restarted per micro-batch).

    Returns:
        ``(4,)`` detached mean of :data:`LOSS_TERMS` over the micro-batches.
    """
    shared = {"mask": mask_generator} if mask_generator is not None else {}

    def losses(m: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        return mae_losses(m, batch, device, mask_generator)

    return accumulate_task_gradients(model, micro_batches, losses, LOSS_TERMS, device,
                                     amp_dtype, shared)  # fmt: skip


def _feed_reconstruction(metrics: ReconstructionMetrics, batch: Batch, p: dict) -> None:
    metrics.update(p["pred"], p["rgba"], p["mask"], p["valid"])


class MAETask(EncoderTask):
    """Masked autoencoding of the store's grids (no labels needed)."""

    name = "pretrain"
    config_class = PretrainConfig
    description = "pretrain the 3D Swin MAE on a grid store (self-supervised, no labels)"
    loss_terms = LOSS_TERMS
    val_keys = ("psnr", "alpha_mse", "loss")
    picture_dir = "recon"
    shared_per_step = ("mask",)

    def __init__(self, config: PretrainConfig, ctx: DistributedContext) -> None:
        self.config = config
        self.objective = config.resolved_objective()
        self.rgb_weight = self.objective.rgb_weight(0, 1)
        # the objective's loss settings, unless model_overrides names them (validates too)
        self.mae_config = encoder_config(dataclasses.replace(
            config, model_overrides={**self.objective.model_fields(), **config.model_overrides}
        ))  # fmt: skip
        self.mask_generator = torch.Generator(device=ctx.device).manual_seed(
            config.seed * 1_000_003 + ctx.rank
        )
        self.val_generator = torch.Generator(device=ctx.device)

    def datasets(self, train_scenes, val_scenes):
        c, s = self.config, self.input_size
        train = GridDataset(c.store_url, train_scenes, size=s, crop=c.crop, augment=c.augment,
                            seed=c.seed, alpha_step=c.alpha_step)  # fmt: skip
        val = (GridDataset(c.store_url, val_scenes, size=s, alpha_step=c.alpha_step)
               if val_scenes else None)  # fmt: skip
        return train, val

    def make_network(self) -> nn.Module:
        return build_mae(self.mae_config)

    def model_config(self) -> dict[str, Any]:
        return json_ready({**dataclasses.asdict(self.mae_config),
                           "alpha_step": self.config.alpha_step})  # fmt: skip

    def step_generators(self) -> dict[str, torch.Generator]:
        return {"mask": self.mask_generator}

    def begin_step(self, model, step, total_steps):
        self.rgb_weight = self.objective.rgb_weight(step, total_steps)
        return {"rgb_weight": self.rgb_weight}

    def losses(self, model, batch, device):
        return mae_losses(model, batch, device, self.mask_generator, self.rgb_weight,
                          self.config.shuffle_targets)  # fmt: skip

    def memory_probe(self, model, batch):
        # The run's mask generator must not advance: the probe draws from the global one.
        return mae_losses(model, batch, torch.device("meta"), None)

    def run_info(self) -> dict[str, Any]:
        return {"objective": self.config.objective,
                "objective_settings": dataclasses.asdict(self.objective),
                "shuffle_targets": self.config.shuffle_targets}  # fmt: skip

    def begin_validation(self) -> None:
        self.val_generator.manual_seed(self.config.seed + VALIDATION_SEED_OFFSET)

    def predict(self, model, batch, device, amp_dtype):
        rgba = batch["rgba"].to(device)  # (B, 4, S, S, S)
        valid = batch["valid"].to(device)  # (B, S, S, S)
        with autocast(device, amp_dtype):
            out = model(rgba, valid, generator=self.val_generator)
        return {"rgba": rgba, "valid": valid, "pred": out.pred.float(), "mask": out.mask,
                "losses": {"loss": out.loss.float()}}  # fmt: skip

    def metric(self) -> BatchMetric:
        return BatchMetric(ReconstructionMetrics(), _feed_reconstruction)

    def draw(self, path: Path, batch: Batch, prediction: dict, title: str) -> Path:
        p = prediction
        return save_reconstruction(path, p["rgba"][0], p["valid"][0], p["pred"][0],
                                   p["mask"][0], title=title)  # fmt: skip

    @classmethod
    def report_rows(cls, summary: dict[str, Any]) -> list[tuple[str, Any]]:
        return [
            ("train loss", summary.get("train_loss")),
            ("train loss (rgb / alpha)",
             f"{report_value(summary.get('train_loss_rgb'))} / "
             f"{report_value(summary.get('train_loss_alpha'))}"),
            ("val loss", summary.get("val_loss")),
            ("val PSNR (dB)", summary.get("val_psnr")),
            ("val alpha MSE", summary.get("val_alpha_mse")),
        ]  # fmt: skip

    @classmethod
    def headline(cls, summary: dict[str, Any]) -> str:
        return f"val PSNR {summary.get('val_psnr')} dB, pictures {summary.get('recon_png')}"


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Pretrain the MAE on the store's grids; returns the summary (also ``RUN/metrics.json``).

    Under ``torchrun`` every rank calls this; rank 0 writes the run folder.
    """
    return run_task(config, MAETask)
