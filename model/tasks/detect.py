"""Oriented-box 3D detection as a fine-tuning task (facts section 6.1, NeRF-RPN's FCOS).

The network is :class:`model.networks.detector.Detector`: the Swin encoder (from the
pretraining checkpoint, or random) under a fresh FPN and FCOS head; only ``encoder.*``
carries over (NeRF-MAE's README: the FPN and head start from scratch). Boxes come from the
store (world units, contract 1) and reach the model in each sample's voxel coordinates
(:class:`grid_store.dataset.GridDataset`), moved with its crop window and augmentation;
with ``augment`` each training grid also gets NeRF-RPN's small rotation about z and
scaling (+-10 degrees, x0.9-1.1, probability 0.5, :mod:`model.detection.augment`).

Detection is class-agnostic (objectness only) by default, as NeRF-RPN's. With
``num_classes`` K the head has a logit per class and learns the stored ``box_labels``
(``0 .. K-1``; the synthetic rooms' are indices into their ``semantic_classes``), and
validation adds per-class AP. Validation covers whole rooms: a grid larger than the model's
cube is read through overlapping cubes whose detections are merged
(:mod:`model.detection.windowed`), so every stored box is counted. Validation reports
AP25/AP50 (VOC all-point, all scenes ranked together, class-agnostic), recalls at the top
300/1000/2500 and the loss terms, and draws the first validation grid's bird's-eye view and
slices with true and predicted boxes and their classes (``RUN/boxes/``, also in
TensorBoard)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from grid_store.dataset import real_extent
from model.checkpoints.transfer import ENCODER_ONLY
from model.detection.augment import random_rotate_scale
from model.detection.inference import detect
from model.detection.losses import LOSS_TERMS, fcos_losses
from model.detection.targets import LevelLayout, assign_targets, level_layout
from model.detection.windowed import detect_in_windows
from model.inference.windows import needs_windows
from model.metrics.detection import DetectionEvaluator
from model.networks.detector import UNBOUNDED, Detector, DetectorConfig
from model.pictures.boxes import save_box_views
from model.tasks.base import DenseTask, FinetuneConfig
from model.training.cli import Shortcut
from model.training.config import json_ready
from model.training.distributed import unwrap
from model.training.steps import autocast
from model.training.task import Batch, report_value
from model.training.validation import BatchMetric

logger = logging.getLogger(__name__)

REFERENCE_GRID = 160
"""Side of the grids NeRF-RPN's size ranges were chosen for (facts section 6.3)."""


