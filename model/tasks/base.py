"""What the fine-tuning tasks share: their config fields, the labelled subset of the training
scenes, and :class:`DenseTask`, the base of every task on a pretrained encoder.

A fine-tuning run is a :class:`model.training.trainer.Trainer` run of one downstream task
(:mod:`model.tasks.semantics`, :mod:`model.tasks.superres`, :mod:`model.tasks.detect`) on
a :class:`model.networks.skip_net.SkipNet` (the detector:
:class:`model.networks.detector.Detector`) whose carried weights come from a pretraining
checkpoint (``pretrained``) or start random (``scratch``). Both are built from the same
seed, so a pretrained run and a scratch run differ only in the tensors the checkpoint sets
(the transfer report, in ``config.json`` and the summary, lists them).

Labelled scenes: the store's split into training and validation scenes (as pretraining's,
``val_fraction`` / ``val_scenes``), then ``train_scenes`` (an explicit list) and
``label_fraction`` (the first ``ceil(f x n)`` training scenes in a fixed hash order, so
smaller fractions are subsets of larger ones and every seed sees the same scenes).

Defaults follow the reference's fine-tuning scripts (facts section 6.2-6.3): lr 3e-4,
weight decay 1e-3, clip 0.1, batch 8, one-cycle, no augmentation; 1000 epochs is the
reference's, far beyond a CPU: pass ``epochs`` / ``max_steps``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from grid_store import GridStore
from grid_store.dataset import GridDataset
from model.checkpoints.reading import read_checkpoint
from model.checkpoints.transfer import (
    CARRIED_PREFIXES,
    ENCODER_STAGES,
    first_stages,
    load_pretrained,
    share_with_initialisation,
)
from model.inference.windows import overlap_voxels
from model.networks.mae import MAEConfig
from model.networks.presets import get_config, list_presets
from model.training.config import TrainingConfig, json_ready, rank_by_hash
from model.training.distributed import DistributedContext
from model.training.task import Task

logger = logging.getLogger(__name__)

LABEL_ORDER_SALT = 104729
"""Seed of the hash order labelled subsets are drawn in (fixed: the same for every run seed)."""


@dataclass
class FinetuneConfig(TrainingConfig):
    """The fields every fine-tuning run has (each task's config adds its own); saved
    resolved as ``RUN/config.json``."""

    trajectory_fields: ClassVar[tuple[str, ...]] = (
        *TrainingConfig.trajectory_fields, "pretrained", "scratch", "train_scenes",
        "label_fraction", "allow_resolution_change", "freeze_pretrained", "carried_lr_scale",
        "frozen_warmup", "carried_stages", "carried_share",
    )  # fmt: skip

    pretrained: str | None = None
    """Pretraining checkpoint (``RUN/checkpoints/latest.pt``) whose encoder starts the run."""
    scratch: bool = False
    """Start from random weights instead (exactly one of ``pretrained`` and ``scratch``)."""
    allow_resolution_change: bool = False
    """Accept a checkpoint pretrained at another input resolution (only the fixed sin-cos
    positional table depends on it)."""
    train_scenes: list[str] | None = None
    """Train only on these scenes (``None``: every scene the split leaves for training)."""
    label_fraction: float = 1.0
    """Share of the training scenes whose labels are used (label-efficiency experiments)."""
    freeze_pretrained: bool = False
    """Train only the new parts and keep what the checkpoint sets (the encoder, and decoder
    blocks 4-2 for the dense tasks) as initialised: a probe of what pretraining put there
    (with ``scratch``, of random features)."""
    carried_lr_scale: float = 1.0
    """Learning rate of the carried weights (what ``pretrained`` sets) over ``lr``: below 1
    a fine-tuning run adapts the pretrained encoder instead of overwriting it (scratch runs
    use the same rate for the same weights, so both follow one protocol)."""
    frozen_warmup: float = 0.0
    """Share of the optimiser steps during which the carried weights stay frozen while the
    new parts learn to read them; then they train at ``carried_lr_scale x`` the schedule."""
    carried_stages: int | None = None
    """Encoder stages the checkpoint sets: the patch embedding and the first k of the four
    (``None``: all, with the decoder blocks the task carries). Later stages start fresh and
    count as new parts (full rate, never frozen), in scratch runs alike."""
    carried_share: float = 1.0
    """Share of the pretrained value in each carried tensor's start: below 1 it starts at
    ``share x pretrained + (1 - share) x`` its fresh initialisation, the very weights the
    scratch run of the same seed starts from (shrink and perturb, Ash & Adams 2020, a cure
    for warm starts that train to worse optima than fresh ones). Scratch runs ignore it."""
    window_overlap: float = 0.5
    """Validation of a grid larger than the model's cube (and ``nerfmae detect`` /
    ``evaluate`` of it) reads the whole room through cubes overlapping by this share of
    their edge, outputs stitched and boxes merged (:mod:`model.inference.windows`)."""
    preset: str = "swin_s"
    epochs: int = 1000
    batch_size: int = 8
    lr: float = 3e-4
    augment: bool = False
    """Augment the training grids as the reference's fine-tuning can: random 90-degree
    rotations about z and x/y flips (labels and boxes move with the voxels)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.pretrained) == bool(self.scratch):
            self.fail("pretrained", "give exactly one of a pretraining checkpoint (--pretrained "
                      "CKPT) and --scratch")
        if not 0.0 < self.label_fraction <= 1.0:
            self.fail("label_fraction", "must be in (0, 1]")
        if not self.carried_lr_scale > 0:
            self.fail("carried_lr_scale", "must be > 0")
        if not 0.0 <= self.frozen_warmup < 1.0:
            self.fail("frozen_warmup", "must be in [0, 1)")
        if self.carried_stages is not None and not 0 <= self.carried_stages <= ENCODER_STAGES:
            self.fail("carried_stages", f"must be in 0..{ENCODER_STAGES} or None (all)")
        if not 0.0 < self.carried_share <= 1.0:
            self.fail("carried_share", "must be in (0, 1] (0 would be a scratch run: --scratch)")
        if not 0.0 <= self.window_overlap < 1.0:
            self.fail("window_overlap", "must be in [0, 1)")


