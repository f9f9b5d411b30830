"""Sample any radiance field into a :class:`RadianceGrid` (DESIGN contracts 1 and 3).

``extract_grid`` is the single-scene Python API: give it a field object, a NeRF run
folder or a scene folder (a NeRF is trained first) and it returns the grid::

    from pipeline import extract_grid
    grid = extract_grid("runs/room_0", resolution=160)           # a trained run
    grid = extract_grid(field, 96, directions="fixed")           # any RadianceField
    grid.save_npz("room_0.npz")

What it does, in order:

1. **Box**: the scene's box (``transforms.json`` ``aabb`` of the run's scene, else the
   field's ``aabb``), a user box, or the occupied extent of the density (a coarse
   density pass, thresholded on opacity) plus a margin (10% per side, NeRF-RPN's
   ``--margin 0.1``), clipped to the scene box.
2. **Lattice**: the longest side gets ``resolution`` samples, the others keep the
   aspect ratio (:func:`grid_shape_for_box`); samples sit on the corners
   (``bbox_min + (i, j, k) * voxel_size``, both ends included).
3. **Values**: ``alpha = 1 - exp(-sigma * delta)`` (``delta`` = voxel size unless
   overridden; recorded) and colour = the mean of ``field.color(x, d)`` over a
   direction set (:mod:`pipeline.directions`; by default the training cameras'
   directions towards each sample).
4. **Empty space**: samples with alpha below ``empty_below`` (0.01) become all zeros.

Evaluation walks the lattice in chunks of about ``chunk_points`` samples (whole z-rows),
building each chunk's positions from per-axis coordinate tables, so the only allocation
that grows with the resolution is the output array itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from grid_store.grid import SCHEMA_VERSION, RadianceGrid, grid_shape_for_box
from pipeline.directions import (
    CameraDirections,
    DirectionSet,
    FixedDirections,
    fibonacci_directions,
    rpn_fixed_directions,
    select_cameras,
)
from pipeline.field import GeometryRadianceField, RadianceField

log = logging.getLogger(__name__)

SCENE_NERF_BUDGET_S = 300.0
"""Training budget of the NeRF that :func:`extract_grid` trains for a scene folder when no
``trainer_config`` is given: the trainer's own default (20000 steps, no budget) is about an
hour on a laptop CPU, far more than a user calling a sampling function expects; 300 s gets
the synthetic rooms past 30 dB held-out on two cores (BENCHMARKS.md)."""
BOX_KINDS = ("scene", "occupied")
DIRECTION_KINDS = ("cameras", "fixed", "fibonacci")


@dataclass(frozen=True)
class ExtractConfig:
    """How a field is sampled into a grid. Hashed into the grid's ``config_hash``."""

    resolution: int = 160
    """Samples along the longest side of the box; the other sides keep the aspect ratio."""
    box: str = "scene"
    """``scene``: the scene's box (run's ``transforms.json`` aabb, else the field's aabb);
    ``occupied``: the extent where opacity >= ``occupancy_threshold``, plus ``margin``."""
    bbox_min: tuple[float, float, float] | None = None
    """User box minimum corner (world units); overrides ``box`` when given with ``bbox_max``."""
    bbox_max: tuple[float, float, float] | None = None
    """User box maximum corner (world units)."""
    margin: float = 0.1
    """``occupied`` box: grow each side by this fraction of the occupied extent."""
    occupancy_threshold: float = 0.01
    """``occupied`` box: a coarse sample is occupied where ``1 - exp(-sigma * delta)`` is at
    least this (``delta`` as for the final grid over the scene box); instant-ngp's 0.01."""
    occupancy_resolution: int = 64
    """``occupied`` box: samples along the longest side of the coarse density pass."""
    delta: float | None = None
    """Step in ``alpha = 1 - exp(-sigma * delta)``; None = the voxel size (contract 1)."""
    empty_below: float = 0.01
    """Voxels whose opacity is below this are empty space, stored as opacity 0 and colour 0;
    0 keeps the field's values everywhere. instant-ngp's grids (NeRF-RPN, NeRF-MAE) hold
    exact zero opacity where its occupancy grid is below 0.01 optical thickness; the colour
    is zeroed too because a NeRF's colour there is unconstrained noise that NeRF-MAE's loss
    ignores (it gates colour by opacity > 0.01) and that does not compress (BENCHMARKS.md)."""
    directions: str = "cameras"
    """Colour is averaged over: ``cameras`` (training cameras towards each sample; falls
    back to ``fixed`` with a warning when the source has no cameras), ``fixed``
    (NeRF-RPN's 18: pitch -45/0/45 x 6 yaws) or ``fibonacci`` (``n_directions`` points)."""
    max_cameras: int | None = 32
    """``cameras``: use at most this many cameras (None = all)."""
    camera_subset: str = "strided"
    """``cameras``: how the subset is chosen when there are more: ``strided`` or ``random``."""
    n_directions: int = 18
    """``fibonacci``: number of directions."""
    seed: int = 0
    """Seed for the ``random`` camera subset."""
    chunk_points: int = 1 << 16
    """Samples per field call (whole z-rows, at least one); bounds the working memory."""
    device: str | None = None
    """Torch device for evaluation; None = the device of the field's ``aabb``."""

    def __post_init__(self) -> None:
        if self.resolution < 2:
            raise ValueError(f"ExtractConfig.resolution must be >= 2, got {self.resolution}")
        if self.box not in BOX_KINDS:
            raise ValueError(f"ExtractConfig.box must be one of {BOX_KINDS}, got {self.box!r}")
        if self.directions not in DIRECTION_KINDS:
            raise ValueError(
                f"ExtractConfig.directions must be one of {DIRECTION_KINDS}, "
                f"got {self.directions!r}"
            )
        if (self.bbox_min is None) != (self.bbox_max is None):
            raise ValueError("ExtractConfig.bbox_min and bbox_max must be given together")
        if self.bbox_min is not None:
            lo = np.asarray(self.bbox_min, dtype=np.float64)
            hi = np.asarray(self.bbox_max, dtype=np.float64)
            if lo.shape != (3,) or hi.shape != (3,) or not np.all(hi > lo):
                raise ValueError(
                    f"ExtractConfig.bbox_min/bbox_max must be 3 floats with max > min, "
                    f"got {self.bbox_min} / {self.bbox_max}"
                )
            object.__setattr__(self, "bbox_min", tuple(float(v) for v in lo))
            object.__setattr__(self, "bbox_max", tuple(float(v) for v in hi))
        if self.margin < 0:
            raise ValueError(f"ExtractConfig.margin must be >= 0, got {self.margin}")
        if not 0 < self.occupancy_threshold < 1:
            raise ValueError(
                "ExtractConfig.occupancy_threshold must be in (0, 1), "
                f"got {self.occupancy_threshold}"
            )
        if self.occupancy_resolution < 2:
            raise ValueError("ExtractConfig.occupancy_resolution must be >= 2")
        if not 0 <= self.empty_below < 1:
            raise ValueError(f"ExtractConfig.empty_below must be in [0, 1), got {self.empty_below}")
        if self.delta is not None and not self.delta > 0:
            raise ValueError(f"ExtractConfig.delta must be > 0 (or None), got {self.delta}")
        if self.max_cameras is not None and self.max_cameras < 1:
            raise ValueError(
                f"ExtractConfig.max_cameras must be >= 1 or None, got {self.max_cameras}"
            )
        if self.camera_subset not in ("strided", "random"):
            raise ValueError(
                "ExtractConfig.camera_subset must be 'strided' or 'random', "
                f"got {self.camera_subset!r}"
            )
        if self.n_directions < 1:
            raise ValueError(f"ExtractConfig.n_directions must be >= 1, got {self.n_directions}")
        if self.chunk_points < 1:
            raise ValueError(f"ExtractConfig.chunk_points must be >= 1, got {self.chunk_points}")


