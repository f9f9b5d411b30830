"""Geometry of yawed 3D boxes in pure PyTorch: corners, rotated IoU, NMS, the OBB encoding.

A box is ``(cx, cy, cz, w, l, h, yaw)`` (the convention of :mod:`grid_store.boxes`): centre,
extents along the box's own x (direction ``(cos yaw, sin yaw)``), own y and z, and the yaw
about z, counter-clockwise, radians. Boxes are only yawed, so a 3D intersection is the
bird's-eye (BEV) intersection of two rectangles times the overlap of two z intervals.

**Rotated IoU.** The BEV intersection of two convex rectangles is the convex polygon whose
vertices are among 24 candidates: the corners of each rectangle inside the other and the
16 crossings of their edges. Valid candidates are sorted by angle around their mean and
the polygon's area is the shoelace sum. Everything is fixed-size and batched; the sort
only permutes points, so gradients flow through the candidates' coordinates. Duplicated
candidates (shared corners, identical boxes) add zero-area slivers and do no harm.

**OBB encoding** (NeRF-RPN's FCOS head, midpoint-offset style, after Oriented R-CNN): 6
distances from a location to the faces of the box's axis-aligned hull, then ``alpha``,
``beta``, the offsets of the rectangle's vertices on the hull's top and right edges from
the hull's centre, as fractions of the hull's width and depth. See :func:`encode_obb` for
the tie rule of axis-aligned boxes and :func:`decode_obb` for how a predicted
parallelogram becomes a rectangle.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_HALF = ((0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5), (0.5, -0.5))
"""BEV corners in the box frame, in units of ``(w, l)``: counter-clockwise from (+, +)."""

_PAIR_CHUNK = 1 << 15
"""Pairs per call of :func:`rotated_iou` inside :func:`pairwise_rotated_iou`: ~200 values
of intermediates per pair, so a chunk stays in the tens of megabytes."""

_NMS_BLOCK = 64
"""Boxes :func:`rotated_nms` settles together: larger blocks batch more pairs per call of
:func:`rotated_iou` but compute more pairs of boxes that a block's own survivors drop."""


def _tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """``(parallel, inside)``: the sine below which two edges count as parallel, and the
    relative slack of the point-in-rectangle and on-segment tests. Rounding of float32
    corners is ~1e-7 of the box size, so the slack must be well above it there."""
    if dtype == torch.float64:
        return 1e-12, 1e-9
    return 1e-6, 1e-5


def _check_boxes(boxes: torch.Tensor, name: str) -> None:
    if boxes.shape[-1] != 7:
        raise ValueError(
            f"{name}: expected (..., 7) (cx, cy, cz, w, l, h, yaw), got {tuple(boxes.shape)}"
        )


def bev_corners(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 7)`` boxes -> ``(..., 4, 2)`` bird's-eye corners, counter-clockwise, starting
    at ``(+w/2, +l/2)`` in the box frame (as :func:`grid_store.boxes.bev_corners`)."""
    _check_boxes(boxes, "boxes")
    half = boxes.new_tensor(_HALF)  # (4, 2)
    local = half * boxes[..., None, 3:5]  # (..., 4, 2)
    c = torch.cos(boxes[..., 6])[..., None]
    s = torch.sin(boxes[..., 6])[..., None]
    x = local[..., 0] * c - local[..., 1] * s
    y = local[..., 0] * s + local[..., 1] * c
    return torch.stack([x, y], -1) + boxes[..., None, 0:2]


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """z component of the cross product of ``(..., 2)`` vectors -> ``(...)``."""
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _inside(points: torch.Tensor, boxes: torch.Tensor, slack: float) -> torch.Tensor:
    """``(N, K, 2)`` points, ``(N, 7)`` boxes -> ``(N, K)`` bool: in the BEV rectangle or on
    its boundary, up to a slack relative to the box's size (a tolerance, no gradient)."""
    d = points - boxes[:, None, 0:2]
    c = torch.cos(boxes[:, 6])[:, None]
    s = torch.sin(boxes[:, 6])[:, None]
    u = d[..., 0] * c + d[..., 1] * s
    v = -d[..., 0] * s + d[..., 1] * c
    margin = (slack * (boxes[:, 3] + boxes[:, 4]))[:, None] + 1e-12
    return (u.abs() <= boxes[:, 3:4] / 2 + margin) & (v.abs() <= boxes[:, 4:5] / 2 + margin)


