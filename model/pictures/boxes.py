"""Pictures of 3D boxes on a radiance grid: a bird's-eye view and a few horizontal slices.

All coordinates are the grid's voxel coordinates (:mod:`grid_store.boxes`): voxel ``i``
covers ``[i, i + 1]``, so a panel of the real ``(X, Y)`` region spans ``[0, X] x [0, Y]``
with x to the right and y up, and a box is drawn as its bird's-eye rectangle
(:func:`grid_store.boxes.bev_corners`). Ground truth is green and solid, predictions are
red, dashed, drawn lowest score first (the best on top) and labelled with their score.

Panels: the bird's-eye view (front-to-back alpha compositing looking down z through the
ground-truth boxes' height range, so that a room's ceiling does not hide them, over a grey
background where the column is empty), then horizontal slices at 1/4, 1/2 and 3/4 of the
ground-truth boxes' height range (or of the real grid's z range when there are none), each
with the boxes that cross the slice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Polygon  # noqa: E402

from grid_store.boxes import as_boxes, bev_corners  # noqa: E402
from model.pictures.common import DPI, composite_along_z, real_region, save_figure  # noqa: E402

GT_COLOUR = "#00c000"
PRED_COLOUR = "#ff2020"
# Empty space: mid grey, so neither black (dark colours) nor white (text) vanishes into it.
BACKGROUND = np.array([0.55, 0.55, 0.55])
SLICE_FRACTIONS = (0.25, 0.5, 0.75)


def _numpy(x: Any, dtype: type | None = None) -> np.ndarray:
    """A torch tensor (any device) or array-like as numpy, without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if dtype is not bool else x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _shown_predictions(
    pred_boxes: Any, pred_scores: Any, max_pred: int, score_threshold: float | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions to draw, lowest score first (so the best is drawn last, on top):
    ``(M, 7)`` boxes and ``(M,)`` scores (None when no scores were given)."""
    if pred_boxes is None:
        return np.zeros((0, 7)), None
    boxes = as_boxes(_numpy(pred_boxes), "pred_boxes")
    if pred_scores is None:
        return boxes[:max_pred], None
    scores = _numpy(pred_scores).astype(np.float64).reshape(-1)
    if scores.shape != (len(boxes),):
        raise ValueError(f"pred_scores: expected ({len(boxes)},), got {scores.shape}")
    keep = np.ones(len(boxes), bool) if score_threshold is None else scores >= score_threshold
    boxes, scores = boxes[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")[:max_pred][::-1]
    return boxes[order], scores[order]


def _box_z_range(gt: np.ndarray, z_real: int) -> tuple[float, float]:
    """The GT boxes' z range clipped to the real grid, or the grid's when there are none."""
    lo, hi = 0.0, float(z_real)
    if len(gt):
        lo = max(lo, float((gt[:, 2] - gt[:, 5] / 2).min()))
        hi = min(hi, float((gt[:, 2] + gt[:, 5] / 2).max()))
        if hi <= lo:  # boxes entirely outside the grid: the grid instead
            lo, hi = 0.0, float(z_real)
    return lo, hi


def _slice_heights(gt: np.ndarray, z_real: int) -> list[float]:
    """Voxel-coordinate z of each slice: fractions of :func:`_box_z_range`."""
    lo, hi = _box_z_range(gt, z_real)
    return [lo + f * (hi - lo) for f in SLICE_FRACTIONS]


def _crossing(boxes: np.ndarray, z: float) -> np.ndarray:
    """``(N,)`` bool: the boxes whose vertical extent contains height ``z``."""
    if not len(boxes):
        return np.zeros(0, bool)
    return (boxes[:, 2] - boxes[:, 5] / 2 <= z) & (z <= boxes[:, 2] + boxes[:, 5] / 2)


def _draw_boxes(
    ax: Axes, gt: np.ndarray, pred: np.ndarray, scores: np.ndarray | None, label: bool
) -> None:
    for corners in bev_corners(gt) if len(gt) else []:
        ax.add_patch(Polygon(corners, closed=True, fill=False, edgecolor=GT_COLOUR,
                             linewidth=2.0, antialiased=False))  # fmt: skip
    for i, corners in enumerate(bev_corners(pred) if len(pred) else []):
        ax.add_patch(Polygon(corners, closed=True, fill=False, edgecolor=PRED_COLOUR,
                             linewidth=1.5, linestyle=(0, (4, 2)), antialiased=False))  # fmt: skip
        if label and scores is not None:
            # At the box's top corner, inside the panel: the score of each box stays readable
            # where boxes overlap.
            top = corners[int(np.argmax(corners[:, 1]))]
            ax.text(top[0], top[1], f"{scores[i]:.2f}", color=PRED_COLOUR, fontsize=6,
                    ha="center", va="bottom", clip_on=True)  # fmt: skip


def box_views_figure(
    rgba: Any,
    valid: Any,
    gt_boxes: Any,
    pred_boxes: Any = None,
    pred_scores: Any = None,
    title: str = "",
    max_pred: int = 20,
    score_threshold: float | None = None,
) -> tuple[Figure, dict[str, Axes]]:
    """Draw the boxes over one grid and return ``(figure, axes by panel name)``; the caller
    closes it (or :func:`save_box_views` / :func:`box_views_image` do).

    Panels are named ``"bev"`` and ``"z=<height>"``. The figure's dpi is the one it is saved
    at, so ``ax.transData`` maps voxel coordinates to the saved image's pixels (origin bottom
    left).

    Args:
        rgba: ``(4, X, Y, Z)`` torch tensor or array, colour and alpha in [0, 1] (a padded
            model input is fine).
        valid: ``(X, Y, Z)`` bool, the real (unpadded) region, or None for all of it; the
            panels show the real region only.
        gt_boxes: ``(N, 7)`` ``(cx, cy, cz, w, l, h, yaw)`` in voxel coordinates, or None.
        pred_boxes: ``(M, 7)`` predicted boxes in voxel coordinates, or None.
        pred_scores: ``(M,)`` their scores, or None (then no ordering or labels).
        title: the figure's title.
        max_pred: draw at most this many predictions (the highest scores).
        score_threshold: draw only predictions scoring at least this (None: all).
    """
    rgba_np = np.clip(_numpy(rgba), 0.0, 1.0)
    if rgba_np.ndim != 4 or rgba_np.shape[0] != 4:
        raise ValueError(f"rgba: expected (4, X, Y, Z), got {rgba_np.shape}")
    valid_np = (
        np.ones(rgba_np.shape[1:], bool) if valid is None else _numpy(valid, bool).astype(bool)
    )
    if valid_np.shape != rgba_np.shape[1:]:
        raise ValueError(f"valid: expected {rgba_np.shape[1:]}, got {valid_np.shape}")
    gt = as_boxes(_numpy(gt_boxes), "gt_boxes") if gt_boxes is not None else np.zeros((0, 7))
    pred, scores = _shown_predictions(pred_boxes, pred_scores, max_pred, score_threshold)
    n_pred = 0 if pred_boxes is None else len(as_boxes(_numpy(pred_boxes), "pred_boxes"))

    x, y, z = real_region(valid_np)
    real = np.where(valid_np[None], rgba_np, 0.0)[:, :x, :y, :z]  # padding is not the scene
    heights = _slice_heights(gt, z)

    n = 1 + len(heights)
    side = 3.0
    aspect = y / x
    fig, axes = plt.subplots(1, n, figsize=(side * n, side * min(1.6, max(0.6, aspect)) + 0.6),
                             dpi=DPI, squeeze=False)  # fmt: skip
    named: dict[str, Axes] = {}

    # Looking down through the boxes' height range only: a room's ceiling would hide them.
    lo, hi = _box_z_range(gt, z)
    z0, z1 = int(np.floor(lo)), max(int(np.ceil(hi)), int(np.floor(lo)) + 1)
    color, opacity = composite_along_z(real[..., z0:z1])  # (x, y, 3), (x, y)
    bev = color + (1.0 - opacity[..., None]) * BACKGROUND
    ax = axes[0, 0]
    # imshow wants rows = y; extent puts voxel i at [i, i + 1] on both axes.
    ax.imshow(np.clip(np.swapaxes(bev, 0, 1), 0, 1), origin="lower", extent=(0, x, 0, y),
              interpolation="nearest")  # fmt: skip
    _draw_boxes(ax, gt, pred, scores, label=True)
    shown = f"{len(pred)} of {n_pred} pred" if pred_boxes is not None else "no pred"
    thr = f" (score >= {score_threshold:g})" if score_threshold is not None else ""
    ax.set_title(f"bird's-eye, z {z0}-{z1}: {len(gt)} GT, {shown}{thr}", fontsize=8)
    named["bev"] = ax

    for c, height in enumerate(heights, start=1):
        k = int(np.clip(np.floor(height), 0, z - 1))  # voxel k covers [k, k + 1]
        a = real[3, :, :, k][..., None]
        image = np.moveaxis(real[:3, :, :, k], 0, -1) * a + (1.0 - a) * BACKGROUND
        ax = axes[0, c]
        ax.imshow(np.clip(np.swapaxes(image, 0, 1), 0, 1), origin="lower", extent=(0, x, 0, y),
                  interpolation="nearest")  # fmt: skip
        _draw_boxes(ax, gt[_crossing(gt, height)], pred[_crossing(pred, height)],
                    None if scores is None else scores[_crossing(pred, height)],
                    label=False)  # fmt: skip
        ax.set_title(f"z = {height:.1f} (voxel {k} of {z})", fontsize=8)
        named[f"z={height:.1f}"] = ax

    for ax in axes[0]:
        ax.set_xlim(0, x)
        ax.set_ylim(0, y)
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig, named


def box_views_image(*args: Any, **kwargs: Any) -> np.ndarray:
    """The picture as an ``(H, W, 3)`` uint8 array (HWC, for ``SummaryWriter.add_image(...,
    dataformats="HWC")``); the arguments are :func:`box_views_figure`'s."""
    fig, _ = box_views_figure(*args, **kwargs)
    try:
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)


def save_box_views(path: str | Path, *args: Any, **kwargs: Any) -> Path:
    """Write the boxes over one grid to ``path`` as a PNG (bird's-eye view plus z-slices; its
    folder is created); the other arguments are :func:`box_views_figure`'s. Returns the path."""
    fig, _ = box_views_figure(*args, **kwargs)
    return save_figure(fig, path)


__all__ = [
    "GT_COLOUR",
    "PRED_COLOUR",
    "box_views_figure",
    "box_views_image",
    "save_box_views",
]
