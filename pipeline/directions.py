"""Viewing-direction sets that grid colour is averaged over (DESIGN contract 1).

A grid stores one colour per sample although a NeRF's colour depends on the viewing
direction, so extraction averages ``field.color(x, d)`` over a set of directions. Two
kinds of set exist:

- :class:`CameraDirections`: the direction from each training camera towards the
  sample, ``d = normalize(x - origin)``; it differs per sample, so it is computed per
  chunk. This is what the NeRF-MAE paper describes (its reference code averages over
  the cameras' forward axes instead, and then saves only the last one).
- :class:`FixedDirections`: the same unit directions for every sample, e.g. NeRF-RPN's
  18 (pitch -45/0/+45 degrees x 6 yaws, z up) or a Fibonacci sphere.

Both expose ``count``, ``directions(x, k) -> (n, 3)`` for the ``k``-th direction at the
points ``x``, and ``describe()`` (JSON metadata recorded in the grid as
``colour_directions``).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch


class DirectionSet(Protocol):
    count: int

    def directions(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """``(n, 3)`` points -> ``(n, 3)`` unit directions (the ``k``-th of ``count``)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for the grid metadata."""
        ...


class CameraDirections:
    """Directions from camera centres towards each sample (the ray direction there).

    Args:
        origins: ``(C, 3)`` camera centres in world units.
        indices: which of the scene's training cameras these are (for the metadata).
    """

    def __init__(self, origins: np.ndarray | torch.Tensor, indices: list[int] | None = None):
        origins_t = torch.as_tensor(np.asarray(origins, dtype=np.float32))
        if origins_t.ndim != 2 or origins_t.shape[1] != 3 or origins_t.shape[0] == 0:
            raise ValueError(
                f"camera origins: expected (C, 3) with C >= 1, got {tuple(origins_t.shape)}"
            )
        if not torch.isfinite(origins_t).all():
            raise ValueError("camera origins: contain NaN/Inf")
        self.origins = origins_t  # (C, 3)
        self.count = int(origins_t.shape[0])
        self.indices = list(range(self.count)) if indices is None else [int(i) for i in indices]

    def directions(self, x: torch.Tensor, k: int) -> torch.Tensor:
        d = x - self.origins[k].to(x.device)  # (n, 3)
        norm = d.norm(dim=-1, keepdim=True)
        # A sample exactly at a camera centre has no direction; any unit vector will do.
        fallback = torch.tensor([0.0, 0.0, -1.0], device=x.device, dtype=x.dtype)
        return torch.where(norm > 1e-12, d / norm.clamp_min(1e-12), fallback)

    def describe(self) -> dict[str, Any]:
        return {"kind": "cameras", "count": self.count, "camera_indices": self.indices}


class FixedDirections:
    """The same unit directions for every sample.

    Args:
        dirs: ``(K, 3)`` directions (normalised here).
        name: a short name for the metadata (``rpn18``, ``fibonacci``, ``custom``).
    """

    def __init__(self, dirs: np.ndarray | torch.Tensor, name: str = "custom"):
        d = torch.as_tensor(np.asarray(dirs, dtype=np.float32))
        if d.ndim != 2 or d.shape[1] != 3 or d.shape[0] == 0:
            raise ValueError(f"fixed directions: expected (K, 3) with K >= 1, got {tuple(d.shape)}")
        norm = d.norm(dim=-1, keepdim=True)
        if not torch.isfinite(d).all() or (norm < 1e-12).any():
            raise ValueError("fixed directions: every direction must be finite and non-zero")
        self.dirs = d / norm  # (K, 3)
        self.count = int(d.shape[0])
        self.name = name

    def directions(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return self.dirs[k].to(device=x.device, dtype=x.dtype).expand(x.shape[0], 3)

    def describe(self) -> dict[str, Any]:
        return {"kind": "fixed", "name": self.name, "count": self.count, "dirs": self.dirs.tolist()}


def rpn_fixed_directions(pitches_deg=(-45.0, 0.0, 45.0), n_yaws: int = 6) -> np.ndarray:
    """NeRF-RPN's fixed set: every pitch (about the z-up horizon) with ``n_yaws`` yaws.

    Returns ``(len(pitches) * n_yaws, 3)`` unit vectors, 18 by default.
    """
    out = []
    for pitch in np.deg2rad(np.asarray(pitches_deg, dtype=np.float64)):
        for yaw in np.arange(n_yaws) * (2 * math.pi / n_yaws):
            out.append(
                [math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)]
            )
    return np.asarray(out, dtype=np.float32)


def fibonacci_directions(n: int) -> np.ndarray:
    """``(n, 3)`` near-uniform unit vectors on the sphere (golden-angle spiral)."""
    if n < 1:
        raise ValueError(f"fibonacci directions: n must be >= 1, got {n}")
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1).astype(np.float32)


def select_cameras(
    n_cameras: int, max_cameras: int | None, strategy: str = "strided", seed: int = 0
) -> list[int]:
    """Indices of at most ``max_cameras`` of ``n_cameras`` (all when ``max_cameras`` is None).

    ``strided`` spreads the choice evenly over the capture order (which usually
    follows the camera path, so it spreads over viewpoints too); ``random`` draws
    without replacement with ``seed``. The result is sorted.
    """
    if n_cameras < 1:
        raise ValueError("camera origins: the source has no training cameras")
    if max_cameras is None or max_cameras >= n_cameras:
        return list(range(n_cameras))
    if max_cameras < 1:
        raise ValueError(f"max_cameras must be >= 1 (or None for all), got {max_cameras}")
    if strategy == "strided":
        idx = np.floor(np.arange(max_cameras) * (n_cameras / max_cameras)).astype(np.int64)
    elif strategy == "random":
        idx = np.sort(
            np.random.default_rng(seed).choice(n_cameras, size=max_cameras, replace=False)
        )
    else:
        raise ValueError(f"camera subset strategy must be 'strided' or 'random', got {strategy!r}")
    return [int(i) for i in idx]
