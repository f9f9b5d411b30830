"""Scene discovery and the per-scene chain ``train_nerf -> extract_grid -> write_grid``.

The NeRF backend is ours (``nerf_training``, in this process) or nerfstudio
(``nerf_backend="nerfstudio"``: trained and extracted by processes in nerfstudio's
environment, :mod:`flows.nerfstudio_backend`). A finished nerfstudio run given as input (its
folder or ``config.yml``) skips training: ``extract_grid -> write_grid``.

:func:`process_scene` is one task per scene that calls the step tasks in order
(nested task runs: each keeps its own retries, cache and log in the UI). Keeping the
chain in one task lets the quality gate and the store check read as plain Python, and
lets a Dask cluster place a whole scene, GPU and all, on one worker.

Rerun skipping works on two levels:

- the store: a scene's ``config_hash`` (:func:`grid_hash`) covers its content
  (:func:`flows.tasks.scene_fingerprint`), the NeRF backend and its settings, the
  extraction settings, and its ground-truth labels (``ground_truth/grid.npz``, attached to
  the grid when present); a scene already in the store with the same hash is reported
  ``cached``, nothing runs;
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
    float16_megabytes,
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
    """The scene folder (``transforms.json`` + images), or a finished nerfstudio run's folder."""
    nerfstudio_config: str | None = None
    """A finished nerfstudio run's ``config.yml``: extracted, not trained."""


@dataclass(frozen=True)
class BuildSettings:
    """Everything that decides how every scene is processed (one per ``build_dataset`` run)."""

    store: str
    """Grid store URL (local path, ``s3://...``, ``memory://...``)."""
    runs_dir: str
    """Where NeRF run folders go: ``<runs_dir>/<scene_id>-<config hash>/``."""
    nerf: dict[str, Any] = field(default_factory=dict)
    """The backend's settings: ``nerf_training.trainer.TrainerConfig`` field overrides
    (``max_steps``, ``time_budget_s``...), or ``flows.nerfstudio_backend.NerfstudioConfig``
    fields (``method``, ``max_num_iterations``, ``time_budget_s``...)."""
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
    nerf_backend: str = "ours"
    """Who trains the NeRFs: ``ours`` (this process) or ``nerfstudio`` (ns-train in its
    environment)."""

    def __post_init__(self) -> None:
        if self.nerf_backend not in NERF_BACKENDS:
            raise ValueError(
                f"nerf_backend: expected one of {list(NERF_BACKENDS)}, got {self.nerf_backend!r}"
            )


NERF_BACKENDS = ("ours", "nerfstudio")


