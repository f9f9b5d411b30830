"""How much an extracted grid looks like the scene it came from: a comparison with the
scene's exact ground-truth grid (the synthetic rooms write one).

Renders can be right while the geometry is not (a haze that fills a room renders its views
at 30 dB), and NeRF-MAE learns from the geometry, so this compares the grids themselves:

- Each voxel of the grid is matched to the ground truth's voxel nearest to its world
  position (voxels outside the ground truth's box are left out).
- Opacity is put on the ground truth's voxel step first. A grid stores
  ``alpha = 1 - exp(-sigma * delta)`` for its own ``delta``, so the same density gives
  different alphas on different lattices; ``A' = 1 - (1 - A)^(delta_truth / delta)`` is
  the alpha the grid's density would have on the ground truth's step, so one threshold
  means one density on both sides.
- **Occupancy IoU**: voxels with alpha > 0.5 (opaque) on both sides, over either side.
- **Haze**: the fraction of the ground truth's empty voxels (alpha <= 0.01) where the
  grid is not empty (alpha > 0.01): density where the room has none.
- **Colour PSNR** over the voxels occupied on both sides (colour elsewhere does not matter:
  NeRF-MAE gates its colour loss by opacity).
- **Haze at surfaces**: the share of the hazy voxels that touch (6-neighbourhood, on the
  grid's lattice) a voxel the ground truth has occupied: surfaces a voxel too thick, rather
  than density floating in free space.
- **Misses inside**: the share of the ground truth's occupied voxels that the grid misses
  (not opaque) which touch no empty voxel of the ground truth: the inside of solids, which
  no camera sees, rather than surfaces.
- **Surface F-score at one voxel**, the measure of 3D-reconstruction benchmarks (Tanks and
  Temples, DTU) on voxels: a *surface voxel* is an occupied voxel with a 6-neighbour that is
  not occupied; precision is the share of the grid's surface voxels within one voxel (the
  3x3x3 neighbourhood) of a ground-truth surface voxel, recall the share of the ground
  truth's surface voxels within one voxel of the grid's, F their harmonic mean. Occupancy IoU
  counts the insides of solids, which no camera sees (most of a room's occupied voxels); the
  F-score asks only whether the surfaces are where they should be, give or take a voxel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from grid_store.grid import RadianceGrid
from nerfmae_common.psnr import psnr_from_mse

OCCUPIED_ALPHA = 0.5
"""Alpha above which a voxel counts as occupied (opaque surface or solid)."""
EMPTY_ALPHA = 0.01
"""Alpha at or below which a voxel counts as empty (NeRF-MAE's colour gate, instant-ngp's
occupancy threshold)."""


def alpha_on_step(alpha: np.ndarray, delta: float, new_delta: float) -> np.ndarray:
    """The alpha of the same density on a step of ``new_delta`` instead of ``delta``."""
    return 1.0 - np.power(1.0 - np.clip(alpha, 0.0, 1.0), new_delta / delta)


def grid_fidelity(grid: RadianceGrid, truth: RadianceGrid) -> dict[str, Any]:
    """Occupancy IoU, haze and colour PSNR of ``grid`` against the ground truth ``truth``.

    Returns a JSON-ready dict: ``iou``, ``haze``, ``colour_psnr`` (dB; None when no voxel is
    occupied on both sides, inf when the colours match exactly), ``occupied`` and
    ``truth_occupied`` (fractions of the compared voxels), ``compared`` (voxel count).
    """
    index, inside = truth.nearest_voxel(grid.points())  # (X, Y, Z, 3), (X, Y, Z)
    if not inside.any():
        raise ValueError("grid_fidelity: the grid's box does not overlap the ground truth's")
    i, j, k = index[inside].T
    alpha = alpha_on_step(grid.alpha[inside].astype(np.float64), grid.delta, truth.delta)
    truth_alpha = truth.alpha[i, j, k].astype(np.float64)
    occupied = alpha > OCCUPIED_ALPHA
    truth_occupied = truth_alpha > OCCUPIED_ALPHA
    union = np.count_nonzero(occupied | truth_occupied)
    both = occupied & truth_occupied
    truth_empty = truth_alpha <= EMPTY_ALPHA
    colour_psnr = None
    if both.any():
        rgb = grid.rgb[:, inside][:, both].astype(np.float64)
        truth_rgb = truth.rgb[:, i, j, k][:, both].astype(np.float64)
        mse = float(np.mean((rgb - truth_rgb) ** 2))
        colour_psnr = psnr_from_mse(mse)
    hazy = np.zeros(grid.shape, bool)
    hazy[inside] = truth_empty & (alpha > EMPTY_ALPHA)
    next_to_truth = np.zeros(grid.shape, bool)
    next_to_truth[inside] = truth_occupied
    next_to_truth = _dilate(next_to_truth)
    missed = np.zeros(grid.shape, bool)
    missed[inside] = truth_occupied & ~occupied
    next_to_empty = np.zeros(grid.shape, bool)
    next_to_empty[inside] = truth_empty
    next_to_empty = _dilate(next_to_empty)
    grid_surface = np.zeros(grid.shape, bool)
    grid_surface[inside] = occupied
    truth_surface = np.zeros(grid.shape, bool)
    truth_surface[inside] = truth_occupied
    grid_surface, truth_surface = _surface(grid_surface), _surface(truth_surface)
    precision, recall, fscore = surface_fscore(grid_surface, truth_surface)
    return {
        "iou": float(np.count_nonzero(both) / union) if union else 1.0,
        "surface_precision": precision,
        "surface_recall": recall,
        "surface_fscore": fscore,
        "haze": float(np.mean(alpha[truth_empty] > EMPTY_ALPHA)) if truth_empty.any() else 0.0,
        "haze_at_surfaces": float(next_to_truth[hazy].mean()) if hazy.any() else None,
        "misses_inside": float(1 - next_to_empty[missed].mean()) if missed.any() else None,
        "colour_psnr": colour_psnr,
        "occupied": float(occupied.mean()),
        "truth_occupied": float(truth_occupied.mean()),
        "compared": int(inside.sum()),
    }


def surface_fscore(
    surface: np.ndarray, truth_surface: np.ndarray
) -> tuple[float | None, float | None, float | None]:
    """``(precision, recall, F)`` of two boolean surface masks on one lattice at a tolerance
    of one voxel (the 3x3x3 neighbourhood); ``None`` where a side has no surface voxel."""
    near_truth = _dilate_cube(truth_surface)
    near_grid = _dilate_cube(surface)
    precision = float(near_truth[surface].mean()) if surface.any() else None
    recall = float(near_grid[truth_surface].mean()) if truth_surface.any() else None
    if precision is None or recall is None:
        return precision, recall, None
    total = precision + recall
    return precision, recall, (2 * precision * recall / total if total else 0.0)


def _surface(occupied: np.ndarray) -> np.ndarray:
    """Occupied voxels with a 6-neighbour in the array that is not occupied (beyond the
    array there is no value, so the array's faces make no surface by themselves)."""
    return occupied & _dilate(~occupied)


def _dilate_cube(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one voxel in every direction (the 3x3x3 neighbourhood)."""
    out = mask
    for axis in range(3):
        grown = out.copy()
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        grown[tuple(lo)] |= out[tuple(hi)]
        grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one voxel along each axis (6-neighbourhood), without wrapping."""
    out = mask.copy()
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(lo)] |= mask[tuple(hi)]
        out[tuple(hi)] |= mask[tuple(lo)]
    return out
