"""Pictures of 3D boxes on a radiance grid: a bird's-eye view and a few horizontal slices.

All coordinates are the grid's voxel coordinates (:mod:`grid_store.boxes`), and the axes say
so: voxel ``i`` covers ``[i, i + 1]``, so a panel of the real ``(X, Y)`` region spans
``[0, X] x [0, Y]`` with x to the right and y up, and a box is drawn as its bird's-eye
rectangle (:func:`grid_store.boxes.bev_corners`). Stored (ground-truth) boxes are green and
solid, detected boxes red, dashed, drawn lowest score first (the best on top); a legend
under the panels says which is which.

Panels: the bird's-eye view (front-to-back alpha compositing looking down z through the
stored boxes' height range, or the detected ones' when none are stored, so that a room's
ceiling does not hide them, over a grey background where the column is empty), then
horizontal slices at 1/4, 1/2 and 3/4 of that height range (or of the real grid's z range
when there are no boxes), each with the boxes that cross the slice.

Labels, in the bird's-eye view only: a detected box's score (``"0.87"``, or ``"chair 0.87"``
with class names) above its top corner, a stored box's class name (when labels are given)
under its bottom corner. A label that would leave the panel or cover one placed before it
(stored boxes first, then detections best first) is left out, so that in a crowded room the
best boxes' labels stay readable rather than piling up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Polygon  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from grid_store.boxes import as_boxes, bev_corners  # noqa: E402
from model.pictures.common import DPI, composite_along_z, real_region, save_figure  # noqa: E402

GT_COLOUR = "#00c000"
PRED_COLOUR = "#ff2020"
GT_NAME = "stored box (ground truth)"
PRED_NAME = "detected box"
# Empty space: mid grey, so neither black (dark colours) nor white (text) vanishes into it.
BACKGROUND = np.array([0.55, 0.55, 0.55])
SLICE_FRACTIONS = (0.25, 0.5, 0.75)
# Sizes at DPI 80: four 5.2-inch panels make a picture over 1600 px wide, and 10-point text
# is about 11 px tall, readable without zooming in.
PANEL_INCHES = 5.2
FONT = 10.0
LABEL_FONT = 9.0
# Vertical room, in inches, for each panel's two-line title and x label, the suptitle and
# the legend under the panels.
TITLE_INCHES, XLABEL_INCHES, SUPTITLE_INCHES, LEGEND_INCHES = 0.6, 0.5, 0.4, 0.45


def _numpy(x: Any, dtype: type | None = None) -> np.ndarray:
    """A torch tensor (any device) or array-like as numpy, without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if dtype is not bool else x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _per_box(values: Any, n: int, name: str, dtype: type) -> np.ndarray | None:
    """``(n,)`` values of one kind per box (scores, labels), or None when not given."""
    if values is None:
        return None
    out = _numpy(values).reshape(-1)
    if out.shape != (n,):
        raise ValueError(f"{name}: expected ({n},), got {out.shape}")
    return out.astype(dtype)


def _shown_predictions(
    n: int, scores: np.ndarray | None, max_pred: int, score_threshold: float | None
) -> np.ndarray:
    """Indices of the predictions to draw, lowest score first (so the best is drawn last,
    on top); the first ``max_pred`` when there are no scores."""
    if scores is None:
        return np.arange(min(n, max_pred))
    keep = np.arange(n) if score_threshold is None else np.flatnonzero(scores >= score_threshold)
    return keep[np.argsort(-scores[keep], kind="stable")][:max_pred][::-1]


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return f"class {label}"


def _box_z_range(boxes: np.ndarray, z_real: int) -> tuple[float, float]:
    """The boxes' z range clipped to the real grid, or the grid's when there are none."""
    lo, hi = 0.0, float(z_real)
    if len(boxes):
        lo = max(lo, float((boxes[:, 2] - boxes[:, 5] / 2).min()))
        hi = min(hi, float((boxes[:, 2] + boxes[:, 5] / 2).max()))
        if hi <= lo:  # boxes entirely outside the grid: the grid instead
            lo, hi = 0.0, float(z_real)
    return lo, hi


def _slice_heights(boxes: np.ndarray, z_real: int) -> list[float]:
    """Voxel-coordinate z of each slice: fractions of :func:`_box_z_range`."""
    lo, hi = _box_z_range(boxes, z_real)
    return [lo + f * (hi - lo) for f in SLICE_FRACTIONS]


def _crossing(boxes: np.ndarray, z: float) -> np.ndarray:
    """``(N,)`` bool: the boxes whose vertical extent contains height ``z``."""
    if not len(boxes):
        return np.zeros(0, bool)
    return (boxes[:, 2] - boxes[:, 5] / 2 <= z) & (z <= boxes[:, 2] + boxes[:, 5] / 2)


