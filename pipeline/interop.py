"""Import and export of NeRF-RPN / NeRF-MAE ``.npz`` grids.

The published NeRF-RPN and NeRF-MAE data holds one ``.npz`` per scene with

- ``rgbsigma``: ``(W, L, H, 4)`` float (x, y, z order, z up), channels R, G, B and a
  density channel; or, straight out of the instant-ngp sampler, the flattened
  ``(rx * ry * rz, 4)`` with x fastest (``index = x + y * rx + z * rx * ry``);
- ``resolution``: ``[W, L, H]``; ``bbox_min``, ``bbox_max``: the box corners;
- sometimes ``scale``, ``offset``, ``from_mitsuba`` (instant-ngp's dataset transform).

The density channel needs the conversion its source used (``density=``):

- ``"ngp"``: instant-ngp raw output before its ``exp`` activation:
  ``alpha = clip(1 - exp(-exp(raw) / 100), 0, 1)`` (the NeRF-RPN / NeRF-MAE loader).
  Occupancy-masked samples hold ``-10000``, which gives alpha exactly 0.
- ``"relu"``: Dense-Depth-Priors NeRF (ScanNet): ``alpha = clip(1 - exp(-relu(raw) / 100), 0, 1)``.
- ``"alpha"``: the channel already is opacity (e.g. the Hypersim release).

The ``/100`` is a dummy step of 0.01, not the voxel size, so imported grids record
``delta = 0.01``. Samples sit on the box corners, both ends included, as in contract 1.

Export writes the same keys with ``rgbsigma`` ``(W, L, H, 4)`` float32 whose density
channel the chosen rule maps back to the grid's alpha (inversion below), so the
reference loaders read our grids unchanged.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from grid_store.boxes import aabb_to_boxes, voxel_to_world, world_to_voxel
from grid_store.grid import SCHEMA_VERSION, GridValidationError, RadianceGrid
from nerfmae_common.files import atomic_write

log = logging.getLogger(__name__)

DENSITY_RULES = ("ngp", "relu", "alpha")
RPN_DUMMY_DELTA = 0.01
NGP_EMPTY_SENTINEL = -10000.0
# Largest float32 opacity below 1: inverting alpha = 1 needs an infinite density.
_ALPHA_MAX = float(np.nextafter(np.float32(1.0), np.float32(0.0)))
_VOXEL_RTOL = 1e-4


# -------------------------------------------------------------- density rules
def density_to_alpha(raw: np.ndarray, rule: str) -> np.ndarray:
    """The reference loaders' conversion of the density channel to opacity (float32)."""
    raw = np.asarray(raw, dtype=np.float64)
    if rule == "ngp":
        with np.errstate(over="ignore"):
            alpha = -np.expm1(-np.exp(raw) * RPN_DUMMY_DELTA)
    elif rule == "relu":
        alpha = -np.expm1(-np.maximum(raw, 0.0) * RPN_DUMMY_DELTA)
    elif rule == "alpha":
        alpha = raw
    else:
        raise ValueError(f"density rule must be one of {DENSITY_RULES}, got {rule!r}")
    return np.clip(alpha, 0.0, 1.0).astype(np.float32)


def alpha_to_density(alpha: np.ndarray, rule: str) -> np.ndarray:
    """Inverse of :func:`density_to_alpha` (float32).

    - ``ngp``: ``raw = log(-100 * log(1 - alpha))``; alpha 0 has no finite inverse
      (``log 0``) and gets instant-ngp's own empty sentinel ``-10000``.
    - ``relu``: ``raw = -100 * log(1 - alpha)``; alpha 0 gives 0.
    - alpha 1 would need an infinite density, so alpha is first clipped to the largest
      float32 below 1; it reads back as 1 - 6e-8.
    """
    a = np.clip(np.asarray(alpha, dtype=np.float64), 0.0, _ALPHA_MAX)
    if rule == "alpha":
        return a.astype(np.float32)
    sigma = -np.log1p(-a) / RPN_DUMMY_DELTA
    if rule == "relu":
        return sigma.astype(np.float32)
    if rule == "ngp":
        with np.errstate(divide="ignore"):
            raw = np.where(a > 0, np.log(np.where(a > 0, sigma, 1.0)), NGP_EMPTY_SENTINEL)
        return raw.astype(np.float32)
    raise ValueError(f"density rule must be one of {DENSITY_RULES}, got {rule!r}")


