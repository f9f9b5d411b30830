"""RadianceGrid: one scene's radiance/opacity grid in memory (DESIGN contract 1).

It lives in ``grid_store`` (the lowest layer, numpy only) so the store can read and
write it; ``pipeline`` re-exports it.

A grid holds ``rgba`` of shape ``(4, X, Y, Z)`` sampled at the corners of a regular
lattice inside an axis-aligned scene box: index ``[i, j, k]`` is the sample at
``bbox_min + (i, j, k) * voxel_size``, both ends of every axis included. Colour is the
field's colour (not premultiplied), alpha is ``1 - exp(-sigma * delta)``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from nerfmae_common.files import atomic_write

SCHEMA_VERSION = 1
RGBA_CHANNELS = ("R", "G", "B", "A")
# float16 spacing near 1.0 is ~5e-4; values written through the store come back
# rounded, so range checks allow that much slack.
_RANGE_SLACK = 1e-3
_BBOX_RTOL = 1e-4


class GridValidationError(ValueError):
    """A grid (or a file holding one) breaks contract 1; the message names the field."""


def grid_shape_for_box(
    bbox_min: np.ndarray, bbox_max: np.ndarray, resolution: int
) -> tuple[tuple[int, int, int], float, np.ndarray]:
    """Aspect-preserving lattice for a box: the longest side gets ``resolution`` samples.

    Returns ``(shape, voxel_size, bbox_max)`` where ``bbox_max`` is moved (by less than
    half a voxel per axis) so the box is exactly ``(shape - 1) * voxel_size`` wide.
    """
    bbox_min = np.asarray(bbox_min, dtype=np.float64)
    bbox_max = np.asarray(bbox_max, dtype=np.float64)
    if resolution < 2:
        raise GridValidationError(f"resolution must be >= 2, got {resolution}")
    extent = bbox_max - bbox_min
    if extent.shape != (3,) or not np.all(np.isfinite(extent)) or np.any(extent <= 0):
        raise GridValidationError(
            f"bbox must have 3 finite, positive extents; got min={bbox_min}, max={bbox_max}"
        )
    voxel_size = float(extent.max() / (resolution - 1))
    counts = np.maximum(2, np.rint(extent / voxel_size).astype(np.int64) + 1)
    counts = np.minimum(counts, resolution)
    shape = (int(counts[0]), int(counts[1]), int(counts[2]))
    return shape, voxel_size, bbox_min + (counts - 1) * voxel_size


def grid_points(bbox_min: np.ndarray, voxel_size: float, shape: tuple[int, int, int]) -> np.ndarray:
    """World positions of every sample, ``(X, Y, Z, 3)`` float32, ``ij`` indexing."""
    axes = [bbox_min[a] + np.arange(shape[a]) * voxel_size for a in range(3)]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack(mesh, axis=-1).astype(np.float32)


def alpha_from_density(sigma: np.ndarray, delta: float) -> np.ndarray:
    """Opacity of a voxel of edge ``delta`` with density ``sigma``: ``1 - exp(-sigma delta)``."""
    return -np.expm1(-np.maximum(sigma, 0.0) * delta)


def _frozen(meta: Mapping[str, Any] | None) -> Mapping[str, Any]:
    meta = dict(meta or {})
    meta.setdefault("schema_version", SCHEMA_VERSION)
    # Round-trip through JSON so metadata is always serialisable and deep-copied.
    try:
        return MappingProxyType(json.loads(json.dumps(meta)))
    except TypeError as exc:
        raise GridValidationError(f"meta must be JSON-serialisable: {exc}") from exc


@dataclass(frozen=True, eq=False)
class RadianceGrid:
    """A validated radiance grid. Construct it and it is checked; it never changes after.

    Attributes:
        rgba: ``(4, X, Y, Z)`` float16/float32, colour in [0, 1], alpha in [0, 1].
        bbox_min: ``(3,)`` world position of sample ``[0, 0, 0]``.
        bbox_max: ``(3,)`` world position of sample ``[X-1, Y-1, Z-1]``.
        voxel_size: spacing of the lattice in world units (isotropic).
        delta: the step used in ``alpha = 1 - exp(-sigma * delta)``.
        semantic: optional ``(X, Y, Z)`` uint8 labels, 0 = none.
        boxes: optional ``(N, 7)`` float32 ``(cx, cy, cz, w, l, h, yaw)`` in world units.
        box_labels: optional ``(N,)`` int64 class of each box.
        meta: the rest of the metadata (source, nerf, config_hash, colour directions...).
    """

    rgba: np.ndarray
    bbox_min: np.ndarray
    bbox_max: np.ndarray
    voxel_size: float
    delta: float
    semantic: np.ndarray | None = None
    boxes: np.ndarray | None = None
    box_labels: np.ndarray | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        rgba = np.asarray(self.rgba)
        if rgba.dtype not in (np.float16, np.float32):
            if not np.issubdtype(rgba.dtype, np.floating):
                raise GridValidationError(f"rgba: dtype must be float16/float32, got {rgba.dtype}")
            rgba = rgba.astype(np.float32)
        if rgba.ndim != 4:
            raise GridValidationError(f"rgba: expected rank 4 (4, X, Y, Z), got shape {rgba.shape}")
        if rgba.shape[0] != 4:
            raise GridValidationError(
                f"rgba: expected 4 channels (R, G, B, A) first, got shape {rgba.shape}"
            )
        if min(rgba.shape[1:]) < 2:
            raise GridValidationError(
                f"rgba: every spatial side needs >= 2 samples, got {rgba.shape}"
            )
        finite = np.isfinite(rgba)
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            raise GridValidationError(
                f"rgba: non-finite value (NaN/Inf) in channel {RGBA_CHANNELS[bad[0]]} "
                f"at {tuple(bad[1:])}"
            )
        lo, hi = float(rgba.min()), float(rgba.max())
        if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
            ch = int(
                np.argmax([(c.min() < -_RANGE_SLACK) | (c.max() > 1 + _RANGE_SLACK) for c in rgba])
            )
            raise GridValidationError(
                f"rgba: channel {RGBA_CHANNELS[ch]} outside [0, 1] (min {lo:.4g}, max {hi:.4g})"
            )
        rgba.setflags(write=False)
        set_(self, "rgba", rgba)

        bmin = np.asarray(self.bbox_min, dtype=np.float64).reshape(-1)
        bmax = np.asarray(self.bbox_max, dtype=np.float64).reshape(-1)
        for name, v in (("bbox_min", bmin), ("bbox_max", bmax)):
            if v.shape != (3,) or not np.all(np.isfinite(v)):
                raise GridValidationError(f"{name}: expected 3 finite floats, got {v}")
        vs, delta = float(self.voxel_size), float(self.delta)
        if not (math.isfinite(vs) and vs > 0):
            raise GridValidationError(f"voxel_size: must be finite and > 0, got {vs}")
        if not (math.isfinite(delta) and delta > 0):
            raise GridValidationError(f"delta: must be finite and > 0, got {delta}")
        expected = bmin + (np.array(rgba.shape[1:]) - 1) * vs
        if not np.allclose(bmax, expected, rtol=_BBOX_RTOL, atol=_BBOX_RTOL * vs):
            raise GridValidationError(
                f"bbox_max {bmax.tolist()} inconsistent with bbox_min + (shape-1)*voxel_size "
                f"= {expected.tolist()} (shape {rgba.shape[1:]}, voxel_size {vs})"
            )
        for v in (bmin, bmax):
            v.setflags(write=False)
        set_(self, "bbox_min", bmin)
        set_(self, "bbox_max", bmax)
        set_(self, "voxel_size", vs)
        set_(self, "delta", delta)

        if self.semantic is not None:
            sem = np.asarray(self.semantic)
            if sem.shape != rgba.shape[1:]:
                raise GridValidationError(
                    f"semantic: shape {sem.shape} does not match the grid {rgba.shape[1:]}"
                )
            if not np.issubdtype(sem.dtype, np.integer) or sem.min() < 0 or sem.max() > 255:
                raise GridValidationError("semantic: must be integer labels in [0, 255]")
            sem = sem.astype(np.uint8)
            sem.setflags(write=False)
            set_(self, "semantic", sem)
        if (self.boxes is None) != (self.box_labels is None):
            raise GridValidationError("boxes and box_labels must be given together")
        if self.boxes is not None:
            boxes = np.asarray(self.boxes, dtype=np.float32)
            if boxes.size == 0:
                boxes = boxes.reshape(0, 7)
            if boxes.ndim != 2 or boxes.shape[1] != 7:
                raise GridValidationError(f"boxes: expected (N, 7), got {boxes.shape}")
            if not np.all(np.isfinite(boxes)) or np.any(boxes[:, 3:6] <= 0):
                raise GridValidationError("boxes: must be finite with positive sizes (w, l, h)")
            labels = np.asarray(self.box_labels).reshape(-1)
            if labels.shape != (boxes.shape[0],) or (
                labels.size and not np.issubdtype(labels.dtype, np.integer)
            ):
                raise GridValidationError(
                    f"box_labels: expected ({boxes.shape[0]},) integers, "
                    f"got {labels.shape} {labels.dtype}"
                )
            labels = labels.astype(np.int64)
            for v in (boxes, labels):
                v.setflags(write=False)
            set_(self, "boxes", boxes)
            set_(self, "box_labels", labels)
        set_(self, "meta", _frozen(self.meta))

    def __repr__(self) -> str:
        # The dataclass repr printed every voxel: a 160^3 grid filled a terminal.
        def vec(v: np.ndarray) -> str:
            return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"

        parts = [
            f"shape={self.shape}",
            f"dtype={self.rgba.dtype}",
            f"bbox_min={vec(self.bbox_min)}",
            f"bbox_max={vec(self.bbox_max)}",
            f"voxel_size={self.voxel_size:.4g}",
            f"delta={self.delta:.4g}",
            f"alpha>0.5={float((self.alpha > 0.5).mean()):.2%}",
        ]
        if self.semantic is not None:
            parts.append(f"semantic={int(np.unique(self.semantic).size)} labels")
        if self.boxes is not None:
            parts.append(f"boxes={len(self.boxes)}")
        if "source" in self.meta:
            parts.append(f"source={self.meta['source']!r}")
        parts.append(f"meta={sorted(self.meta)}")
        return f"RadianceGrid({', '.join(parts)})"

    # ----------------------------------------------------------------- derived
    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(X, Y, Z)``."""
        return tuple(int(s) for s in self.rgba.shape[1:])  # type: ignore[return-value]

    @property
    def rgb(self) -> np.ndarray:
        return self.rgba[:3]

    @property
    def alpha(self) -> np.ndarray:
        return self.rgba[3]

    def points(self) -> np.ndarray:
        """World positions of all samples, ``(X, Y, Z, 3)``."""
        return grid_points(self.bbox_min, self.voxel_size, self.shape)

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Continuous lattice coordinates of world points ``(..., 3)``."""
        return (np.asarray(xyz, dtype=np.float64) - self.bbox_min) / self.voxel_size

    def nearest_voxel(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sample nearest to each world point ``(..., 3)``: ``index`` ``(..., 3)`` int64,
        clamped into the grid, and ``inside`` ``(...)`` bool, true where the point lies
        within half a voxel of the grid's box (its nearest sample is a true neighbour, not
        the clamped edge)."""
        index = np.rint(self.world_to_index(xyz)).astype(np.int64)
        shape = np.array(self.shape)
        inside = np.all((index >= 0) & (index < shape), axis=-1)
        return np.clip(index, 0, shape - 1), inside

    def with_empty_space(self, below: float = 0.01) -> RadianceGrid:
        """The grid with voxels of alpha below ``below`` stored as empty: opacity and colour 0.

        The rule extraction applies (``ExtractConfig.empty_below``): grids from other sources
        (a ground truth, another tool) follow it before they meet extracted grids as inputs,
        so that free space looks the same in both. Labels are kept.
        """
        if not 0 <= below < 1:
            raise ValueError(f"below must be in [0, 1), got {below}")
        empty = self.alpha < below  # (X, Y, Z)
        rgba = np.where(empty[None], np.zeros((), self.rgba.dtype), self.rgba)
        meta = {
            **self.meta,
            "empty_space": {"below": below, "zero_fraction": float((rgba[3] == 0).mean())},
        }
        return self.replace(rgba=rgba, meta=meta)

    def metadata(self) -> dict[str, Any]:
        """Everything but the arrays, as JSON-ready values (what the store writes as attrs)."""
        out = dict(self.meta)
        out.update(
            bbox_min=self.bbox_min.tolist(),
            bbox_max=self.bbox_max.tolist(),
            voxel_size=self.voxel_size,
            delta=self.delta,
            resolution=list(self.shape),
            schema_version=int(out.get("schema_version", SCHEMA_VERSION)),
        )
        return out

    def replace(self, **changes: Any) -> RadianceGrid:
        """A new grid with some fields changed (validated again)."""
        fields = dict(
            rgba=self.rgba,
            bbox_min=self.bbox_min,
            bbox_max=self.bbox_max,
            voxel_size=self.voxel_size,
            delta=self.delta,
            semantic=self.semantic,
            boxes=self.boxes,
            box_labels=self.box_labels,
            meta=dict(self.meta),
        )
        fields.update(changes)
        return RadianceGrid(**fields)

    # --------------------------------------------------------------------- npz
    def save_npz(self, path: str | os.PathLike) -> Path:
        """Write the contract-1 ``.npz`` (compressed) atomically: a temp file then rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "rgba": self.rgba,
            "bbox_min": self.bbox_min,
            "bbox_max": self.bbox_max,
            "voxel_size": np.float64(self.voxel_size),
            "delta": np.float64(self.delta),
            "meta": np.array(json.dumps(dict(self.meta))),
        }
        if self.semantic is not None:
            arrays["semantic"] = self.semantic
        if self.boxes is not None:
            arrays["boxes"] = self.boxes
            arrays["box_labels"] = self.box_labels
        atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
        return path

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> RadianceGrid:
        """Read a contract-1 ``.npz``; errors name the file and the missing/bad key."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such grid file")
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise GridValidationError(f"{path}: not a readable .npz file ({exc})") from exc
        with data:
            missing = [
                k for k in ("rgba", "bbox_min", "bbox_max", "voxel_size", "delta") if k not in data
            ]
            if missing:
                raise GridValidationError(
                    f"{path}: missing key(s) {missing}; keys are {list(data.keys())}"
                )
            try:
                meta = json.loads(str(data["meta"])) if "meta" in data else {}
            except json.JSONDecodeError as exc:
                raise GridValidationError(
                    f"{path}: field 'meta' is not valid JSON ({exc})"
                ) from exc
            try:
                return cls(
                    rgba=data["rgba"],
                    bbox_min=data["bbox_min"],
                    bbox_max=data["bbox_max"],
                    voxel_size=float(data["voxel_size"]),
                    delta=float(data["delta"]),
                    semantic=data["semantic"] if "semantic" in data else None,
                    boxes=data["boxes"] if "boxes" in data else None,
                    box_labels=data["box_labels"] if "box_labels" in data else None,
                    meta=meta,
                )
            except GridValidationError as exc:
                raise GridValidationError(f"{path}: {exc}") from exc