def _draw_boxes(ax: Axes, gt: np.ndarray, pred: np.ndarray) -> None:
    for corners in bev_corners(gt) if len(gt) else []:
        ax.add_patch(Polygon(corners, closed=True, fill=False, edgecolor=GT_COLOUR,
                             linewidth=2.0, antialiased=False))  # fmt: skip
    for corners in bev_corners(pred) if len(pred) else []:
        ax.add_patch(Polygon(corners, closed=True, fill=False, edgecolor=PRED_COLOUR,
                             linewidth=1.5, linestyle=(0, (4, 2)), antialiased=False))  # fmt: skip


def _label(ax: Axes, xy: np.ndarray, text: str, colour: str, above: bool) -> Text:
    # A pale backing keeps the text readable over any colour of the grid.
    return ax.text(xy[0], xy[1], text, color=colour, fontsize=LABEL_FONT, ha="center",
                   va="bottom" if above else "top", clip_on=True,
                   bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none",
                         "pad": 1.0})  # fmt: skip


def _box_labels(
    ax: Axes, gt: np.ndarray, gt_texts: list[str], pred: np.ndarray, pred_texts: list[str]
) -> list[Text]:
    """The labels of the bird's-eye view in priority order: stored boxes, then detections
    best first (``pred`` is lowest score first). Stored boxes' labels sit under their lowest
    corner and detections' above their highest, so a box and its match label apart."""
    texts = []
    for corners, text in zip(bev_corners(gt) if len(gt) else [], gt_texts, strict=True):
        if text:
            texts.append(_label(ax, corners[int(np.argmin(corners[:, 1]))], text, GT_COLOUR,
                                above=False))  # fmt: skip
    pred_corners = bev_corners(pred) if len(pred) else []
    for corners, text in reversed(list(zip(pred_corners, pred_texts, strict=True))):
        if text:
            texts.append(_label(ax, corners[int(np.argmax(corners[:, 1]))], text, PRED_COLOUR,
                                above=True))  # fmt: skip
    return texts


def _thin_labels(fig: Figure, ax: Axes, texts: list[Text]) -> None:
    """Keep each label, in priority order, where it fits inside the panel clear of the ones
    kept before it: turned inward at the panel's edges, removed when it still does not fit.
    Run once the layout is final: it measures the labels in the saved image's pixels."""
    renderer = fig.canvas.get_renderer()
    panel = ax.get_window_extent(renderer)
    kept = []
    for text in texts:
        box = text.get_window_extent(renderer)
        if box.y1 > panel.y1 or box.y0 < panel.y0:  # over the edge: to the box's inner side
            text.set_verticalalignment("top" if box.y1 > panel.y1 else "bottom")
        if box.x0 < panel.x0 or box.x1 > panel.x1:
            text.set_horizontalalignment("left" if box.x0 < panel.x0 else "right")
        box = text.get_window_extent(renderer)
        fits = (panel.x0 <= box.x0 and box.x1 <= panel.x1
                and panel.y0 <= box.y0 and box.y1 <= panel.y1)  # fmt: skip
        if fits and not any(box.overlaps(other) for other in kept):
            kept.append(box)
        else:
            text.remove()


