"""Pictures of the downstream tasks: predicted against true labels, and super-resolved grids.

Label slices: horizontal (constant z) slices of the real grid at a few heights, the true
labels above and the predictions on the labelled voxels below (void is neither trained nor
scored), void black, one colour per class; a third row marks the errors (red: wrong, light
grey: right, black: void). Two legends right of the panels name the class colours and the
error colours.
Super-resolution: the low-resolution input, the prediction and the target as top-down
composites (alpha taken from the target, since the loss supervises colour only).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from model.pictures.common import composite_along_z, real_region, save_figure


def label_colours(num_classes: int) -> np.ndarray:
    """``(K, 3)`` colours: void black, then tab20's distinct colours (cycled past 20)."""
    tab = plt.get_cmap("tab20").colors
    return np.array([(0.0, 0.0, 0.0)] + [tab[(c - 1) % 20] for c in range(1, num_classes)])


# The errors row: void (not scored), right, wrong; wrong stands out in red.
ERROR_COLOURS = ((0.0, 0.0, 0.0), (0.75, 0.75, 0.75), (0.9, 0.1, 0.1))
ERROR_NAMES = ("void (not scored)", "right", "wrong")


def save_label_slices(
    path: str | Path,
    target: torch.Tensor,
    pred: torch.Tensor,
    valid: torch.Tensor,
    class_names: list[str] | None = None,
    title: str = "",
    heights: tuple[float, ...] = (0.15, 0.4, 0.65),
) -> Path:
    """Write true vs predicted label slices of one grid to ``path`` (PNG); returns the path.

    Args:
        target: ``(X, Y, Z)`` true labels (0 = void).
        pred: ``(X, Y, Z)`` predicted labels.
        valid: ``(X, Y, Z)`` bool, the real (unpadded) region.
        heights: slice heights as fractions of the real grid's z extent.
    """
    t = target.detach().cpu().numpy().astype(np.int64)
    p = pred.detach().cpu().numpy().astype(np.int64)
    v = valid.detach().cpu().numpy().astype(bool)
    if t.shape != p.shape or t.shape != v.shape or t.ndim != 3:
        raise ValueError(f"target, pred, valid must be one (X, Y, Z) shape, got "
                         f"{t.shape} / {p.shape} / {v.shape}")  # fmt: skip
    num_classes = int(max(t.max(), p.max(), len(class_names or []) - 1)) + 1
    names = list(class_names or [str(c) for c in range(num_classes)])
    names += [str(c) for c in range(len(names), num_classes)]
    cmap = ListedColormap(label_colours(num_classes))
    errors = ListedColormap(ERROR_COLOURS)
    x, y, z = real_region(v)
    ks = sorted({min(z - 1, int(h * z)) for h in heights})
    # Constrained layout leaves room right of the panels for the two legends.
    fig, axes = plt.subplots(3, len(ks), figsize=(3.6 * len(ks) + 2.4, 10.0), squeeze=False,
                             layout="constrained")  # fmt: skip
    for c, k in enumerate(ks):
        true_k = t[:x, :y, k]
        pred_k = np.where(true_k > 0, p[:x, :y, k], 0)  # void is never trained or scored
        scored = true_k > 0
        error = np.where(scored, np.where(true_k != pred_k, 2, 1), 0)  # indices of ERROR_*
        panels = [
            ("true", true_k, cmap, num_classes - 1),
            ("predicted (labelled voxels)", pred_k, cmap, num_classes - 1),
            ("errors (labelled voxels)", error, errors, len(ERROR_COLOURS) - 1),
        ]
        for r, (row, image, colours, vmax) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(image.T, origin="lower", cmap=colours, vmin=0, vmax=vmax,
                      interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"z = {k} voxels (of {z})", fontsize=10)
            if c == 0:
                ax.set_ylabel(row, fontsize=10)
    present = sorted((set(np.unique(t[v])) | set(np.unique(p[v]))) - {0})
    classes = [Patch(color=cmap(0), label="void (unlabelled)")]
    classes += [Patch(color=cmap(c), label=names[c]) for c in present]
    fig.legend(handles=classes, loc="outside right upper", fontsize=10, title="classes",
               title_fontsize=10, ncol=1 if len(classes) <= 16 else 2)  # fmt: skip
    outcomes = [Patch(color=colour, label=name)
                for colour, name in zip(ERROR_COLOURS, ERROR_NAMES, strict=True)]  # fmt: skip
    fig.legend(handles=outcomes, loc="outside right lower", fontsize=10, title="errors",
               title_fontsize=10)  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=12)
    return save_figure(fig, path)


def save_superres(
    path: str | Path,
    low: torch.Tensor,
    pred: torch.Tensor,
    target: torch.Tensor,
    title: str = "",
) -> Path:
    """Top-down composites of the input ``(4, x, y, z)``, the prediction ``(>=3, X, Y, Z)``
    (RGB used, alpha from the target) and the target ``(4, X, Y, Z)``; returns the path."""
    low_np = low.detach().float().cpu().numpy()
    target_np = target.detach().float().cpu().numpy()
    pred_np = np.concatenate([np.clip(pred.detach().float().cpu().numpy()[:3], 0, 1),
                              target_np[3:]])  # fmt: skip
    panels = [("input", low_np), ("prediction (target alpha)", pred_np), ("target", target_np)]
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
    for ax, (name, rgba) in zip(axes, panels, strict=True):
        color, _ = composite_along_z(np.clip(rgba, 0, 1))
        ax.imshow(np.clip(np.swapaxes(color, 0, 1), 0, 1), origin="lower")
        ax.set_title(f"{name} {rgba.shape[1]}x{rgba.shape[2]}x{rgba.shape[3]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
