"""Grid fidelity against ground truth: the step conversion, IoU, haze and colour PSNR on
hand-made grids with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grid_store import RadianceGrid
from pipeline.fidelity import alpha_on_step, grid_fidelity


def grid(alpha: np.ndarray, rgb: float | np.ndarray = 0.5, voxel: float = 1.0, delta=None):
    shape = alpha.shape
    rgba = np.empty((4, *shape), np.float32)
    rgba[:3] = rgb
    rgba[3] = alpha
    return RadianceGrid(rgba=rgba, bbox_min=np.zeros(3), bbox_max=(np.array(shape) - 1) * voxel,
                        voxel_size=voxel, delta=voxel if delta is None else delta)  # fmt: skip


def test_alpha_on_another_step_keeps_the_density():
    # alpha 0.75 over a step of 2 is sigma = ln(4) / 2; over a step of 1: 1 - 4^-0.5 = 0.5.
    np.testing.assert_allclose(alpha_on_step(np.array([0.75, 0.0, 1.0]), 2.0, 1.0), [0.5, 0, 1])


def test_identical_grids_score_perfectly():
    alpha = np.zeros((4, 4, 4))
    alpha[1:3, 1:3, 1:3] = 1.0
    scores = grid_fidelity(grid(alpha), grid(alpha))
    assert scores["iou"] == 1.0 and scores["haze"] == 0.0 and scores["colour_psnr"] == math.inf
    assert scores["compared"] == 64 and scores["occupied"] == scores["truth_occupied"] == 8 / 64


def test_iou_haze_and_colour_on_a_hand_made_pair():
    truth_alpha = np.zeros((4, 4, 4))
    truth_alpha[0:2] = 1.0  # 32 occupied voxels, 32 empty
    pred_alpha = np.zeros((4, 4, 4))
    pred_alpha[1:3] = 0.9  # 32 occupied: 16 shared; the other 16 sit in the truth's free space
    pred_alpha[3, 0, :] = 0.05  # 4 more hazy voxels in the truth's free space (not occupied)
    rgb = np.full((3, 4, 4, 4), 0.5, np.float32)
    rgb[:, 1] = 0.6  # shared voxels' colour off by 0.1: MSE 0.01, PSNR 20 dB
    scores = grid_fidelity(grid(pred_alpha, rgb), grid(truth_alpha))
    assert scores["iou"] == pytest.approx(16 / 48)
    assert scores["haze"] == pytest.approx(20 / 32)
    assert scores["colour_psnr"] == pytest.approx(20.0)
    # Hazy voxels: x = 2 (16, next to the truth's x = 1) and the 4 at x = 3 (not next to it).
    assert scores["haze_at_surfaces"] == pytest.approx(16 / 20)


def test_opacity_is_compared_on_the_truths_step():
    # The grid's voxels are twice as long: alpha 0.75 there is alpha 0.5 on the truth's step,
    # which is not above the occupancy threshold; 0.8 is (0.553).
    truth = grid(np.ones((5, 5, 5)), voxel=0.5)
    coarse = np.full((3, 3, 3), 0.75)
    assert grid_fidelity(grid(coarse, voxel=1.0), truth)["iou"] == 0.0
    coarse[:] = 0.8
    assert grid_fidelity(grid(coarse, voxel=1.0), truth)["iou"] == 1.0


def test_a_grid_outside_the_truth_is_refused():
    far = grid(np.zeros((3, 3, 3)))
    far = far.replace(bbox_min=np.full(3, 100.0), bbox_max=np.full(3, 102.0))
    with pytest.raises(ValueError, match="does not overlap"):
        grid_fidelity(far, grid(np.zeros((3, 3, 3))))


def test_misses_inside_solids_are_told_apart_from_missed_surfaces():
    # A solid 4^3 cube: 8 voxels inside ([2:4]^3), 56 on its surface next to free space.
    # The grid has the surface but not the inside, and misses one corner of the surface.
    truth_alpha = np.zeros((6, 6, 6))
    truth_alpha[1:5, 1:5, 1:5] = 1.0
    pred_alpha = truth_alpha.copy()
    pred_alpha[2:4, 2:4, 2:4] = 0.0
    pred_alpha[1, 1, 1] = 0.0
    scores = grid_fidelity(grid(pred_alpha), grid(truth_alpha))
    assert scores["iou"] == pytest.approx(55 / 64)
    assert scores["misses_inside"] == pytest.approx(8 / 9)
    assert grid_fidelity(grid(truth_alpha), grid(truth_alpha))["misses_inside"] is None


def _surface_points(alpha: np.ndarray) -> np.ndarray:
    """Occupied voxels with a non-occupied 6-neighbour in the array, by brute force."""
    occ = alpha > 0.5
    points = []
    for p in zip(*np.nonzero(occ), strict=True):
        for axis in range(3):
            for step in (-1, 1):
                q = list(p)
                q[axis] += step
                if 0 <= q[axis] < occ.shape[axis] and not occ[tuple(q)]:
                    points.append(p)
                    break
            else:
                continue
            break
    return np.array(points).reshape(-1, 3)


def _within_one(a: np.ndarray, b: np.ndarray) -> float:
    """Share of points ``a`` with a point of ``b`` at Chebyshev distance <= 1."""
    gaps = np.abs(a[:, None, :] - b[None, :, :]).max(-1)  # (A, B)
    return float((gaps.min(1) <= 1).mean())


def test_surface_fscore_sees_surfaces_where_iou_counts_insides():
    truth = np.zeros((16, 12, 12))
    truth[2:10, 2:10, 2:10] = 1.0  # a solid 8^3 cube: 296 surface voxels, 216 inside
    shell = truth.copy()
    shell[3:9, 3:9, 3:9] = 0.0  # its surface alone, hollow inside
    scores = grid_fidelity(grid(shell), grid(truth))
    assert scores["iou"] == pytest.approx(296 / 512)
    # the shell's inner face is new surface, every voxel of it one voxel from the truth's
    assert scores["surface_precision"] == scores["surface_recall"] == 1.0
    assert scores["surface_fscore"] == 1.0
    moved = np.zeros_like(truth)
    moved[3:11, 2:10, 2:10] = 1.0  # one voxel off: within the tolerance
    assert grid_fidelity(grid(moved), grid(truth))["surface_fscore"] == 1.0
    far = np.zeros_like(truth)
    far[5:13, 2:10, 2:10] = 1.0  # three voxels off
    scores = grid_fidelity(grid(far), grid(truth))
    ours, theirs = _surface_points(far), _surface_points(truth)
    assert scores["surface_precision"] == pytest.approx(_within_one(ours, theirs))
    assert scores["surface_recall"] == pytest.approx(_within_one(theirs, ours))
    assert 0 < scores["surface_fscore"] < 1
    nothing = grid_fidelity(grid(np.zeros_like(truth)), grid(truth))
    assert nothing["surface_precision"] is None and nothing["surface_recall"] == 0.0
    assert nothing["surface_fscore"] is None
