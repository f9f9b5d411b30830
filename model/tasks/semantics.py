"""Semantic voxel labelling as a training task (facts section 6.2).

The network is the skip architecture (:func:`model.networks.skip_net.build_semantic_net`) with K
classes, 0 = void; ``network="encoder_path"`` drops its full-resolution input skip, so that
every label is read from the encoder (what a pretrained-against-scratch comparison should
measure). The loss is cross-entropy weighted per class with weights computed from
the labelled training scenes' label counts (:func:`model.metrics.semantic.class_weights`;
the reference's weight files were never published) and saved with the run; void voxels and
the padding (stored as void) are ignored outright, where the reference only down-weights
them. Validation covers whole rooms: a grid larger than the model's cube is labelled through
overlapping cubes whose logits are averaged (:func:`model.inference.windows.stitch_dense`).
Validation reports mIoU, mAcc and allAcc over the classes present, per-class IoU and
accuracy, and draws true against predicted label slices (``RUN/labels/``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from grid_store.dataset import real_extent
from model.inference.windows import needs_windows, stitch_dense
from model.metrics.semantic import VOID, SemanticMetrics, class_weights, label_counts
from model.networks.skip_net import SEMANTIC_NETWORKS, build_semantic_net
from model.pictures.dense import save_label_slices
from model.tasks.base import DenseTask, FinetuneConfig
from model.training.steps import autocast
from model.training.task import Batch
from model.training.validation import BatchMetric

logger = logging.getLogger(__name__)


@dataclass
class SemanticsConfig(FinetuneConfig):
    """A semantic-labelling run (see :class:`model.tasks.base.FinetuneConfig`)."""

    task = "semantics"
    trajectory_fields: ClassVar[tuple[str, ...]] = (
        *FinetuneConfig.trajectory_fields, "num_classes", "network",
    )  # fmt: skip

    num_classes: int | None = None
    """Classes including void (``None``: as many as the stored ``semantic_classes``)."""
    network: str = "skip"
    """The body under the head (:data:`~model.networks.skip_net.SEMANTIC_NETWORKS`): "skip"
    (the reference's, with a full-resolution skip of the input voxels) or "encoder_path"
    (no input skip: every label comes through the encoder)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes is not None and self.num_classes < 2:
            self.fail("num_classes", "must be >= 2 (void and one class) or None")
        if self.network not in SEMANTIC_NETWORKS:
            self.fail("network", f"must be one of {', '.join(SEMANTIC_NETWORKS)}")


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Class-weighted cross-entropy of ``(B, K, X, Y, Z)`` logits against ``(B, X, Y, Z)``
    labels, void (0) ignored: the weighted mean over labelled voxels, ``sum_v w(y_v) CE_v /
    sum_v w(y_v)`` (what ``F.cross_entropy`` averages), and 0 with a gradient when a batch
    has no labelled voxel. Computed without a host sync (also on ``meta`` tensors)."""
    target = target.long()
    total = F.cross_entropy(logits.float(), target, weight=weights, ignore_index=VOID,
                            reduction="sum")  # fmt: skip
    weight_sum = (weights[target] * (target != VOID)).sum()
    return total / weight_sum.clamp_min(torch.finfo(total.dtype).tiny)


def _feed_confusion(metrics: SemanticMetrics, batch: Batch, p: dict) -> None:
    metrics.update(p["logits"], p["target"], p["valid"])


class SemanticsTask(DenseTask):
    """Fine-tune (or train from scratch) the skip network to label every voxel."""

    name = "semantics"
    config_class = SemanticsConfig
    description = "label every voxel (mIoU, mAcc, allAcc)"
    loss_terms = ("loss",)
    val_keys = ("miou", "macc", "allacc", "loss")
    selection_key = "miou"
    picture_dir = "labels"

    def __init__(self, config: SemanticsConfig, ctx) -> None:
        super().__init__(config, ctx)
        self.class_names: list[str] | None = None
        self.num_classes = config.num_classes
        self.weights: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def check_scenes(self, scene_ids: Sequence[str]) -> None:
        unlabelled = [s for s in scene_ids if "semantic" not in self.store.scene_zarr_arrays(s)]
        if unlabelled:
            raise ValueError(
                f"{self.store.url}: scenes {unlabelled[:5]} ({len(unlabelled)} of "
                f"{len(scene_ids)}) have no semantic labels: semantic fine-tuning needs a "
                "'semantic' array per scene (written by `nerfmae extract` / build-dataset "
                "from a scene folder with ground_truth/grid.npz, or `nerfmae store add`)"
            )
        names = {tuple(self.store.scene_attrs(s).get("semantic_classes") or ()) for s in scene_ids}
        names.discard(())
        if len(names) > 1:
            raise ValueError(f"{self.store.url}: semantic_classes differ between scenes: "
                             f"{sorted(names)[:2]}")  # fmt: skip
        if names:
            self.class_names = list(names.pop())
        if self.num_classes is None:
            if self.class_names is None:
                raise ValueError(
                    f"{self.store.url}: scenes store no semantic_classes: pass num_classes "
                    "(--num-classes, void included)"
                )
            self.num_classes = len(self.class_names)
        # Here, not when the labels are counted or scored: that names neither scene nor flag.
        for scene in scene_ids:
            top = int(self.store.scene_zarr_arrays(scene)["semantic"][...].max(initial=0))
            if top >= self.num_classes:
                stored = len(self.class_names or ())
                raise ValueError(
                    f"{self.store.url}: scene {scene!r} has labels 0..{top}, outside the "
                    f"{self.num_classes} classes of num_classes (--num-classes, void included; "
                    f"the store names {stored or 'no'} classes)"
                )

    def datasets(self, train_scenes, val_scenes):
        train, val = self.grid_datasets(train_scenes, val_scenes)
        counts = torch.zeros(self.num_classes, dtype=torch.int64)
        for scene in self.labelled_scenes:
            labels = torch.from_numpy(self.store.scene_zarr_arrays(scene)["semantic"][...])
            counts += label_counts(labels, self.num_classes)
        self.counts = counts
        self.weights = class_weights(counts)
        return train, val

    def extra_sample_bytes(self) -> int:
        return self.input_size**3  # the uint8 labels

    def probe_batch(self, micro_batch: int, device: torch.device) -> Batch:
        s = self.input_size
        semantic = torch.zeros((micro_batch, s, s, s), dtype=torch.uint8, device=device)
        return {**super().probe_batch(micro_batch, device), "semantic": semantic}

    def make_network(self) -> nn.Module:
        return build_semantic_net(self.mae_config, self.num_classes, self.config.network)

    def model_config(self) -> dict[str, Any]:
        return {**super().model_config(), "num_classes": self.num_classes,
                "semantic_network": self.config.network, "class_names": self.class_names}

    def losses(self, model, batch, device):
        logits = model(batch["rgba"].to(device, non_blocking=True))  # (B, K, S, S, S)
        target = batch["semantic"].to(device, non_blocking=True)  # (B, S, S, S) uint8
        return {"loss": weighted_cross_entropy(logits, target, self.weights.to(device))}

    def predict(self, model, batch, device, amp_dtype):
        rgba = batch["rgba"].to(device)  # (B, 4, X, Y, Z): S^3, or whole rooms
        target = batch["semantic"].to(device).long()  # (B, X, Y, Z)

        def run(grids: torch.Tensor) -> torch.Tensor:  # (n, 4, S, S, S) -> (n, K, S, S, S)
            with autocast(device, amp_dtype):
                return model(grids).float()

        if needs_windows(rgba.shape[-3:], self.input_size):
            valid = batch["valid"].to(device)
            logits = torch.stack([
                stitch_dense(run, rgba[b], real_extent(valid[b]).tolist(), self.input_size,
                             self.overlap_voxels)
                for b in range(len(rgba))
            ])  # fmt: skip
        else:
            logits = run(rgba)  # (B, K, S, S, S)
        loss = weighted_cross_entropy(logits, target, self.weights.to(device))
        return {"logits": logits, "target": target, "valid": batch["valid"].to(device),
                "losses": {"loss": loss}}  # fmt: skip

    def metric(self) -> BatchMetric:
        return BatchMetric(SemanticMetrics(self.num_classes, self.class_names), _feed_confusion)

    def draw(self, path: Path, batch: Batch, prediction: dict, title: str) -> Path:
        p = prediction
        return save_label_slices(path, p["target"][0], p["logits"][0].argmax(0), p["valid"][0],
                                 self.class_names, title)  # fmt: skip

    def run_info(self) -> dict[str, Any]:
        info = super().run_info()
        info.update(
            num_classes=self.num_classes,
            class_names=self.class_names,
            class_weights=None if self.weights is None else self.weights.tolist(),
            train_label_counts=None if self.counts is None else self.counts.tolist(),
        )
        return info

    @classmethod
    def task_rows(cls, summary: dict[str, Any]) -> list[tuple[str, Any]]:
        return [
            ("val mIoU", summary.get("val_miou")),
            ("val mAcc", summary.get("val_macc")),
            ("val allAcc", summary.get("val_allacc")),
        ]

    @classmethod
    def report_tables(cls, summary: dict[str, Any]) -> list[tuple[str, list[str], list[list]]]:
        iou = summary.get("val_per_class_iou") or {}
        acc = summary.get("val_per_class_acc") or {}
        if not iou:
            return []
        rows = [[name, value, acc.get(name)] for name, value in iou.items()]
        return [("Per-class IoU (validation)", ["class", "IoU", "accuracy"], rows)]

    @classmethod
    def headline(cls, summary: dict[str, Any]) -> str:
        return f"val mIoU {summary.get('val_miou')}"