def bev_intersection_area(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N, 7)``, ``(N, 7)`` -> ``(N,)`` area of the BEV intersection of each pair,
    differentiable with respect to both boxes."""
    parallel, slack = _tolerances(a.dtype)
    # Work relative to a's centre: float32 corners far from the origin would otherwise lose
    # the digits the inside/crossing tests rely on. A constant shift does not change areas.
    origin = a[:, 0:2].detach()
    zeros = torch.zeros_like(a[:, 2:])
    shift = torch.cat([origin, zeros], 1)
    a = a - shift
    b = b - shift
    ca, cb = bev_corners(a), bev_corners(b)  # (N, 4, 2)

    p, r = ca[:, :, None], (ca.roll(-1, 1) - ca)[:, :, None]  # edges of a, (N, 4, 1, 2)
    q, u = cb[:, None], (cb.roll(-1, 1) - cb)[:, None]  # edges of b, (N, 1, 4, 2)
    den = _cross(r, u)  # (N, 4, 4)
    scale = torch.linalg.vector_norm(r, dim=-1) * torch.linalg.vector_norm(u, dim=-1)
    crossing = den.abs() > parallel * scale + 1e-30
    # A safe denominator on parallel pairs: masking the quotient afterwards would still
    # send 0 * inf = NaN back through the division.
    den = torch.where(crossing, den, torch.ones_like(den))
    qp = q - p
    t = _cross(qp, u) / den
    s = _cross(qp, r) / den
    crossing = crossing & (t >= -slack) & (t <= 1 + slack) & (s >= -slack) & (s <= 1 + slack)
    hits = p + t[..., None] * r  # (N, 4, 4, 2)

    n = a.shape[0]
    points = torch.cat([ca, cb, hits.reshape(n, 16, 2)], 1)  # (N, 24, 2)
    valid = torch.cat(
        [_inside(ca, b, slack), _inside(cb, a, slack), crossing.reshape(n, 16)], 1
    )  # (N, 24)
    points = torch.where(valid[..., None], points, torch.zeros_like(points))

    with torch.no_grad():  # the order is piecewise constant: no gradient through atan2
        count = valid.sum(1, keepdim=True).clamp(min=1)
        centre = points.sum(1, keepdim=True) / count[..., None]
        rel = points - centre
        angle = torch.atan2(rel[..., 1], rel[..., 0])
        angle = torch.where(valid, angle, torch.full_like(angle, 4.0))  # invalid last
        order = torch.sort(angle, dim=1, stable=True).indices
        valid_sorted = torch.gather(valid, 1, order)
    ring = torch.gather(points - centre, 1, order[..., None].expand(-1, -1, 2))
    # Padding with the first vertex closes the polygon: the wrap-around terms of the copies
    # are cross(p0, p0) = 0, and with no valid vertex everything is one point, area 0.
    ring = torch.where(valid_sorted[..., None], ring, ring[:, :1])
    area = 0.5 * _cross(ring, ring.roll(-1, 1)).sum(1)
    return area.clamp(min=0)


def rotated_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Elementwise 3D IoU of yawed boxes: ``(N, 7)``, ``(N, 7)`` -> ``(N,)`` in ``[0, 1]``.

    Differentiable in both boxes, with finite gradients for identical, nested, touching,
    disjoint and axis-aligned pairs; the union is clamped at ``eps`` so empty boxes give 0.
    As a loss use ``1 - iou`` (``-log iou`` is infinite for disjoint pairs unless clamped).
    """
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must have the same shape")
    lead = a.shape[:-1]
    a, b = a.reshape(-1, 7), b.reshape(-1, 7)
    area = bev_intersection_area(a, b)
    top = torch.minimum(a[:, 2] + a[:, 5] / 2, b[:, 2] + b[:, 5] / 2)
    bottom = torch.maximum(a[:, 2] - a[:, 5] / 2, b[:, 2] - b[:, 5] / 2)
    inter = area * (top - bottom).clamp(min=0)
    vol_a = a[:, 3] * a[:, 4] * a[:, 5]
    vol_b = b[:, 3] * b[:, 4] * b[:, 5]
    union = (vol_a + vol_b - inter).clamp(min=eps)
    return (inter / union).reshape(lead)


