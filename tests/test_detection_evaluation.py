"""Detection metrics: VOC AP, the VOC matching rule, pooled ranking, recall@k, merging.

Most scenes use unit cubes on the x axis through the real rotated IoU: two unit cubes
whose centres are ``d <= 1`` apart along x overlap by ``1 - d``, so their IoU is
``(1 - d) / (1 + d)``: ``d = 0.2`` gives 2/3, ``d = 0.5`` gives 1/3.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.metrics.detection import (
    AVERAGE_RECALL_THRESHOLDS,
    DetectionEvaluator,
    average_precision,
    gt_coverage,
    match_detections,
)


def cubes(*xs: float, yaw: float = 0.0) -> torch.Tensor:
    """Unit cubes centred at ``(x, 0, 0)``: ``(len(xs), 7)``."""
    out = torch.zeros(len(xs), 7, dtype=torch.float64)
    out[:, 0] = torch.tensor(xs, dtype=torch.float64)
    out[:, 3:6] = 1.0
    out[:, 6] = yaw
    return out


def scores(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


EMPTY = np.zeros((0, 7))


def test_average_precision_uses_the_right_envelope():
    # recall    0.25  0.25  0.50  0.75   (+ sentinels 0 in front, 1 at the end)
    # precision 1.0   0.5   0.4   0.6    envelope from the right: 1, 1, .6, .6, (0)
    # AP = .25 * 1 + .25 * .6 + .25 * .6 + .25 * 0 = .55 (the raw curve would give .5)
    ap = average_precision(np.array([0.25, 0.25, 0.5, 0.75]), np.array([1.0, 0.5, 0.4, 0.6]))
    assert ap == pytest.approx(0.55)
    assert average_precision(np.zeros(0), np.zeros(0)) == 0.0
    assert average_precision(np.array([1.0]), np.array([1.0])) == pytest.approx(1.0)


def test_match_detections_is_the_voc_rule():
    # d0's best GT is g0: TP. d1's best GT is g0 (0.8) too, already taken: FP, although
    # g1 is free and overlaps it by 0.7 > 0.5. d2's best is g1, free: TP.
    iou = np.array([[0.9, 0.6], [0.8, 0.7], [0.1, 0.6]])
    assert match_detections(iou, 0.5).tolist() == [True, False, True]
    assert match_detections(torch.from_numpy(iou), 0.5).tolist() == [True, False, True]
    # the IoU must be strictly above the threshold (VOC, NeRF-RPN)
    assert match_detections(np.array([[0.5]]), 0.5).tolist() == [False]
    assert match_detections(np.zeros((2, 0)), 0.5).tolist() == [False, False]
    assert match_detections(np.zeros((0, 3)), 0.5).shape == (0,)


def test_gt_coverage_is_one_to_one_by_iou():
    # the best pair (d1, g0) = 0.9 goes first; d0 is then left with g1 (0.3); d2 has none
    iou = np.array([[0.8, 0.3], [0.9, 0.4], [0.0, 0.0]])
    assert gt_coverage(iou).tolist() == pytest.approx([0.9, 0.3])
    assert gt_coverage(iou[:1]).tolist() == pytest.approx([0.8, 0.0])
    assert gt_coverage(np.zeros((0, 2))).tolist() == [0.0, 0.0]


def one_scene_evaluator() -> DetectionEvaluator:
    """GT g0, g1, g2 at x = 0, 10, 20. Detections by score:
    d0 .9 at 0     IoU 1   with g0: TP
    d1 .8 at 0.2   IoU 2/3 with g0: a duplicate on g0, FP
    d2 .7 at 10.2  IoU 2/3 with g1: TP
    d3 .6 at 30    nothing: FP
    d4 .5 at 20.5  IoU 1/3 with g2: TP at IoU 0.25, FP at 0.5
    """
    ev = DetectionEvaluator(recall_top=(1, 3, 5))
    ev.add(
        "a",
        cubes(0.0, 0.2, 10.2, 30.0, 20.5)[[3, 1, 4, 0, 2]],  # added out of score order
        scores(0.9, 0.8, 0.7, 0.6, 0.5)[[3, 1, 4, 0, 2]],
        cubes(0.0, 10.0, 20.0),
    )
    return ev


def test_hand_ranking_ap_recall_and_average_recall():
    out = one_scene_evaluator().compute()
    # IoU 0.5: tp 1 0 1 0 0, precision 1 1/2 2/3 1/2 2/5, recall 1/3 1/3 2/3 2/3 2/3;
    # envelope 1 1 2/3 2/3 2/5: AP = 1/3 * 1 + 1/3 * 2/3 = 5/9 (g2 missed: last third 0)
    assert out["ap50"] == pytest.approx(5 / 9)
    # IoU 0.25: tp 1 0 1 0 1, precision ... 1/2 3/5, recall ... 2/3 1: AP = 5/9 + 1/3 * 3/5
    assert out["ap25"] == pytest.approx(5 / 9 + 1 / 5)
    # coverage of all 5: g0 by d0 (1), g1 by d2 (2/3), g2 by d4 (1/3)
    assert out["recall25@5"] == pytest.approx(1.0)
    assert out["recall50@5"] == pytest.approx(2 / 3)
    # top 3 (d0 d1 d2) miss g2; top 1 only covers g0
    assert out["recall25@3"] == pytest.approx(2 / 3)
    assert out["recall50@3"] == pytest.approx(2 / 3)
    assert out["recall25@1"] == pytest.approx(1 / 3)
    assert out["recall50@1"] == pytest.approx(1 / 3)
    # 15 thresholds .25:.05:.95: g0 passes all, g1 (0.667) the 9 up to .65, g2 (0.333) 2
    assert len(AVERAGE_RECALL_THRESHOLDS) == 15
    assert out["average_recall"] == pytest.approx((15 + 9 + 2) / 45)
    assert (out["num_scenes"], out["num_gt"], out["num_detections"]) == (1, 3, 5)


def test_ranking_is_pooled_over_scenes():
    # scene a alone: one TP, AP 1
    a = (cubes(0.0), scores(0.5), cubes(0.0))
    ev = DetectionEvaluator()
    ev.add("a", *a)
    assert ev.compute()["ap50"] == pytest.approx(1.0)
    # with scene b: its FP at 0.9 ranks above a's TP and its GT is missed.
    # precision 0, 1/2; recall 0, 1/2 -> AP = 1/2 * 1/2
    ev.add("b", cubes(5.0), scores(0.9), cubes(0.0))
    assert ev.compute()["ap50"] == pytest.approx(0.25)
    # a scene without GT: its detections are FPs, and it adds no GT.
    # precision 0, 1/2; recall 0, 1 -> AP = 1/2
    ev = DetectionEvaluator()
    ev.add("a", *a)
    ev.add("c", cubes(0.0), scores(0.9), EMPTY)
    out = ev.compute()
    assert out["ap50"] == pytest.approx(0.5)
    assert out["recall50@300"] == pytest.approx(1.0)
    assert (out["num_gt"], out["num_detections"]) == (1, 2)


def test_rotated_boxes_and_numpy_inputs():
    # a cube turned by 90 degrees is the same cube; a 2x1x1 box turned by 90 degrees and
    # swapped is the same box: IoU 1 through the default rotated IoU
    gt = np.array([[0, 0, 0, 2, 1, 1, 0.0], [10, 0, 0, 1, 1, 1, 0.0]])
    pred = np.array([[0, 0, 0, 1, 2, 1, math.pi / 2], [10, 0, 0, 1, 1, 1, 0.3]])
    ev = DetectionEvaluator(iou_thresholds=(0.5, 0.75))
    ev.add("r", pred, np.array([0.9, 0.8]), gt)
    out = ev.compute()
    # the 0.3 rad turned cube overlaps its GT by much more than .75 (an octagon)
    assert out["ap50"] == pytest.approx(1.0)
    assert out["ap75"] == pytest.approx(1.0)
    assert out["recall75@2500"] == pytest.approx(1.0)


def test_empty_cases():
    out = DetectionEvaluator().compute()
    assert out["ap25"] is None and out["ap50"] is None
    assert out["recall50@1000"] is None and out["average_recall"] is None
    assert (out["num_scenes"], out["num_gt"], out["num_detections"]) == (0, 0, 0)

    ev = DetectionEvaluator()  # GT but no predictions: everything 0
    ev.add("gt-only", EMPTY, np.zeros(0), cubes(0.0, 3.0))
    out = ev.compute()
    assert out["ap50"] == 0.0 and out["recall25@2500"] == 0.0 and out["average_recall"] == 0.0
    assert out["num_gt"] == 2

    ev = DetectionEvaluator()  # predictions but no GT anywhere: undefined
    ev.add("pred-only", cubes(0.0), scores(0.7), torch.zeros(0, 7))
    out = ev.compute()
    assert out["ap50"] is None and out["recall50@300"] is None
    assert out["num_detections"] == 1

    ev = DetectionEvaluator()  # an empty scene changes nothing
    ev.add("a", cubes(0.0), scores(0.5), cubes(0.0))
    ev.add("nothing", EMPTY, np.zeros(0), EMPTY)
    assert ev.compute()["ap50"] == pytest.approx(1.0)


def test_per_class_ap():
    classes = ("chair", "table", "lamp")
    ev = DetectionEvaluator(classes=classes)
    # GT: chair at 0, table at 10. Detections by score:
    # d0 .9 at 10 "chair"; d1 .8 at 10 "table"; d2 .7 at 0 "chair"; d3 .6 at 20 "lamp"
    ev.add(
        "s",
        cubes(10.0, 10.0, 0.0, 20.0),
        scores(0.9, 0.8, 0.7, 0.6),
        cubes(0.0, 10.0),
        pred_labels=torch.tensor([0, 1, 0, 2]),
        gt_labels=torch.tensor([0, 1]),
    )
    out = ev.compute()
    # class-agnostic: d0 TP (table GT), d1 FP (same GT), d2 TP, d3 FP:
    # precision 1 1/2 2/3 1/2, recall 1/2 1/2 1 1 -> AP = 1/2 + 1/2 * 2/3 = 5/6
    assert out["ap50"] == pytest.approx(5 / 6)
    # chair: d0 FP (no chair GT there), d2 TP -> precision 0, 1/2, recall 0, 1 -> 1/2
    # table: d1 TP -> 1; lamp: a detection but no GT -> None
    for key in ("per_class_ap50", "per_class_ap25"):
        assert out[key]["chair"] == pytest.approx(0.5)
        assert out[key]["table"] == pytest.approx(1.0)
        assert out[key]["lamp"] is None
    # without labels there is no per-class AP; mixing the two is refused
    unlabelled = DetectionEvaluator(classes=classes)
    unlabelled.add("s", cubes(0.0), scores(0.5), cubes(0.0))
    assert "per_class_ap50" not in unlabelled.compute()
    with pytest.raises(ValueError, match="labels"):
        unlabelled.add("t", cubes(0.0), scores(0.5), cubes(0.0), [0], [0])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ev.add("u", cubes(0.0), scores(0.5), cubes(0.0), [3], [0])


def random_scene(rng: np.random.Generator, n_pred: int, n_gt: int):
    centre, size = rng.uniform(-4, 4, (n_gt, 3)), rng.uniform(0.5, 2, (n_gt, 3))
    gt = np.concatenate([centre, size, rng.uniform(-3, 3, (n_gt, 1))], 1)
    pred = gt[rng.integers(0, n_gt, n_pred)] + rng.normal(0, 0.3, (n_pred, 7))
    pred[:, 3:6] = np.abs(pred[:, 3:6]) + 0.1
    return (
        pred,
        rng.uniform(0, 1, n_pred),
        gt,
        rng.integers(0, 2, n_pred),
        rng.integers(0, 2, n_gt),
    )


def test_merge_equals_a_single_evaluator():
    rng = np.random.default_rng(0)
    data = {f"scene{i}": random_scene(rng, 12, 4) for i in range(4)}
    make = lambda: DetectionEvaluator(recall_top=(3, 12), classes=("x", "y"))  # noqa: E731
    single = make()
    for key, scene in data.items():
        single.add(key, *scene)
    expected = single.compute()
    assert 0 < expected["ap25"] < 1  # a non-trivial case

    ranks = [make(), make()]
    for i, (key, scene) in enumerate(data.items()):
        ranks[i % 2].add(key, *scene)
    merged = make().merge(ranks[1]).merge(ranks[0].state_dict())  # either kind, any order
    assert merged.compute() == expected
    assert DetectionEvaluator.from_state_dict(single.state_dict()).compute() == expected

    with pytest.raises(ValueError, match="both"):
        merged.merge(ranks[0])
    with pytest.raises(ValueError, match="merge"):
        DetectionEvaluator().merge(ranks[0])
    with pytest.raises(ValueError, match="already"):
        single.add("scene0", *data["scene0"])
