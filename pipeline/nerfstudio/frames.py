"""The capture's world frame and the frame a nerfstudio model was trained in.

nerfstudio's dataparser turns the poses of a capture's ``transforms.json`` (its *world*
frame, the one grids, boxes and labels stay in: DESIGN contract 1) into a normalised frame
before training: it rotates and centres them and scales them into the scene box::

    x_N = s (R x_W + t)        d_N = R d_W        sigma_W = s sigma_N

(a density is per unit length: a world unit is ``s`` normalised units long). The run's
``dataparser_transforms.json`` records ``transform`` (3x4) and ``scale``, but from the
capture's *original* frame: where ``transforms.json`` says its poses were already moved
(``applied_transform``, 3x4, from the original frame to the saved one; ``applied_scale``),
nerfstudio composed that in (``transform = T @ applied``, ``scale = s x applied_scale``).
:func:`read_frame` factors it back out, so ``(R, t, s)`` map the poses as saved.

A wrong factoring would put every grid in the wrong place without an error, so
:func:`check_camera_centres` compares the capture's camera centres mapped with ``(R, t,
s)`` against the dataparser's own (a mismatch is an error naming both files).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATAPARSER_TRANSFORMS = "dataparser_transforms.json"


@dataclass(frozen=True)
class NerfstudioFrame:
    """``x_N = scale (rotation x_W + translation)``."""

    rotation: np.ndarray
    """``(3, 3)``, orthonormal."""
    translation: np.ndarray
    """``(3,)``."""
    scale: float

    def to_nerfstudio(self, points: np.ndarray) -> np.ndarray:
        """``(N, 3)`` world points -> nerfstudio's frame."""
        return self.scale * (np.asarray(points) @ self.rotation.T + self.translation)

    def to_world(self, points: np.ndarray) -> np.ndarray:
        """``(N, 3)`` nerfstudio points -> the world frame."""
        return (np.asarray(points) / self.scale - self.translation) @ self.rotation

    def direction_to_nerfstudio(self, directions: np.ndarray) -> np.ndarray:
        """``(N, 3)`` world directions -> nerfstudio's (rotation only: lengths kept)."""
        return np.asarray(directions) @ self.rotation.T

    def density_to_world(self, sigma: np.ndarray) -> np.ndarray:
        """A nerfstudio density (per normalised unit) per world unit."""
        return self.scale * np.asarray(sigma)

    def world_box(self, box: np.ndarray) -> np.ndarray:
        """``(2, 3)`` the world box that holds nerfstudio's box ``box`` (min, max)."""
        corners = np.array([[box[i, 0], box[j, 1], box[k, 2]]
                            for i in (0, 1) for j in (0, 1) for k in (0, 1)])  # fmt: skip
        world = self.to_world(corners)
        return np.stack([world.min(0), world.max(0)])


def _matrix(value, name: str, path: Path) -> np.ndarray:
    """A 3x4 (or 4x4) affine matrix of a JSON file as ``(4, 4)``."""
    m = np.asarray(value, dtype=np.float64)
    if m.shape not in ((3, 4), (4, 4)) or not np.isfinite(m).all():
        raise ValueError(f"{path}: {name}: expected a finite 3x4 matrix, got {value!r}")
    return np.vstack([m[:3], [0.0, 0.0, 0.0, 1.0]])


def _positive(value, name: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{path}: {name}: expected a positive number, got {value!r}")
    return float(value)


def read_frame(
    dataparser_transforms: str | os.PathLike, transforms_json: str | os.PathLike
) -> NerfstudioFrame:
    """The map from ``transforms_json``'s world frame to the run's normalised frame, from the
    run's ``dataparser_transforms.json`` (see the module doc).

    Raises:
        FileNotFoundError: either file is missing.
        ValueError: a malformed field (the file and field named), or a transform that is not
            a rotation.
    """
    saved_path, capture_path = Path(dataparser_transforms), Path(transforms_json)
    for path in (saved_path, capture_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
    saved = json.loads(saved_path.read_text())
    capture = json.loads(capture_path.read_text())
    transform = _matrix(saved.get("transform"), "transform", saved_path)
    scale = _positive(saved.get("scale"), "scale", saved_path)
    if "applied_transform" in capture:
        applied = _matrix(capture["applied_transform"], "applied_transform", capture_path)
        transform = transform @ np.linalg.inv(applied)
    if "applied_scale" in capture:
        scale /= _positive(capture["applied_scale"], "applied_scale", capture_path)
    rotation, translation = transform[:3, :3], transform[:3, 3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4):
        raise ValueError(
            f"{saved_path}: transform: its 3x3 part is not a rotation (after factoring out "
            f"{capture_path}'s applied_transform)"
        )
    return NerfstudioFrame(rotation, translation, scale)


def check_camera_centres(
    frame: NerfstudioFrame,
    world_centres: np.ndarray,
    nerfstudio_centres: np.ndarray,
    what: str,
    tolerance: float = 1e-3,
) -> float:
    """The largest distance (nerfstudio units) between the capture's camera centres
    ``(C, 3)`` mapped by ``frame`` and the dataparser's ``(C, 3)``; raises ``ValueError``
    naming ``what`` (the files) when it exceeds ``tolerance`` times the cameras' spread."""
    ours = frame.to_nerfstudio(np.asarray(world_centres, dtype=np.float64))
    theirs = np.asarray(nerfstudio_centres, dtype=np.float64)
    if ours.shape != theirs.shape:
        raise ValueError(f"{what}: {len(ours)} cameras in the capture, {len(theirs)} in the "
                         "run's dataparser: not the capture this run was trained on")  # fmt: skip
    gap = float(np.abs(ours - theirs).max()) if len(ours) else 0.0
    spread = float(np.ptp(theirs, axis=0).max()) if len(theirs) > 1 else 1.0
    if gap > tolerance * max(spread, 1e-9):
        raise ValueError(
            f"{what}: the capture's camera centres mapped into the run's frame miss the "
            f"dataparser's by up to {gap:.4g} (cameras span {spread:.4g}): the frame files do "
            "not belong together (another capture, or a changed transforms.json)"
        )
    return gap


__all__ = ["DATAPARSER_TRANSFORMS", "NerfstudioFrame", "check_camera_centres", "read_frame"]
