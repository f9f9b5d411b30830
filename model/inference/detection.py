"""A trained detector on a store's scenes: load the checkpoint, detect, evaluate.

Used by ``nerfmae detect`` (one scene's boxes, in world units, to ``boxes.json``), by
``nerfmae evaluate`` (AP25/AP50 and recalls over scenes, the same
:class:`~model.metrics.detection.DetectionEvaluator` validation uses) and by the transfer
benchmark. A grid is read as validation reads it (:class:`grid_store.dataset.GridDataset`,
no augmentation, cropped from 0 where it exceeds the model's cube), so scores here equal
the run's validation scores on the same scenes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grid_store import GridStore
from grid_store.boxes import voxel_to_world
from grid_store.dataset import GridDataset
from model.checkpoints.loading import network_of
from model.checkpoints.reading import read_checkpoint
from model.detection.inference import Detections, detect
from model.detection.targets import level_layout, location_mask
from model.metrics.detection import DetectionEvaluator
from model.networks.detector import Detector

logger = logging.getLogger(__name__)


def load_detector(
    path: str | Path, device: str | torch.device = "cpu", alpha_step: float | None = None
) -> tuple[Detector, float | None]:
    """The detector of a detection checkpoint (``nerfmae finetune detect``'s, or the
    published ``front3d_obb_finetuned.pt``), in eval mode on ``device``, and the opacity step
    its grids are re-expressed for: ``alpha_step`` if given, else the one it was trained on
    (:attr:`~model.checkpoints.reading.Checkpoint.alpha_step`).

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: a checkpoint of another task, or one that does not fit its detector.
    """
    checkpoint = read_checkpoint(path)
    if checkpoint.task != "detect":
        raise ValueError(
            f"{path}: task: this is a {checkpoint.task!r} checkpoint; boxes come from a "
            "detection checkpoint (RUN/checkpoints/latest.pt of `nerfmae finetune detect`, or "
            "NeRF-MAE's front3d_obb_finetuned.pt)"
        )
    model = network_of(checkpoint).to(device)
    return model, alpha_step if alpha_step is not None else checkpoint.alpha_step


@dataclass
class SceneDetections:
    """One scene's detections and ground truth, in the grid's voxel coordinates and in world
    units (``None`` where the scene stores no boxes)."""

    scene_id: str
    boxes: np.ndarray
    """``(K, 7)`` voxel coordinates, best first."""
    scores: np.ndarray
    """``(K,)``."""
    world_boxes: np.ndarray
    """``(K, 7)`` world units (contract 1)."""
    gt_boxes: np.ndarray | None
    """``(N, 7)`` voxel coordinates, or None."""
    rgba: torch.Tensor
    """``(4, S, S, S)`` the model's input."""
    valid: torch.Tensor
    """``(S, S, S)`` its real region."""


@torch.no_grad()
def detect_scenes(
    model: Detector,
    store_url: str,
    scene_ids: Sequence[str],
    device: str | torch.device = "cpu",
    alpha_step: float | None = None,
) -> Iterator[SceneDetections]:
    """Run ``model`` on each scene (one grid at a time, its alpha re-expressed for
    ``alpha_step`` as the detector was trained), yielding its detections."""
    store = GridStore(store_url, mode="r")
    dataset = GridDataset(store_url, list(scene_ids), size=model.config.resolution,
                          alpha_step=alpha_step)  # fmt: skip
    layout = None
    for index, scene_id in enumerate(dataset.scene_ids):
        sample = dataset[index]
        rgba = sample["rgba"][None].to(device)  # (1, 4, S, S, S)
        valid = sample["valid"][None].to(device)  # (1, S, S, S)
        output = model(rgba)
        if layout is None:
            layout = level_layout([tuple(m.shape[-3:]) for m in output.logits], model.strides,
                                  rgba.device)  # fmt: skip
        found: Detections = detect(output, layout, location_mask(layout, valid[0])[None],
                                   model.detector)[0]  # fmt: skip
        attrs = store.scene_attrs(scene_id)
        boxes = found.boxes.cpu().numpy()
        gt = sample.get("boxes")
        yield SceneDetections(
            scene_id=scene_id,
            boxes=boxes,
            scores=found.scores.cpu().numpy(),
            world_boxes=voxel_to_world(boxes, np.asarray(attrs["bbox_min"]), attrs["voxel_size"]),
            gt_boxes=None if gt is None else gt.numpy(),
            rgba=sample["rgba"],
            valid=sample["valid"],
        )


def evaluate_detector(
    model: Detector,
    store_url: str,
    scene_ids: Sequence[str],
    device: str | torch.device = "cpu",
    picture_dir: str | Path | None = None,
    alpha_step: float | None = None,
) -> dict[str, Any]:
    """AP25/AP50, recalls and counts of ``model`` over ``scene_ids`` (all must store boxes);
    with ``picture_dir``, each scene's boxes are drawn to ``<dir>/<scene>.png``."""
    from model.pictures.boxes import save_box_views

    evaluator = DetectionEvaluator()
    for found in detect_scenes(model, store_url, scene_ids, device, alpha_step):
        if found.gt_boxes is None:
            raise ValueError(f"{store_url}: scene {found.scene_id!r} stores no boxes to score")
        evaluator.add(found.scene_id, found.boxes, found.scores, found.gt_boxes)
        if picture_dir is not None:
            save_box_views(Path(picture_dir) / f"{found.scene_id}.png", found.rgba, found.valid,
                           found.gt_boxes, found.boxes, found.scores,
                           title=f"scene {found.scene_id}")  # fmt: skip
    return evaluator.compute()


__all__ = ["SceneDetections", "detect_scenes", "evaluate_detector", "load_detector"]