@dataclass
class DetectConfig(FinetuneConfig):
    """A detection run (see :class:`model.tasks.base.FinetuneConfig`)."""

    task = "detect"
    cli_shortcuts: ClassVar[dict[str, Any]] = {
        "--fpn-channels": Shortcut("detector_overrides", "channels", int,
                                   "FPN and head width (the reference's 256; 64 or fewer make "
                                   "CPU runs affordable)"),
        "--stage-norm": Shortcut("detector_overrides", "stage_norm", str,
                                 "what the FPN reads: none (the raw stage outputs, the "
                                 "reference) | layer (each stage through its own LayerNorm)"),
    }  # fmt: skip
    trajectory_fields: ClassVar[tuple[str, ...]] = (
        *FinetuneConfig.trajectory_fields, "num_classes", "detector_overrides",
        "scale_size_ranges",
    )  # fmt: skip

    augment: bool = False
    """Augment the training grids: random 90-degree rotations about z and x/y flips, then
    NeRF-RPN's small rotation about z (+-10 degrees) and scaling (x0.9-1.1), each with
    probability 0.5; the boxes move with the voxels."""
    num_classes: int | None = None
    """Box classes the head learns (the stored ``box_labels``, ``0 .. K-1``; per-class AP);
    ``None``: class-agnostic objectness, NeRF-RPN's. Box labels are indices into the store's
    ``semantic_classes`` (void included), so for the synthetic rooms K is 11."""
    detector_overrides: dict[str, Any] = field(default_factory=dict)
    """Overrides of :class:`model.networks.detector.DetectorConfig` fields (e.g.
    ``{"channels": 64}`` for CPU runs; the reference's FPN has 256)."""
    scale_size_ranges: bool = False
    """Scale NeRF-RPN's per-level size ranges (set for 160^3 grids) to the input grid, so
    that a box goes to the level it would at 160^3. Off by default: at 64^3 with 2 labelled
    rooms it cut test AP50 from 22.8 to 5.0 (the deep levels' few cells get the big boxes
    and too few positives to learn them; BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes is not None and self.num_classes < 2:
            self.fail("num_classes", "must be >= 2 or None (class-agnostic)")

    def detector_config(self, input_size: int) -> DetectorConfig:
        """The :class:`DetectorConfig` these fields ask for, for a network whose input cube
        has ``input_size`` voxels a side (see ``scale_size_ranges``)."""
        overrides = dict(self.detector_overrides)
        if self.num_classes is not None:
            overrides["num_classes"] = self.num_classes
        if self.scale_size_ranges and "size_ranges" not in overrides:
            overrides["size_ranges"] = scaled_size_ranges(input_size)
        try:
            return DetectorConfig(**overrides)
        except TypeError as exc:
            known = [f.name for f in dataclasses.fields(DetectorConfig)]
            raise ValueError(f"detector_overrides: {exc}; known fields: {known}") from None


def scaled_size_ranges(input_size: int) -> list[list[float]]:
    """The reference's size ranges for 160^3 grids, in voxels of an ``input_size`` grid
    (the last level stays unbounded)."""
    scale = input_size / REFERENCE_GRID
    reference = DetectorConfig().size_ranges
    return [[lo * scale if lo > 0 else lo, hi * scale if hi < UNBOUNDED else hi]
            for lo, hi in reference]  # fmt: skip


def _feed_evaluator(evaluator: DetectionEvaluator, batch: Batch, p: dict) -> None:
    labels = p["labels"]
    for b, (scene_id, found) in enumerate(zip(batch["scene_id"], p["detections"], strict=True)):
        evaluator.add(scene_id, found.boxes.cpu(), found.scores.cpu(), p["boxes"][b].cpu(),
                      *((found.labels.cpu(), labels[b]) if labels else ()))  # fmt: skip


class DetectionTask(DenseTask):
    """Fine-tune (or train from scratch) the FCOS detector on the store's boxes."""

    name = "detect"
    config_class = DetectConfig
    description = "oriented 3D boxes, NeRF-RPN's anchor-free FCOS head (AP25, AP50)"
    loss_terms = LOSS_TERMS
    val_keys = ("ap50", "ap25", "recall50@300", "loss")
    selection_key = "ap50"
    picture_dir = "boxes"
    carried_prefixes = ENCODER_ONLY

    def __init__(self, config: DetectConfig, ctx) -> None:
        super().__init__(config, ctx)
        self.detector_config = config.detector_config(self.input_size)
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
                named = self.store.scene_attrs(scene).get("semantic_classes")
                hint = (f"; its boxes are labelled with the store's {len(named)} "
                        f"semantic_classes: pass --num-classes {len(named)}" if named else "")
                raise ValueError(
                    f"{self.store.url}: scene {scene!r} box_labels span "
                    f"[{labels.min()}, {labels.max()}], outside the {k} classes of "
                    f"--num-classes{hint}"
                )  # fmt: skip
        names = {tuple(self.store.scene_attrs(s).get("semantic_classes") or ()) for s in scene_ids}
        self.class_names = list(names.pop()) if len(names) == 1 else None
        if self.class_names is None or len(self.class_names) != k:
            self.class_names = [f"class_{i}" for i in range(k)]

    def datasets(self, train_scenes, val_scenes):
        return self.grid_datasets(train_scenes, val_scenes)

    # ---------------------------------------------------------------- model
    def make_network(self) -> nn.Module:
        return Detector(self.mae_config, self.detector_config)

    def model_config(self) -> dict[str, Any]:
        return json_ready({**super().model_config(),
                           "detector": dataclasses.asdict(self.detector_config),
                           "class_names": self.class_names})  # fmt: skip

    def step_generators(self) -> dict[str, torch.Generator]:
        # not shared per step: every micro-batch of a step draws its own rotations and scales
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

    def memory_probe(self, model, batch):
        # Targets depend on the boxes' values, which meta tensors do not have: the network
        # alone (the head's outputs and targets are small beside its activations).
        output = model(batch["rgba"])
        return sum(m.sum() for maps in (output.logits, output.deltas, output.centerness)
                   for m in maps)  # fmt: skip

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
    def predict(self, model, batch, device, amp_dtype):
        rgba = batch["rgba"].to(device)  # (B, 4, X, Y, Z): S^3, or whole rooms
        valid = batch["valid"].to(device)  # (B, X, Y, Z)
        boxes = [b.to(device) for b in batch["boxes"]]
        labels = self._labels(batch)

        def run(grids, grid_valid, grid_boxes, grid_labels):
            with autocast(device, amp_dtype):
                output = model(grids)
            layout, targets, terms = self.scored(model, output, grid_boxes, grid_valid,
                                                 grid_labels, device)  # fmt: skip
            found = detect(output, layout, targets.location_valid, self.detector_config)
            return found, {t: terms[t].detach() for t in LOSS_TERMS}

        if needs_windows(rgba.shape[-3:], self.input_size):
            c = self.detector_config
            rooms = [detect_in_windows(run, rgba[b], valid[b], real_extent(valid[b]).tolist(),
                                       self.input_size, self.overlap_voxels, c.nms_thresh,
                                       c.post_nms_top_n, boxes[b],
                                       labels[b].to(device) if labels else None)
                     for b in range(len(rgba))]  # fmt: skip
            detections = [found for found, _ in rooms]
            losses = {t: torch.stack([terms[t] for _, terms in rooms]).mean() for t in LOSS_TERMS}
        else:
            detections, losses = run(rgba, valid, boxes, labels)
        return {"rgba": rgba, "valid": valid, "boxes": boxes, "labels": labels,
                "detections": detections, "losses": losses}  # fmt: skip

    def metric(self) -> BatchMetric:
        return BatchMetric(DetectionEvaluator(classes=self.class_names), _feed_evaluator)

    def draw(self, path: Path, batch: Batch, prediction: dict, title: str) -> Path:
        p = prediction
        found = p["detections"][0]
        classes = self.class_names if p["labels"] else None
        return save_box_views(path, p["rgba"][0], p["valid"][0], p["boxes"][0], found.boxes,
                              found.scores, title=title, class_names=classes,
                              gt_labels=p["labels"][0] if classes else None,
                              labels=found.labels if classes else None)  # fmt: skip

    def run_info(self) -> dict[str, Any]:
        info = super().run_info()
        info["detector"] = json_ready(dataclasses.asdict(self.detector_config))
        info["class_names"] = self.class_names
        return info

    @classmethod
    def task_rows(cls, summary: dict[str, Any]) -> list[tuple[str, Any]]:
        return [
            ("val AP25", summary.get("val_ap25")),
            ("val AP50", summary.get("val_ap50")),
            *((f"val recall50@{k}", summary.get(f"val_recall50@{k}")) for k in (300, 1000, 2500)),
            ("val average recall", summary.get("val_average_recall")),
            ("val GT boxes / detections",
             f"{summary.get('val_num_gt')} / {summary.get('val_num_detections')}"),
            ("val loss (cls / reg / ctr)", " / ".join(
                report_value(summary.get(f"val_loss_{t}")) for t in ("cls", "reg", "ctr"))),
            ("FPN channels", (summary.get("detector") or {}).get("channels")),
        ]  # fmt: skip

    @classmethod
    def report_tables(cls, summary: dict[str, Any]) -> list[tuple[str, list[str], list[list]]]:
        ap25 = summary.get("val_per_class_ap25") or {}
        ap50 = summary.get("val_per_class_ap50") or {}
        if not (ap25 or ap50):  # class-agnostic
            return []
        rows = [[name, ap25.get(name), ap50.get(name)] for name in {**ap25, **ap50}]
        return [("Per-class AP (validation)", ["class", "AP25", "AP50"], rows)]

    @classmethod
    def headline(cls, summary: dict[str, Any]) -> str:
        return f"val AP50 {summary.get('val_ap50')}, AP25 {summary.get('val_ap25')}"
