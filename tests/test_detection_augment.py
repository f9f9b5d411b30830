"""NeRF-RPN's rotate-and-scale augmentation: voxels and boxes move together."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grid_store.boxes import augment_boxes, box_corners, points_in_boxes
from grid_store.dataset import GridDataset
from model.detection.augment import random_rotate_scale, rotate_scale


def padded(volume: torch.Tensor, size: int) -> torch.Tensor:
    """``(C, x, y, z)`` at the low corner of a zero ``(C, S, S, S)`` cube (GridDataset's layout)."""
    out = volume.new_zeros((volume.shape[0], size, size, size))
    x, y, z = volume.shape[1:]
    out[:, :x, :y, :z] = volume
    return out


def cuboid_scene(size=32, real=(28, 24, 20), lo=(8, 6, 4), hi=(18, 14, 12)):
    """An opaque cuboid of voxels ``[lo, hi)`` in a padded grid, and its box (yaw 0)."""
    rgba = torch.zeros((4, *real))
    rgba[:3] = 0.25  # some colour everywhere in the real region
    box = [slice(a, b) for a, b in zip(lo, hi, strict=True)]
    rgba[(slice(None), *box)] = torch.tensor([0.9, 0.5, 0.1, 1.0])[:, None, None, None]
    valid = torch.zeros((size,) * 3, dtype=torch.bool)
    valid[: real[0], : real[1], : real[2]] = True
    centre = [(a + b) / 2 for a, b in zip(lo, hi, strict=True)]
    extents = [b - a for a, b in zip(lo, hi, strict=True)]
    boxes = torch.tensor([[*centre, *extents, 0.0]])
    return padded(rgba, size), valid, boxes


def voxel_centres(shape) -> np.ndarray:
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    return idx.reshape(-1, 3) + 0.5


def same_box(a: np.ndarray, b: np.ndarray, atol=1e-4) -> bool:
    """The same box, whatever its description (yaw + pi, w and l swapped): same corners."""
    ca, cb = box_corners(a[None])[0], box_corners(b[None])[0]
    d = np.linalg.norm(ca[:, None] - cb[None], axis=-1)
    return bool(d.min(0).max() < atol and d.min(1).max() < atol)


def test_rotated_scaled_cuboid_stays_inside_its_box_and_fills_it():
    rgba, valid, boxes = cuboid_scene()
    angle, scale = math.radians(30), 1.1
    out_rgba, out_valid, out_boxes = rotate_scale(rgba, valid, boxes, angle, scale)
    assert out_rgba.shape == rgba.shape and out_valid.dtype == torch.bool
    box = out_boxes[0].numpy()
    centre = np.array([14.0, 12.0, 10.0])  # the real region's centre: (28, 24, 20) / 2
    d = np.array([13.0, 10.0, 8.0]) - centre
    c, s = math.cos(angle), math.sin(angle)
    expected_centre = centre + scale * np.array([c * d[0] - s * d[1], s * d[0] + c * d[1], d[2]])
    np.testing.assert_allclose(box[:3], expected_centre, atol=1e-5)
    np.testing.assert_allclose(box[3:6], np.array([10, 8, 8]) * scale, rtol=1e-6)
    assert box[6] == pytest.approx(angle)

    points = voxel_centres(valid.shape)
    opaque = (out_rgba[3] > 0.5).numpy().reshape(-1)
    margin = box.copy()
    margin[3:6] += 2  # one voxel either side
    assert points_in_boxes(points[opaque], margin[None]).all()  # nothing opaque leaks out
    filled = int((points_in_boxes(points, box[None])[0] & opaque).sum())
    volume = float(np.prod(box[3:6]))
    assert filled > 0.8 * volume and opaque.sum() < 1.2 * volume
    assert out_valid[14, 12, 10] and not out_valid[31, 31, 31] and not out_valid[0, 0, 0]
    assert out_rgba[:, ~out_valid].abs().max() == 0  # padding stays exact zeros


def test_angle_zero_scale_one_is_the_identity():
    rgba, valid, boxes = cuboid_scene()
    rgba = rgba * torch.rand(rgba.shape, generator=torch.Generator().manual_seed(0))
    out = rotate_scale(rgba, valid, boxes, 0.0, 1.0)
    for a, b in zip(out, (rgba, valid, boxes), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # equal copies
    # the resampling path itself is the identity too, up to float rounding
    near = rotate_scale(rgba, valid, boxes, 1e-9, 1.0)
    torch.testing.assert_close(near[0], rgba, atol=1e-5, rtol=0)
    assert torch.equal(near[1], valid)
    torch.testing.assert_close(near[2], boxes)


def test_quarter_turn_matches_the_datasets_rotation():
    gen = torch.Generator().manual_seed(1)
    real = (12, 12, 9)  # square in (x, y): its centre is where augment_boxes' rotation turns
    volume = torch.rand((4, *real), generator=gen)
    rgba = padded(volume, 16)
    valid = padded(torch.ones((1, *real)), 16)[0] > 0
    boxes = torch.tensor(
        [[3.2, 4.1, 2.5, 3.3, 1.5, 2.0, 0.3], [8.0, 9.5, 6.0, 2.0, 4.0, 3.0, -2.5]]
    )
    out_rgba, out_valid, out_boxes = rotate_scale(rgba, valid, boxes, math.pi / 2, 1.0)
    expected = padded(GridDataset._augmented(volume, rotate=True, flip_x=False, flip_y=False), 16)
    torch.testing.assert_close(out_rgba, expected, atol=1e-5, rtol=0)
    assert torch.equal(out_valid, valid)
    moved = augment_boxes(boxes.numpy(), real[:2], rotate=True, flip_x=False, flip_y=False)
    for a, b in zip(out_boxes.numpy(), moved, strict=True):
        assert same_box(a, b)
    np.testing.assert_allclose(out_boxes[:, :6].numpy(), moved[:, :6], atol=1e-5)


def test_random_rotate_scale_per_grid_and_reproducible():
    grids = [cuboid_scene() for _ in range(4)]
    rgba = torch.stack([g[0] for g in grids])
    valid = torch.stack([g[1] for g in grids])
    boxes = [g[2] for g in grids]
    before = rgba.clone()
    out = random_rotate_scale(rgba, valid, boxes, torch.Generator().manual_seed(3), p=1.0)
    assert torch.equal(rgba, before)  # the input batch is untouched
    again = random_rotate_scale(rgba, valid, boxes, torch.Generator().manual_seed(3), p=1.0)
    assert all(torch.equal(a, b) for a, b in zip(out[2], again[2], strict=True))
    assert torch.equal(out[0], again[0])
    angles, scales = [], []
    for b in range(4):  # each grid is rotate_scale with its own drawn angle and scale
        angle = float(out[2][b][0, 6] - boxes[b][0, 6])
        scale = float(out[2][b][0, 3] / boxes[b][0, 3])
        assert abs(angle) <= math.pi / 18 + 1e-6 and 0.9 - 1e-6 <= scale <= 1.1 + 1e-6
        expected = rotate_scale(rgba[b], valid[b], boxes[b], angle, scale)
        torch.testing.assert_close(out[0][b], expected[0], atol=1e-3, rtol=0)
        assert (out[1][b] != expected[1]).sum() <= 2  # nearest ties after float recovery
        angles.append(angle)
        scales.append(scale)
    assert len(set(angles)) == 4 and len(set(scales)) == 4  # drawn per grid
    unchanged = random_rotate_scale(rgba, valid, boxes, torch.Generator().manual_seed(3), p=0.0)
    assert unchanged[0] is rgba and unchanged[1] is valid
    assert all(a is b for a, b in zip(unchanged[2], boxes, strict=True))
    # one grid in, one grid out; the same stream as the batch's first grid
    one = random_rotate_scale(rgba[0], valid[0], boxes[0], torch.Generator().manual_seed(3), p=1)
    assert one[0].shape == rgba.shape[1:] and torch.equal(one[2], out[2][0])
    # p=0.5 transforms some grids and not others, and None boxes pass through
    half = random_rotate_scale(
        rgba.repeat(4, 1, 1, 1, 1), valid.repeat(4, 1, 1, 1), [None] * 16,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    changed = [not torch.equal(half[0][b], rgba[b % 4]) for b in range(16)]
    assert 0 < sum(changed) < 16 and half[2] == [None] * 16


def test_bad_arguments_are_refused():
    rgba, valid, boxes = cuboid_scene(size=8, real=(8, 8, 8), lo=(2, 2, 2), hi=(4, 4, 4))
    with pytest.raises(ValueError, match="scale"):
        rotate_scale(rgba, valid, boxes, 0.1, 0.0)
    with pytest.raises(ValueError, match="boxes"):
        rotate_scale(rgba, valid, boxes[0], 0.1, 1.0)
    with pytest.raises(ValueError, match="valid"):
        rotate_scale(rgba, valid[:4], boxes, 0.1, 1.0)
    with pytest.raises(ValueError, match="p must"):
        random_rotate_scale(rgba, valid, boxes, torch.Generator(), p=2.0)