# -------------------------------------------------------------------- boxes
def boxes_voxel_to_world(boxes: np.ndarray, bbox_min: np.ndarray, voxel_size: float) -> np.ndarray:
    """NeRF-RPN boxes in voxel coordinates -> contract-1 ``(N, 7)`` world boxes.

    Accepts ``(N, 7)`` ``(x, y, z, w, l, h, yaw)`` or ``(N, 6)`` axis-aligned
    ``(xmin, ymin, zmin, xmax, ymax, zmax)``; the voxel convention is
    :mod:`grid_store.boxes`' (voxel ``i`` covers ``[i, i + 1]``, sample ``i`` at ``i + 0.5``).
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] not in (6, 7):
        raise ValueError(f"boxes: expected (N, 7) or (N, 6), got {b.shape}")
    return voxel_to_world(aabb_to_boxes(b) if b.shape[1] == 6 else b, bbox_min, voxel_size)


def boxes_world_to_voxel(boxes: np.ndarray, bbox_min: np.ndarray, voxel_size: float) -> np.ndarray:
    """Contract-1 ``(N, 7)`` world boxes -> NeRF-RPN ``(N, 7)`` voxel-coordinate boxes."""
    return world_to_voxel(boxes, bbox_min, voxel_size)


# ------------------------------------------------------------------- import
def import_rpn_npz(
    path: str | os.PathLike,
    *,
    density: str = "ngp",
    boxes: str | os.PathLike | np.ndarray | None = None,
    ngp_y_up: bool = False,
) -> RadianceGrid:
    """Read a NeRF-RPN / NeRF-MAE ``.npz`` into a :class:`RadianceGrid`.

    Args:
        path: the ``.npz`` (``rgbsigma`` ``(W, L, H, 4)`` or flattened ``(N, 4)``).
        density: how the 4th channel becomes opacity: ``ngp``, ``relu`` or ``alpha``.
        boxes: optional NeRF-RPN boxes (a ``.npy`` path or an array), ``(N, 7)`` OBB or
            ``(N, 6)`` AABB in voxel-index units; stored in world units, class 0.
        ngp_y_up: the file is in instant-ngp's y-up frame (raw ``prepare_rpn_input``
            output): rotate to z-up as the NeRF-RPN README prescribes (xyz -> yzx).

    Raises:
        FileNotFoundError: no such file. ValueError: a bad key, shape or value; the
        message names the file and the key.
    """
    path = Path(path)
    if density not in DENSITY_RULES:
        raise ValueError(f"density rule must be one of {DENSITY_RULES}, got {density!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .npz file")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
    with data:
        missing = [k for k in ("rgbsigma", "bbox_min", "bbox_max") if k not in data]
        if missing:
            raise ValueError(f"{path}: missing key(s) {missing}; keys are {sorted(data.keys())}")
        rgbsigma = data["rgbsigma"]
        resolution = data["resolution"] if "resolution" in data else None
        bbox_min = _vec3(data["bbox_min"], path, "bbox_min")
        bbox_max = _vec3(data["bbox_max"], path, "bbox_max")
        extras = {k: _small_json(data[k]) for k in data.keys() if k not in _CORE_KEYS}

    grid_xyz = _to_xyz4(rgbsigma, resolution, path)  # (W, L, H, 4)
    if ngp_y_up:
        grid_xyz = grid_xyz.transpose(2, 0, 1, 3)
        bbox_min, bbox_max = bbox_min[[2, 0, 1]], bbox_max[[2, 0, 1]]
    if np.issubdtype(grid_xyz.dtype, np.integer):
        if density != "alpha":
            raise ValueError(
                f"{path}: key 'rgbsigma' is {grid_xyz.dtype}; integer grids only as density='alpha'"
            )
        grid_xyz = grid_xyz.astype(np.float32) / np.float32(np.iinfo(grid_xyz.dtype).max)
    elif not np.issubdtype(grid_xyz.dtype, np.floating):
        raise ValueError(f"{path}: key 'rgbsigma' has unsupported dtype {grid_xyz.dtype}")
    if not np.all(np.isfinite(grid_xyz)):
        raise ValueError(f"{path}: key 'rgbsigma' contains NaN/Inf")

    shape = grid_xyz.shape[:3]
    voxel_size, bbox_max, spacing_meta = _isotropic_spacing(bbox_min, bbox_max, shape, path)
    rgba = np.empty((4, *shape), dtype=np.float32)
    rgba[:3] = np.clip(np.moveaxis(grid_xyz[..., :3], -1, 0), 0.0, 1.0)
    rgba[3] = density_to_alpha(grid_xyz[..., 3], density)

    world_boxes = labels = None
    if boxes is not None:
        arr = np.load(boxes, allow_pickle=False) if isinstance(boxes, (str, os.PathLike)) else boxes
        try:
            world_boxes = boxes_voxel_to_world(arr, bbox_min, voxel_size)
        except ValueError as exc:
            raise ValueError(
                f"{boxes if not isinstance(boxes, np.ndarray) else 'boxes'}: {exc}"
            ) from exc
        labels = np.zeros(len(world_boxes), dtype=np.int64)

    meta = {
        "source": str(path),
        "format": "nerf-rpn-npz",
        "density_rule": density,
        "nerf": None,
        "schema_version": SCHEMA_VERSION,
        "rpn_extra": extras,
        **spacing_meta,
    }
    if world_boxes is not None:
        meta["box_labels"] = "class-agnostic (NeRF-RPN boxes carry no classes): all 0"
    try:
        return RadianceGrid(
            rgba=rgba,
            bbox_min=bbox_min,
            bbox_max=bbox_max,
            voxel_size=voxel_size,
            delta=RPN_DUMMY_DELTA,
            boxes=world_boxes,
            box_labels=labels,
            meta=meta,
        )
    except GridValidationError as exc:
        raise GridValidationError(f"{path}: {exc}") from exc


_CORE_KEYS = ("rgbsigma", "resolution", "bbox_min", "bbox_max")


def _to_xyz4(rgbsigma: np.ndarray, resolution: np.ndarray | None, path: Path) -> np.ndarray:
    """``rgbsigma`` in either layout -> ``(W, L, H, 4)`` in x, y, z order."""
    res = None if resolution is None else np.asarray(resolution).reshape(-1).astype(np.int64)
    if res is not None and (res.shape != (3,) or np.any(res < 2)):
        raise ValueError(f"{path}: key 'resolution' must be 3 sizes >= 2, got {resolution}")
    if rgbsigma.ndim == 4:
        if rgbsigma.shape[3] != 4:
            raise ValueError(f"{path}: key 'rgbsigma' must be (W, L, H, 4), got {rgbsigma.shape}")
        if res is not None and tuple(res) != rgbsigma.shape[:3]:
            raise ValueError(
                f"{path}: key 'resolution' {res.tolist()} does not match rgbsigma {rgbsigma.shape}"
            )
        return rgbsigma
    if rgbsigma.ndim == 2:
        if res is None:
            raise ValueError(
                f"{path}: flattened 'rgbsigma' {rgbsigma.shape} needs key 'resolution'"
            )
        if rgbsigma.shape != (int(np.prod(res)), 4):
            raise ValueError(
                f"{path}: flattened 'rgbsigma' {rgbsigma.shape} does not match "
                f"resolution {res.tolist()} (expected ({int(np.prod(res))}, 4))"
            )
        # x fastest: the C-order reshape is (z, y, x), transposed to (x, y, z).
        return rgbsigma.reshape(res[2], res[1], res[0], 4).transpose(2, 1, 0, 3)
    raise ValueError(f"{path}: key 'rgbsigma' must be (W, L, H, 4) or (N, 4), got {rgbsigma.shape}")


def _isotropic_spacing(bbox_min, bbox_max, shape, path: Path):
    """Voxel size under the corner convention; an anisotropic box is corrected and recorded.

    The reference sampler rounds each side's sample count independently, so its
    spacing differs slightly per axis. A grid has one voxel size: take the spacing of
    the longest side and move ``bbox_max`` to match.
    """
    counts = np.asarray(shape, dtype=np.float64)
    spacing = (bbox_max - bbox_min) / (counts - 1)
    if np.any(spacing <= 0):
        raise ValueError(f"{path}: keys 'bbox_min'/'bbox_max' give a non-positive extent")
    longest = int(np.argmax(counts))
    voxel = float(spacing[longest])
    if np.allclose(spacing, voxel, rtol=_VOXEL_RTOL, atol=0):
        return voxel, bbox_min + (counts - 1) * voxel, {}
    new_max = bbox_min + (counts - 1) * voxel
    log.warning(
        "%s: per-axis spacing %s is not isotropic; using %.6g (axis %d) and bbox_max %s",
        path,
        spacing.tolist(),
        voxel,
        longest,
        new_max.tolist(),
    )
    return (
        voxel,
        new_max,
        {"source_bbox_max": bbox_max.tolist(), "source_spacing": spacing.tolist()},
    )


def _vec3(v: Any, path: Path, key: str) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{path}: key {key!r} must be 3 finite floats, got {v}")
    return arr


def _small_json(v: np.ndarray) -> Any:
    """Keep extra keys (scale, offset, from_mitsuba...) in the metadata when small."""
    if v.size > 64 or v.dtype.kind not in "biuf":
        return f"<{v.dtype} {list(v.shape)}>"
    return json.loads(json.dumps(v.tolist()))


# ------------------------------------------------------------------- export
def export_rpn_npz(
    grid: RadianceGrid,
    path: str | os.PathLike,
    *,
    density: str = "alpha",
    boxes_path: str | os.PathLike | None = None,
) -> Path:
    """Write ``grid`` as a NeRF-RPN / NeRF-MAE ``.npz`` (``rgbsigma`` ``(W, L, H, 4)`` float32).

    ``density`` picks what the 4th channel holds: ``alpha`` (read it with NeRF-RPN's
    ``--normalize_density`` off), or ``ngp`` / ``relu`` raw values (see
    :func:`alpha_to_density`) that the reference loaders turn back into this grid's
    alpha. The physical density is not recovered: the rules assume a step of 0.01.
    ``boxes_path``: also write the grid's boxes as a NeRF-RPN ``(N, 7)`` voxel-unit ``.npy``.
    The file is written to a temporary name and renamed, so a crash leaves no half file.
    """
    if density not in DENSITY_RULES:
        raise ValueError(f"density rule must be one of {DENSITY_RULES}, got {density!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgba = np.asarray(grid.rgba, dtype=np.float32)  # (4, X, Y, Z)
    rgbsigma = np.empty((*grid.shape, 4), dtype=np.float32)  # (W, L, H, 4)
    rgbsigma[..., :3] = np.moveaxis(rgba[:3], 0, -1)
    rgbsigma[..., 3] = alpha_to_density(rgba[3], density)
    arrays = {
        "rgbsigma": rgbsigma,
        "resolution": np.asarray(grid.shape, dtype=np.int64),
        "bbox_min": grid.bbox_min.astype(np.float64),
        "bbox_max": grid.bbox_max.astype(np.float64),
        "scale": np.float32(1.0),
        "offset": np.zeros(3, dtype=np.float32),
        "from_mitsuba": np.bool_(False),
    }
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    if boxes_path is not None and grid.boxes is not None:
        np.save(boxes_path, boxes_world_to_voxel(grid.boxes, grid.bbox_min, grid.voxel_size))
    return path
