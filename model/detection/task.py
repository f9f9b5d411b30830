"""Oriented-box 3D detection as a fine-tuning task (facts section 6.1, NeRF-RPN's FCOS).

The network is :class:`model.detection.detector.Detector`: the Swin encoder (from the
pretraining checkpoint, or random) under a fresh FPN and FCOS head; only ``encoder.*``
carries over (NeRF-MAE's README: the FPN and head start from scratch). Boxes come from the
store (world units, contract 1) and reach the model in each sample's voxel coordinates
(:class:`grid_store.dataset.GridDataset`), moved with its crop window and augmentation;
with ``augment`` each training grid also gets NeRF-RPN's small rotation about z and
scaling (+-10 degrees, x0.9-1.1, probability 0.5, :mod:`model.detection.augment`).

Detection is class-agnostic (objectness only) by default, as NeRF-RPN's. With
``num_classes`` K the head has a logit per class and learns the stored ``box_labels``
(``0 .. K-1``; the synthetic rooms' are indices into their ``semantic_classes``), and
validation adds per-class AP. Validation reports AP25/AP50 (VOC all-point, all scenes
ranked together, class-agnostic), recalls at the top 300/1000/2500 and the loss terms, and
draws the first validation grid's bird's-eye view and slices with true and predicted boxes
(``RUN/boxes/``, also in TensorBoard).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from model.detection.augment import random_rotate_scale
from model.detection.detector import Detector, DetectorConfig
from model.detection.evaluation import DetectionEvaluator
from model.detection.inference import detect
from model.detection.losses import LOSS_TERMS, fcos_losses
from model.detection.pictures import save_box_views
from model.detection.targets import LevelLayout, assign_targets, level_layout
from model.distributed import unwrap
from model.finetune import DenseTask, FinetuneConfig
from model.trainer import autocast
from model.training_config import json_ready
from model.transfer import ENCODER_ONLY

logger = logging.getLogger(__name__)


class DetectionTask(DenseTask):
    """Fine-tune (or train from scratch) the FCOS detector on the store's boxes."""

    name = "detect"
    loss_terms = LOSS_TERMS
    val_keys = ("ap50", "ap25", "recall50@300", "loss")
    picture_dir = "boxes"
    carried_prefixes = ENCODER_ONLY

    def __init__(self, config: FinetuneConfig, ctx) -> None:
        super().__init__(config, ctx)
        overrides = dict(config.detector_overrides)
        if config.num_classes is not None:
            overrides["num_classes"] = config.num_classes
        try:
            self.detector_config = DetectorConfig(**overrides)
        except TypeError as exc:
            known = [f.name for f in dataclasses.fields(DetectorConfig)]
            raise ValueError(f"detector_overrides: {exc}; known fields: {known}") from None
        self.augment_generator = torch.Generator().manual_seed(config.seed * 7_919 + ctx.rank)
        self._layouts: dict[tuple, LevelLayout] = {}
        self.class_names: list[str] | None = None

    # ---------------------------------------------------------------- data
    def check_scenes(self, scene_ids: Sequence[str]) -> None:
        unboxed = [s for s in scene_ids if "boxes" not in self.store.scene_zarr_arrays(s)]
        if unboxed:
            raise ValueError(
                f"{self.store.url}: scenes {unboxed[:5]} ({len(unboxed)} of {len(scene_ids)}) "
                "have no boxes: detection needs a 'boxes' array per scene (world units; "
                "written by build-dataset / `nerfmae extract` from a scene folder with "
                "ground truth, `nerfmae store add`, or `nerfmae store import-npz --boxes DIR`)"
            )
        k = self.detector_config.num_classes
        if k == 1:
            return
        for scene in scene_ids:
            labels = self.store.scene_zarr_arrays(scene)["box_labels"][...]
            if labels.size and (labels.min() < 0 or labels.max() >= k):
                raise ValueError(
                    f"{self.store.url}: scene {scene!r} box_labels span "
                    f"[{labels.min()}, {labels.max()}], outside the {k} classes (num_classes)"
                )
        names = {tuple(self.store.scene_attrs(s).get("semantic_classes") or ()) for s in scene_ids}
        self.class_names = list(names.pop()) if len(names) == 1 else None
        if self.class_names is None or len(self.class_names) != k:
            self.class_names = [f"class_{i}" for i in range(k)]

    def datasets(self, train_scenes, val_scenes):
        return self.grid_datasets(train_scenes, val_scenes)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "rgba": torch.stack([s["rgba"] for s in samples]),  # (B, 4, S, S, S)
            "valid": torch.stack([s["valid"] for s in samples]),  # (B, S, S, S)
            "boxes": [s["boxes"] for s in samples],  # (N_b, 7) voxel coordinates
            "box_labels": [s["box_labels"] for s in samples],  # (N_b,)
            "scene_id": [s["scene_id"] for s in samples],
        }

    # ---------------------------------------------------------------- model
    def make_network(self) -> nn.Module:
        return Detector(self.mae_config, self.detector_config)

    def model_config(self) -> dict[str, Any]:
        return json_ready({**dataclasses.asdict(self.mae_config), "network": self.name,
                           "detector": dataclasses.asdict(self.detector_config)})  # fmt: skip

    def step_generators(self) -> dict[str, torch.Generator]:
        return {"rot_scale": self.augment_generator} if self.config.augment else {}

    def layout(self, output, model: nn.Module, device: torch.device) -> LevelLayout:
        """The locations of the head's levels (cached per input size and device)."""
        shapes = [tuple(m.shape[-3:]) for m in output.logits]
        key = (tuple(shapes), str(device))
        if key not in self._layouts:
            strides = unwrap(model).strides
            self._layouts[key] = level_layout(shapes, strides, device)
        return self._layouts[key]

    def losses(self, model, batch, device):
        rgba = batch["rgba"].to(device, non_blocking=True)  # (B, 4, S, S, S)
        valid = batch["valid"].to(device, non_blocking=True)  # (B, S, S, S)
        boxes = [b.to(device) for b in batch["boxes"]]
        labels = self._labels(batch)
        if self.config.augment:
            rgba, valid, boxes = random_rotate_scale(rgba, valid, boxes, self.augment_generator)
        return self.scored(model, model(rgba), boxes, valid, labels, device)[2]

    def scored(self, model, output, boxes, valid, labels, device):
        """``(layout, targets, loss terms)`` of a head output against the batch's boxes."""
        layout = self.layout(output, model, device)
        c = self.detector_config
        targets = assign_targets(layout, boxes, valid, c.size_ranges, c.center_sampling_radius,
                                 labels)  # fmt: skip
        terms = fcos_losses(output, layout, targets, boxes, c.focal_alpha, c.focal_gamma,
                            c.reg_loss_weight)  # fmt: skip
        return layout, targets, terms

    def _labels(self, batch) -> list[torch.Tensor] | None:
        """The batch's box classes when the head has classes (``None``: class-agnostic)."""
        return batch["box_labels"] if self.detector_config.num_classes > 1 else None

    # ---------------------------------------------------------------- validation
    def evaluate(self, model, loader, ctx, amp_dtype, picture_path, title):
        evaluator = DetectionEvaluator(classes=self.class_names)
        c = self.detector_config
        sums = torch.zeros(len(LOSS_TERMS) + 1, dtype=torch.float64, device=ctx.device)
        for i, batch in enumerate(loader):
            rgba = batch["rgba"].to(ctx.device)  # (B, 4, S, S, S)
            valid = batch["valid"].to(ctx.device)  # (B, S, S, S)
            boxes = [b.to(ctx.device) for b in batch["boxes"]]
            with autocast(ctx.device, amp_dtype):
                output = model(rgba)
            labels = self._labels(batch)
            layout, targets, terms = self.scored(model, output, boxes, valid, labels, ctx.device)
            one = torch.ones((), dtype=torch.float64, device=ctx.device)
            sums += torch.stack([*(terms[t].detach().double() for t in LOSS_TERMS), one])
            detections = detect(output, layout, targets.location_valid, c)
            for b, (scene_id, found) in enumerate(zip(batch["scene_id"], detections, strict=True)):
                evaluator.add(scene_id, found.boxes.cpu(), found.scores.cpu(), boxes[b].cpu(),
                              *((found.labels.cpu(), labels[b]) if labels else ()))  # fmt: skip
            if i == 0 and picture_path is not None and ctx.is_main:
                save_box_views(picture_path, rgba[0], valid[0], boxes[0], detections[0].boxes,
                               detections[0].scores,
                               title=f"{title} scene {batch['scene_id'][0]}")  # fmt: skip
        # validation shards are disjoint (model.trainer), so the scenes of ranks never repeat
        states = ctx.all_gather_objects(evaluator.state_dict())  # a collective: every rank
        evaluator = DetectionEvaluator.from_state_dict(states[0])
        for other in states[1:]:
            evaluator.merge(other)
        total = ctx.all_reduce_sum(sums)
        scores: dict[str, Any] = dict(evaluator.compute())
        for k, term in enumerate(LOSS_TERMS):
            scores[term] = float(total[k] / total[-1]) if total[-1] > 0 else None
        return scores

    def run_info(self) -> dict[str, Any]:
        info = super().run_info()
        info["detector"] = json_ready(dataclasses.asdict(self.detector_config))
        info["class_names"] = self.class_names
        return info
