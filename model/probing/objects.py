"""The object probe: what an object is and how big, read linearly from features pooled over it.

Each stored box is one row: the mean of the features at the centres of the valid voxels
inside the rotated box (:func:`model.probing.rooms.box_voxels`, computed through the rooms'
cached pooling matrices, so no per-voxel feature is ever held). From these rows:

- **class**: multinomial logistic regression on the training rooms' boxes, scored on the test
  rooms' boxes by accuracy, balanced accuracy (mean recall over the classes present among the
  test boxes) and, as the floor a reader with no features reaches, the accuracy of always
  answering the training boxes' most common class;
- **size**: ridge regression of ``log(w, l, h)`` (extents in voxels, along the box's own axes),
  scored by R^2 per axis on the test boxes (1 - residual / variance about the test boxes' own
  mean: 0 is no better than a constant, 1 is exact) and its mean over the three.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from model.probing.interpolation import pool_map
from model.probing.linear import Classifier, LinearMap, balanced_accuracy
from model.probing.rooms import ProbeRooms

SIZE_AXES = ("w", "l", "h")


def pooled_boxes(maps: Sequence[Tensor], rooms: ProbeRooms, room: int) -> Tensor:
    """``(N_r, sum C_i)``: room ``room``'s maps ``(C_i, D_i, H_i, W_i)`` averaged over each of
    its boxes' voxels (trilinear reads at the voxel centres)."""
    return torch.cat([pool_map(rooms.pooling(room, m.shape[1:]), m) for m in maps], 1)


def log_sizes(boxes: Tensor) -> Tensor:
    """``(N, 7)`` boxes -> ``(N, 3)`` float64 ``log(w, l, h)`` (voxels)."""
    return boxes[:, 3:6].double().clamp(min=1e-6).log()


def r2_scores(predicted: Tensor, target: Tensor) -> Tensor:
    """``(T,)`` coefficient of determination per column of ``(n, T)`` targets (NaN for a
    column without variance)."""
    residual = (target - predicted).square().sum(0)
    total = (target - target.mean(0)).square().sum(0)
    return torch.where(total > 0, 1 - residual / total, torch.full_like(total, math.nan))


def object_scores(
    classifier: Classifier,
    size_map: LinearMap,
    features: Tensor,
    labels: Tensor,
    boxes: Tensor,
    train_labels: Tensor,
) -> dict:
    """Scores of the fitted probes on test boxes: ``features`` ``(N, C)`` pooled, ``labels``
    ``(N,)``, ``boxes`` ``(N, 7)``; ``train_labels`` give the majority-class floor."""
    if len(labels) == 0:
        nan = math.nan
        return {"accuracy": nan, "balanced_accuracy": nan, "majority_accuracy": nan,
                "size_r2": nan, "size_r2_per_axis": dict.fromkeys(SIZE_AXES, nan),
                "test_boxes": 0}  # fmt: skip
    predicted = classifier.predict(features)
    majority = train_labels.mode().values
    r2 = r2_scores(size_map(features).double(), log_sizes(boxes))
    return {
        "accuracy": float((predicted == labels).double().mean()),
        "balanced_accuracy": balanced_accuracy(predicted, labels),
        "majority_accuracy": float((labels == majority).double().mean()),
        "size_r2": float(r2.nanmean()),
        "size_r2_per_axis": dict(zip(SIZE_AXES, r2.tolist(), strict=True)),
        "test_boxes": len(labels),
    }
