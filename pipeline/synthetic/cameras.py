"""Camera paths that look around a room from inside, like a hand-held indoor capture.

Cameras walk one loop of an ellipse at eye height inside the room, looking across it
(towards the far side, swinging left and right and a little up and down), so every
wall, the floor and the furniture are seen from several directions. Poses follow the
nerfstudio / instant-ngp convention: 4x4 camera-to-world, OpenGL camera axes (the
camera looks down its -z, y up, x right); world z is up. Pixel ``(u, v)`` (column,
row from the top left) is sampled through its centre ``(u + 0.5, v + 0.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.synthetic.room import SyntheticRoom


@dataclass(frozen=True)
class CameraPathConfig:
    """How the capture path is drawn (metres, degrees)."""

    fov_range_deg: tuple[float, float] = (65.0, 80.0)
    """Horizontal field of view, one value per scene."""
    height_range: tuple[float, float] = (1.3, 1.7)
    """Mean eye height of the loop."""
    height_wobble: float = 0.12
    """Eye height varies along the loop by up to this much."""
    wall_distance: float = 0.8
    """The loop stays at least this far from every wall."""
    loop_fraction_range: tuple[float, float] = (0.35, 0.6)
    """Loop semi-axes as a fraction of the room's half extents (before the wall limit)."""
    yaw_swing_deg: float = 35.0
    """Gaze swings this far left and right of the room's far side."""
    pitch_range_deg: tuple[float, float] = (-28.0, -8.0)
    """Gaze pitch (negative looks down)."""
    min_clearance: float = 0.3
    """Cameras keep this distance from every surface."""
    jitter: float = 0.08
    """Random offset of each position (metres)."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics shared by all frames of a scene (pixels)."""

    fl_x: float
    fl_y: float
    cx: float
    cy: float
    w: int
    h: int

    @classmethod
    def from_fov(cls, image_size: int, fov_deg: float) -> Intrinsics:
        f = 0.5 * image_size / np.tan(np.radians(fov_deg) / 2)
        return cls(float(f), float(f), image_size / 2, image_size / 2, image_size, image_size)


def look_to(position: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-world ``(4, 4)`` (OpenGL axes) at ``position`` gazing along yaw/pitch."""
    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, position
    return c2w


def camera_path(
    room: SyntheticRoom,
    n_views: int,
    image_size: int,
    seed: int,
    config: CameraPathConfig | None = None,
) -> tuple[np.ndarray, Intrinsics]:
    """``n_views`` poses ``(V, 4, 4)`` float64 and shared intrinsics, deterministic in ``seed``."""
    cfg = config or CameraPathConfig()
    rng = np.random.default_rng([int(seed), 1])
    intrinsics = Intrinsics.from_fov(image_size, rng.uniform(*cfg.fov_range_deg))
    centre = room.interior.mean(0)
    half_xy = (room.interior[1, :2] - room.interior[0, :2]) / 2
    semi = np.maximum(
        np.minimum(half_xy * rng.uniform(*cfg.loop_fraction_range), half_xy - cfg.wall_distance),
        0.1,
    )
    eye = rng.uniform(*cfg.height_range)
    start, phase = rng.uniform(0, 2 * np.pi, 2)
    pitch_lo, pitch_hi = np.radians(cfg.pitch_range_deg)
    poses = []
    for i in range(n_views):
        angle = start + 2 * np.pi * i / n_views
        for _ in range(50):
            radius = semi * rng.uniform(0.8, 1.05)
            xy = centre[:2] + radius * [np.cos(angle), np.sin(angle)] + rng.normal(0, cfg.jitter, 2)
            z = eye + cfg.height_wobble * np.sin(2 * angle + phase) + rng.normal(0, cfg.jitter / 2)
            position = np.array([xy[0], xy[1], z])
            if room.clearance_at(position[None])[0] >= cfg.min_clearance:
                break
            semi = semi * 0.9  # something tall stands on the loop: tighten it
        else:
            raise RuntimeError(
                f"room seed {room.seed}: no free camera position near angle {angle:.2f}"
            )
        yaw = angle + np.pi + np.radians(cfg.yaw_swing_deg) * np.sin(3 * angle + phase)
        pitch = rng.uniform(pitch_lo, pitch_hi)
        poses.append(look_to(position, yaw, pitch))
    return np.stack(poses), intrinsics


def pixel_rays(
    c2w: torch.Tensor, intrinsics: Intrinsics, offset: tuple[float, float] = (0.5, 0.5)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through every pixel: origins and unit directions, each ``(V, H, W, 3)``.

    ``offset`` is the point inside each pixel, ``(u, v)`` in pixels from its top-left
    corner; the default is the centre (the ``pixel_centers: 0.5`` convention).
    """
    c2w = torch.as_tensor(c2w, dtype=torch.float32).reshape(-1, 4, 4)  # (V, 4, 4)
    v, u = torch.meshgrid(
        torch.arange(intrinsics.h, dtype=torch.float32),
        torch.arange(intrinsics.w, dtype=torch.float32),
        indexing="ij",
    )
    cam = torch.stack(
        [
            (u + offset[0] - intrinsics.cx) / intrinsics.fl_x,
            -(v + offset[1] - intrinsics.cy) / intrinsics.fl_y,
            -torch.ones_like(u),
        ],
        dim=-1,
    )  # (H, W, 3) OpenGL camera frame
    dirs = torch.einsum("vij,hwj->vhwi", c2w[:, :3, :3], cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = c2w[:, None, None, :3, 3].expand_as(dirs)
    return origins, dirs
