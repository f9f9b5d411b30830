"""Oriented boxes of a grid: world units <-> voxel coordinates, corners, and the grid's
90-degree rotations and flips applied to boxes.

A box is ``(cx, cy, cz, w, l, h, yaw)``: centre, extents along the box's own x, y and z
axes, and its yaw about z (counter-clockwise, radians); ``w`` runs along the direction
``(cos yaw, sin yaw)``. Contract 1 stores boxes in world units; the model works in voxel
coordinates, NeRF-RPN's convention: voxel ``i`` of an axis covers ``[i, i + 1]``, so the
unpadded ``(X, Y, Z)`` grid spans ``[0, X] x [0, Y] x [0, Z]`` and sample ``i`` (at
``bbox_min + i * voxel_size`` in the world, contract 1) sits at voxel coordinate
``i + 0.5``. NeRF-RPN's ``obb/*.npy`` files are in these coordinates.

Numpy only (``grid_store`` does not need torch); the torch geometry of the detector is in
:mod:`model.detection.geometry`.
"""

from __future__ import annotations

import numpy as np

BOX_FIELDS = ("cx", "cy", "cz", "w", "l", "h", "yaw")


def as_boxes(boxes: np.ndarray, name: str = "boxes") -> np.ndarray:
    """``boxes`` as a float64 ``(N, 7)`` array, refusing any other shape or non-finite values."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim == 1 and b.size == 0:
        b = b.reshape(0, 7)
    if b.ndim != 2 or b.shape[1] != 7:
        raise ValueError(f"{name}: expected (N, 7) (cx, cy, cz, w, l, h, yaw), got {b.shape}")
    if not np.isfinite(b).all():
        row = int(np.argwhere(~np.isfinite(b))[0, 0])
        raise ValueError(f"{name}: box {row} has a non-finite value: {b[row].tolist()}")
    if (b[:, 3:6] < 0).any():
        row = int(np.argwhere(b[:, 3:6] < 0)[0, 0])
        raise ValueError(f"{name}: box {row} has a negative extent: {b[row, 3:6].tolist()}")
    return b


def wrap_yaw(yaw: np.ndarray) -> np.ndarray:
    """Angles in ``[-pi, pi)``."""
    return (np.asarray(yaw) + np.pi) % (2 * np.pi) - np.pi


def world_to_voxel(boxes: np.ndarray, bbox_min: np.ndarray, voxel_size: float) -> np.ndarray:
    """World-unit boxes -> voxel coordinates of the grid whose sample 0 is at ``bbox_min``."""
    b = as_boxes(boxes).copy()
    b[:, :3] = (b[:, :3] - np.asarray(bbox_min, dtype=np.float64)) / voxel_size + 0.5
    b[:, 3:6] /= voxel_size
    return b.astype(np.float32)


def voxel_to_world(boxes: np.ndarray, bbox_min: np.ndarray, voxel_size: float) -> np.ndarray:
    """Voxel-coordinate boxes -> world units (the inverse of :func:`world_to_voxel`)."""
    b = as_boxes(boxes).copy()
    b[:, :3] = np.asarray(bbox_min, dtype=np.float64) + (b[:, :3] - 0.5) * voxel_size
    b[:, 3:6] *= voxel_size
    return b.astype(np.float32)


def aabb_to_boxes(aabb: np.ndarray) -> np.ndarray:
    """``(N, 6)`` ``(xmin, ymin, zmin, xmax, ymax, zmax)`` -> ``(N, 7)`` boxes of yaw 0."""
    a = np.asarray(aabb, dtype=np.float64).reshape(-1, 6)
    centre, size = (a[:, :3] + a[:, 3:]) / 2, a[:, 3:] - a[:, :3]
    return np.concatenate([centre, size, np.zeros((len(a), 1))], 1)


def bev_corners(boxes: np.ndarray) -> np.ndarray:
    """``(N, 7)`` -> ``(N, 4, 2)`` bird's-eye corners, counter-clockwise."""
    b = as_boxes(boxes)
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    half = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64) / 2  # (4, 2)
    local = half[None] * b[:, None, 3:5]  # (N, 4, 2) in the box frame
    x = local[..., 0] * c[:, None] - local[..., 1] * s[:, None]
    y = local[..., 0] * s[:, None] + local[..., 1] * c[:, None]
    return np.stack([x, y], -1) + b[:, None, :2]


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """``(N, 7)`` -> ``(N, 8, 3)`` corners: the bottom face (counter-clockwise), then the top."""
    b = as_boxes(boxes)
    bev = bev_corners(b)  # (N, 4, 2)
    z0 = np.repeat((b[:, 2] - b[:, 5] / 2)[:, None, None], 4, 1)
    z1 = np.repeat((b[:, 2] + b[:, 5] / 2)[:, None, None], 4, 1)
    return np.concatenate([np.concatenate([bev, z0], -1), np.concatenate([bev, z1], -1)], 1)


BOX_EDGES = np.array(
    [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]]
)
"""The 12 edges of :func:`box_corners`' corners, as index pairs."""


def points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(P, 3)`` points, ``(N, 7)`` boxes -> ``(N, P)`` bool, inside or on the surface."""
    b = as_boxes(boxes)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    d = p[None] - b[:, None, :3]  # (N, P, 3)
    c, s = np.cos(b[:, 6])[:, None], np.sin(b[:, 6])[:, None]
    u = d[..., 0] * c + d[..., 1] * s  # along w
    v = -d[..., 0] * s + d[..., 1] * c  # along l
    eps = 1e-6
    return (
        (np.abs(u) <= b[:, None, 3] / 2 + eps)
        & (np.abs(v) <= b[:, None, 4] / 2 + eps)
        & (np.abs(d[..., 2]) <= b[:, None, 5] / 2 + eps)
    )


def augment_boxes(
    boxes: np.ndarray, extent: tuple[int, int], rotate: bool, flip_x: bool, flip_y: bool
) -> np.ndarray:
    """Voxel-coordinate boxes under :class:`grid_store.dataset.GridDataset`'s augmentation.

    The grid's augmentation is a 90-degree rotation about z (``transpose(x, y)`` then a flip
    of the new x), then flips of x and y; ``extent`` is the ``(X, Y)`` size of the volume
    before it. A box moves with the voxels: a flip of x maps ``x -> X - x`` and
    ``yaw -> pi - yaw``, of y ``y -> Y - y`` and ``yaw -> -yaw``, a transpose swaps x and y
    and maps ``yaw -> pi/2 - yaw``; extents stay with the box's own axes.
    """
    b = as_boxes(boxes).copy()
    X, Y = extent
    if rotate:  # (x, y) -> (Y - y, x), yaw + pi/2
        b[:, [0, 1]] = np.stack([Y - b[:, 1], b[:, 0]], 1)
        b[:, 6] += np.pi / 2
        X, Y = Y, X
    if flip_x:
        b[:, 0] = X - b[:, 0]
        b[:, 6] = np.pi - b[:, 6]
    if flip_y:
        b[:, 1] = Y - b[:, 1]
        b[:, 6] = -b[:, 6]
    b[:, 6] = wrap_yaw(b[:, 6])
    return b.astype(np.float32)


__all__ = [
    "BOX_EDGES",
    "BOX_FIELDS",
    "aabb_to_boxes",
    "as_boxes",
    "augment_boxes",
    "bev_corners",
    "box_corners",
    "points_in_boxes",
    "voxel_to_world",
    "world_to_voxel",
    "wrap_yaw",
]