# ----------------------------------------------------------------- discovery
def discover_scenes(scenes: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Scene folders from a directory of scenes, a single scene, a glob, or a list of these;
    finished nerfstudio runs (their ``config.yml``, recognised by content) likewise: a run's
    ``config.yml`` or folder, or a folder holding runs (``outputs/``: runs up to
    ``experiment/method/timestamp`` below each subfolder).

    Every non-hidden subfolder of a directory counts (a broken one is reported as failed
    later, not silently dropped). A path that matches nothing is an error.
    """
    from pipeline.nerfstudio.run import is_nerfstudio_config

    if isinstance(scenes, (str, os.PathLike)):
        scenes = [scenes]
    found: list[Path] = []
    for item in scenes:
        text = os.fspath(item)
        if _GLOB_CHARS & set(text):
            matches = sorted(_scene_or_run(Path(p)) for p in glob.glob(text)
                             if Path(p).is_dir() or is_nerfstudio_config(p))  # fmt: skip
            if not matches:
                raise FileNotFoundError(f"scenes: the pattern {text!r} matches no folder")
            found.extend(matches)
            continue
        path = Path(text)
        if path.is_file() and is_nerfstudio_config(path):
            found.append(path)
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"scenes: {path} is not a folder (nor a nerfstudio config.yml)")
        if any(path.glob("transforms*.json")) or _run_config(path):
            found.append(_scene_or_run(path))
            continue
        for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if any(child.glob("transforms*.json")) or _run_config(child):
                found.append(_scene_or_run(child))
            else:
                found.extend(_runs_below(child) or [child])
    return found


def _run_config(folder: Path) -> Path | None:
    """``folder/config.yml`` when it is a nerfstudio run's."""
    from pipeline.nerfstudio.run import CONFIG_NAME, is_nerfstudio_config

    config = folder / CONFIG_NAME
    return config if is_nerfstudio_config(config) else None


def _scene_or_run(path: Path) -> Path:
    """A run folder as its ``config.yml``; anything else as it is."""
    return (_run_config(path) or path) if path.is_dir() else path


def _runs_below(folder: Path, depth: int = 2) -> list[Path]:
    """nerfstudio runs' ``config.yml`` files up to ``depth`` folders below ``folder``
    (``experiment/method/timestamp``: an ``outputs/`` folder's subfolders hold runs two
    levels down)."""
    from pipeline.nerfstudio.run import CONFIG_NAME, is_nerfstudio_config

    found = []
    for level in range(1, depth + 1):
        pattern = "/".join(["[!.]*"] * level + [CONFIG_NAME])
        found += [p for p in folder.glob(pattern) if is_nerfstudio_config(p)]
    return sorted(found)


def scene_id_for(folder: Path) -> str:
    """The folder's name as a valid store id (bad characters become ``_``)."""
    name = _SCENE_ID_BAD_CHARS.sub("_", folder.resolve().name).lstrip("_.-")[:128]
    if not name:
        raise ValueError(f"{folder}: cannot derive a scene id from the folder name")
    return name


def plan_jobs(folders: Sequence[Path]) -> tuple[list[SceneJob], list[dict[str, Any]]]:
    """Jobs for the folders, and ``failed`` reports for ids that are unusable or repeated."""
    from flows.nerfstudio_backend import run_capture_name

    jobs: dict[str, SceneJob] = {}
    failures: list[dict[str, Any]] = []
    for folder in folders:
        run_config = folder if folder.is_file() else None
        try:
            # a run is named after its capture: the id its scene folder would get
            scene_id = scene_id_for(folder if run_config is None
                                    else Path(run_capture_name(run_config)))  # fmt: skip
        except ValueError as exc:
            failures.append(scene_report(folder.name, "failed", reason=str(exc)))
            continue
        if scene_id in jobs:
            taken = jobs[scene_id].nerfstudio_config or jobs[scene_id].scene_dir
            reason = f"{folder}: scene id {scene_id!r} already used by {taken}"
            failures.append(scene_report(scene_id, "failed", reason=reason))
            continue
        if run_config is None:
            jobs[scene_id] = SceneJob(scene_id=scene_id, scene_dir=str(folder.resolve()))
        else:
            jobs[scene_id] = SceneJob(scene_id=scene_id, scene_dir=str(folder.resolve().parent),
                                      nerfstudio_config=str(folder.resolve()))  # fmt: skip
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
    """16 hex digits over the scene's content, the NeRF backend and its settings: names the
    NeRF run."""
    if settings.nerf_backend == "nerfstudio":
        from flows.nerfstudio_backend import nerfstudio_config

        nerf = nerfstudio_config(settings.nerf).hashed()
        return _digest({"schema": FLOW_SCHEMA, "scene": fingerprint, "nerf_backend": "nerfstudio",
                        "nerf": nerf})  # fmt: skip
    from nerf_training.trainer import TrainerConfig

    # ours keeps the payload it had before backends existed: its store entries stay valid
    nerf = asdict(config_from_dict(TrainerConfig, settings.nerf))
    return _digest({"schema": FLOW_SCHEMA, "scene": fingerprint, "nerf": nerf})


def finished_run_hash(fingerprint: str) -> str:
    """16 hex digits naming a finished nerfstudio run (its files' fingerprint), in the place
    of :func:`nerf_hash` for runs that are extracted, not trained."""
    return _digest({"schema": FLOW_SCHEMA, "nerfstudio_run": fingerprint})


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
    ground-truth labels, when it has them) -> write, for one scene; a finished nerfstudio
    run skips training."""
    from grid_store import GridStore
    from pipeline.labels import ground_truth_path, labels_fingerprint

    t0 = time.perf_counter()
    if job.nerfstudio_config is not None:
        from flows.nerfstudio_backend import run_fingerprint
        from pipeline.nerfstudio.run import find_run

        fingerprint = run_fingerprint(job.nerfstudio_config, settings.hash_mode)
        nerf_key = finished_run_hash(fingerprint)
        capture = str(find_run(job.nerfstudio_config).transforms_json.parent)
    else:
        fingerprint = fingerprint_scene(job.scene_dir, settings.hash_mode)
        nerf_key = nerf_hash(fingerprint, settings)
        capture = job.scene_dir
    truth = ground_truth_path(capture)
    labels_key = None if truth is None else labels_fingerprint(truth)
    config_hash = grid_hash(nerf_key, settings, labels_key)
    store = GridStore(settings.store, mode="a")
    if store.has_scene(job.scene_id, config_hash):
        attrs = store.scene_attrs(job.scene_id)
        shape = attrs.get("resolution")
        get_run_logger().info(
            "scene %s: in the store with config %s, skipped", job.scene_id, config_hash
        )
        psnr = (attrs.get("nerf") or {}).get("psnr_holdout")
        if psnr is None:  # a nerfstudio run's grid: the PSNR came with the flow's metrics
            psnr = (attrs.get("nerf_metrics") or {}).get("psnr_holdout")
        return scene_report(
            job.scene_id,
            "cached",
            psnr=psnr,
            seconds=time.perf_counter() - t0,
            grid_shape=shape,
            grid_mb=None if shape is None else float16_megabytes(shape),
            config_hash=config_hash,
        )

    backoff = [settings.retry_delay_s * 2**i for i in range(settings.retries)]
    retry = {"retries": settings.retries, "retry_delay_seconds": backoff or 0}
    # Named by the NeRF's hash only: a new grid resolution reuses the trained NeRF.
    run_dir = Path(settings.runs_dir) / f"{job.scene_id}-{nerf_key}"
    if job.nerfstudio_config is not None:
        from flows.nerfstudio_backend import finished_run_metrics

        metrics = finished_run_metrics(job.nerfstudio_config)
    else:
        metrics = _train(job, settings, run_dir, nerf_key, retry)
    psnr = metrics.get("psnr_holdout")
    if settings.min_psnr is not None and (psnr is None or psnr < settings.min_psnr):
        reason = (
            f"held-out PSNR {psnr:.2f} dB < min_psnr {settings.min_psnr:g} dB"
            if psnr is not None
            else f"no held-out PSNR to check min_psnr against "
            f"({metrics.get('psnr_holdout_reason', 'not measured')})"
        )
        get_run_logger().warning("scene %s: rejected, %s", job.scene_id, reason)
        return scene_report(
            job.scene_id,
            "rejected",
            psnr=psnr,
            seconds=time.perf_counter() - t0,
            reason=reason,
            config_hash=config_hash,
        )

    grid = _extract(job, settings, run_dir, metrics, None if truth is None else capture, retry)
    extra_attrs = {
        "config_hash": config_hash,
        "scene_fingerprint": fingerprint,
        "source": capture,
        "nerf_run": job.scene_dir if job.nerfstudio_config is not None else str(run_dir),
        "nerf_metrics": metrics,
    }
    if job.nerfstudio_config is not None or settings.nerf_backend == "nerfstudio":
        extra_attrs["nerf_backend"] = "nerfstudio"
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


def _train(
    job: SceneJob, settings: BuildSettings, run_dir: Path, nerf_key: str, retry: dict[str, Any]
) -> dict[str, Any]:
    """The scene's NeRF trained into ``run_dir`` by the chosen backend (Prefect's cache
    reuses a finished one); its metrics."""
    if settings.nerf_backend == "nerfstudio":
        from flows.nerfstudio_backend import nerfstudio_config, train_nerfstudio_task
        from flows.nerfstudio_backend import run_is_complete as nerfstudio_run_is_complete

        method = nerfstudio_config(settings.nerf).method
        complete = nerfstudio_run_is_complete(run_dir, method)
        train = train_nerfstudio_task
    else:
        complete = run_is_complete(run_dir)
        train = train_nerf_task
    return train.with_options(refresh_cache=not complete, **retry)(
        job.scene_dir, str(run_dir), settings.nerf, nerf_key, settings.gpu_limit
    )


def _extract(
    job: SceneJob,
    settings: BuildSettings,
    run_dir: Path,
    metrics: dict[str, Any],
    labels_from: str | None,
    retry: dict[str, Any],
) -> dict[str, Any]:
    """The grid of the scene's NeRF (ours: in this process; a nerfstudio run: in its
    environment, labels attached there from the capture's ground truth) at
    ``run_dir/grid.npz``."""
    grid_path = str(run_dir / "grid.npz")
    if job.nerfstudio_config is None and settings.nerf_backend == "ours":
        return extract_grid_task.with_options(**retry)(
            str(run_dir), grid_path, settings.resolution, settings.extract,
            settings.gpu_limit, labels_from,
        )  # fmt: skip
    from flows.nerfstudio_backend import extract_nerfstudio_task, trained_config

    trained = settings.nerf_backend == "nerfstudio"
    environment = settings.nerf.get("environment") if trained else None
    config_yml = job.nerfstudio_config or str(trained_config(run_dir, metrics["method"]))
    return extract_nerfstudio_task.with_options(**retry)(
        config_yml, grid_path, settings.resolution, settings.extract, environment,
        settings.gpu_limit,
    )  # fmt: skip
