"""A trained detector on a store's scenes: load the checkpoint, detect, evaluate.

Used by ``nerfmae detect`` (one scene's boxes, in world units, to ``boxes.json``), by
``nerfmae evaluate`` (AP25/AP50, per-class AP and recalls over scenes, the same
:class:`~model.metrics.detection.DetectionEvaluator` validation uses) and by the transfer
benchmark. A grid is read whole, as validation reads it (:class:`grid_store.dataset.GridDataset`
with ``whole=True``, no augmentation); one larger than the detector's cube is detected
through overlapping cubes whose boxes are merged (:mod:`model.detection.windowed`), so
scores here equal the run's validation scores on the same scenes and every stored box
counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grid_store import GridStore
from grid_store.boxes import voxel_to_world
from grid_store.dataset import GridDataset, real_extent
from model.checkpoints.loading import network_of
from model.checkpoints.reading import read_checkpoint
from model.detection.inference import Detections, detect
from model.detection.targets import level_layout, location_mask
from model.detection.windowed import detect_in_windows
from model.inference.windows import overlap_voxels
from model.metrics.detection import DetectionEvaluator
from model.networks.detector import Detector

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_OVERLAP = 0.5
"""Share of the cube's edge neighbouring windows share (``FinetuneConfig.window_overlap``)."""


@dataclass
class LoadedDetector:
    """A detection checkpoint ready to run."""

    model: Detector
    """In eval mode, on the device it was loaded for."""
    path: str
    alpha_step: float | None
    """The opacity step grids are re-expressed for (see :func:`load_detector`)."""
    class_names: list[str] | None
    """Names of the head's classes by label; ``None`` for a class-agnostic detector."""
    val_scenes: list[str] | None
    """The scenes its run validated on, where the checkpoint records them."""
    train_scenes: list[str] | None
    window_overlap: float = DEFAULT_WINDOW_OVERLAP
    """The run's ``window_overlap`` (the default for published weights)."""


def load_detector(
    path: str | Path, device: str | torch.device = "cpu", alpha_step: float | None = None
) -> LoadedDetector:
    """The detector of a detection checkpoint (``nerfmae finetune detect``'s, or the
    published ``front3d_obb_finetuned.pt``) on ``device``, with the opacity step its grids
    are re-expressed for: ``alpha_step`` if given, else the one it was trained on
    (:attr:`~model.checkpoints.reading.Checkpoint.alpha_step`); its class names and its
    run's split where recorded.

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: a checkpoint of another task, or one that does not fit its detector.
    """
    checkpoint = read_checkpoint(path)
    if checkpoint.task != "detect":
        raise ValueError(
            f"{path}: task: this is a {checkpoint.task!r} checkpoint; boxes come from a "
            "detection checkpoint (RUN/checkpoints/best.pt or latest.pt of `nerfmae finetune "
            "detect`, or NeRF-MAE's front3d_obb_finetuned.pt)"
        )
    model = network_of(checkpoint).to(device)
    k = model.detector.num_classes
    names = checkpoint.class_names
    if k > 1 and (names is None or len(names) != k):
        names = [f"class_{i}" for i in range(k)]
    split = checkpoint.raw.get("split") or _recorded_split(Path(path))
    config = checkpoint.raw.get("config") or {}
    return LoadedDetector(
        model=model, path=str(path),
        alpha_step=alpha_step if alpha_step is not None else checkpoint.alpha_step,
        class_names=names if k > 1 else None,
        val_scenes=split.get("val_scenes"), train_scenes=split.get("train_scenes"),
        window_overlap=float(config.get("window_overlap", DEFAULT_WINDOW_OVERLAP)),
    )  # fmt: skip


def _recorded_split(path: Path) -> dict[str, Any]:
    """The split of the run a checkpoint without one belongs to (``RUN/config.json`` beside
    ``RUN/checkpoints/``; checkpoints written before they carried it), or ``{}``."""
    config = path.parent.parent / "config.json"
    if path.parent.name != "checkpoints" or not config.is_file():
        return {}
    try:
        resolved = json.loads(config.read_text()).get("resolved") or {}
    except (OSError, ValueError):
        return {}
    scenes = resolved.get("val_scenes")
    return {"val_scenes": scenes, "train_scenes": resolved.get("train_scenes")} if scenes else {}


@dataclass
class SceneDetections:
    """One scene's detections and ground truth, in the grid's voxel coordinates and in world
    units (``None`` where the scene stores no boxes)."""

    scene_id: str
    boxes: np.ndarray
    """``(K, 7)`` voxel coordinates, best first."""
    scores: np.ndarray
    """``(K,)``."""
    labels: np.ndarray
    """``(K,)`` int64 box classes (all 0 for a class-agnostic detector)."""
    world_boxes: np.ndarray
    """``(K, 7)`` world units (contract 1)."""
    gt_boxes: np.ndarray | None
    """``(N, 7)`` voxel coordinates, or None."""
    gt_labels: np.ndarray | None
    """``(N,)`` their stored classes, or None."""
    rgba: torch.Tensor
    """``(4, X, Y, Z)`` the whole grid (padded to at least the detector's cube)."""
    valid: torch.Tensor
    """``(X, Y, Z)`` its real region."""


