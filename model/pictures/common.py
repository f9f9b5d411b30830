"""What every picture of the project shares: the non-interactive backend, the real region of
a padded grid, front-to-back compositing for top-down views, and writing a figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from grid_store.dataset import real_extent  # noqa: E402

DPI = 80
"""Resolution pictures are saved at (figure sizes are chosen for it)."""


def real_region(valid: np.ndarray) -> tuple[int, int, int]:
    """The ``(x, y, z)`` size of the real region of an ``(X, Y, Z)`` bool mask whose padding
    is at the high end (:func:`grid_store.dataset.real_extent`); the whole grid when the mask
    is empty, so there is always something to draw."""
    if not valid.any():
        return tuple(valid.shape)  # type: ignore[return-value]
    return tuple(int(n) for n in real_extent(torch.from_numpy(np.asarray(valid, bool))))  # type: ignore[return-value]


def composite_along_z(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Front-to-back alpha compositing from the top (high z) down.

    Args:
        rgba: ``(4, X, Y, Z)`` colour (not premultiplied) and alpha in [0, 1].

    Returns:
        ``(X, Y, 3)`` composited colour over black and ``(X, Y)`` accumulated opacity.
    """
    rgb = np.moveaxis(rgba[:3], 0, -1)[:, :, ::-1]  # (X, Y, Z, 3), top first
    alpha = rgba[3][:, :, ::-1]  # (X, Y, Z)
    transmittance = np.cumprod(1.0 - alpha, axis=-1)
    before = np.concatenate([np.ones_like(alpha[..., :1]), transmittance[..., :-1]], axis=-1)
    weights = before * alpha  # (X, Y, Z)
    color = (weights[..., None] * rgb).sum(axis=2)  # (X, Y, 3)
    return color, 1.0 - transmittance[..., -1]


def save_figure(fig, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` to ``path`` (PNG; its folder is created) and close it; returns the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path
