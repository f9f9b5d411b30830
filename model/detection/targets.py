"""FCOS target assignment over the FPN's locations (NeRF-RPN's ``fcos/loss.py`` rules).

For one grid, every location (cell centre of every level, :func:`level_locations`) is
tested against every ground-truth box (voxel coordinates):

1. **inside**: the location lies strictly inside the box's axis-aligned hull (all 6
   distances of :func:`~model.detection.geometry.encode_obb` positive; the OBB encoding
   regresses the hull, so a hull location has a well-defined target);
2. **centre sampling**: it lies within ``radius x stride`` of the box centre on each axis;
3. **size range**: its largest distance (voxels) lies in the level's ``[low, high]``;
4. **not padding**: its coordinate is inside the grid's real region (``valid``).

Among the boxes passing 1-3, the one of smallest volume wins; a location passing 4 and
claimed by a box is positive. Targets: objectness 1/0, the 8 OBB deltas with the
distances divided by the level's stride, the centerness ``sqrt(prod_axes min(d-, d+) /
max(d-, d+))`` (FCOS's rule over three axes), the index of the assigned box and its class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from grid_store.dataset import real_extent
from model.detection.geometry import encode_obb
from model.networks.detector import level_locations


@dataclass
class LevelLayout:
    """The flattened locations of all levels of one input size (shared by a batch)."""

    locations: Tensor
    """``(L, 3)`` voxel coordinates."""
    strides: Tensor
    """``(L,)`` float stride of each location's level."""
    levels: Tensor
    """``(L,)`` long level index."""


def level_layout(
    shapes: list[tuple[int, int, int]], strides: list[int], device=None
) -> LevelLayout:
    """The :class:`LevelLayout` of FPN maps of ``shapes`` (one per level) and ``strides``."""
    locations, stride_of, level_of = [], [], []
    for level, (shape, stride) in enumerate(zip(shapes, strides, strict=True)):
        loc = level_locations(shape, stride, device)
        locations.append(loc)
        stride_of.append(torch.full((len(loc),), float(stride), device=device))
        level_of.append(torch.full((len(loc),), level, dtype=torch.long, device=device))
    return LevelLayout(torch.cat(locations), torch.cat(stride_of), torch.cat(level_of))


def location_mask(layout: LevelLayout, valid: Tensor) -> Tensor:
    """``(L,)`` bool: the locations inside the real region of the ``(X, Y, Z)`` ``valid``."""
    return (layout.locations < real_extent(valid)).all(1)


@dataclass
class FCOSTargets:
    """Targets of one batch over its ``L`` locations."""

    objectness: Tensor
    """``(B, L)`` float, 1 at positives."""
    deltas: Tensor
    """``(B, L, 8)`` OBB deltas, distances in stride units (0 at negatives)."""
    centerness: Tensor
    """``(B, L)`` centerness target (0 at negatives)."""
    matched: Tensor
    """``(B, L)`` long index of the assigned box, -1 at negatives."""
    classes: Tensor
    """``(B, L)`` long class of the assigned box (its label; 0 without labels), -1 at
    negatives."""
    location_valid: Tensor
    """``(B, L)`` bool, the locations not in padding (the only ones scored)."""


def centerness_target(distances: Tensor) -> Tensor:
    """``(P, 6)`` hull distances ``(x-, y-, z-, x+, y+, z+)`` -> ``(P,)`` FCOS centerness."""
    near, far = distances[:, :3], distances[:, 3:]
    ratio = near.minimum(far).clamp(min=0) / near.maximum(far).clamp(min=1e-12)
    return ratio.prod(1).sqrt()


def assign_grid(
    layout: LevelLayout,
    boxes: Tensor,
    valid_locations: Tensor,
    size_ranges: list[list[float]],
    radius: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """One grid's assignment: ``boxes`` ``(N, 7)`` voxel coordinates, ``valid_locations``
    ``(L,)`` -> ``(matched (L,) long, -1 = negative; deltas (L, 8); centerness (L,))``."""
    L, N = len(layout.locations), len(boxes)
    matched = torch.full((L,), -1, dtype=torch.long, device=boxes.device)
    deltas = torch.zeros((L, 8), device=boxes.device)
    centerness = torch.zeros(L, device=boxes.device)
    if N == 0:
        return matched, deltas, centerness
    loc = layout.locations[:, None].expand(L, N, 3).reshape(-1, 3)
    box = boxes[None].expand(L, N, 7).reshape(-1, 7).float()
    codes = encode_obb(loc, box).view(L, N, 8)  # (L, N, 8)
    distances = codes[..., :6]
    inside = distances.min(-1).values > 0
    offset = (layout.locations[:, None] - boxes[None, :, :3]).abs()  # (L, N, 3)
    near_centre = (offset < radius * layout.strides[:, None, None]).all(-1)
    ranges = torch.tensor(size_ranges, device=boxes.device)[layout.levels]  # (L, 2)
    reach = distances.max(-1).values
    in_range = (reach >= ranges[:, :1]) & (reach <= ranges[:, 1:])
    candidate = inside & near_centre & in_range & valid_locations[:, None]
    volume = (boxes[:, 3] * boxes[:, 4] * boxes[:, 5]).float()[None].expand(L, N)
    volume = torch.where(candidate, volume, torch.full_like(volume, torch.inf))
    smallest, index = volume.min(1)
    positive = torch.isfinite(smallest)
    matched[positive] = index[positive]
    chosen = codes[torch.arange(L, device=boxes.device), index]  # (L, 8)
    chosen = torch.cat([chosen[:, :6] / layout.strides[:, None], chosen[:, 6:]], 1)
    deltas[positive] = chosen[positive]
    centerness[positive] = centerness_target(chosen[positive, :6])
    return matched, deltas, centerness


def assign_targets(
    layout: LevelLayout,
    boxes: list[Tensor],
    valid: Tensor,
    size_ranges: list[list[float]],
    radius: float,
    labels: list[Tensor] | None = None,
) -> FCOSTargets:
    """The batch's targets: ``boxes`` one ``(N_b, 7)`` per grid, ``valid`` ``(B, X, Y, Z)``,
    ``labels`` one ``(N_b,)`` per grid (or None: class 0 for all)."""
    out = []
    masks = []
    for b, grid_boxes in enumerate(boxes):
        mask = location_mask(layout, valid[b])
        masks.append(mask)
        out.append(assign_grid(layout, grid_boxes.to(layout.locations.device), mask,
                               size_ranges, radius))  # fmt: skip
    matched = torch.stack([o[0] for o in out])
    classes = torch.full_like(matched, -1)
    for b, grid_boxes in enumerate(boxes):
        grid_labels = (torch.zeros(len(grid_boxes), dtype=torch.long) if labels is None
                       else labels[b].long()).to(matched.device)  # fmt: skip
        hit = matched[b] >= 0
        classes[b, hit] = grid_labels[matched[b, hit]]
    return FCOSTargets(
        objectness=(matched >= 0).float(),
        deltas=torch.stack([o[1] for o in out]),
        centerness=torch.stack([o[2] for o in out]),
        matched=matched,
        classes=classes,
        location_valid=torch.stack(masks),
    )


__all__ = [
    "FCOSTargets",
    "LevelLayout",
    "assign_grid",
    "assign_targets",
    "centerness_target",
    "level_layout",
    "location_mask",
]