@dataclass
class _Source:
    """What extraction needs from whatever it was given."""

    field: RadianceField
    camera_origins: np.ndarray | None  # (C, 3) or None
    scene_aabb: np.ndarray  # (2, 3)
    description: str
    nerf: dict[str, Any] | None
    nerf_config: Any


# ------------------------------------------------------------------ public API
def extract_grid(
    source: Any,
    resolution: int | None = None,
    *,
    config: ExtractConfig | None = None,
    run_dir: str | os.PathLike | None = None,
    trainer_config: Any = None,
    camera_origins: np.ndarray | None = None,
    **overrides: Any,
) -> RadianceGrid:
    """Sample ``source`` into a grid whose longest side has ``resolution`` samples.

    Args:
        source: a :class:`RadianceField`; an object holding one as ``.field`` with
            optional ``.camera_origins``, ``.scene_aabb`` (or ``.aabb``), ``.metrics``,
            ``.config`` (what :func:`nerf_training.load_run` and
            :func:`pipeline.synthetic.make_room` return); a NeRF run folder (holds
            ``checkpoint.pt``); or a scene folder (holds ``transforms.json``): a NeRF is
            trained first into ``run_dir`` (default ``<scene>_nerf`` beside the scene; an
            existing checkpoint there is reused), for :data:`SCENE_NERF_BUDGET_S` (300 s)
            unless ``trainer_config`` says otherwise; or a nerfstudio run's ``config.yml``
            (recognised by content; needs nerfstudio, :mod:`pipeline.nerfstudio.source`):
            its field in the capture's world frame.
        resolution: overrides ``config.resolution`` (default 160).
        config: the :class:`ExtractConfig`; ``overrides`` replace single fields of it.
        run_dir: where a scene folder's NeRF is trained.
        trainer_config: ``nerf_training.trainer.TrainerConfig`` for that training
            (default: the trainer's defaults with a 300 s time budget).
        camera_origins: ``(C, 3)`` camera centres for ``directions="cameras"`` when
            ``source`` is a bare field (runs bring their own).

    Raises:
        FileNotFoundError: a path that is missing, or a run folder without a checkpoint.
        ValueError: a bad configuration or a source that is not a field.
    """
    cfg = config or ExtractConfig()
    if resolution is not None:
        overrides["resolution"] = resolution
    unknown = set(overrides) - {f.name for f in fields(ExtractConfig)}
    if unknown:
        raise ValueError(f"extract_grid: unknown option(s) {sorted(unknown)}")
    cfg = replace(cfg, **overrides)

    src = _resolve_source(source, run_dir=run_dir, trainer_config=trainer_config,
                          device=cfg.device)  # fmt: skip
    if camera_origins is not None:
        src.camera_origins = np.asarray(camera_origins, dtype=np.float32)
    device = torch.device(cfg.device) if cfg.device else _field_device(src.field)

    box_min, box_max, box_meta = _choose_box(src, cfg, device)
    shape, voxel_size, box_max = grid_shape_for_box(box_min, box_max, cfg.resolution)
    delta = float(cfg.delta) if cfg.delta is not None else voxel_size
    dirs = _direction_set(src, cfg)

    log.info(
        "extracting %s: grid %s, voxel %.4g, %s colour directions (%s)",
        src.description,
        shape,
        voxel_size,
        dirs.count,
        dirs.describe()["kind"],
    )
    rgba = sample_field(
        src.field,
        box_min,
        voxel_size,
        shape,
        delta=delta,
        dirs=dirs,
        empty_below=cfg.empty_below,
        chunk_points=cfg.chunk_points,
        device=device,
    )
    meta = {
        "source": src.description,
        "nerf": src.nerf,
        "config_hash": config_hash(cfg, src.nerf_config),
        "schema_version": SCHEMA_VERSION,
        "colour_directions": dirs.describe(),
        "box": box_meta,
        "empty_space": {"below": cfg.empty_below, "zero_fraction": float((rgba[3] == 0).mean())},
        "extract_config": _jsonable(asdict(cfg)),
    }
    return RadianceGrid(
        rgba=rgba, bbox_min=box_min, bbox_max=box_max, voxel_size=voxel_size, delta=delta, meta=meta
    )


