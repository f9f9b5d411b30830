"""Semantic labelling metrics and class weights on hand-made examples with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from model.metrics.semantic import (
    SemanticMetrics,
    class_weights,
    confusion_matrix,
    label_counts,
    scores_from_confusion,
)


def one_hot_logits(pred: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, X, Y, Z)`` labels -> ``(B, K, X, Y, Z)`` logits whose argmax is ``pred``."""
    return torch.nn.functional.one_hot(pred, k).permute(0, 4, 1, 2, 3).float()


def test_miou_macc_allacc_on_a_hand_made_example():
    # Eleven voxels, four classes (0 = void). Truth / prediction:
    #   void x2 (predicted 1 and 2: ignored), class 1 x4 (3 right, 1 -> 2),
    #   class 2 x4 (2 right, 2 -> 1); class 3 is in no target and is predicted once, on a
    #   padding voxel (not valid: ignored).
    target = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3])
    pred = torch.tensor([1, 2, 1, 1, 1, 2, 2, 2, 1, 1, 3])
    valid = torch.ones(11, dtype=torch.bool)
    valid[-1] = False
    confusion = confusion_matrix(pred, target, 4, valid)
    assert confusion.tolist() == [[0, 0, 0, 0], [0, 3, 1, 0], [0, 2, 2, 0], [0, 0, 0, 0]]
    scores = scores_from_confusion(confusion, ["void", "wall", "floor", "lamp"])
    # wall: TP 3, FN 1, FP 2 -> IoU 3/6, acc 3/4; floor: TP 2, FN 2, FP 1 -> IoU 2/5, acc 2/4
    assert scores["per_class_iou"] == pytest.approx({"wall": 0.5, "floor": 0.4})
    assert scores["miou"] == pytest.approx(0.45)
    assert scores["macc"] == pytest.approx(0.625)
    assert scores["allacc"] == pytest.approx(5 / 8)
    assert scores["classes_present"] == ["wall", "floor"] and scores["voxels"] == 8


def test_a_present_class_never_predicted_scores_zero_and_counts():
    target = torch.tensor([1, 1, 2, 2])
    pred = torch.tensor([1, 1, 1, 1])  # class 2 absent from the predictions
    scores = scores_from_confusion(confusion_matrix(pred, target, 3))
    assert scores["per_class_iou"] == pytest.approx({"1": 0.5, "2": 0.0})
    assert scores["miou"] == pytest.approx(0.25) and scores["macc"] == pytest.approx(0.5)


def test_accumulating_batches_equals_one_pass():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (4, 6, 6, 6), generator=g)
    pred = torch.randint(0, 5, (4, 6, 6, 6), generator=g)
    valid = torch.rand(4, 6, 6, 6, generator=g) > 0.2
    metric = SemanticMetrics(5)
    for b in range(4):
        metric.update(one_hot_logits(pred[b : b + 1], 5), target[b : b + 1], valid[b : b + 1])
    whole = scores_from_confusion(confusion_matrix(pred, target, 5, valid))
    assert metric.compute() == whole
    # and against an independent count: accuracy over the scored voxels
    scored = valid & (target != 0)
    assert whole["allacc"] == pytest.approx(float((pred[scored] == target[scored]).double().mean()))


def test_no_labelled_voxel_gives_nan_not_an_error():
    scores = scores_from_confusion(confusion_matrix(torch.zeros(3), torch.zeros(3), 3))
    assert math.isnan(scores["miou"]) and math.isnan(scores["allacc"])


def test_class_weights_are_bounded_inverse_log_frequency():
    counts = label_counts(torch.tensor([0] * 50 + [1] * 90 + [2] * 10), 4)
    assert counts.tolist() == [50, 90, 10, 0]
    weights = class_weights(counts)
    # p = 0.9 and 0.1 of the labelled voxels; void and the absent class 3 get 0
    expected = [0.0, 1 / math.log(1.02 + 0.9), 1 / math.log(1.02 + 0.1), 0.0]
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert weights[2] > weights[1]
    # the ratio never exceeds 1 / ln(1.02), however rare a class is
    rare = class_weights(torch.tensor([0, 10**9, 1]))
    assert rare[2] / rare[1] < 1 / math.log(1.02)


def test_bad_labels_and_empty_splits_are_refused():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\], found 0..5"):
        label_counts(torch.tensor([0, 5]), 3)
    with pytest.raises(ValueError, match="no labelled"):
        class_weights(torch.tensor([7, 0, 0]))
    with pytest.raises(ValueError, match="4 classes, the metric 3"):
        SemanticMetrics(3).update(torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 2, 2, 2).long())
