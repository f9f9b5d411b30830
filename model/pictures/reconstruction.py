"""Reconstruction pictures: what the MAE saw, what it predicted, and the truth, as one PNG.

Rows (MAE convention): masked input (masked blocks grey, what the encoder sees), the
raw prediction, the prediction pasted into the masked blocks over the visible input, and
the target. Columns: RGB and alpha of the central z-slice of the real (unpadded) grid,
then a top-down view (looking along -z) alpha-composited front to back, and its opacity.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from model.pictures.common import composite_along_z, real_region, save_figure

_MASKED_GREY = 0.5


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
    # Slice through the middle of the real grid, which may be far from the padded cube's middle.
    k = real_region(valid_np)[2] // 2

    rows = _rows(rgba_np, valid_np, pred_np, mask_np)
    columns = [f"RGB, z={k}", f"alpha, z={k}", "RGB, top-down composite", "opacity, top-down"]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(3 * len(columns), 3 * len(rows)))
    for r, (name, shown, grey) in enumerate(rows):
        slice_rgb = np.moveaxis(shown[:3, :, :, k], 0, -1)  # (X, Y, 3)
        slice_rgb = np.where(grey[:, :, k, None], _MASKED_GREY, slice_rgb)
        projected_rgb, projected_alpha = composite_along_z(shown)
        panels = [slice_rgb, shown[3, :, :, k], projected_rgb, projected_alpha]
        for c, image in enumerate(panels):
            ax = axes[r, c]
            # x to the right, y up: transpose (X, Y) to image rows = y.
            image = np.clip(np.swapaxes(image, 0, 1), 0.0, 1.0)
            cmap = None if image.ndim == 3 else "gray"
            ax.imshow(image, origin="lower", cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