def may_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(..., 7)``, ``(..., 7)`` (broadcast) -> ``(...)`` bool: the boxes' BEV circumscribed
    circles and their z intervals meet. Pairs where this is False have IoU 0, so
    :func:`pairwise_rotated_iou` and :func:`rotated_nms` compute only the others."""
    reach = 0.5 * (torch.hypot(a[..., 3], a[..., 4]) + torch.hypot(b[..., 3], b[..., 4]))
    apart = torch.hypot(a[..., 0] - b[..., 0], a[..., 1] - b[..., 1]) > reach + 1e-6
    return ~apart & ((a[..., 2] - b[..., 2]).abs() < (a[..., 5] + b[..., 5]) / 2)


@torch.no_grad()
def pairwise_rotated_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N, 7)``, ``(M, 7)`` -> ``(N, M)`` 3D IoU of every pair, without gradient.

    Pairs whose BEV circumscribed circles or z intervals are apart are 0 without being
    computed; the rest go through :func:`rotated_iou` in chunks of ``_PAIR_CHUNK`` pairs, so
    memory is ``O(N * M)`` for the result plus a bounded working set.
    """
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    a, b = a.reshape(-1, 7), b.reshape(-1, 7)
    out = a.new_zeros(a.shape[0], b.shape[0])
    if out.numel() == 0:
        return out
    rows, cols = may_overlap(a[:, None], b[None]).nonzero(as_tuple=True)
    for start in range(0, rows.numel(), _PAIR_CHUNK):
        i = rows[start : start + _PAIR_CHUNK]
        j = cols[start : start + _PAIR_CHUNK]
        out[i, j] = rotated_iou(a[i], b[j])
    return out


