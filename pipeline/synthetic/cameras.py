"""Camera paths that look around a room from inside, like a hand-held indoor capture.

Cameras walk loops of ellipses inside the room, one loop per eye height (standing and
crouching, as a person scanning a room does), looking across it (towards the far side,
swinging left and right, the high loop down and the low loop level), so every wall, the
floor and the furniture are seen from several directions and from more than one height:
the vertical parallax that a single loop at one height lacks. The loops are walked one
after the other, so every subset taken by stride (the held-out split) sees each of them.
Poses follow the nerfstudio / instant-ngp convention: 4x4 camera-to-world, OpenGL camera
axes (the camera looks down its -z, y up, x right); world z is up. Pixel ``(u, v)``
(column, row from the top left) is sampled through its centre ``(u + 0.5, v + 0.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.synthetic.room import SyntheticRoom


@dataclass(frozen=True)
class CameraLoop:
    """One loop of the path: its mean eye height and its gaze pitch (metres, degrees)."""

    height: float
    """Mean eye height of the loop."""
    pitch_range_deg: tuple[float, float]
    """Gaze pitch, drawn per view (negative looks down)."""


@dataclass(frozen=True)
class CameraPathConfig:
    """How the capture path is drawn (metres, degrees)."""

    fov_range_deg: tuple[float, float] = (65.0, 80.0)
    """Horizontal field of view, one value per scene."""
    loops: tuple[CameraLoop, ...] = (
        CameraLoop(height=1.5, pitch_range_deg=(-28.0, -8.0)),
        CameraLoop(height=0.95, pitch_range_deg=(-14.0, 6.0)),
    )
    """Loops of the path, walked in this order; views are shared out evenly."""
    height_jitter: float = 0.15
    """Each loop's mean height moves by up to this much, one draw per scene."""
    height_wobble: float = 0.12
    """Eye height varies along a loop by up to this much."""
    wall_distance: float = 0.8
    """The loops stay at least this far from every wall."""
    loop_fraction_range: tuple[float, float] = (0.35, 0.6)
    """Loop semi-axes as a fraction of the room's half extents (before the wall limit), one
    draw per loop."""
    yaw_swing_deg: float = 35.0
    """Gaze swings this far left and right of the room's far side."""
    min_clearance: float = 0.3
    """Cameras keep this distance from every surface."""
    jitter: float = 0.08
    """Random offset of each position (metres)."""

    def __post_init__(self) -> None:
        if not self.loops:
            raise ValueError("CameraPathConfig.loops: at least one loop is needed")


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
    """``n_views`` poses ``(V, 4, 4)`` float64 and shared intrinsics, deterministic in ``seed``.

    The views are split into ``len(loops)`` consecutive runs (sizes differing by at most
    one); each run walks its loop once, all loops starting at the same angle.
    """
    cfg = config or CameraPathConfig()
    rng = np.random.default_rng([int(seed), 1])
    intrinsics = Intrinsics.from_fov(image_size, rng.uniform(*cfg.fov_range_deg))
    half_xy = (room.interior[1, :2] - room.interior[0, :2]) / 2
    floor = room.interior[0, 2]
    reach = half_xy - cfg.wall_distance
    semis = [
        np.maximum(np.minimum(half_xy * rng.uniform(*cfg.loop_fraction_range), reach), 0.1)
        for _ in cfg.loops
    ]
    eyes = [floor + loop.height + rng.uniform(-1, 1) * cfg.height_jitter for loop in cfg.loops]
    start, phase = rng.uniform(0, 2 * np.pi, 2)
    poses = []  # one run of views per loop, walked one after the other
    runs = np.array_split(np.arange(n_views), len(cfg.loops))
    for k, run in enumerate(runs):
        for i in run:
            angle = start + 2 * np.pi * (i - run[0]) / len(run)
            poses.append(_free_pose(room, cfg, k, semis[k], eyes[k], angle, phase, rng))
    return np.stack(poses), intrinsics


def _free_pose(
    room: SyntheticRoom,
    cfg: CameraPathConfig,
    k: int,
    semi: np.ndarray,
    eye: float,
    angle: float,
    phase: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The camera-to-world pose near ``angle`` on loop ``k`` that is clear of every surface."""
    centre = room.interior.mean(0)
    for attempt in range(60):
        # Blocked (furniture on the loop): search ever wider around the loop's point, and
        # higher (a crouching person stands up beside a bed).
        spread = min(attempt / 30, 1.0)
        radius = semi * rng.uniform(0.8 - 0.5 * spread, 1.05 + 0.15 * spread)
        at = angle + rng.normal(0, 0.3 * spread)
        xy = centre[:2] + radius * [np.cos(at), np.sin(at)] + rng.normal(0, cfg.jitter, 2)
        wobble = cfg.height_wobble * np.sin(2 * angle + phase)
        z = eye + wobble + rng.normal(0, cfg.jitter / 2) + 0.6 * spread * rng.uniform()
        position = np.array([xy[0], xy[1], z])
        if room.clearance_at(position[None])[0] >= cfg.min_clearance:
            break
    else:
        raise RuntimeError(
            f"room seed {room.seed}: no free camera position near angle {angle:.2f} "
            f"on the loop at {cfg.loops[k].height} m"
        )
    yaw = angle + np.pi + np.radians(cfg.yaw_swing_deg) * np.sin(3 * angle + phase)
    pitch = np.radians(rng.uniform(*cfg.loops[k].pitch_range_deg))
    return look_to(position, yaw, pitch)


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
