"""Scene discovery and the per-scene chain ``train_nerf -> extract_grid -> write_grid``.

:func:`process_scene` is one task per scene that calls the step tasks in order
(nested task runs: each keeps its own retries, cache and log in the UI). Keeping the
chain in one task lets the quality gate and the store check read as plain Python, and
lets a Dask cluster place a whole scene, GPU and all, on one worker.

Rerun skipping works on two levels:

- the store: a scene's ``config_hash`` (:func:`grid_hash`) covers its content
  (:func:`flows.tasks.scene_fingerprint`), the NeRF and the extraction settings, and its
  ground-truth labels (``ground_truth/grid.npz``, attached to the grid when present); a
  scene already in the store with the same hash is reported ``cached``, nothing runs;
- the NeRF: ``train_nerf``'s Prefect cache is keyed on :func:`nerf_hash` (content + NeRF
  settings) and the run folder, so a rerun after a crash in a later step, or with only
  new extraction settings, reuses the trained NeRF instead of training again.

Statuses: ``written``, ``cached``, ``rejected`` (held-out PSNR below the gate; nothing
written) and ``failed`` (with the exception's message as the reason).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.run_logs import with_library_logs
from flows.tasks import (
    GPU_LIMIT,
    config_from_dict,
    extract_grid_task,
    fingerprint_scene,
    run_is_complete,
    train_nerf_task,
    write_grid_task,
)

FLOW_SCHEMA = 3
"""Bumped when the chain changes what it writes, so old store entries are rebuilt
(2: the default NeRF's finest hash level follows the images, see TrainerConfig; 3: a
scene's ground-truth labels are stored with its grid, see pipeline.labels)."""
_SCENE_ID_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class SceneJob:
    """One scene to process."""

    scene_id: str
    """Store key: the folder name, made to fit ``[A-Za-z0-9][A-Za-z0-9_.-]{0,127}``."""
    scene_dir: str
    """The scene folder (``transforms.json`` + images)."""


@dataclass(frozen=True)
class BuildSettings:
    """Everything that decides how every scene is processed (one per ``build_dataset`` run)."""

    store: str
    """Grid store URL (local path, ``s3://...``, ``memory://...``)."""
    runs_dir: str
    """Where NeRF run folders go: ``<runs_dir>/<scene_id>-<config hash>/``."""
    nerf: dict[str, Any] = field(default_factory=dict)
    """``nerf_training.trainer.TrainerConfig`` field overrides (``steps``, ``time_budget_s``...)."""
    resolution: int = 160
    """Grid samples along the longest side of the scene box."""
    extract: dict[str, Any] = field(default_factory=dict)
    """``pipeline.extract.ExtractConfig`` field overrides (other than ``resolution``)."""
    min_psnr: float | None = None
    """Quality gate: scenes whose held-out PSNR (dB) is below this are rejected."""
    retries: int = 2
    """Retries of each step on a transient error (bad input is never retried)."""
    retry_delay_s: float = 10.0
    """Back-off factor: retry ``i`` waits ``retry_delay_s * 2**i`` seconds."""
    gpu_limit: str | None = GPU_LIMIT
    """Global concurrency limit the GPU steps occupy (None: unlimited)."""
    hash_mode: str = "content"
    """Scene fingerprint: ``content`` (file bytes) or ``stat`` (sizes and mtimes)."""


# ----------------------------------------------------------------- discovery
def discover_scenes(scenes: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Scene folders from a directory of scenes, a single scene, a glob, or a list of these.

    Every non-hidden subfolder of a directory counts (a broken one is reported as failed
    later, not silently dropped). A path that matches nothing is an error.
    """
    if isinstance(scenes, (str, os.PathLike)):
        scenes = [scenes]
    found: list[Path] = []
    for item in scenes:
        text = os.fspath(item)
        if _GLOB_CHARS & set(text):
            matches = sorted(Path(p) for p in glob.glob(text) if Path(p).is_dir())
            if not matches:
                raise FileNotFoundError(f"scenes: the pattern {text!r} matches no folder")
            found.extend(matches)
            continue
        path = Path(text)
        if not path.is_dir():
            raise FileNotFoundError(f"scenes: {path} is not a folder")
        if any(path.glob("transforms*.json")):
            found.append(path)
        else:
            found.extend(
                sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
            )
    return found


def scene_id_for(folder: Path) -> str:
    """The folder's name as a valid store id (bad characters become ``_``)."""
    name = _SCENE_ID_BAD_CHARS.sub("_", folder.resolve().name).lstrip("_.-")[:128]
    if not name:
        raise ValueError(f"{folder}: cannot derive a scene id from the folder name")
    return name


def plan_jobs(folders: Sequence[Path]) -> tuple[list[SceneJob], list[dict[str, Any]]]:
    """Jobs for the folders, and ``failed`` reports for ids that are unusable or repeated."""
    jobs: dict[str, SceneJob] = {}
    failures: list[dict[str, Any]] = []
    for folder in folders:
        try:
            scene_id = scene_id_for(folder)
        except ValueError as exc:
            failures.append(scene_report(folder.name, "failed", reason=str(exc)))
            continue
        if scene_id in jobs:
            taken = jobs[scene_id].scene_dir
            reason = f"{folder}: scene id {scene_id!r} already used by {taken}"
            failures.append(scene_report(scene_id, "failed", reason=reason))
            continue
        jobs[scene_id] = SceneJob(scene_id=scene_id, scene_dir=str(folder.resolve()))
    return list(jobs.values()), failures


def default_runs_dir(store: str) -> str:
    """``<store's folder>/nerf_runs`` for a local store, else ``./nerf_runs``."""
    if "://" in store and not store.startswith("file://"):
        return str(Path("nerf_runs").resolve())
    local = Path(store.removeprefix("file://"))
    return str(local.resolve().parent / "nerf_runs")


# ----------------------------------------------------------------- hashing
def _digest(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def nerf_hash(fingerprint: str, settings: BuildSettings) -> str:
    """16 hex digits over the scene's content and the NeRF settings: names the NeRF run."""
    from nerf_training.trainer import TrainerConfig

    nerf = asdict(config_from_dict(TrainerConfig, settings.nerf))
    return _digest({"schema": FLOW_SCHEMA, "scene": fingerprint, "nerf": nerf})


def grid_hash(nerf_key: str, settings: BuildSettings, labels: str | None = None) -> str:
    """16 hex digits over the NeRF's hash, the extraction settings and the fingerprint of the
    scene's ground-truth labels, if any (``config_hash``)."""
    from pipeline.extract import ExtractConfig

    extract = asdict(
        config_from_dict(ExtractConfig, {**settings.extract, "resolution": settings.resolution})
    )
    extract.pop("device", None)  # where it runs, not what it computes
    return _digest({"schema": FLOW_SCHEMA, "nerf": nerf_key, "extract": extract, "labels": labels})


def scene_report(
    scene_id: str,
    status: str,
    *,
    psnr: float | None = None,
    seconds: float | None = None,
    grid_shape: Sequence[int] | None = None,
    grid_mb: float | None = None,
    reason: str = "",
    config_hash: str | None = None,
) -> dict[str, Any]:
    """One row of the flow's result (and of its table artifact)."""
    return {
        "scene_id": scene_id,
        "status": status,
        "psnr": None if psnr is None else round(float(psnr), 3),
        "seconds": None if seconds is None else round(float(seconds), 2),
        "grid_shape": None if grid_shape is None else [int(s) for s in grid_shape],
        "grid_mb": grid_mb,
        "reason": reason,
        "config_hash": config_hash,
    }


# ----------------------------------------------------------------- the chain
@task(name="process_scene", task_run_name="scene-{job.scene_id}", cache_policy=NO_CACHE)
@with_library_logs
def process_scene(job: SceneJob, settings: BuildSettings) -> dict[str, Any]:
    """Fingerprint -> store check -> train -> quality gate -> extract (with the scene's
    ground-truth labels, when it has them) -> write, for one scene."""
    from grid_store import GridStore
    from pipeline.labels import ground_truth_path, labels_fingerprint

    t0 = time.perf_counter()
    fingerprint = fingerprint_scene(job.scene_dir, settings.hash_mode)
    nerf_key = nerf_hash(fingerprint, settings)
    truth = ground_truth_path(job.scene_dir)
    labels_key = None if truth is None else labels_fingerprint(truth)
    config_hash = grid_hash(nerf_key, settings, labels_key)
    store = GridStore(settings.store, mode="a")
    if store.has_scene(job.scene_id, config_hash):
        attrs = store.scene_attrs(job.scene_id)
        shape = attrs.get("resolution")
        get_run_logger().info(
            "scene %s: in the store with config %s, skipped", job.scene_id, config_hash
        )
        return scene_report(
            job.scene_id,
            "cached",
            psnr=(attrs.get("nerf") or {}).get("psnr_holdout"),
            seconds=time.perf_counter() - t0,
            grid_shape=shape,
            grid_mb=None if shape is None else _float16_mb(shape),
            config_hash=config_hash,
        )

    backoff = [settings.retry_delay_s * 2**i for i in range(settings.retries)]
    retry = {"retries": settings.retries, "retry_delay_seconds": backoff or 0}
    # Named by the NeRF's hash only: a new grid resolution reuses the trained NeRF.
    run_dir = Path(settings.runs_dir) / f"{job.scene_id}-{nerf_key}"
    metrics = train_nerf_task.with_options(refresh_cache=not run_is_complete(run_dir), **retry)(
        job.scene_dir, str(run_dir), settings.nerf, nerf_key, settings.gpu_limit
    )
    psnr = float(metrics["psnr_holdout"])
    if settings.min_psnr is not None and psnr < settings.min_psnr:
        get_run_logger().warning("scene %s: rejected, held-out PSNR %.2f dB", job.scene_id, psnr)
        return scene_report(
            job.scene_id,
            "rejected",
            psnr=psnr,
            seconds=time.perf_counter() - t0,
            reason=f"held-out PSNR {psnr:.2f} dB < min_psnr {settings.min_psnr:g} dB",
            config_hash=config_hash,
        )

    grid = extract_grid_task.with_options(**retry)(
        str(run_dir),
        str(run_dir / "grid.npz"),
        settings.resolution,
        settings.extract,
        settings.gpu_limit,
        None if truth is None else job.scene_dir,
    )
    extra_attrs = {
        "config_hash": config_hash,
        "scene_fingerprint": fingerprint,
        "source": job.scene_dir,
        "nerf_run": str(run_dir),
        "nerf_metrics": metrics,
    }
    write_grid_task.with_options(**retry)(
        grid["grid_path"], settings.store, job.scene_id, extra_attrs
    )
    return scene_report(
        job.scene_id,
        "written",
        psnr=psnr,
        seconds=time.perf_counter() - t0,
        grid_shape=grid["shape"],
        grid_mb=grid["megabytes"],
        config_hash=config_hash,
    )


def _float16_mb(shape: Sequence[int]) -> float:
    x, y, z = (int(s) for s in shape)
    return round(4 * 2 * x * y * z / 2**20, 3)