def box_views_figure(
    rgba: Any,
    valid: Any,
    gt_boxes: Any,
    pred_boxes: Any = None,
    pred_scores: Any = None,
    title: str = "",
    max_pred: int = 20,
    score_threshold: float | None = None,
    *,
    gt_labels: Any = None,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
) -> tuple[Figure, dict[str, Axes]]:
    """Draw the boxes over one grid and return ``(figure, axes by panel name)``; the caller
    closes it (or :func:`save_box_views` / :func:`box_views_image` do).

    Panels are named ``"bev"`` and ``"z=<height>"``; the figure's one legend names the box
    kinds. The figure's dpi is the one it is saved at and its layout is final, so
    ``ax.transData`` maps voxel coordinates to the saved image's pixels (origin bottom
    left).

    Args:
        rgba: ``(4, X, Y, Z)`` torch tensor or array, colour and alpha in [0, 1] (a padded
            model input is fine).
        valid: ``(X, Y, Z)`` bool, the real (unpadded) region, or None for all of it; the
            panels show the real region only.
        gt_boxes: ``(N, 7)`` ``(cx, cy, cz, w, l, h, yaw)`` in voxel coordinates, or None.
        pred_boxes: ``(M, 7)`` predicted boxes in voxel coordinates, or None.
        pred_scores: ``(M,)`` their scores, or None (then no ordering or score labels).
        title: the figure's title.
        max_pred: draw at most this many predictions (the highest scores).
        score_threshold: draw only predictions scoring at least this (None: all).
        gt_labels: ``(N,)`` class labels of ``gt_boxes``, or None (then no stored-box labels).
        labels: ``(M,)`` class labels of ``pred_boxes``, or None (then scores alone).
        class_names: the name of each label (indexed by label); None or a label past its end
            shows as ``"class <label>"``.
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
    gt_lab = _per_box(gt_labels, len(gt), "gt_labels", np.int64)
    all_pred = (as_boxes(_numpy(pred_boxes), "pred_boxes") if pred_boxes is not None
                else np.zeros((0, 7)))  # fmt: skip
    scores = _per_box(pred_scores, len(all_pred), "pred_scores", np.float64)
    pred_lab = _per_box(labels, len(all_pred), "labels", np.int64)
    shown = _shown_predictions(len(all_pred), scores, max_pred, score_threshold)
    pred = all_pred[shown]
    gt_texts = ([""] * len(gt) if gt_lab is None
                else [_class_name(int(c), class_names) for c in gt_lab])  # fmt: skip
    pred_texts = [
        " ".join(part for part in (
            "" if pred_lab is None else _class_name(int(pred_lab[i]), class_names),
            "" if scores is None else f"{scores[i]:.2f}",
        ) if part)
        for i in shown
    ]  # fmt: skip

    x, y, z = real_region(valid_np)
    real = np.where(valid_np[None], rgba_np, 0.0)[:, :x, :y, :z]  # padding is not the scene
    # Where the boxes are: the stored ones, or the detected ones when none are stored.
    located = gt if len(gt) else pred
    heights = _slice_heights(located, z)

    n = 1 + len(heights)
    panel_height = PANEL_INCHES * min(1.6, max(0.5, y / x))
    height = panel_height + TITLE_INCHES + XLABEL_INCHES + LEGEND_INCHES
    height += SUPTITLE_INCHES if title else 0.0
    fig, axes = plt.subplots(1, n, figsize=(PANEL_INCHES * n + 0.6, height), dpi=DPI,
                             squeeze=False)  # fmt: skip
    named: dict[str, Axes] = {}

    # Looking down through the boxes' height range only: a room's ceiling would hide them.
    lo, hi = _box_z_range(located, z)
    z0, z1 = int(np.floor(lo)), max(int(np.ceil(hi)), int(np.floor(lo)) + 1)
    color, opacity = composite_along_z(real[..., z0:z1])  # (x, y, 3), (x, y)
    bev = color + (1.0 - opacity[..., None]) * BACKGROUND
    ax = axes[0, 0]
    # imshow wants rows = y; extent puts voxel i at [i, i + 1] on both axes.
    ax.imshow(np.clip(np.swapaxes(bev, 0, 1), 0, 1), origin="lower", extent=(0, x, 0, y),
              interpolation="nearest")  # fmt: skip
    _draw_boxes(ax, gt, pred)
    texts = _box_labels(ax, gt, gt_texts, pred, pred_texts)
    drawn = (f"{len(pred)} of {len(all_pred)} detected" if pred_boxes is not None
             else "no detections")  # fmt: skip
    thr = f" (score >= {score_threshold:g})" if score_threshold is not None else ""
    ax.set_title(f"bird's-eye view through z = {z0}-{z1} voxels\n{len(gt)} stored, {drawn}{thr}",
                 fontsize=FONT)  # fmt: skip
    named["bev"] = ax

    for c, level in enumerate(heights, start=1):
        k = int(np.clip(np.floor(level), 0, z - 1))  # voxel k covers [k, k + 1]
        a = real[3, :, :, k][..., None]
        image = np.moveaxis(real[:3, :, :, k], 0, -1) * a + (1.0 - a) * BACKGROUND
        ax = axes[0, c]
        ax.imshow(np.clip(np.swapaxes(image, 0, 1), 0, 1), origin="lower", extent=(0, x, 0, y),
                  interpolation="nearest")  # fmt: skip
        _draw_boxes(ax, gt[_crossing(gt, level)], pred[_crossing(pred, level)])
        ax.set_title(f"slice z = {level:.1f} voxels\n(voxel layer {k} of {z})", fontsize=FONT)
        named[f"z={level:.1f}"] = ax

    for ax in axes[0]:
        ax.set_xlim(0, x)
        ax.set_ylim(0, y)
        ax.set_xlabel("x (voxels)", fontsize=FONT)
        ax.tick_params(labelsize=FONT - 1)
    axes[0, 0].set_ylabel("y (voxels)", fontsize=FONT)
    handles = [Line2D([], [], color=GT_COLOUR, linewidth=2.0, label=GT_NAME)]
    if pred_boxes is not None:
        what = " ".join(p for p in ("class" if pred_lab is not None else "",
                                    "score" if scores is not None else "") if p)  # fmt: skip
        name = f"{PRED_NAME} (label: {what})" if what else PRED_NAME
        handles.append(Line2D([], [], color=PRED_COLOUR, linewidth=1.5,
                              linestyle=(0, (4, 2)), label=name))  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=FONT,
               frameon=False)  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=FONT + 2)
    fig.tight_layout(rect=(0, LEGEND_INCHES / height, 1, 1))
    _thin_labels(fig, named["bev"], texts)
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
