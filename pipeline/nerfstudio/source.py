"""A finished nerfstudio run as a source of grids, in the capture's world frame.

:func:`load_world_run` is what :func:`pipeline.extract.extract_grid` calls for a run's
``config.yml``: it finds the run (:func:`~pipeline.nerfstudio.run.find_run`), loads its
field in nerfstudio's frame with its keys checked
(:func:`~pipeline.nerfstudio.run.load_nerfstudio_field`), reads the frame between the
capture and the run (:func:`~pipeline.nerfstudio.frames.read_frame`), checks it on the
cameras (the capture's centres mapped into the run's frame must land on the dataparser's)
and hands extraction a world-frame field (:class:`~pipeline.nerfstudio.field.WorldField`)
with the capture's camera centres (for colour directions) and box.

The box is the capture's ``transforms.json`` ``aabb`` where it has one (the synthetic rooms
do; nerfstudio's own box is its normalised cube, and nerfacto's scene contraction reaches
beyond it, so the room need not fit inside it), else the world box holding nerfstudio's.
Needs nerfstudio (``make nerfstudio``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.nerfstudio.field import WorldField
from pipeline.nerfstudio.frames import check_camera_centres, read_frame
from pipeline.nerfstudio.run import (
    NerfstudioRun,
    capture_camera_centres,
    find_run,
    load_nerfstudio_field,
    nerfstudio_camera_centres,
    recorded_metrics,
)

log = logging.getLogger(__name__)


@dataclass
class NerfstudioWorldRun:
    """What extraction reads from a run (the members :func:`pipeline.extract.extract_grid`
    takes from our own runs)."""

    run: NerfstudioRun
    field: WorldField
    camera_origins: np.ndarray
    """``(C, 3)`` the training cameras' centres, world frame."""
    scene_aabb: np.ndarray
    """``(2, 3)`` world units."""
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.run.run_dir

    @property
    def scene_dir(self) -> Path | None:
        """The capture's folder (its ``ground_truth/`` carries labels, as for our runs)."""
        return self.run.transforms_json.parent


def _capture_box(transforms_json: Path) -> np.ndarray | None:
    aabb = json.loads(transforms_json.read_text()).get("aabb")
    if aabb is None:
        return None
    box = np.asarray(aabb, dtype=np.float64)
    if box.shape != (2, 3) or not np.isfinite(box).all() or not (box[1] > box[0]).all():
        raise ValueError(f"{transforms_json}: aabb: expected [[min x, y, z], [max x, y, z]], "
                         f"got {aabb!r}")  # fmt: skip
    return box


def load_world_run(
    config_yml: str | os.PathLike, device: str = "cpu", data: str | os.PathLike | None = None
) -> NerfstudioWorldRun:
    """The run of ``config_yml`` as a world-frame source (see the module doc); ``data``
    overrides where its capture is.

    Raises:
        FileNotFoundError: a file of the run or its capture is missing.
        ValueError: the checkpoint does not fit the model, or the frame files do not agree
            with the capture's cameras.
    """
    run = find_run(config_yml, data=data)
    ns_field = load_nerfstudio_field(run, device=device)
    frame = read_frame(run.dataparser_transforms, run.transforms_json)
    world_centres = capture_camera_centres(run)
    files = f"{run.dataparser_transforms} and {run.transforms_json}"
    gap = check_camera_centres(frame, world_centres, nerfstudio_camera_centres(run), files)
    log.info("%s: frame checked on %d cameras (largest gap %.2g nerfstudio units)",
             run.config_path, len(world_centres), gap)  # fmt: skip
    world = WorldField(ns_field, frame)
    box = _capture_box(run.transforms_json)
    recorded = recorded_metrics(run) or {}
    return NerfstudioWorldRun(
        run=run,
        field=world,
        camera_origins=np.asarray(world_centres, dtype=np.float32),
        scene_aabb=box if box is not None else world.aabb.numpy().astype(np.float64),
        metrics={
            "backend": "nerfstudio",
            "method": run.method,
            "steps": run.step,
            "implementation": ns_field.implementation,
            "nerfstudio_version": run.nerfstudio_version or ns_field.nerfstudio_version,
            # known where build-dataset trained the run (its metrics.json)
            "psnr_holdout": recorded.get("psnr_holdout"),
        },
        config={
            "backend": "nerfstudio",
            "method": run.method,
            "checkpoint": str(run.checkpoint),
            "step": run.step,
            "implementation": ns_field.implementation,
        },
    )


__all__ = ["NerfstudioWorldRun", "load_world_run"]
