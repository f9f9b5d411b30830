"""Write a synthetic scene folder (DESIGN contract 4) from a seed.

```
<scene>/transforms.json          nerfstudio / instant-ngp cameras, scene aabb
<scene>/images/frame_0000.png    RGB renders of the analytic field
<scene>/depth/frame_0000.png     z-depth of the same rays, 16-bit millimetres (nerfstudio's
                                 depth_file_path / depth_unit_scale_factor convention)
<scene>/ground_truth/grid.npz    the exact RadianceGrid with semantic, boxes, box_labels
<scene>/contact_sheet.png        a few views and the floor plan, for a human
```

The folder is assembled beside its destination and renamed into place, so a reader
never sees half a scene; rerunning a seed replaces the earlier synthetic scene (and
only a synthetic scene: any other existing folder is refused, not overwritten).
A seed always gives the same scene: images, ``transforms.json`` and the contact sheet
byte for byte (also across torch thread counts, as measured), and identical grid
arrays (numpy >= 2 also writes the ``.npz`` itself byte-identically).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.synthetic.cameras import CameraPathConfig, Intrinsics, camera_path
from pipeline.synthetic.contact_sheet import write_contact_sheet
from pipeline.synthetic.furniture import SEMANTIC_CLASSES
from pipeline.synthetic.ground_truth import GroundTruthConfig, sample_ground_truth
from pipeline.synthetic.render import RenderConfig, render_views
from pipeline.synthetic.room import RoomConfig, make_room

logger = logging.getLogger(__name__)

DEPTH_UNIT = 1e-3
"""Depth PNGs hold millimetres (``depth_unit_scale_factor``), nerfstudio's default."""


@dataclass(frozen=True)
class DepthConfig:
    """The depth maps written with the images: exact, or sensor-like.

    Exact depth is the expected termination depth of the same rays as the colour (z-depth,
    rounded to the millimetre). A real RGB-D sensor's depth is noisier with distance and
    has holes (dark, shiny or far surfaces): ``noise`` and ``holes`` imitate that.
    """

    write: bool = True
    """Write ``depth/`` and the frames' ``depth_file_path`` (False: an RGB-only capture)."""
    noise: float = 0.0
    """Standard deviation of multiplicative Gaussian noise (0.01: 1 % of the depth)."""
    holes: float = 0.0
    """Fraction of pixels, drawn at random, with no measurement (written as 0)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"DepthConfig.noise must be in [0, 1), got {self.noise}")
        if not 0.0 <= self.holes < 1.0:
            raise ValueError(f"DepthConfig.holes must be in [0, 1), got {self.holes}")


def depth_png(depth: np.ndarray, rng: np.random.Generator, config: DepthConfig) -> np.ndarray:
    """``(H, W)`` z-depth in metres -> uint16 millimetres, with the configured imperfections."""
    if config.noise > 0:
        depth = depth * (1.0 + config.noise * rng.standard_normal(depth.shape))
    millimetres = np.clip(np.round(depth / DEPTH_UNIT), 0, np.iinfo(np.uint16).max)
    if config.holes > 0:
        millimetres[rng.random(depth.shape) < config.holes] = 0
    return millimetres.astype(np.uint16)


GENERATOR = "nerf-mae synthetic room v1"
"""Marks a folder as ours in ``transforms.json``; only such folders are ever replaced."""


def transforms_json(c2w: np.ndarray, intrinsics: Intrinsics, aabb: np.ndarray, extra: dict) -> dict:
    """The nerfstudio / instant-ngp ``transforms.json`` of poses ``(V, 4, 4)``."""
    return {
        "camera_model": "OPENCV",
        "fl_x": intrinsics.fl_x,
        "fl_y": intrinsics.fl_y,
        "cx": intrinsics.cx,
        "cy": intrinsics.cy,
        "w": intrinsics.w,
        "h": intrinsics.h,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "aabb": np.asarray(aabb, dtype=np.float64).tolist(),
        "frames": [
            {"file_path": f"images/frame_{i:04d}.png", "transform_matrix": m.tolist()}
            for i, m in enumerate(np.asarray(c2w, dtype=np.float64))
        ],
        **extra,
    }


def _is_ours(folder: Path) -> bool:
    try:
        meta = json.loads((folder / "transforms.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("synthetic", {}).get("generator") == GENERATOR


def generate_scene(
    out_dir: str | os.PathLike,
    *,
    seed: int,
    n_views: int = 50,
    image_size: int = 64,
    grid_resolution: int = 160,
    room_config: RoomConfig | None = None,
    camera_config: CameraPathConfig | None = None,
    render_config: RenderConfig | None = None,
    ground_truth_config: GroundTruthConfig | None = None,
    depth_config: DepthConfig | None = None,
) -> Path:
    """Generate the room of ``seed`` and write its scene folder at ``out_dir``; returns it."""
    out_dir = Path(out_dir)
    for name, value, low in (
        ("n_views", n_views, 1),
        ("image_size", image_size, 2),
        ("grid_resolution", grid_resolution, 2),
    ):
        if int(value) != value or value < low:
            raise ValueError(f"generate_scene: {name} must be an integer >= {low}, got {value!r}")
    if out_dir.exists() and not (
        out_dir.is_dir() and (_is_ours(out_dir) or not any(out_dir.iterdir()))
    ):
        raise ValueError(
            f"{out_dir}: exists and is not a synthetic scene folder; refusing to replace it"
        )

    started = time.perf_counter()
    room = make_room(seed, room_config)
    c2w, intrinsics = camera_path(room, n_views, image_size, seed, camera_config)
    depth_config = depth_config or DepthConfig()
    images, depths = render_views(room.field, c2w, intrinsics, render_config)  # uint8, metres
    rendered = time.perf_counter()
    grid = sample_ground_truth(room, grid_resolution, ground_truth_config)
    sampled = time.perf_counter()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "images").mkdir(parents=True)
        extra = {
            "synthetic": {
                "generator": GENERATOR,
                "seed": int(seed),
                "room_interior": room.interior.tolist(),
                "semantic_classes": list(SEMANTIC_CLASSES),
                "ground_truth": "ground_truth/grid.npz",
                "pixel_centers": 0.5,
            }
        }
        meta = transforms_json(c2w, intrinsics, room.aabb, extra)
        if depth_config.write:
            (staging / "depth").mkdir()
            meta["depth_unit_scale_factor"] = DEPTH_UNIT
            rng = np.random.default_rng([int(seed), 2])
            for frame in meta["frames"]:
                frame["depth_file_path"] = frame["file_path"].replace("images/", "depth/", 1)
        (staging / "transforms.json").write_text(json.dumps(meta, indent=2) + "\n")
        for frame, image, depth in zip(meta["frames"], images, depths, strict=True):
            Image.fromarray(image).save(staging / frame["file_path"])
            if depth_config.write:
                png = depth_png(depth, rng, depth_config)
                Image.fromarray(png).save(staging / frame["depth_file_path"])
        # contract 1: float16 on disk
        grid = grid.replace(rgba=grid.rgba.astype(np.float16))
        grid.save_npz(staging / "ground_truth" / "grid.npz")
        write_contact_sheet(staging / "contact_sheet.png", images, grid, title=f"seed {seed}")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "scene seed %d -> %s: %d views %dx%d (%.2fs), grid %s (%.2fs), total %.2fs",
        seed,
        out_dir,
        n_views,
        image_size,
        image_size,
        rendered - started,
        grid.shape,
        sampled - rendered,
        time.perf_counter() - started,
    )
    return out_dir