def encoder_config(config: TrainingConfig) -> MAEConfig:
    """The run's architecture: its preset with ``model_overrides`` and ``resolution``."""
    overrides = dict(config.model_overrides)
    if config.resolution is not None:
        overrides["resolution"] = config.resolution
    return get_config(config.preset, **overrides)


def labelled_subset(
    train_scenes: Sequence[str], explicit: Sequence[str] | None, fraction: float
) -> list[str]:
    """The training scenes whose labels a run uses (sorted); see the module doc."""
    scenes = sorted(train_scenes)
    if explicit is not None:
        outside = sorted(set(explicit) - set(scenes))
        if outside:
            raise ValueError(
                f"train_scenes: {outside[:5]} are not training scenes of the store "
                "(missing, or held out for validation)"
            )
        scenes = sorted(set(explicit))
    if fraction < 1.0:
        keep = max(1, math.ceil(fraction * len(scenes)))
        scenes = sorted(rank_by_hash(scenes, LABEL_ORDER_SALT)[:keep])
    return scenes


class EncoderTask(Task):
    """A task on a network of a registered preset (``self.mae_config``): its input size and
    its variants at other presets and resolutions (for memory suggestions)."""

    mae_config: MAEConfig

    @property
    def input_size(self) -> int:
        return self.mae_config.resolution

    def variant(self, *, preset: str | None = None, resolution: int | None = None) -> Task | None:
        try:
            config = (get_config(preset, resolution=self.mae_config.resolution) if preset
                      else dataclasses.replace(self.mae_config, resolution=resolution))  # fmt: skip
        except ValueError:
            return None
        other = copy.copy(self)
        other.mae_config = config
        return other

    def smaller_resolutions(self) -> list[int]:
        c = self.mae_config
        stride = c.patch_size * 2 ** (len(c.depths) - 1)
        return list(range(c.resolution - stride, stride - 1, -stride))

    def other_presets(self) -> list[str]:
        return [name for name in list_presets() if name != self.config.preset]


