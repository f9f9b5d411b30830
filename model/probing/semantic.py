"""The linear semantic probe: which class a voxel belongs to, read linearly from features at
the voxel.

Training rows are the features at each training room's stratified voxels
(:func:`model.probing.rooms.stratified_voxels`); the reader is a multinomial logistic regression
over the non-void classes present in them (:func:`model.probing.linear.fit_logistic`, its L2
strength chosen by :func:`sample_miou` on held-out training rooms). It is scored densely: every
labelled valid voxel of every test room is classified (void voxels, free space, are neither
trained on nor scored, as in :mod:`model.metrics.semantic`), into one confusion matrix, from
which come mIoU / mAcc over the classes present in the test rooms, allAcc, and the mIoU over the
furniture classes alone: walls, floor and ceiling sit where a room's shape puts them, so their
IoU says little about what an encoder learnt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from model.metrics.semantic import confusion_matrix, scores_from_confusion
from model.probing.interpolation import project_maps, sample_map, sample_maps
from model.probing.linear import Classifier, LinearMap, Scorer
from model.probing.rooms import ProbeRooms


def training_rows(maps: Sequence[Tensor], rooms: ProbeRooms, room: int) -> tuple[Tensor, Tensor]:
    """Room ``room``'s training voxels: features ``(P, sum C_i)`` read from its maps
    ``(C_i, D_i, H_i, W_i)`` and labels ``(P,)`` int64."""
    points = rooms.points[room]
    labels = rooms.semantic[room][points[:, 0], points[:, 1], points[:, 2]].long()
    return sample_maps(maps, points, rooms.size), labels


def linear_read(maps: Sequence[Tensor], linear: LinearMap, points: Tensor, size: int) -> Tensor:
    """``linear(sample_maps(maps, points, size))`` ``(P, K)``, computed by reading the maps
    projected to ``K`` channels (:func:`project_maps`): exact, and at ``K`` channels a read
    of every labelled voxel of a room costs little."""
    projected = project_maps(maps, linear.weight)
    return sum(sample_map(p, points, size) for p in projected) + linear.bias


def room_confusion(
    maps: Sequence[Tensor], probe: Classifier, rooms: ProbeRooms, room: int, num_classes: int
) -> Tensor:
    """``(K, K)`` confusion ``[true, predicted]`` of ``probe`` over every labelled valid voxel
    of room ``room``."""
    points = rooms.labelled(room)
    predicted = probe.classes[linear_read(maps, probe.map, points, rooms.size).argmax(1)]
    target = rooms.semantic[room][points[:, 0], points[:, 1], points[:, 2]].long()
    return confusion_matrix(predicted, target, num_classes)


def sample_miou(labels: Tensor, weights: Tensor, num_classes: int) -> Scorer:
    """A :func:`~model.probing.linear.fit_logistic` scorer: the mIoU over held-out training
    voxels, each counted as the ``weights`` voxels of its class and room it was drawn for
    (:func:`~model.probing.rooms.stratified_voxels`), so that choosing the regularisation
    aims at the dense mIoU the test rooms are scored by, not at the class-balanced sample."""

    def score(predicted: Tensor, rows: Tensor) -> float:
        pairs = labels[rows] * num_classes + predicted
        confusion = torch.bincount(pairs, weights=weights[rows], minlength=num_classes**2)
        return scores_from_confusion(confusion.reshape(num_classes, num_classes))["miou"]

    return score


def semantic_scores(
    confusion: Tensor, class_names: Sequence[str], furniture: Sequence[int]
) -> dict:
    """:func:`scores_from_confusion` plus ``furniture_miou``: the mean IoU over the classes
    ``furniture`` (ids) present in the targets (NaN when none is) and which they were."""
    scores = scores_from_confusion(confusion, list(class_names))
    names = [class_names[c] for c in furniture if c < len(class_names)]
    present = [n for n in names if n in scores["per_class_iou"]]
    ious = [scores["per_class_iou"][n] for n in present]
    scores["furniture_miou"] = sum(ious) / len(ious) if ious else math.nan
    scores["furniture_present"] = present
    return scores
