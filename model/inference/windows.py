"""Whole rooms through a network of a fixed input cube: overlapping windows.

A network built for ``S^3`` inputs (its positional table fixes ``S``) sees a room larger
than ``S`` on some axis through ``S^3`` windows that overlap by ``overlap`` voxels and
cover the room's real region: along an axis of ``n > S`` voxels the windows start at
``0, S - overlap, 2 (S - overlap), ...`` and the last one ends at ``n`` exactly, so no
window reads more padding than a grid that fits would. What each window says is mapped
back to the room:

- dense outputs (semantic logits) are averaged where windows overlap, weighted by a tent
  that is highest at a window's centre and lowest at its cut faces, where the network saw
  the least context (:func:`stitch_dense`);
- each window keeps the detections whose centre lies in its *core*, the part of the room
  closer to its centre than to a neighbour's (cut at the middle of each overlap), so one
  object is reported by one window; rotated NMS then merges what remains
  (:mod:`model.detection.windowed`).

The windows of a room are those of its real extent (the ``valid`` region at the low
corner of a padded sample), so padding beyond a smaller room in the same batch costs
nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def window_starts(extent: int, size: int, overlap: int) -> list[int]:
    """Starts of the ``size``-long windows covering ``[0, extent)`` with at least
    ``overlap`` voxels shared by neighbours; one window at 0 when the axis fits."""
    if not 0 <= overlap < size:
        raise ValueError(f"window overlap must be in [0, {size}) voxels, got {overlap}")
    if extent <= size:
        return [0]
    stride = size - overlap
    count = math.ceil((extent - size) / stride) + 1
    # spread evenly so every overlap is at least `overlap` and the last window ends at extent
    return [round(i * (extent - size) / (count - 1)) for i in range(count)]


def core_bounds(starts: Sequence[int], size: int) -> list[tuple[float, float]]:
    """Each window's core along one axis: from the middle of its overlap with the previous
    window to the middle of its overlap with the next (unbounded at the ends)."""
    cuts = [(b + a + size) / 2 for a, b in zip(starts[:-1], starts[1:], strict=True)]
    lows = [-math.inf, *cuts]
    highs = [*cuts, math.inf]
    return list(zip(lows, highs, strict=True))


@dataclass(frozen=True)
class Window:
    """One ``S^3`` window of a room: where it starts and the core it answers for (voxel
    coordinates of the room, a voxel ``i`` at ``i + 0.5``)."""

    start: tuple[int, int, int]
    core_lo: tuple[float, float, float]
    core_hi: tuple[float, float, float]

    def slices(self, size: int) -> tuple[slice, slice, slice]:
        return tuple(slice(s, s + size) for s in self.start)  # type: ignore[return-value]

    def in_core(self, points: Tensor) -> Tensor:
        """``(N,)`` bool: which of ``points`` ``(N, 3)`` (room coordinates) lie in the core,
        half-open so a point on a cut belongs to one window only."""
        lo = points.new_tensor(self.core_lo)
        hi = points.new_tensor(self.core_hi)
        return ((points >= lo) & (points < hi)).all(dim=-1)


def room_windows(extent: Sequence[int], size: int, overlap: int) -> list[Window]:
    """The windows covering a room of real ``extent`` ``(x, y, z)`` voxels (x slowest)."""
    axes = [window_starts(int(n), size, overlap) for n in extent]
    cores = [core_bounds(starts, size) for starts in axes]
    windows = []
    for i, x in enumerate(axes[0]):
        for j, y in enumerate(axes[1]):
            for k, z in enumerate(axes[2]):
                c = (cores[0][i], cores[1][j], cores[2][k])
                windows.append(Window((x, y, z), tuple(b[0] for b in c), tuple(b[1] for b in c)))
    return windows


def overlap_voxels(size: int, fraction: float) -> int:
    """The overlap in voxels for a share ``fraction`` of the cube (``[0, 1)``)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"window_overlap must be in [0, 1), got {fraction}")
    return min(size - 1, round(fraction * size))


def needs_windows(shape: Sequence[int], size: int) -> bool:
    """True when a sample of spatial ``shape`` is larger than the network's cube."""
    return any(int(n) > size for n in shape)


def batched(windows: Sequence[Window], n: int) -> Iterator[list[Window]]:
    for i in range(0, len(windows), n):
        yield list(windows[i : i + n])


def tent_weights(size: int, device: torch.device | None = None) -> Tensor:
    """``(S, S, S)`` weights of a window's voxels when overlapping outputs are averaged: the
    product over axes of ``min(i + 1, S - i)``, so a voxel at a cut face counts least."""
    ramp = torch.arange(size, device=device, dtype=torch.float32)
    one_axis = torch.minimum(ramp + 1, size - ramp) / ((size + 1) // 2)
    return one_axis[:, None, None] * one_axis[None, :, None] * one_axis[None, None, :]


@torch.no_grad()
def stitch_dense(
    run: Callable[[Tensor], Tensor],
    rgba: Tensor,
    extent: Sequence[int],
    size: int,
    overlap: int,
    window_batch: int = 4,
) -> Tensor:
    """A dense output ``(K, X, Y, Z)`` for one padded room ``rgba`` ``(4, X, Y, Z)``:
    ``run`` maps ``(n, 4, S, S, S)`` windows to ``(n, K, S, S, S)`` outputs, which are
    averaged with :func:`tent_weights` where windows overlap. Voxels outside every window
    (padding beyond the real ``extent``) are 0."""
    weights = tent_weights(size, rgba.device)
    total: Tensor | None = None
    weight_sum = torch.zeros(rgba.shape[1:], device=rgba.device)  # (X, Y, Z)
    for group in batched(room_windows(extent, size, overlap), window_batch):
        crops = torch.stack([rgba[(slice(None), *w.slices(size))] for w in group])  # (n, 4, S^3)
        outputs = run(crops).float()  # (n, K, S, S, S)
        if total is None:
            total = torch.zeros((outputs.shape[1], *rgba.shape[1:]), device=rgba.device)
        for window, output in zip(group, outputs, strict=True):
            region = window.slices(size)
            total[(slice(None), *region)] += output * weights
            weight_sum[region] += weights
    assert total is not None  # a room has at least one window
    return total / weight_sum.clamp_min(torch.finfo(torch.float32).tiny)


__all__ = [
    "Window",
    "core_bounds",
    "needs_windows",
    "overlap_voxels",
    "room_windows",
    "stitch_dense",
    "tent_weights",
    "window_starts",
]
