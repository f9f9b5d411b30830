"""Trilinear reads of coarse feature maps at voxel centres, one point at a time or pooled over
sets of voxels, without ever building a full-resolution feature volume.

A map ``(C, D, H, W)`` covers the ``S^3`` voxel cube of the grid it was computed from: cell
``j`` of an axis with ``D`` cells spans voxels ``[j s, (j + 1) s)`` with ``s = S / D`` (an
encoder stage of stride ``s``; ``s = 1`` for a map at voxel resolution). Voxel ``v``'s centre is
at ``v + 0.5`` and cell ``j``'s at ``(j + 0.5) s``, so in cell units the centre lies at
``u = (v + 0.5) / s - 0.5``. Between the outermost cell centres and the cube's faces there is no
second cell to blend with; there the nearest cell's value is used (``u`` clamped to
``[0, D - 1]``), which is what ``F.grid_sample(..., align_corners=False,
padding_mode="border")`` and ``F.interpolate(..., mode="trilinear", align_corners=False)`` do.

Every read is a fixed linear combination of at most 8 cells per voxel: :func:`corners` gives its
indices and weights, which depend only on where the voxels are and on the map's shape, never on
the map's values. That is what makes probing many checkpoints cheap: the weights of each
room's points and boxes are computed once, and per checkpoint a read is one gather (points) or
one sparse product (boxes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _check_cells(size: int, cells: Sequence[int]) -> None:
    if len(cells) != 3 or any(size % n for n in cells):
        raise ValueError(f"a map of {tuple(cells)} cells does not tile a {size}^3 voxel cube "
                         "(each axis must divide it)")  # fmt: skip


def corners(points: Tensor, size: int, cells: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The trilinear stencil of voxel centres on a map of ``cells`` ``(D, H, W)``.

    Args:
        points: ``(P, 3)`` integer voxel indices ``(i, j, k)`` of an ``S^3`` cube, ``S = size``.
        size: ``S``.
        cells: the map's ``(D, H, W)``; each must divide ``S``.

    Returns:
        ``(index, weight)``, both ``(P, 8)``: flat cell indices (``(a * H + b) * W + c``) and
        float32 weights summing to 1 per point. Clamped neighbours repeat an index with weight 0
        where the centre sits on a cell centre or beyond the outermost one.
    """
    _check_cells(size, cells)
    points = points.long()
    low, high, frac = [], [], []
    for axis, n in enumerate(cells):
        u = ((points[:, axis].double() + 0.5) * n / size - 0.5).clamp(0, n - 1)
        j0 = u.floor().long()
        low.append(j0)
        high.append((j0 + 1).clamp(max=n - 1))
        frac.append((u - j0).float())
    index, weight = [], []
    for pick in itertools.product((0, 1), repeat=3):
        a, b, c = (high[i] if p else low[i] for i, p in enumerate(pick))
        index.append((a * cells[1] + b) * cells[2] + c)
        w = torch.ones_like(frac[0])
        for i, p in enumerate(pick):
            w = w * (frac[i] if p else 1 - frac[i])
        weight.append(w)
    return torch.stack(index, 1), torch.stack(weight, 1)


def _rows(feature_map: Tensor) -> Tensor:
    """``(C, D, H, W)`` -> ``(D*H*W, C)``, one row per cell (a view for channels-last maps)."""
    return feature_map.permute(1, 2, 3, 0).reshape(-1, feature_map.shape[0])


def sample_map(feature_map: Tensor, points: Tensor, size: int) -> Tensor:
    """``(C, D, H, W)`` map read at the centres of ``(P, 3)`` voxels of the ``size^3`` cube:
    ``(P, C)``."""
    index, weight = corners(points, size, feature_map.shape[1:])
    rows = _rows(feature_map)[index.reshape(-1)].reshape(*index.shape, -1)  # (P, 8, C)
    return torch.einsum("pkc,pk->pc", rows, weight.to(rows.dtype))


def sample_maps(maps: Sequence[Tensor], points: Tensor, size: int) -> Tensor:
    """Each ``(C_i, D_i, H_i, W_i)`` map read at the voxel centres, concatenated:
    ``(P, sum C_i)``."""
    return torch.cat([sample_map(m, points, size) for m in maps], 1)


def pooling_matrix(voxel_sets: Sequence[Tensor], size: int, cells: Sequence[int]) -> Tensor:
    """The mean over each voxel set of the trilinear reads, as one sparse matrix.

    Args:
        voxel_sets: ``N`` tensors ``(M_n, 3)`` of voxel indices, ``M_n >= 1``.
        size: the cube's ``S``.
        cells: the map's ``(D, H, W)``.

    Returns:
        Sparse COO ``(N, D*H*W)`` float32: row ``n`` holds the weights with which the mean of
        the map's reads over set ``n`` combines the cells (:func:`pool_map` applies it). The
        weights of a set's voxels are summed per cell, so a box's row has at most as many
        entries as cells it touches.
    """
    if any(len(v) == 0 for v in voxel_sets):
        raise ValueError("pooling_matrix: a voxel set is empty (nothing to average)")
    points = torch.cat([torch.zeros(0, 3, dtype=torch.long), *voxel_sets])  # a room may have none
    counts = torch.tensor([len(v) for v in voxel_sets], dtype=torch.long)
    row = torch.repeat_interleave(torch.arange(len(voxel_sets)), counts)  # (sum M,)
    index, weight = corners(points, size, cells)  # (sum M, 8)
    weight = weight / counts[row, None].float()
    entries = torch.stack([row[:, None].expand_as(index).reshape(-1), index.reshape(-1)])
    shape = (len(voxel_sets), math.prod(cells))
    return torch.sparse_coo_tensor(entries, weight.reshape(-1), shape,
                                   check_invariants=True).coalesce()  # fmt: skip


def pool_map(matrix: Tensor, feature_map: Tensor) -> Tensor:
    """A :func:`pooling_matrix` ``(N, D*H*W)`` applied to a ``(C, D, H, W)`` map: ``(N, C)``."""
    return torch.sparse.mm(matrix, _rows(feature_map).float())


def project_maps(maps: Sequence[Tensor], weight: Tensor) -> list[Tensor]:
    """Maps ``(C_i, D_i, H_i, W_i)`` mixed by the column blocks of ``weight`` ``(K, sum C_i)``:
    ``(K, D_i, H_i, W_i)`` each.

    Trilinear weights sum to 1, so reading a linear probe's output at any voxel equals the sum
    over maps of reading the projected maps there (bias added once). Projecting first keeps a
    dense evaluation at ``K`` channels instead of ``sum C_i``.
    """
    blocks = torch.split(weight, [m.shape[0] for m in maps], dim=1)
    return [torch.einsum("kc,cdhw->kdhw", w, m.float()) for w, m in zip(blocks, maps, strict=True)]
