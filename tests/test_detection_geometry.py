"""Yawed-box geometry: rotated IoU against shapely, gradients, NMS, the OBB encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from benchmark_scripts import load_benchmark
from shapely.geometry import Polygon

from grid_store import boxes as np_boxes
from model.detection.geometry import (
    bev_corners,
    decode_obb,
    encode_obb,
    pairwise_rotated_iou,
    rotated_iou,
    rotated_nms,
)


def shapely_iou(a: np.ndarray, b: np.ndarray) -> float:
    """3D IoU of two ``(7,)`` boxes with shapely's polygon intersection (independent)."""
    pa, pb = (Polygon(np_boxes.bev_corners(x[None])[0]) for x in (a, b))
    dz = min(a[2] + a[5] / 2, b[2] + b[5] / 2) - max(a[2] - a[5] / 2, b[2] - b[5] / 2)
    inter = pa.intersection(pb).area * max(dz, 0.0)
    return inter / (a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter)


def random_boxes(n: int, seed: int, spread: float = 3.0) -> np.ndarray:
    """``(n, 7)`` boxes near the origin, so most random pairs overlap somewhat."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-spread, spread, (n, 3))
    size = rng.uniform(0.5, 4.0, (n, 3))
    yaw = rng.uniform(-math.pi, math.pi, (n, 1))
    return np.concatenate([centre, size, yaw], 1)


def iou1(a, b, dtype=torch.float64) -> float:
    ta = torch.tensor([a], dtype=dtype)
    tb = torch.tensor([b], dtype=dtype)
    return float(rotated_iou(ta, tb)[0])


CUBE = [0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        pytest.param(CUBE, CUBE, 1.0, id="identical"),
        pytest.param([1, 2, 3, 3, 1, 2, 0.7], [1, 2, 3, 3, 1, 2, 0.7], 1.0, id="identical-yawed"),
        # b's BEV circle (radius sqrt(5)/2) fits in a's square, its z in a's: volume ratio
        pytest.param([0, 0, 0, 4, 4, 4, 0.3], [0.2, 0, 0, 1, 2, 1, 1.0], 2 / 64, id="nested"),
        pytest.param(CUBE, [10, 0, 0, 2, 2, 2, 0.5], 0.0, id="disjoint"),
        pytest.param(CUBE, [2, 0, 0, 2, 2, 2, 0], 0.0, id="touching-x"),
        pytest.param(CUBE, [2, 0.5, 0, 2, 2, 2, math.pi / 2], 0.0, id="touching-x-quarter-turn"),
        pytest.param(CUBE, [0, 0, 2, 2, 2, 2, 0], 0.0, id="touching-z"),
        # 1 x 1 x 2 overlap of two 8-volume cubes: 2 / 14
        pytest.param(CUBE, [1, 1, 0, 2, 2, 2, 0], 1 / 7, id="axis-aligned"),
        # same BEV, z overlap 1 of 2: 4 / (8 + 8 - 4)
        pytest.param(CUBE, [0, 0, 1, 2, 2, 2, 0], 1 / 3, id="half-height"),
        # a side-2 square and its 45-degree copy meet in a regular octagon of area
        # 4 - 4 (2 - sqrt 2)^2 / 2 = 8 sqrt 2 - 8, so IoU = (sqrt2 - 1) / (2 - sqrt2) = 1/sqrt2
        pytest.param(CUBE, [0, 0, 0, 2, 2, 2, math.pi / 4], 1 / math.sqrt(2), id="45-degrees"),
    ],
)
def test_named_cases(a, b, expected):
    assert iou1(a, b) == pytest.approx(expected, abs=1e-9)
    assert iou1(b, a) == pytest.approx(expected, abs=1e-9)
    assert iou1(a, b, torch.float32) == pytest.approx(expected, abs=1e-5)
    assert shapely_iou(np.array(a, float), np.array(b, float)) == pytest.approx(expected, abs=1e-9)


def test_corners_match_grid_store():
    b = random_boxes(50, seed=1)
    ours = bev_corners(torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(ours, np_boxes.bev_corners(b), atol=1e-12)
    # leading dimensions are kept
    assert bev_corners(torch.from_numpy(b).reshape(5, 10, 7)).shape == (5, 10, 4, 2)


def test_rotated_iou_matches_shapely_on_random_pairs():
    a, b = random_boxes(200, seed=2, spread=1.5), random_boxes(200, seed=3, spread=1.5)
    expected = np.array([shapely_iou(x, y) for x, y in zip(a, b, strict=True)])
    assert (expected > 0.01).sum() > 50, "the random pairs must overlap often"
    for dtype, atol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        got = rotated_iou(torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype))
        np.testing.assert_allclose(got.double().numpy(), expected, atol=atol)


def test_rotated_iou_float32_far_from_origin():
    a, b = random_boxes(100, seed=4), random_boxes(100, seed=5)
    expected = np.array([shapely_iou(x, y) for x, y in zip(a, b, strict=True)])
    a[:, :2] += 300.0  # voxel coordinates of a large grid
    b[:, :2] += 300.0
    got = rotated_iou(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    np.testing.assert_allclose(got.double().numpy(), expected, atol=1e-4)


def test_pairwise_matches_shapely_and_elementwise():
    a, b = random_boxes(20, seed=6), random_boxes(10, seed=7)
    a[:5, :2] += 50.0  # far pairs, skipped by the pre-check
    got = pairwise_rotated_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert got.shape == (20, 10)
    expected = np.array([[shapely_iou(x, y) for y in b] for x in a])
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert pairwise_rotated_iou(torch.zeros(0, 7), torch.from_numpy(b)).shape == (0, 10)


def test_gradcheck_on_generic_pairs():
    a = torch.tensor(random_boxes(6, seed=8), requires_grad=True)
    b = torch.tensor(random_boxes(6, seed=9), requires_grad=True)
    b.data[:, :3] = a.data[:, :3] + 0.3  # every pair overlaps
    assert (rotated_iou(a, b) > 0.02).all()
    assert torch.autograd.gradcheck(rotated_iou, (a, b), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_finite_on_degenerate_pairs(dtype):
    pairs = [
        (CUBE, CUBE),  # identical
        ([1, 2, 3, 3, 1, 2, 0.7], [1, 2, 3, 3, 1, 2, 0.7]),  # identical, yawed
        ([0, 0, 0, 4, 4, 4, 0.3], [0.2, 0, 0, 1, 2, 1, 1.0]),  # nested
        (CUBE, [2, 0, 0, 2, 2, 2, 0]),  # touching
        (CUBE, [0, 0, 2, 2, 2, 2, 0]),  # touching in z
        (CUBE, [10, 0, 0, 2, 2, 2, 0.5]),  # disjoint
        (CUBE, [1, 1, 0, 2, 2, 2, 0]),  # axis-aligned
        (CUBE, [1, 0, 0, 2, 2, 2, 0]),  # collinear edges
        (CUBE, [0, 0, 0, 2, 2, 2, math.pi / 2]),  # the same box, a quarter turn on
        (CUBE, [0, 0, 0, 0, 0, 0, 0]),  # an empty box
        ([0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]),  # two
    ]
    a = torch.tensor([p[0] for p in pairs], dtype=dtype, requires_grad=True)
    b = torch.tensor([p[1] for p in pairs], dtype=dtype, requires_grad=True)
    iou = rotated_iou(a, b)
    assert torch.isfinite(iou).all()
    (1 - iou).sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_nms_hand_example():
    boxes = torch.tensor(
        [
            [0.0, 0, 0, 2, 2, 2, 0],  # the best
            [0.2, 0, 0, 2, 2, 2, 0.1],  # IoU ~0.8 with box 0: dropped
            [1.5, 0, 0, 2, 2, 2, 0],  # IoU 0.5 / 3.5 = 1/7 with box 0: kept
            [10, 10, 0, 2, 2, 2, 0.3],  # apart: kept
            [0.0, 0.2, 0, 2, 2, 2, 0],  # IoU 1.8 / 2.2 with box 0, same score as 0: dropped
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.9])
    keep = rotated_nms(boxes, scores, iou_threshold=0.3)
    assert keep.dtype == torch.long
    assert keep.tolist() == [0, 2, 3]
    # ties are broken by index: box 4 wins when it comes first
    assert rotated_nms(boxes[[4, 1, 2, 3, 0]], scores[[4, 1, 2, 3, 0]], 0.3).tolist() == [0, 2, 3]
    # above every overlap all are kept, in score order, the tie 0 / 4 by index
    assert rotated_nms(boxes, scores, iou_threshold=0.95).tolist() == [0, 4, 1, 2, 3]
    assert rotated_nms(boxes, scores, iou_threshold=0.1).tolist() == [0, 3]
    assert rotated_nms(torch.zeros(0, 7), torch.zeros(0), 0.5).tolist() == []


@pytest.fixture(scope="module")
def full_matrix_nms():
    """The textbook pass rotated_nms replaced (the whole IoU matrix, then each box in score
    order drops the later ones above the threshold), kept in ``benchmarks/bench_nms.py``."""
    return load_benchmark("bench_nms").full_matrix_nms


@pytest.mark.parametrize("block", [1, 3, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_keeps_what_the_full_matrix_pass_keeps(full_matrix_nms, monkeypatch, block, dtype):
    import model.detection.geometry as geometry

    monkeypatch.setattr(geometry, "_NMS_BLOCK", block)
    gen = torch.Generator().manual_seed(block)
    # clusters of jittered copies around a few objects (a detector's candidates), loners,
    # and tied scores
    objects = torch.rand(6, 7, generator=gen, dtype=dtype) * torch.tensor(
        [20, 20, 4, 3, 3, 2, 3.0], dtype=dtype) + torch.tensor([0, 0, 0, 1, 1, 1, 0], dtype=dtype)
    copies = objects.repeat_interleave(40, 0)
    copies = copies + 0.3 * torch.randn(copies.shape, generator=gen, dtype=dtype) * torch.tensor(
        [1, 1, 1, 0.5, 0.5, 0.5, 1], dtype=dtype)
    copies[:, 3:6] = copies[:, 3:6].abs() + 0.1
    boxes = torch.cat([copies, objects + torch.tensor([40, 0, 0, 0, 0, 0, 0], dtype=dtype)])
    scores = torch.rand(len(boxes), generator=gen, dtype=dtype).round(decimals=1)
    counts = []
    for threshold in (0.1, 0.5, 0.9):
        kept = rotated_nms(boxes, scores, threshold).tolist()
        assert kept == full_matrix_nms(boxes, scores, threshold).tolist()
        counts.append(len(kept))
    assert 6 <= counts[0] < counts[1] <= counts[2]  # the clusters were really thinned


def test_encode_hand_case():
    # w = 10, l = 5, yaw with (cos, sin) = (0.8, 0.6): corner (+w/2, +l/2) -> (2.5, 5) is the
    # top vertex, corner (+w/2, -l/2) -> (5.5, 1) the right one, hull 11 x 10.
    box = torch.tensor([[1.0, 2.0, 3.0, 10.0, 5.0, 2.0, math.atan2(0.6, 0.8)]], dtype=torch.float64)
    loc = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    expected = [5.5, 5.0, 1.0, 5.5, 5.0, 1.0, 2.5 / 11, 1.0 / 10]
    np.testing.assert_allclose(encode_obb(loc, box)[0].numpy(), expected, atol=1e-12)
    # off-centre location and yaw 0: the tie rule gives (0.5, -0.5)
    box0 = torch.tensor([[1.0, 2.0, 0.5, 4.0, 2.0, 1.0, 0.0]])
    loc0 = torch.tensor([[0.0, 2.0, 0.25]])
    expected0 = [1.0, 1.0, 0.25, 3.0, 1.0, 0.75, 0.5, -0.5]
    np.testing.assert_allclose(encode_obb(loc0, box0)[0].numpy(), expected0, atol=1e-6)
    np.testing.assert_allclose(decode_obb(loc0, encode_obb(loc0, box0)).numpy(), box0, atol=1e-6)


def test_encode_matches_corner_definition():
    b = random_boxes(100, seed=10)  # generic yaws: no ties
    enc = encode_obb(torch.from_numpy(b[:, :3]), torch.from_numpy(b)).numpy()
    corners = np_boxes.bev_corners(b)  # (N, 4, 2)
    lo, hi = corners.min(1), corners.max(1)
    rows = np.arange(len(b))
    top = corners[rows, corners[..., 1].argmax(1)]
    right = corners[rows, corners[..., 0].argmax(1)]
    np.testing.assert_allclose(enc[:, 0:2], b[:, :2] - lo, atol=1e-12)
    np.testing.assert_allclose(enc[:, 3:5], hi - b[:, :2], atol=1e-12)
    np.testing.assert_allclose(enc[:, [2, 5]], b[:, [5, 5]] / 2, atol=1e-12)
    np.testing.assert_allclose(enc[:, 6], (top[:, 0] - b[:, 0]) / (hi - lo)[:, 0], atol=1e-12)
    np.testing.assert_allclose(enc[:, 7], (right[:, 1] - b[:, 1]) / (hi - lo)[:, 1], atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_encode_decode_round_trip(dtype):
    b = random_boxes(64, seed=11)
    special = [
        0.0,
        math.pi / 2,
        math.pi,
        -math.pi / 2,
        -math.pi,
        1e-7,
        -1e-10,  # below the float64 snap (1e-9 of a quarter turn), so it takes the tie code
        1e-12,
        3 * math.pi / 2,
    ]
    b[: len(special), 6] = special
    rng = np.random.default_rng(12)
    local = rng.uniform(-0.4, 0.4, (64, 3)) * b[:, 3:6]  # inside, in the box frame
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    loc = b[:, :3] + np.stack(
        [local[:, 0] * c - local[:, 1] * s, local[:, 0] * s + local[:, 1] * c, local[:, 2]], 1
    )
    boxes = torch.tensor(b, dtype=dtype)
    locations = torch.tensor(loc, dtype=dtype)
    deltas = encode_obb(locations, boxes)
    assert (deltas[:, :6] > 0).all()
    assert (deltas[:, 6:].abs() <= 0.5).all()
    # yaw 0 and every quarter turn take the tie-rule code; so does a tiny yaw, either sign
    np.testing.assert_allclose(
        deltas[: len(special), 6:].double().numpy(), [[0.5, -0.5]] * 9, atol=1e-6
    )
    decoded = decode_obb(locations, deltas)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    iou = rotated_iou(decoded, boxes)
    assert (iou > 0.999).all(), iou.min()
    np.testing.assert_allclose(decoded[:, :3].double().numpy(), b[:, :3], atol=tol * 10)
    volume = b[:, 3] * b[:, 4] * b[:, 5]
    got = (decoded[:, 3] * decoded[:, 4] * decoded[:, 5]).double().numpy()
    np.testing.assert_allclose(got, volume, rtol=tol * 10)
    assert ((decoded[:, 6] >= 0) & (decoded[:, 6] <= math.pi / 2 + 1e-6)).all()


def test_decode_parallelogram_and_degenerate_predictions():
    # hull 2 x 2, alpha 0.5, beta 0: T (1, 1), R (1, 0), L (-1, 0); e1 = (2, 1), e2 turned
    # = (1, 0), so the yaw bisects them: atan2(1, 2) / 2, w = sqrt5 cos(yaw), l = cos(yaw).
    loc = torch.zeros(1, 3, dtype=torch.float64)
    deltas = torch.tensor([[1.0, 1, 1, 1, 1, 1, 0.5, 0.0]], dtype=torch.float64)
    yaw = math.atan2(1, 2) / 2
    expected = [0, 0, 0, math.sqrt(5) * math.cos(yaw), math.cos(yaw), 2, yaw]
    np.testing.assert_allclose(decode_obb(loc, deltas)[0].numpy(), expected, atol=1e-12)

    deltas = torch.tensor(
        [
            [0.0, 0, 0, 0, 0, 0, 0.0, 0.0],  # collapsed hull
            [0.0, 0, 0, 0, 0, 0, 0.5, -0.5],
            [1.0, 1, 1, 1, 1, 1, 0.5, 0.5],  # T = R: a segment
            [1.0, 1, 1, 1, 1, 1, -0.5, -0.5],  # T = L
            [-1.0, 2, 1, 0.5, -3, 1, 0.9, -2.0],  # out of range: clamped
            [1.0, 0, 1, 1, 0, 1, 0.2, 0.1],  # flat in y
        ],
        dtype=torch.float64,
        requires_grad=True,
    )
    locs = torch.zeros(len(deltas), 3, dtype=torch.float64)
    decoded = decode_obb(locs, deltas)
    assert torch.isfinite(decoded).all()
    assert (decoded[:, 3:6] >= 0).all()
    target = torch.tensor([[0.1, 0.2, 0.0, 1.0, 1.5, 1.0, 0.3]] * len(deltas), dtype=torch.float64)
    (1 - rotated_iou(decoded, target)).sum().backward()
    assert torch.isfinite(deltas.grad).all()


def test_decode_gradcheck():
    rng = np.random.default_rng(13)
    deltas = np.concatenate([rng.uniform(0.5, 3, (5, 6)), rng.uniform(-0.45, 0.45, (5, 2))], 1)
    deltas = torch.tensor(deltas, requires_grad=True)
    locs = torch.tensor(rng.uniform(-1, 1, (5, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(decode_obb, (locs, deltas), eps=1e-6, atol=1e-6)
