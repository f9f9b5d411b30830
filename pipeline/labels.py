"""Labels travel with the grids: a scene's ground truth put onto the grid extracted from it.

A scene folder may hold a ground-truth grid (``ground_truth/grid.npz``, contract 1: the
synthetic rooms write one; any labelled dataset converted to the contract can) with
semantic labels per voxel and oriented boxes in world units. A NeRF grid of the same scene
lives on another lattice (its own box and voxel size), so:

- **semantic labels** are resampled onto the grid's voxels: each voxel takes the label of
  the ground-truth voxel nearest to its world position. Nearest, not interpolated: labels
  are classes. Two lattices over the same scene box each cover it only to within their own
  rounding (a lattice of N samples at a voxel size that does not divide the box stops
  short of its far side by up to a voxel), so the grid may reach past the ground truth's
  outermost samples by one ground-truth voxel plus half of its own; its edge voxels then
  take the edge labels. A grid that reaches further does not fit the scene and is refused.
- **boxes** are world-unit ``(cx, cy, cz, w, l, h, yaw)`` (contract 1) and stay as they are,
  with their class labels: they do not depend on the lattice.

The grid's opacity and colour are not touched; its metadata records where the labels came
from (``labels``) and the class names (``semantic_classes``) when the ground truth has them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from grid_store.grid import RadianceGrid

GROUND_TRUTH_FILE = Path("ground_truth") / "grid.npz"
"""Where a scene folder keeps its ground-truth grid (relative to the folder)."""


def ground_truth_path(scene_dir: str | os.PathLike) -> Path | None:
    """The scene's ground-truth grid file, or None when the folder has none."""
    path = Path(scene_dir) / GROUND_TRUTH_FILE
    return path if path.is_file() else None


def labels_fingerprint(path: str | os.PathLike) -> str:
    """16 hex digits over the ground-truth file's bytes: new labels mean a new store entry."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def attach_labels(
    grid: RadianceGrid, truth: RadianceGrid, source: str = "ground truth"
) -> RadianceGrid:
    """``grid`` with ``truth``'s semantic labels resampled onto it and its boxes copied.

    ``source`` names the ground truth in errors and in ``meta["labels"]`` (e.g. its path).

    Raises:
        ValueError: ``truth`` has neither semantic labels nor boxes, or its box does not
            cover the grid's (the label grid does not fit the scene).
    """
    if truth.semantic is None and truth.boxes is None:
        raise ValueError(f"{source}: has no labels (neither 'semantic' nor 'boxes')")
    semantic = None
    if truth.semantic is not None:
        reach = truth.voxel_size + 0.5 * grid.voxel_size
        if np.any(grid.bbox_min < truth.bbox_min - reach) or np.any(
            grid.bbox_max > truth.bbox_max + reach
        ):
            raise ValueError(
                f"{source}: 'semantic' does not fit the scene: the grid's box "
                f"{grid.bbox_min.round(4).tolist()} .. {grid.bbox_max.round(4).tolist()} reaches "
                f"more than {reach:.4g} beyond the labels' box {truth.bbox_min.round(4).tolist()}"
                f" .. {truth.bbox_max.round(4).tolist()} (voxel {truth.voxel_size:.4g})"
            )
        index, _ = truth.nearest_voxel(grid.points())  # (X, Y, Z, 3), clamped to the edge
        i, j, k = np.moveaxis(index, -1, 0)
        semantic = truth.semantic[i, j, k]  # (X, Y, Z) uint8
    meta = dict(grid.meta)
    meta["labels"] = {
        "source": source,
        "semantic": None if semantic is None else "nearest ground-truth voxel",
        "boxes": None if truth.boxes is None else len(truth.boxes),
    }
    if "semantic_classes" in truth.meta:
        meta["semantic_classes"] = list(truth.meta["semantic_classes"])
    return dataclasses.replace(
        grid, semantic=semantic, boxes=truth.boxes, box_labels=truth.box_labels, meta=meta
    )


def attach_scene_labels(grid: RadianceGrid, scene_dir: str | os.PathLike) -> RadianceGrid:
    """:func:`attach_labels` from the scene folder's ground truth; ``grid`` itself when the
    folder has none."""
    path = ground_truth_path(scene_dir)
    if path is None:
        return grid
    return attach_labels(grid, RadianceGrid.load_npz(path), source=str(path))