@torch.no_grad()
def rotated_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with the 3D rotated IoU: ``(N, 7)``, ``(N,)`` -> ``(K,)`` long indices kept,
    in decreasing score order (equal scores: lower index first).

    A box is dropped when its IoU with a box already kept is *above* ``iou_threshold``.
    Only the IoUs the greedy pass reads are computed, so a dense cluster of candidates costs
    its survivors' rows, not the ``(N, N)`` matrix (a detector's candidates in a room
    form such clusters: 5-17x faster). The boxes still standing are taken
    ``_NMS_BLOCK`` at a time in score order: the pairs inside a block settle which of them
    survive (sequentially, as greedy NMS does), then the survivors' IoUs with every later
    box still standing drop those above the threshold in one batched call. The result is
    the full-matrix greedy pass's, box for box.
    """
    _check_boxes(boxes, "boxes")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"scores {tuple(scores.shape)} must be (N,) for boxes {tuple(boxes.shape)}"
        )
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = boxes[order].detach()

    def above(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """``iou(i, j) > iou_threshold`` for pairs of ranks, computing only pairs that
        :func:`may_overlap`."""
        hit = np.zeros(len(i), dtype=bool)
        a, b = (ranked[torch.from_numpy(k).to(ranked.device)] for k in (i, j))
        near = may_overlap(a, b).nonzero().flatten()
        for first in range(0, near.numel(), _PAIR_CHUNK):
            chunk = near[first : first + _PAIR_CHUNK]
            iou = rotated_iou(a[chunk], b[chunk])
            hit[chunk.cpu().numpy()] = (iou > iou_threshold).cpu().numpy()
        return hit

    standing = np.ones(len(ranked), dtype=bool)
    keep: list[np.ndarray] = []
    start = 0
    while (block := start + np.flatnonzero(standing[start:])[:_NMS_BLOCK]).size:
        first, second = np.triu_indices(len(block), 1)
        drops = np.zeros((len(block), len(block)), dtype=bool)
        drops[first, second] = above(block[first], block[second])
        alive = np.ones(len(block), dtype=bool)
        for k in range(len(block)):
            if alive[k]:
                alive[k + 1 :] &= ~drops[k, k + 1 :]
        survivors = block[alive]
        standing[block[~alive]] = False
        keep.append(survivors)
        start = block[-1] + 1
        later = start + np.flatnonzero(standing[start:])
        if later.size:
            rows, cols = np.repeat(survivors, later.size), np.tile(later, survivors.size)
            standing[cols[above(rows, cols)]] = False
    kept = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
    return order[torch.from_numpy(kept).to(device=order.device, dtype=torch.long)]


def encode_obb(locations: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS OBB targets: ``(P, 3)`` locations, ``(P, 7)`` boxes -> ``(P, 8)``
    ``(x - xmin, y - ymin, z - zmin, xmax - x, ymax - y, zmax - z, alpha, beta)``.

    ``xmin..zmax`` bound the box's axis-aligned hull; ``alpha = (vx - cx) / (xmax - xmin)``
    for the rectangle's vertex ``(vx, ymax)`` on the hull's top edge and ``beta = (vy - cy)
    / (ymax - ymin)`` for its vertex ``(xmax, vy)`` on the right edge, both in
    ``[-0.5, 0.5]``. Locations outside the hull give negative distances (not checked).

    Tie rule: when a whole edge of the rectangle lies on the hull (a yaw that is a multiple
    of 90 degrees), the top vertex is the one with the largest x and the right vertex the
    one with the smallest y, so yaw 0 gives ``alpha = 0.5, beta = -0.5`` and the decoded
    rectangle is the hull itself, never a degenerate one. Yaws just below a quarter turn
    (within 1e-9 of one in float64, 1e-6 in other dtypes, in quarter turns) are snapped to
    it, so the targets do not flip between the two equivalent codes ``(0.5, -0.5)`` and
    ``(-0.5, 0.5)`` on rounding noise; beyond that a yaw slightly below a quarter turn has
    a code near ``(-0.5, 0.5)``. Targets only: no gradient.
    """
    _check_boxes(boxes, "boxes")
    if locations.shape[-1] != 3 or locations.shape[:-1] != boxes.shape[:-1]:
        raise ValueError(
            f"locations {tuple(locations.shape)} must be (P, 3) for boxes {tuple(boxes.shape)}"
        )
    with torch.no_grad():
        b = boxes.double()
        # Any box equals one with yaw in [0, pi/2) after k quarter turns, w and l swapped for
        # odd k; in that range the top vertex is corner (+w/2, +l/2) and the right vertex
        # corner (+w/2, -l/2), which is the tie rule at yaw 0.
        quarter = b[:, 6] / (math.pi / 2)
        # float32 yaws carry ~1e-7 of rounding (float32(pi) is not pi): snap more there
        snap = 1e-9 if boxes.dtype == torch.float64 else 1e-6
        k = torch.floor(quarter + snap)
        theta = ((quarter - k) * (math.pi / 2)).clamp(min=0.0)
        odd = torch.remainder(k, 2) == 1
        w = torch.where(odd, b[:, 4], b[:, 3])
        l = torch.where(odd, b[:, 3], b[:, 4])
        c, s = torch.cos(theta), torch.sin(theta)
        width = w * c + l * s  # hull extent along x
        depth = w * s + l * c  # along y
        alpha = (w * c - l * s) / (2 * width).clamp(min=1e-12)
        beta = (w * s - l * c) / (2 * depth).clamp(min=1e-12)
        half = torch.stack([width, depth, b[:, 5]], 1) / 2  # (P, 3)
        x = locations.double()
        out = torch.cat(
            [x - (b[:, :3] - half), (b[:, :3] + half) - x, alpha[:, None], beta[:, None]], 1
        )
    return out.to(boxes.dtype)


