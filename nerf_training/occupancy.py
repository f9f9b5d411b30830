"""Occupancy grid for empty-space skipping, updated during training (Instant-NGP / nerfacc).

A ``R^3`` grid over the scene box keeps an exponential moving average of the field's
optical thickness (density x render step) sampled at random points inside each cell; cells
above a threshold are occupied and only those are sampled along rays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OccupancyGridConfig:
    """Occupancy-grid settings (nerfacc's defaults for bounded scenes)."""

    resolution: int = 128
    """Cells per side of the grid."""
    update_every: int = 16
    """Training steps between updates."""
    warmup_steps: int = 256
    """Steps during which every cell is re-evaluated at each update."""
    decay: float = 0.95
    """EMA decay of a cell's value between updates."""
    threshold: float = 0.01
    """Optical thickness (density x step) above which a cell is occupied (capped by the mean)."""
    chunk: int = 1 << 18
    """Points per density evaluation (bounds memory)."""


class OccupancyGrid(nn.Module):
    """Binary occupancy over ``aabb`` with an EMA of sampled optical thickness."""

    def __init__(self, aabb: torch.Tensor, config: OccupancyGridConfig | None = None):
        super().__init__()
        self.config = config or OccupancyGridConfig()
        r = self.config.resolution
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3))
        self.register_buffer("values", torch.zeros(r**3))  # (R^3,) EMA, x slowest
        # Everything starts occupied: nothing is skipped before the first update.
        self.register_buffer("binary", torch.ones(r**3, dtype=torch.bool))  # (R^3,)

    @property
    def resolution(self) -> int:
        return self.config.resolution

    def cell_index(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3)`` world points -> flat cell index ``(N,)`` and ``(N,)`` inside-the-box."""
        r = self.resolution
        u = (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0]) * r  # (N, 3) in cell units
        inside = ((u >= 0) & (u < r)).all(dim=-1)
        ijk = u.long().clamp_(0, r - 1)
        return (ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2], inside

    def occupied(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` world points -> ``(N,)`` bool: inside the box and in an occupied cell."""
        idx, inside = self.cell_index(x)
        return self.binary[idx] & inside

    def _cell_points(self, cells: torch.Tensor) -> torch.Tensor:
        """``(M,)`` flat cell indices -> ``(M, 3)`` uniformly random world points inside them."""
        r = self.resolution
        ijk = torch.stack((cells // (r * r), (cells // r) % r, cells % r), dim=-1)  # (M, 3)
        u = (ijk + torch.rand(ijk.shape, device=cells.device)) / r
        return self.aabb[0] + u * (self.aabb[1] - self.aabb[0])

    @torch.no_grad()
    def update(
        self,
        step: int,
        density_fn: Callable[[torch.Tensor], torch.Tensor],
        step_size: float,
        force: bool = False,
    ) -> bool:
        """Re-evaluate cells when ``step`` is an update step (or ``force``); True if updated.

        ``density_fn``: ``(M, 3)`` world points -> ``(M,)`` density. During warm-up every cell
        is evaluated; afterwards a quarter of the cells at random plus as many occupied ones
        (so the grid can both discover and forget geometry at half the cost).
        """
        cfg = self.config
        if not force and step % cfg.update_every != 0:
            return False
        n_cells = self.values.numel()
        device = self.values.device
        if step < cfg.warmup_steps:
            cells = torch.arange(n_cells, device=device)
        else:
            uniform = torch.randint(0, n_cells, (n_cells // 4,), device=device)
            occupied = torch.nonzero(self.binary).squeeze(-1)
            if occupied.numel() > n_cells // 4:
                pick = torch.randint(0, occupied.numel(), (n_cells // 4,), device=device)
                occupied = occupied[pick]
            cells = torch.cat([uniform, occupied])
        thickness = torch.cat(
            [
                density_fn(self._cell_points(chunk)).float() * step_size
                for chunk in torch.split(cells, cfg.chunk)
            ]
        )  # (M,)
        # Duplicated cells (random draws) keep one of their values: any is a fair sample.
        self.values[cells] = torch.maximum(self.values[cells] * cfg.decay, thickness)
        threshold = min(cfg.threshold, float(self.values.mean()))
        self.binary = self.values > threshold
        return True

    def occupied_fraction(self) -> float:
        return float(self.binary.float().mean())
