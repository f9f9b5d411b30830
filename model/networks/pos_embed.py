"""Fixed 3D sine-cosine positional embedding of the token grid (not trained).

The channel axis is split in three equal parts, one per grid axis; each part holds
``sin(pos * omega_k)`` for its first half and ``cos(pos * omega_k)`` for its second half, with
``omega_k = 1 / 10000 ** (k / (part / 2))``. The reference builds its grid with
``np.meshgrid(w, h, l)`` ('xy' indexing), so the first part encodes the token's index along the
*second* axis of the ``(D, H, W)`` grid, the second part the first axis, the third part the third
axis; we keep that order so the embedding is the reference's, value for value.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """``(M,)`` positions -> ``(M, dim)``: ``[sin(pos * omega), cos(pos * omega)]``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_3d(grid: int, dim: int) -> Tensor:
    """``(1, grid, grid, grid, dim)`` float32 embedding of a cubic ``(D, H, W)`` token grid."""
    if dim % 6:
        raise ValueError(f"3D sin-cos embedding needs dim divisible by 6, got {dim}")
    part = dim // 3
    idx = torch.arange(grid)
    d, h, w = torch.meshgrid(idx, idx, idx, indexing="ij")  # (grid, grid, grid) each
    parts = [sincos_1d(axis.flatten(), part) for axis in (h, d, w)]  # 'xy' meshgrid order
    return torch.cat(parts, dim=1).view(1, grid, grid, grid, dim).float()
