"""Fine-tuning NeRF-MAE downstream: the config every task shares, the base of the dense
tasks, and the entry points.

A fine-tuning run is a :class:`model.trainer.Trainer` run of one downstream task
(:mod:`model.semantic_task`, :mod:`model.superres_task`, :mod:`model.detection.task`) on
a :class:`model.skip_net.SkipNet` (the detector: :class:`model.detection.detector.Detector`)
whose encoder and decoder blocks 4-2 come from a pretraining checkpoint (``pretrained``)
or start random (``scratch``). Both are built from the same seed, so a pretrained run and
a scratch run differ only in the tensors the checkpoint sets (the transfer report, in
``config.json`` and the summary, lists them).

Labelled scenes: the store's split into training and validation scenes (as pretraining's,
``val_fraction`` / ``val_scenes``), then ``train_scenes`` (an explicit list) and
``label_fraction`` (the first ``ceil(f x n)`` training scenes in a fixed hash order, so
smaller fractions are subsets of larger ones and every seed sees the same scenes).

Defaults follow the reference's fine-tuning scripts (facts section 6.2-6.3): lr 3e-4,
weight decay 1e-3, clip 0.1, batch 8, one-cycle, no augmentation; 1000 epochs is the
reference's, far beyond a CPU: pass ``epochs`` / ``max_steps``.

Command line: ``nerfmae finetune semantics|superres|detect ...`` or, one rank of ``torchrun``,
``python -m model.finetune --task semantics --store URL --out RUN (--pretrained CKPT |
--scratch) [--field value ...]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from grid_store import GridStore
from grid_store.dataset import GridDataset
from model.distributed import DistributedContext
from model.trainer import Task, run_task
from model.training_config import (
    TrainingConfig,
    config_arg_parser,
    json_ready,
    rank_by_hash,
    run_config_command,
)
from model.transfer import CARRIED_PREFIXES

logger = logging.getLogger(__name__)

FINETUNE_TASKS = ("semantics", "superres", "detect")
LABEL_ORDER_SALT = 104729
"""Seed of the hash order labelled subsets are drawn in (fixed: the same for every run seed)."""


@dataclass
class FinetuneConfig(TrainingConfig):
    """A fine-tuning run (see the module doc); saved resolved as ``RUN/config.json``."""

    trajectory_fields: ClassVar[tuple[str, ...]] = (
        *TrainingConfig.trajectory_fields, "task", "pretrained", "scratch", "train_scenes",
        "label_fraction", "allow_resolution_change", "freeze_pretrained", "num_classes",
        "target_store_url", "detector_overrides",
    )  # fmt: skip

    task: str = "semantics"
    """Downstream task: ``semantics`` (voxel labels), ``superres`` (voxel super-resolution)
    or ``detect`` (oriented 3D boxes)."""
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
    """Train only the new parts (full-resolution block, decoder block 1, head) and keep the
    encoder and decoder blocks 4-2 as initialised: a probe of what pretraining put there
    (with ``scratch``, of random features)."""
    num_classes: int | None = None
    """Semantics: classes including void (``None``: the stored ``semantic_classes``).
    Detection: box classes the head learns (``box_labels`` ``0 .. K-1``, per-class AP);
    ``None``: class-agnostic objectness, NeRF-RPN's."""
    target_store_url: str | None = None
    """Super-resolution: the store holding the same scenes at the higher resolution."""
    detector_overrides: dict[str, Any] = field(default_factory=dict)
    """Detection: overrides of :class:`model.detection.detector.DetectorConfig` fields
    (e.g. ``{"channels": 64}`` for CPU runs; the reference's FPN has 256)."""
    preset: str = "swin_s"
    epochs: int = 1000
    batch_size: int = 8
    lr: float = 3e-4
    augment: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in FINETUNE_TASKS:
            self.fail("task", f"must be one of {FINETUNE_TASKS}")
        if bool(self.pretrained) == bool(self.scratch):
            self.fail("pretrained", "give exactly one of a pretraining checkpoint and scratch")
        if not 0.0 < self.label_fraction <= 1.0:
            self.fail("label_fraction", "must be in (0, 1]")
        if self.num_classes is not None and self.num_classes < 2:
            self.fail("num_classes", "must be >= 2 (void and one class) or None")
        if self.task == "superres" and not self.target_store_url:
            self.fail("target_store_url", "super-resolution needs the store of its targets")


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