@torch.no_grad()
def detect_scenes(
    detector: LoadedDetector,
    store_url: str,
    scene_ids: Sequence[str],
    device: str | torch.device = "cpu",
    window_overlap: float | None = None,
) -> Iterator[SceneDetections]:
    """Run ``detector`` on each whole scene (one grid at a time, its alpha re-expressed as
    the detector was trained; grids larger than its cube through windows overlapping by
    ``window_overlap`` of the cube, default the run's), yielding its detections."""
    model = detector.model
    size = model.config.resolution
    overlap = overlap_voxels(size, detector.window_overlap if window_overlap is None
                             else window_overlap)  # fmt: skip
    store = GridStore(store_url, mode="r")
    dataset = GridDataset(store_url, list(scene_ids), size=size, alpha_step=detector.alpha_step,
                          whole=True)  # fmt: skip
    layouts: dict[str, Any] = {}

    def run(grids, grid_valid, _boxes, _labels):
        output = model(grids)  # grids (n, 4, S, S, S)
        if "layout" not in layouts:
            layouts["layout"] = level_layout([tuple(m.shape[-3:]) for m in output.logits],
                                             model.strides, grids.device)  # fmt: skip
        layout = layouts["layout"]
        mask = torch.stack([location_mask(layout, v) for v in grid_valid])  # (n, L)
        return detect(output, layout, mask, model.detector), None

    for index, scene_id in enumerate(dataset.scene_ids):
        sample = dataset[index]
        rgba = sample["rgba"].to(device)  # (4, X, Y, Z)
        valid = sample["valid"].to(device)  # (X, Y, Z)
        c = model.detector
        found: Detections = detect_in_windows(
            run, rgba, valid, real_extent(valid).tolist(), size, overlap, c.nms_thresh,
            c.post_nms_top_n,
        )[0]  # fmt: skip
        attrs = store.scene_attrs(scene_id)
        boxes = found.boxes.cpu().numpy()
        gt, gt_labels = sample.get("boxes"), sample.get("box_labels")
        yield SceneDetections(
            scene_id=scene_id,
            boxes=boxes,
            scores=found.scores.cpu().numpy(),
            labels=found.labels.cpu().numpy().astype(np.int64),
            world_boxes=voxel_to_world(boxes, np.asarray(attrs["bbox_min"]), attrs["voxel_size"]),
            gt_boxes=None if gt is None else gt.numpy(),
            gt_labels=None if gt_labels is None else gt_labels.numpy(),
            rgba=sample["rgba"],
            valid=sample["valid"],
        )


def draw_scene(path: str | Path, found: SceneDetections, detector: LoadedDetector,
               keep: np.ndarray | None = None) -> Path:
    """The scene's stored and detected boxes over its grid (bird's-eye view and slices),
    with class names where the detector has classes; ``keep`` selects detections."""
    from model.pictures.boxes import save_box_views

    keep = np.ones(len(found.boxes), dtype=bool) if keep is None else keep
    classes = detector.class_names
    return save_box_views(
        path, found.rgba, found.valid, found.gt_boxes, found.boxes[keep], found.scores[keep],
        title=f"scene {found.scene_id}",
        gt_labels=found.gt_labels if classes else None,
        labels=found.labels[keep] if classes else None,
        class_names=classes,
    )  # fmt: skip


def evaluate_detector(
    detector: LoadedDetector,
    store_url: str,
    scene_ids: Sequence[str],
    device: str | torch.device = "cpu",
    picture_dir: str | Path | None = None,
    window_overlap: float | None = None,
) -> dict[str, Any]:
    """AP25/AP50 (per class too, for a detector with classes), recalls and counts of
    ``detector`` over ``scene_ids`` (all must store boxes); with ``picture_dir``, each
    scene's boxes are drawn to ``<dir>/<scene>.png``."""
    classes = detector.class_names
    evaluator = DetectionEvaluator(classes=classes)
    for found in detect_scenes(detector, store_url, scene_ids, device, window_overlap):
        if found.gt_boxes is None:
            raise ValueError(f"{store_url}: scene {found.scene_id!r} stores no boxes to score")
        labels = (found.labels, found.gt_labels) if classes else ()
        evaluator.add(found.scene_id, found.boxes, found.scores, found.gt_boxes, *labels)
        if picture_dir is not None:
            draw_scene(Path(picture_dir) / f"{found.scene_id}.png", found, detector)
    return evaluator.compute()


__all__ = [
    "DEFAULT_WINDOW_OVERLAP",
    "LoadedDetector",
    "SceneDetections",
    "detect_scenes",
    "draw_scene",
    "evaluate_detector",
    "load_detector",
]
