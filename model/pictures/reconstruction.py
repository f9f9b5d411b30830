"""Reconstruction pictures: what the MAE saw, what it predicted, and the truth, as one PNG.

Rows (MAE convention): masked input (masked blocks grey, what the encoder sees), the
raw prediction, the prediction pasted into the masked blocks over the visible input, and
the target. Columns, all of the real (unpadded) grid: RGB and alpha of its central
z-slice, then two views from above that look under the room's ceiling (found in the
target: the top layers that are mostly opaque, see :func:`ceiling_cut`), since composited
through it every column is simply the ceiling: the colour alpha-composited front to back
from just below the ceiling down, and a height map, the height of the first surface
(alpha > 0.5) below the ceiling, with a colour bar in voxels. The height map shows the
geometry (floor, furniture tops, walls) where accumulated opacity would be 1 everywhere
above a floor; all rows use the target's ceiling, so they compare layer for layer.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from model.pictures.common import composite_along_z, real_region, save_figure

_MASKED_GREY = 0.5
SOLID = 0.5
"""Opacity from which a voxel counts as a surface (the ceiling's layers, the height map)."""
_NO_SURFACE = (0.85, 0.85, 0.85)  # height-map columns with no surface below the ceiling


def ceiling_cut(alpha: np.ndarray) -> int:
    """The number of layers from the bottom that lie under the ceiling of a real ``(x, y, z)``
    opacity grid: the ceiling is the topmost run of layers at least half of whose voxels
    are solid, searched in the upper half only (so a floor is never taken for it). ``z``
    when there is none (an object rather than a room, or a grid solid to the bottom)."""
    z = alpha.shape[2]
    covered = (alpha > SOLID).mean(axis=(0, 1)) >= 0.5  # (z,)
    upper = np.flatnonzero(covered[z // 2 :])
    if not len(upper):
        return z
    k = z // 2 + int(upper[-1])
    while k > 0 and covered[k]:
        k -= 1
    return k + 1 if k > 0 else z


def surface_height(alpha: np.ndarray, top: int) -> np.ndarray:
    """``(x, y)`` height in voxels of the top face of the highest solid voxel below layer
    ``top``, NaN where the column has none."""
    solid = alpha[:, :, :top] > SOLID
    highest = top - 1 - np.argmax(solid[:, :, ::-1], axis=-1)
    return np.where(solid.any(axis=-1), highest + 1.0, np.nan)


def _rows(
    rgba: np.ndarray, valid: np.ndarray, pred: np.ndarray, mask: np.ndarray
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(title, display rgba (4, X, Y, Z), grey-out mask (X, Y, Z)) per row."""
    pred_rgba = np.concatenate([np.clip(pred[:3], 0, 1), 1.0 / (1.0 + np.exp(-pred[3:]))])
    pred_rgba = pred_rgba * valid  # padding is not part of the scene
    hidden = mask & valid
    masked_input = np.where(hidden, 0.0, rgba)
    pasted = np.where(hidden, pred_rgba, rgba)
    none = np.zeros_like(mask)
    return [
        ("masked input", masked_input, hidden),
        ("prediction", pred_rgba, none),
        ("prediction + visible", pasted, none),
        ("target", rgba, none),
    ]


def save_reconstruction(
    path: str | Path,
    rgba: torch.Tensor,
    valid: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor,
    title: str = "",
) -> Path:
    """Write the reconstruction figure of one grid to ``path`` (PNG) and return the path.

    Args:
        rgba: ``(4, X, Y, Z)`` ground truth (padded), alpha in channel 3.
        valid: ``(X, Y, Z)`` bool, the real region.
        pred: ``(4, X, Y, Z)`` model output: RGB linear, alpha as a logit.
        mask: ``(X, Y, Z)`` bool, voxels in masked blocks.
    """
    rgba_np = rgba.detach().float().cpu().numpy()
    valid_np = valid.detach().cpu().numpy().astype(bool)
    pred_np = pred.detach().float().cpu().numpy()
    mask_np = mask.detach().cpu().numpy().astype(bool)
    if rgba_np.shape[0] != 4 or pred_np.shape != rgba_np.shape:
        raise ValueError(
            f"rgba and pred must both be (4, X, Y, Z), got {rgba_np.shape} / {pred_np.shape}"
        )
    if valid_np.shape != rgba_np.shape[1:] or mask_np.shape != rgba_np.shape[1:]:
        raise ValueError(
            f"valid / mask must be {rgba_np.shape[1:]}, got {valid_np.shape} / {mask_np.shape}"
        )
    x, y, z = real_region(valid_np)
    k = z // 2  # the middle of the real grid, which may be far from the padded cube's middle
    real = (slice(None), slice(0, x), slice(0, y), slice(0, z))
    cut = ceiling_cut(rgba_np[3][real[1:]])
    under = f"below the ceiling (z < {cut})" if cut < z else "(no ceiling found)"

    rows = _rows(rgba_np, valid_np, pred_np, mask_np)
    columns = [f"RGB, slice z = {k} voxels", f"alpha, slice z = {k} voxels",
               f"RGB from above,\n{under}", f"first surface from above,\n{under}"]  # fmt: skip
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(3.2 * len(columns) + 1.2,
                             3 * len(rows) + 0.6), layout="constrained")  # fmt: skip
    heights = plt.get_cmap("viridis").with_extremes(bad=_NO_SURFACE)
    for r, (name, shown, grey) in enumerate(rows):
        shown, grey = shown[real], grey[real[1:]]
        slice_rgb = np.moveaxis(shown[:3, :, :, k], 0, -1)  # (x, y, 3)
        slice_rgb = np.where(grey[:, :, k, None], _MASKED_GREY, slice_rgb)
        projected_rgb, _ = composite_along_z(shown[..., :cut])
        panels = [slice_rgb, shown[3, :, :, k], projected_rgb, surface_height(shown[3], cut)]
        for c, image in enumerate(panels):
            ax = axes[r, c]
            # x to the right, y up: transpose (x, y) to image rows = y.
            image = np.swapaxes(image, 0, 1)
            if c == 3:
                surface = ax.imshow(image, origin="lower", cmap=heights, vmin=0, vmax=cut,
                                    interpolation="nearest")  # fmt: skip
            else:
                ax.imshow(np.clip(image, 0.0, 1.0), origin="lower", vmin=0, vmax=1,
                          cmap=None if image.ndim == 3 else "gray",
                          interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(name, fontsize=10)
    bar = fig.colorbar(surface, ax=axes[:, 3], shrink=0.5)
    bar.set_label("height of the surface (voxels); grey: none", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=12)
    return save_figure(fig, path)