def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    """``(..., 2)`` -> ``(...)``: length with a finite gradient at the zero vector."""
    return torch.sqrt((v * v).sum(-1) + 1e-24)


def decode_obb(locations: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_obb`: ``(P, 3)`` locations, ``(P, 8)`` deltas -> ``(P, 7)``.

    The hull comes from the 6 distances (clamped at 0, so a collapsed prediction is a
    zero-size box, not NaN); ``alpha`` and ``beta`` are clamped to ``[-0.5, 0.5]``. The
    vertices top ``T = (cx + alpha W, ymax)``, left ``L = (xmin, cy - beta H)``, bottom
    and right (their mirror images) form a counter-clockwise parallelogram; for a
    prediction it need not be a rectangle. Decode rule: with edges ``e1 = T - L`` (the
    box's x side) and ``e2 = T - R`` (its y side), the yaw is the direction halfway between
    ``e1`` and ``e2`` turned by -90 degrees (the two agree for a rectangle), and ``w``,
    ``l`` are the projections of ``e1`` and ``e2`` on the box's x and y axes (for that
    yaw, the least-squares fit of the four vertices). The counter-clockwise order keeps
    the two directions within 90 degrees of each other, so their sum never vanishes.

    The decoded yaw is in ``[0, pi/2]``: the same rectangle as the encoded box, but
    ``(w, l, yaw)`` may be ``(l, w, yaw -+ pi/2)`` or ``yaw -+ pi`` of the original.
    Differentiable (it feeds the IoU loss).
    """
    if (
        locations.shape[-1] != 3
        or deltas.shape[-1] != 8
        or locations.shape[:-1] != deltas.shape[:-1]
    ):
        raise ValueError(
            f"locations (P, 3) and deltas (P, 8) expected, got {tuple(locations.shape)} / "
            f"{tuple(deltas.shape)}"
        )
    near = deltas[..., 0:3].clamp(min=0)
    far = deltas[..., 3:6].clamp(min=0)
    alpha = deltas[..., 6].clamp(-0.5, 0.5)
    beta = deltas[..., 7].clamp(-0.5, 0.5)
    centre = locations + (far - near) / 2
    size = near + far  # hull (W, H, h)
    width, depth = size[..., 0], size[..., 1]
    e1 = torch.stack([width * (alpha + 0.5), depth * (beta + 0.5)], -1)
    e2 = torch.stack([width * (alpha - 0.5), depth * (0.5 - beta)], -1)
    e2_turned = torch.stack([e2[..., 1], -e2[..., 0]], -1)  # e2 turned by -90 degrees
    axis = e1 / _safe_norm(e1)[..., None] + e2_turned / _safe_norm(e2_turned)[..., None]
    # A fully collapsed hull leaves no direction: take yaw 0 there, with inputs to atan2
    # that keep its gradient finite.
    empty = (axis * axis).sum(-1) < 1e-20
    axis = torch.where(empty[..., None], torch.ones_like(axis), axis)
    yaw = torch.atan2(axis[..., 1], axis[..., 0])
    unit = axis / _safe_norm(axis)[..., None]
    w = (e1 * unit).sum(-1).clamp(min=0)
    l = (e2_turned * unit).sum(-1).clamp(min=0)
    yaw = torch.where(empty, torch.zeros_like(yaw), yaw)
    return torch.cat([centre, torch.stack([w, l, size[..., 2], yaw], -1)], -1)


__all__ = [
    "bev_corners",
    "bev_intersection_area",
    "decode_obb",
    "encode_obb",
    "pairwise_rotated_iou",
    "rotated_iou",
    "rotated_nms",
]
