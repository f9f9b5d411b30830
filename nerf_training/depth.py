"""Depth maps of a scene folder, in nerfstudio's convention.

Each frame of ``transforms.json`` may name a ``depth_file_path``: a 16-bit PNG whose
integer values times the top-level ``depth_unit_scale_factor`` (default 1e-3: millimetres)
are metres, or a float32 ``.npy`` already in metres. Depth is measured along the camera's
viewing axis (z-depth, not the distance along the pixel's ray), and 0 means "no
measurement" (a sensor hole, a window, the sky). Indoor captures usually have it:
ScanNet, ARKitScenes and Hypersim ship it, RGB-D and LiDAR phones record it.

The trainer turns z-depth into the distance along each pixel's unit ray
(:func:`ray_distance`): ``t = z / (d . forward)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

DEFAULT_DEPTH_UNIT_SCALE = 1e-3
"""nerfstudio's default ``depth_unit_scale_factor``: 16-bit PNG depth in millimetres."""
DEPTH_SUFFIXES = (".png", ".npy")


def read_depth_map(path: Path, unit_scale: float, size: tuple[int, int], where: str) -> np.ndarray:
    """``(H, W)`` float32 z-depth in scene units, 0 where there is no measurement.

    ``size`` is the ``(width, height)`` of the frame's image; ``where`` names the frame in
    errors. Raises ``ValueError`` naming the file and the frame.
    """
    if not path.is_file():
        raise ValueError(f"{where}: field 'depth_file_path': depth file not found ({path})")
    suffix = path.suffix.lower()
    if suffix not in DEPTH_SUFFIXES:
        raise ValueError(
            f"{path}: depth must be a 16-bit PNG or a float32 .npy, got {suffix!r} ({where})"
        )
    try:
        if suffix == ".npy":
            depth = np.load(path, allow_pickle=False)
            if not np.issubdtype(depth.dtype, np.floating):
                raise ValueError(f"a .npy depth map holds metres as floats, got {depth.dtype}")
            depth = depth.astype(np.float32)
        else:
            with Image.open(path) as image:
                if image.mode not in ("I;16", "I;16B", "I", "L"):
                    raise ValueError(f"a PNG depth map is 16-bit greyscale, got mode {image.mode}")
                depth = np.asarray(image, dtype=np.float64) * unit_scale
            depth = depth.astype(np.float32)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ValueError(f"{path}: cannot read depth map ({e}); named by {where}") from e
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    width, height = size
    if depth.shape != (height, width):
        raise ValueError(
            f"{path}: depth map has shape {depth.shape} (H, W) but its image is "
            f"{width}x{height} ({where})"
        )
    if not np.all(np.isfinite(depth)):
        raise ValueError(f"{path}: depth map has NaN or infinite values ({where})")
    if np.any(depth < 0):
        raise ValueError(f"{path}: depth map has negative values (min {depth.min():g}) ({where})")
    return depth


def downscale_depth(depth: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over the measured pixels of each ``factor x factor`` block (0 if none)."""
    if factor == 1:
        return depth
    h, w = depth.shape[0] // factor, depth.shape[1] // factor
    blocks = depth[: h * factor, : w * factor].reshape(h, factor, w, factor)
    valid = blocks > 0
    count = valid.sum(axis=(1, 3))
    total = np.where(valid, blocks, 0.0).sum(axis=(1, 3))
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)


def ray_distance(z_depth: torch.Tensor, dirs: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """Distance along unit rays ``dirs (R, 3)`` to the z-depth ``(R,)`` of their pixels.

    ``c2w (R, 3, 4)`` or ``(R, 4, 4)``: each ray's camera (OpenGL axes, looking down -z).
    Rays without a measurement (0) stay 0.
    """
    forward = -c2w[:, :3, 2]
    forward = forward / forward.norm(dim=-1, keepdim=True)
    cosine = (dirs * forward).sum(-1).clamp(min=1e-6)
    return z_depth / cosine