class DenseTask(EncoderTask):
    """A task on an encoder network (a :class:`~model.networks.skip_net.SkipNet`, the
    detector): builds the network for the run's preset and resolution and starts it from the
    checkpoint (the tensors of :attr:`carried_prefixes`) or from scratch."""

    carried_prefixes: ClassVar[dict[str, str]] = CARRIED_PREFIXES
    """Checkpoint prefix -> network prefix of what pretraining can set (and
    ``freeze_pretrained`` freezes)."""

    @property
    def carried(self) -> dict[str, str]:
        """What this run carries: :attr:`carried_prefixes` cut to ``carried_stages``."""
        return first_stages(self.carried_prefixes, self.config.carried_stages)

    def __init__(self, config: FinetuneConfig, ctx: DistributedContext) -> None:
        self.config = config
        self.ctx = ctx
        self.mae_config = encoder_config(config)  # validates before data work
        if config.pretrained and not Path(config.pretrained).is_file():
            raise FileNotFoundError(f"{config.pretrained}: pretrained: no such checkpoint")
        # read once, here (its opacity convention decides the datasets), kept until the
        # network is built from it
        self.pretrained = read_checkpoint(config.pretrained) if config.pretrained else None
        self.store = GridStore(config.store_url, mode="r")
        self.transfer: dict[str, Any] | None = None
        self.labelled_scenes: list[str] = []
        self.alpha_step, self.alpha_step_source = config.alpha_step, "config"
        if config.alpha_step is None and self.pretrained is not None:
            # the encoder meets grids in the opacity convention it was pretrained on
            self.alpha_step = self.pretrained.alpha_step
            self.alpha_step_source = "pretraining checkpoint"
            if self.alpha_step is not None:
                logger.info("grids' alpha re-expressed for a step of %g, as %s was trained on",
                            self.alpha_step, config.pretrained)  # fmt: skip

    def grid_datasets(self, train_scenes, val_scenes) -> tuple[GridDataset, GridDataset | None]:
        """The labelled training scenes (``self.labelled_scenes``, see :func:`labelled_subset`)
        and the validation scenes as :class:`GridDataset` s (labels and boxes travel with the
        grids; only training is augmented)."""
        c = self.config
        self.labelled_scenes = labelled_subset(train_scenes, c.train_scenes, c.label_fraction)
        train = GridDataset(c.store_url, self.labelled_scenes, size=self.input_size, crop=c.crop,
                            augment=c.augment, seed=c.seed, alpha_step=self.alpha_step)  # fmt: skip
        val = (GridDataset(c.store_url, val_scenes, size=self.input_size, whole=True,
                           alpha_step=self.alpha_step) if val_scenes else None)  # fmt: skip
        self.report_oversized(train, val)
        return train, val

    def report_oversized(self, train: GridDataset, val: GridDataset | None) -> None:
        """Say once how grids larger than the model's cube are read."""
        s = self.input_size
        big = train.oversized()
        if big:
            scene, shape = max(big.items(), key=lambda item: max(item[1]))
            how = ("a random cube each epoch" if self.config.crop == "random"
                   else "the cube at index 0 (crop pad)")  # fmt: skip
            logger.info("%d of %d training grids exceed the model's %d^3 cube (largest %s, "
                        "scene %s): training reads %s", len(big), len(train), s,
                        "x".join(map(str, shape)), scene, how)  # fmt: skip
        if val is not None and val.oversized():
            logger.info("validation grids up to %s exceed the %d^3 cube: each is read whole "
                        "through %d^3 windows overlapping by %d voxels (window_overlap %g)",
                        "x".join(map(str, val.sample_shape)), s, s, self.overlap_voxels,
                        self.config.window_overlap)  # fmt: skip

    @property
    def overlap_voxels(self) -> int:
        """The overlap of validation windows, in voxels of the model's cube."""
        return overlap_voxels(self.input_size, self.config.window_overlap)

    @abstractmethod
    def make_network(self) -> nn.Module:
        """The task's network for ``self.mae_config``, randomly initialised."""

    def build_model(self) -> nn.Module:
        model = self.make_network()
        if self.pretrained is not None:
            share = self.config.carried_share
            # the fresh start is kept only where a share of it is wanted
            initial = ({n: t.detach().clone() for n, t in model.state_dict().items()}
                       if share < 1.0 else {})  # fmt: skip
            report = load_pretrained(
                model, self.pretrained,
                allow_resolution_change=self.config.allow_resolution_change,
                prefixes=self.carried,
            )  # fmt: skip
            logger.info("initialised from %s", report.summary())
            if share < 1.0:
                share_with_initialisation(model, initial, report.loaded, share)
                logger.info("carried tensors start at %g x pretrained + %g x fresh", share,
                            1 - share)  # fmt: skip
            self.transfer = {"summary": report.summary(), "loaded": len(report.loaded),
                             "fresh": report.fresh, "dropped": report.dropped,
                             "pretrain_step": report.step, "pretrain_epoch": report.epoch,
                             "format": report.format,
                             "carried_share": share}  # fmt: skip
            self.pretrained = None  # its tensors are in the network now
        self.freeze(model)
        return model

    def carried_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The parameters pretraining sets (in scratch runs too: the same tensors)."""
        prefixes = tuple(self.carried.values())
        return [(n, p) for n, p in model.named_parameters() if n.startswith(prefixes)]

    def freeze(self, model: nn.Module) -> None:
        frozen = self.config.freeze_pretrained or self.config.frozen_warmup > 0
        for _, parameter in self.carried_parameters(model) if frozen else ():
            parameter.requires_grad_(False)

    def parameter_groups(self, model: nn.Module) -> list[tuple[str, list[nn.Parameter], float]]:
        carried = {id(p) for _, p in self.carried_parameters(model)}
        return [
            ("new", [p for p in model.parameters() if id(p) not in carried], 1.0),
            ("carried", [p for p in model.parameters() if id(p) in carried],
             self.config.carried_lr_scale),
        ]  # fmt: skip

    def begin_step(self, model: nn.Module, step: int, total_steps: int) -> dict[str, float]:
        c = self.config
        if c.frozen_warmup <= 0 or c.freeze_pretrained:
            return {}
        frozen = step < round(c.frozen_warmup * total_steps)
        for _, parameter in self.carried_parameters(model):
            parameter.requires_grad_(not frozen)
        return {"carried_frozen": float(frozen)}

    def model_config(self) -> dict[str, Any]:
        return json_ready({**dataclasses.asdict(self.mae_config), "network": self.name,
                           "alpha_step": self.alpha_step})  # fmt: skip

    def run_info(self) -> dict[str, Any]:
        return {
            "init": "pretrained" if self.config.pretrained else "scratch",
            "pretrained": self.config.pretrained,
            "transfer": self.transfer,
            "labelled_scenes": len(self.labelled_scenes),
            "alpha_step": self.alpha_step,
            "alpha_step_source": self.alpha_step_source if self.alpha_step else None,
        }

    @classmethod
    def report_rows(cls, summary: dict[str, Any]) -> list[tuple[str, Any]]:
        transfer = summary.get("transfer")
        carried = "none (from scratch)"
        if transfer:  # counts only: a report's cell stays one line (the names: RUN/config.json)
            start = (f"step {transfer['pretrain_step']}" if transfer["pretrain_step"] is not None
                     else f"epoch {transfer['pretrain_epoch']}")  # fmt: skip
            carried = (
                f"{transfer['loaded']} tensors from {start}; "
                f"{len(transfer['fresh'])} fresh, {len(transfer['dropped'])} dropped"
            )
        return [
            ("init", summary.get("init")),
            ("transfer", carried),
            ("train loss", summary.get("train_loss")),
            ("val loss", summary.get("val_loss")),
            *cls.task_rows(summary),
        ]

    @classmethod
    @abstractmethod
    def task_rows(cls, summary: dict[str, Any]) -> list[tuple[str, Any]]:
        """The task's own figures in its report (after the initialisation and loss rows)."""

    @classmethod
    def scene_row(cls, summary: dict[str, Any]) -> tuple[str, Any]:
        return ("scenes (train / labelled / val)",
                f"{summary.get('train_scenes')} / {summary.get('labelled_scenes')} / "
                f"{summary.get('val_scenes')}")  # fmt: skip
