"""Semantic voxel labelling as a training task (facts section 6.2).

The network is the skip architecture (:func:`model.skip_net.build_semantic_net`) with K
classes, 0 = void. The loss is cross-entropy weighted per class with weights computed from
the labelled training scenes' label counts (:func:`model.semantic_metrics.class_weights`;
the reference's weight files were never published) and saved with the run; void voxels and
the padding (stored as void) are ignored outright, where the reference only down-weights
them. Validation reports mIoU, mAcc and allAcc over the classes present, per-class IoU and
accuracy, and draws true against predicted label slices (``RUN/labels/``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.finetune import DenseTask, FinetuneConfig
from model.semantic_metrics import VOID, SemanticMetrics, class_weights, label_counts
from model.skip_net import build_semantic_net
from model.task_pictures import save_label_slices
from model.trainer import autocast

logger = logging.getLogger(__name__)


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Class-weighted cross-entropy of ``(B, K, X, Y, Z)`` logits against ``(B, X, Y, Z)``
    labels, void (0) ignored; the weighted mean over labelled voxels (0, with a gradient,
    when a batch has none)."""
    target = target.long()
    if not bool((target != VOID).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, weight=weights, ignore_index=VOID)


class SemanticsTask(DenseTask):
    """Fine-tune (or train from scratch) the skip network to label every voxel."""

    name = "semantics"
    loss_terms = ("loss",)
    val_keys = ("miou", "macc", "allacc", "loss")
    picture_dir = "labels"

    def __init__(self, config: FinetuneConfig, ctx) -> None:
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

    def datasets(self, train_scenes, val_scenes):
        train, val = self.grid_datasets(train_scenes, val_scenes)
        counts = torch.zeros(self.num_classes, dtype=torch.int64)
        for scene in self.labelled_scenes:
            labels = torch.from_numpy(self.store.scene_zarr_arrays(scene)["semantic"][...])
            counts += label_counts(labels, self.num_classes)
        self.counts = counts
        self.weights = class_weights(counts)
        return train, val

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "rgba": torch.stack([s["rgba"] for s in samples]),  # (B, 4, S, S, S)
            "valid": torch.stack([s["valid"] for s in samples]),  # (B, S, S, S)
            "semantic": torch.stack([s["semantic"] for s in samples]).long(),  # (B, S, S, S)
            "scene_id": [s["scene_id"] for s in samples],
        }

    def make_network(self) -> nn.Module:
        return build_semantic_net(self.mae_config, self.num_classes)

    def losses(self, model, batch, device):
        logits = model(batch["rgba"].to(device, non_blocking=True))  # (B, K, S, S, S)
        target = batch["semantic"].to(device, non_blocking=True)  # (B, S, S, S)
        return {"loss": weighted_cross_entropy(logits, target, self.weights.to(device))}

    def evaluate(self, model, loader, ctx, amp_dtype, picture_path, title):
        metrics = SemanticMetrics(self.num_classes, self.class_names)
        loss_sum = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # (sum, batches)
        weights = self.weights.to(ctx.device)
        for i, batch in enumerate(loader):
            rgba = batch["rgba"].to(ctx.device)  # (B, 4, S, S, S)
            target = batch["semantic"].to(ctx.device)  # (B, S, S, S)
            valid = batch["valid"].to(ctx.device)  # (B, S, S, S)
            with autocast(ctx.device, amp_dtype):
                logits = model(rgba).float()  # (B, K, S, S, S)
            loss = weighted_cross_entropy(logits, target, weights).double()
            loss_sum += torch.stack([loss, torch.ones_like(loss)])
            metrics.update(logits, target, valid)
            if i == 0 and picture_path is not None and ctx.is_main:
                label = f"{title} scene {batch['scene_id'][0]}"
                save_label_slices(picture_path, target[0], logits[0].argmax(0), valid[0],
                                  self.class_names, label)  # fmt: skip
        metrics.confusion = ctx.all_reduce_sum(metrics.confusion.to(ctx.device)).cpu()
        total = ctx.all_reduce_sum(loss_sum)
        scores = metrics.compute()
        scores["loss"] = float(total[0] / total[1]) if total[1] > 0 else None
        return scores

    def run_info(self) -> dict[str, Any]:
        info = super().run_info()
        info.update(
            num_classes=self.num_classes,
            class_names=self.class_names,
            class_weights=None if self.weights is None else self.weights.tolist(),
            train_label_counts=None if self.counts is None else self.counts.tolist(),
        )
        return info