class DenseTask(Task):
    """A task on an encoder network (a :class:`~model.skip_net.SkipNet`, the detector):
    builds the network for the run's preset and resolution and starts it from the
    checkpoint (the tensors of :attr:`carried_prefixes`) or from scratch."""

    carried_prefixes: ClassVar[dict[str, str]] = CARRIED_PREFIXES
    """Checkpoint prefix -> network prefix of what pretraining sets (and
    ``freeze_pretrained`` freezes)."""

    def __init__(self, config: FinetuneConfig, ctx: DistributedContext) -> None:
        from model import get_config

        self.config = config
        self.ctx = ctx
        overrides = dict(config.model_overrides)
        if config.resolution is not None:
            overrides["resolution"] = config.resolution
        self.mae_config = get_config(config.preset, **overrides)  # validates before data work
        self.resolution = self.mae_config.resolution
        if config.pretrained and not Path(config.pretrained).is_file():
            raise FileNotFoundError(f"{config.pretrained}: pretrained: no such checkpoint")
        self.store = GridStore(config.store_url, mode="r")
        self.transfer: dict[str, Any] | None = None
        self.labelled_scenes: list[str] = []

    def grid_datasets(self, train_scenes, val_scenes) -> tuple[GridDataset, GridDataset | None]:
        """The labelled training scenes (``self.labelled_scenes``, see :func:`labelled_subset`)
        and the validation scenes as :class:`GridDataset` s (labels and boxes travel with the
        grids; only training is augmented)."""
        c = self.config
        self.labelled_scenes = labelled_subset(train_scenes, c.train_scenes, c.label_fraction)
        train = GridDataset(c.store_url, self.labelled_scenes, size=self.resolution,
                            crop=c.crop, augment=c.augment, seed=c.seed)  # fmt: skip
        val = GridDataset(c.store_url, val_scenes, size=self.resolution) if val_scenes else None
        return train, val

    @abstractmethod
    def make_network(self) -> nn.Module:
        """The task's :class:`SkipNet` for ``self.mae_config``, randomly initialised."""

    def build_model(self) -> nn.Module:
        from model.transfer import load_pretrained

        model = self.make_network()
        if self.config.pretrained:
            report = load_pretrained(
                model, self.config.pretrained,
                allow_resolution_change=self.config.allow_resolution_change,
                prefixes=self.carried_prefixes,
            )  # fmt: skip
            logger.info("initialised from %s", report.summary())
            self.transfer = {"summary": report.summary(), "loaded": len(report.loaded),
                             "fresh": report.fresh, "dropped": report.dropped,
                             "pretrain_step": report.step}  # fmt: skip
        if self.config.freeze_pretrained:
            for name, parameter in model.named_parameters():
                if name.startswith(tuple(self.carried_prefixes.values())):
                    parameter.requires_grad_(False)
        return model

    def model_config(self) -> dict[str, Any]:
        return json_ready({**dataclasses.asdict(self.mae_config), "network": self.name})

    def run_info(self) -> dict[str, Any]:
        return {
            "init": "pretrained" if self.config.pretrained else "scratch",
            "pretrained": self.config.pretrained,
            "transfer": self.transfer,
            "labelled_scenes": len(self.labelled_scenes),
        }


def make_finetune_task(config: FinetuneConfig, ctx: DistributedContext) -> Task:
    if config.task == "semantics":
        from model.semantic_task import SemanticsTask

        return SemanticsTask(config, ctx)
    if config.task == "detect":
        from model.detection.task import DetectionTask

        return DetectionTask(config, ctx)
    from model.superres_task import SuperResolutionTask

    return SuperResolutionTask(config, ctx)


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune ``config.task``; returns the summary (also ``RUN/metrics.json``).

    Under ``torchrun`` every rank calls this; rank 0 writes the run folder.
    """
    return run_task(config, make_finetune_task)


# ---------------------------------------------------------------------- entry point
def build_arg_parser() -> argparse.ArgumentParser:
    """One flag per :class:`FinetuneConfig` field (``--store``/``--out`` name the first two)."""
    return config_arg_parser(
        FinetuneConfig, "python -m model.finetune",
        "NeRF-MAE fine-tuning (single process, or one rank under torchrun).",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_config_command(build_arg_parser(), FinetuneConfig, finetune, argv)


if __name__ == "__main__":
    sys.exit(main())