def sample_field(
    field: RadianceField,
    bbox_min: np.ndarray,
    voxel_size: float,
    shape: tuple[int, int, int],
    *,
    delta: float,
    dirs: DirectionSet | None,
    empty_below: float = 0.0,
    chunk_points: int = 1 << 16,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """The lattice ``bbox_min + (i, j, k) * voxel_size`` of ``shape`` -> ``(4, X, Y, Z)`` float32.

    Channels are the mean colour over ``dirs`` and ``1 - exp(-sigma * delta)``; with
    ``dirs=None`` only alpha is computed (colour left 0), as the occupancy pass needs.
    Samples whose alpha is below ``empty_below`` become all zeros (empty space).
    """
    X, Y, Z = (int(s) for s in shape)
    out = np.zeros((4, X * Y * Z), dtype=np.float32)  # (4, X*Y*Z), z fastest like the lattice
    out_t = torch.from_numpy(out)
    # Per-axis coordinates, float64 then rounded, exactly as grid_points computes them.
    axes = [
        torch.as_tensor(
            (float(bbox_min[a]) + np.arange(n) * voxel_size).astype(np.float32), device=device
        )
        for a, n in enumerate((X, Y, Z))
    ]
    # Chunks are runs of whole z-rows (at least one row), so a chunk's positions are
    # three broadcasts of the axis tables, without per-sample index arithmetic.
    rows_per_chunk = max(1, chunk_points // Z)
    row_starts = range(0, X * Y, rows_per_chunk)
    evaluate = _point_evaluator(field)
    with torch.inference_mode():
        for r0 in tqdm(
            row_starts, desc="extract", unit="chunk", disable=not progress or len(row_starts) < 8
        ):
            r1 = min(r0 + rows_per_chunk, X * Y)
            x = _rows_points(axes, r0, r1, Y)  # (n, 3) float32, n = (r1 - r0) * Z
            span = slice(r0 * Z, r1 * Z)
            sigma, color_at = evaluate(x)
            sigma = sigma.reshape(-1).float()  # (n,)
            alpha = torch.expm1(sigma.clamp_min(0.0) * -delta).neg_()  # (n,)
            empty = alpha < empty_below  # (n,)
            out_t[3, span] = alpha.masked_fill_(empty, 0.0).cpu()
            if dirs is None:
                continue
            rgb = color_at(dirs.directions(x, 0)).float()  # (n, 3)
            for k in range(1, dirs.count):
                rgb = rgb + color_at(dirs.directions(x, k))
            # Not in place: the field's output may be a view of something it owns.
            rgb = (rgb / dirs.count).clamp_(0.0, 1.0).masked_fill_(empty[:, None], 0.0)
            out_t[:3, span] = rgb.T.cpu()
    return out.reshape(4, X, Y, Z)


def _point_evaluator(field: RadianceField) -> Callable:
    """``x (n, 3) -> (sigma (n,), color_at(d (n, 3)) -> (n, 3))`` for one chunk of points.

    A field with the geometry split is encoded once per point and only its colour head
    runs per direction; any other field is queried per direction.
    """
    if isinstance(field, GeometryRadianceField):

        def evaluate_split(x: torch.Tensor):
            sigma, geometry = field.density_and_geometry(x)
            return sigma, lambda d: field.color_from_geometry(geometry, d)

        return evaluate_split

    def evaluate(x: torch.Tensor):
        return field.density(x), lambda d: field.color(x, d)

    return evaluate


def config_hash(cfg: ExtractConfig, nerf_config: Any = None) -> str:
    """Stable 16-hex-digit hash of the extraction config and the NeRF's config."""
    payload = {"extract": _jsonable(asdict(cfg)), "nerf": _jsonable(nerf_config)}
    # The device decides where, not what, is computed.
    payload["extract"].pop("device", None)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the source
def _resolve_source(source: Any, *, run_dir: Any, trainer_config: Any, device: Any) -> _Source:
    if isinstance(source, (str, os.PathLike)):
        from pipeline.nerfstudio.run import is_nerfstudio_config

        path = Path(source)
        if path.is_file() and is_nerfstudio_config(path):
            # imported here: loading a nerfstudio run needs nerfstudio (make nerfstudio)
            from pipeline.nerfstudio.source import load_world_run

            return _source_from_run(load_world_run(path, device=device or "cpu"))
        return _source_from_run(_load_or_train(path, run_dir, trainer_config))
    if hasattr(source, "field"):
        return _source_from_run(source)
    if all(hasattr(source, a) for a in ("aabb", "density", "color")):
        return _Source(
            field=source,
            camera_origins=None,
            scene_aabb=_as_aabb(source.aabb, "field.aabb"),
            description=type(source).__name__,
            nerf=None,
            nerf_config=None,
        )
    raise ValueError(
        f"extract_grid: source must be a RadianceField (aabb, density, color), a trained run, "
        f"or a run/scene folder path; got {type(source).__name__}"
    )


def _load_or_train(path: Path, run_dir: Any, trainer_config: Any) -> Any:
    import nerf_training

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such NeRF run or scene folder")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a folder (expected a NeRF run or a scene folder) "
                                "nor a nerfstudio run's config.yml")  # fmt: skip
    if (path / "checkpoint.pt").is_file():
        return nerf_training.load_run(path)
    if (path / "transforms.json").is_file() or (path / "transforms_train.json").is_file():
        target = Path(run_dir) if run_dir is not None else path.parent / f"{path.name}_nerf"
        if (target / "checkpoint.pt").is_file():
            log.info("reusing the trained NeRF in %s for scene %s", target, path)
        else:
            log.info("training a NeRF for scene %s into %s", path, target)
            if trainer_config is None:
                log.info("no trainer_config: a %g s time budget", SCENE_NERF_BUDGET_S)
                trainer_config = nerf_training.TrainerConfig(time_budget_s=SCENE_NERF_BUDGET_S)
            nerf_training.train_nerf(path, target, config=trainer_config)
        return nerf_training.load_run(target)
    if (path / "config.json").is_file() or (path / "metrics.json").is_file():
        raise FileNotFoundError(
            f"{path / 'checkpoint.pt'}: NeRF run folder has no checkpoint (training unfinished?)"
        )
    raise FileNotFoundError(
        f"{path}: neither a NeRF run folder (checkpoint.pt) nor a scene folder (transforms.json)"
    )


def _source_from_run(run: Any) -> _Source:
    metrics = dict(getattr(run, "metrics", None) or {})
    nerf_config = _jsonable(getattr(run, "config", None))
    backend = metrics.get("backend")
    if backend is None and isinstance(nerf_config, dict):
        backend = nerf_config.get("backend")
    nerf = {
        "backend": backend,
        "steps": metrics.get("steps"),
        "psnr_holdout": metrics.get("psnr_holdout"),
        # a nerfstudio run says which of its methods and versions made the field
        **{key: metrics[key] for key in ("method", "implementation", "nerfstudio_version")
           if key in metrics},
    }  # fmt: skip
    if getattr(run, "run_dir", None) is not None:
        nerf["run_dir"] = str(run.run_dir)
    # A run's scene box (from transforms.json); a synthetic room's float64 ``aabb``.
    scene_aabb = getattr(run, "scene_aabb", getattr(run, "aabb", None))
    origins = getattr(run, "camera_origins", None)
    where = getattr(run, "scene_dir", None) or getattr(run, "run_dir", None)
    return _Source(
        field=run.field,
        camera_origins=None if origins is None else np.asarray(origins, dtype=np.float32),
        scene_aabb=_as_aabb(run.field.aabb if scene_aabb is None else scene_aabb, "run.scene_aabb"),
        description=str(where) if where is not None else type(run).__name__,
        nerf=nerf,
        nerf_config=nerf_config,
    )


def _as_aabb(aabb: Any, name: str) -> np.ndarray:
    if isinstance(aabb, torch.Tensor):
        aabb = aabb.detach().cpu().numpy()
    arr = np.asarray(aabb, dtype=np.float64)
    if arr.shape != (2, 3) or not np.all(np.isfinite(arr)) or not np.all(arr[1] > arr[0]):
        raise ValueError(
            f"{name}: expected (2, 3) finite min/max corners with max > min, got {arr}"
        )
    return arr


def _field_device(field: Any) -> torch.device:
    aabb = getattr(field, "aabb", None)
    return aabb.device if isinstance(aabb, torch.Tensor) else torch.device("cpu")


# ------------------------------------------------------------ box, directions
def _choose_box(src: _Source, cfg: ExtractConfig, device: torch.device):
    if cfg.bbox_min is not None:
        return np.array(cfg.bbox_min), np.array(cfg.bbox_max), {"kind": "user"}
    lo, hi = src.scene_aabb
    if cfg.box == "scene":
        return lo.copy(), hi.copy(), {"kind": "scene"}
    return _occupied_box(src.field, lo, hi, cfg, device)


def _occupied_box(field, lo: np.ndarray, hi: np.ndarray, cfg: ExtractConfig, device):
    """Occupied extent of a coarse density pass, grown by one coarse voxel and ``margin``."""
    shape, coarse, _ = grid_shape_for_box(lo, hi, cfg.occupancy_resolution)
    _, fine, _ = grid_shape_for_box(lo, hi, cfg.resolution)
    delta = float(cfg.delta) if cfg.delta is not None else fine
    alpha = sample_field(
        field,
        lo,
        coarse,
        shape,
        delta=delta,
        dirs=None,
        chunk_points=cfg.chunk_points,
        device=device,
        progress=False,
    )[3]  # (x, y, z)
    occupied = np.argwhere(alpha >= cfg.occupancy_threshold)  # (M, 3) indices
    meta = {"kind": "occupied", "threshold": cfg.occupancy_threshold, "margin": cfg.margin}
    if occupied.size == 0:
        log.warning("no density above the occupancy threshold: using the whole scene box")
        return lo.copy(), hi.copy(), {**meta, "empty": True}
    # Occupancy between coarse samples is unseen, so the extent is grown by a voxel.
    occ_lo = lo + (occupied.min(axis=0) - 1) * coarse
    occ_hi = lo + (occupied.max(axis=0) + 1) * coarse
    grow = cfg.margin * (occ_hi - occ_lo)
    return np.maximum(lo, occ_lo - grow), np.minimum(hi, occ_hi + grow), meta


def _direction_set(src: _Source, cfg: ExtractConfig) -> DirectionSet:
    kind = cfg.directions
    if kind == "cameras" and src.camera_origins is None:
        log.warning(
            "%s has no training cameras: averaging colour over the fixed set", src.description
        )
        kind = "fixed"
    if kind == "cameras":
        idx = select_cameras(len(src.camera_origins), cfg.max_cameras, cfg.camera_subset, cfg.seed)
        return CameraDirections(src.camera_origins[idx], indices=idx)
    if kind == "fixed":
        return FixedDirections(rpn_fixed_directions(), name="rpn18")
    return FixedDirections(fibonacci_directions(cfg.n_directions), name="fibonacci")


def _rows_points(axes: list[torch.Tensor], r0: int, r1: int, Y: int) -> torch.Tensor:
    """Positions of z-rows ``[r0, r1)`` of the ``(X*Y, Z)`` lattice, ``(n, 3)`` float32."""
    ax, ay, az = axes  # (X,), (Y,), (Z,)
    rows = torch.arange(r0, r1, device=az.device)  # (R,)
    x = torch.empty((r1 - r0, az.shape[0], 3), dtype=torch.float32, device=az.device)  # (R, Z, 3)
    x[:, :, 0] = ax[rows // Y, None]
    x[:, :, 1] = ay[rows % Y, None]
    x[:, :, 2] = az
    return x.reshape(-1, 3)


def _jsonable(obj: Any) -> Any:
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
