"""NeRF-RPN's rotate-and-scale augmentation of detection grids, in torch (on any device).

On top of :class:`grid_store.dataset.GridDataset`'s 90-degree rotations and flips,
NeRF-RPN (``rotate_and_scale_scene``, probability 0.5) turns each training grid by a
small angle about z (``U(-10, 10)`` degrees) and scales it (``U(0.9, 1.1)``), moving the
boxes along.

**Geometry.** Voxel coordinates as everywhere in detection (:mod:`grid_store.boxes`):
voxel ``i`` of an axis covers ``[i, i + 1]`` and its sample sits at ``i + 0.5``; a box is
``(cx, cy, cz, w, l, h, yaw)``, yaw about z counter-clockwise. The transform is

    p' = c + scale * Rz(angle) @ (p - c)

about ``c``, the centre of the real region: the bounding box of ``valid`` (for a
GridDataset sample ``[0, x] x [0, y] x [0, z]``, so ``c = (x, y, z) / 2``; the whole grid
when ``valid`` is empty). A positive angle turns the content counter-clockwise seen from
+z, a scale above 1 enlarges it (also along z). NeRF-RPN turns about the grid's centre;
the real region's centre keeps padded grids' content inside the grid.

**Resampling.** Each output voxel takes the input at ``c + Rz(-angle) @ (q - c) / scale``
for its sample point ``q = i + 0.5``, with ``torch.nn.functional.grid_sample``:
trilinear for ``rgba``, nearest for ``valid``, zeros / False outside the input grid.
With ``align_corners=False`` grid_sample's normalised ``-1 .. 1`` spans the voxel edges
``0 .. n`` of an axis of ``n`` voxels, so voxel coordinate ``p`` is ``2 p / n - 1``:
exactly this convention, and a nearest lookup at ``p`` reads voxel ``floor(p)``. (NeRF-RPN
uses ``align_corners=True``, which is off by up to half a voxel at the borders.)
``rgba`` is then zeroed where the new ``valid`` is False, keeping the datasets' rule that
padding is exact zeros. ``angle == 0`` with ``scale == 1`` returns copies unchanged.

**Boxes.** Centre transformed as ``p'``, extents times ``scale``, ``yaw + angle`` wrapped to
``[-pi, pi)``. No box is dropped or clipped (a box may reach out of the real region after
scaling up), so box labels stay aligned. A 90-degree turn of a real region square in
``(x, y)`` is exactly :func:`grid_store.boxes.augment_boxes`' rotation (``rotate=True``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from grid_store.dataset import real_bounds


def _wrap(yaw: torch.Tensor) -> torch.Tensor:
    return torch.remainder(yaw + math.pi, 2 * math.pi) - math.pi


def rotate_scale(
    rgba: torch.Tensor, valid: torch.Tensor, boxes: torch.Tensor, angle_rad: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn one grid by ``angle_rad`` about z and scale it by ``scale``, about its real centre.

    Args:
        rgba: ``(C, X, Y, Z)`` floats (``C = 4``).
        valid: ``(X, Y, Z)`` bool, the real region.
        boxes: ``(N, 7)`` in voxel coordinates.
        angle_rad: counter-clockwise about +z.
        scale: > 0; above 1 enlarges the content.

    Returns new ``(rgba, valid, boxes)`` of the same shapes, dtypes and device (see the
    module docstring for the exact convention).
    """
    if rgba.ndim != 4 or valid.shape != rgba.shape[1:]:
        raise ValueError(
            f"expected rgba (C, X, Y, Z) and valid (X, Y, Z), got {tuple(rgba.shape)} "
            f"and {tuple(valid.shape)}"
        )
    if boxes.ndim != 2 or boxes.shape[1] != 7:
        raise ValueError(f"boxes: expected (N, 7), got {tuple(boxes.shape)}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if angle_rad == 0 and scale == 1:
        return rgba.clone(), valid.clone(), boxes.clone()

    device = rgba.device
    X, Y, Z = valid.shape
    lo, hi = real_bounds(valid)  # (3,) each, on the device
    whole = torch.tensor(valid.shape, device=device)
    centre = torch.where(hi > lo, lo + hi, whole).to(torch.float32) / 2  # (3,)
    cos, sin = math.cos(angle_rad), math.sin(angle_rad)

    # Output sample points q = i + 0.5, relative to the centre, mapped back into the input.
    qx, qy, qz = (
        torch.arange(n, device=device, dtype=torch.float32) + 0.5 - centre[a]
        for a, n in enumerate((X, Y, Z))
    )
    qx, qy, qz = qx.view(X, 1, 1), qy.view(1, Y, 1), qz.view(1, 1, Z)
    px = centre[0] + (cos * qx + sin * qy) / scale  # Rz(-angle) @ (q - c) / scale + c
    py = centre[1] + (-sin * qx + cos * qy) / scale
    pz = centre[2] + qz / scale
    # grid_sample's last dimension is (W, H, D) = (z, y, x) of a (N, C, D=X, H=Y, W=Z) input;
    # align_corners=False: voxel coordinate p on an axis of n voxels is 2 p / n - 1.
    grid = torch.stack(
        torch.broadcast_tensors(2 * pz / Z - 1, 2 * py / Y - 1, 2 * px / X - 1), dim=-1
    )[None]  # (1, X, Y, Z, 3)

    dtype = rgba.dtype if rgba.is_floating_point() else torch.float32
    grid = grid.to(dtype)
    out_valid = F.grid_sample(
        valid.to(dtype)[None, None], grid, mode="nearest", padding_mode="zeros",
        align_corners=False,
    )[0, 0] > 0.5  # fmt: skip
    out_rgba = F.grid_sample(
        rgba.to(dtype)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )[0]
    out_rgba = (out_rgba * out_valid).to(rgba.dtype)  # padding stays exact zeros

    out_boxes = boxes.clone()
    if len(boxes):
        c = centre.to(boxes.dtype)
        d = boxes[:, :3] - c
        out_boxes[:, 0] = c[0] + scale * (cos * d[:, 0] - sin * d[:, 1])
        out_boxes[:, 1] = c[1] + scale * (sin * d[:, 0] + cos * d[:, 1])
        out_boxes[:, 2] = c[2] + scale * d[:, 2]
        out_boxes[:, 3:6] = boxes[:, 3:6] * scale
        out_boxes[:, 6] = _wrap(boxes[:, 6] + angle_rad)
    return out_rgba, out_valid, out_boxes


def random_rotate_scale(
    rgba: torch.Tensor,
    valid: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor | None],
    generator: torch.Generator,
    max_angle: float = math.pi / 18,
    scale_range: tuple[float, float] = (0.9, 1.1),
    p: float = 0.5,
):
    """NeRF-RPN's random rotate-and-scale, drawn and applied per grid.

    Takes one grid (``rgba (4, S, S, S)``, ``valid (S, S, S)``, ``boxes (N, 7)``) or a batch
    (``(B, 4, S, S, S)``, ``(B, S, S, S)``, a list of ``B`` ``(N_b, 7)`` tensors, ``None`` for
    a grid without boxes) and returns the same structure. With probability ``p`` a grid is
    turned by ``U(-max_angle, max_angle)`` and scaled by ``U(*scale_range)``
    (:func:`rotate_scale`); the others are left as they are. Each grid draws three numbers
    from ``generator`` (on its own device; the grids may be elsewhere) whether or not it is
    transformed, so the stream does not depend on the outcomes. The inputs are never
    modified: a batch with any grid transformed comes back as new tensors.
    """
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    lo, hi = (float(v) for v in scale_range)
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
    single = rgba.ndim == 4
    if single:
        if not isinstance(boxes, torch.Tensor):
            raise TypeError("one grid (rgba of rank 4) takes boxes as one (N, 7) tensor")
        out = random_rotate_scale(
            rgba[None], valid[None], [boxes], generator, max_angle, scale_range, p
        )
        return out[0][0], out[1][0], out[2][0]
    if rgba.ndim != 5 or valid.ndim != 4 or len(boxes) != rgba.shape[0]:
        raise ValueError(
            f"expected rgba (B, C, X, Y, Z), valid (B, X, Y, Z) and B box tensors, got "
            f"{tuple(rgba.shape)}, {tuple(valid.shape)} and {len(boxes)} box tensors"
        )
    out_rgba, out_valid, out_boxes = rgba, valid, list(boxes)
    for b in range(rgba.shape[0]):
        u = torch.rand(3, generator=generator, device=generator.device).tolist()
        if u[0] >= p:
            continue
        angle = (2 * u[1] - 1) * max_angle
        scale = lo + (hi - lo) * u[2]
        grid_boxes = boxes[b] if boxes[b] is not None else rgba.new_zeros((0, 7))
        new_rgba, new_valid, new_boxes = rotate_scale(rgba[b], valid[b], grid_boxes, angle, scale)
        if out_rgba is rgba:  # copy on the first write: the caller's batch stays as it was
            out_rgba, out_valid = rgba.clone(), valid.clone()
        out_rgba[b], out_valid[b] = new_rgba, new_valid
        out_boxes[b] = new_boxes if boxes[b] is not None else None
    return out_rgba, out_valid, out_boxes


__all__ = ["random_rotate_scale", "rotate_scale"]
