"""The Prefect tasks the flows share: thin wrappers that take and return paths, store URLs
and small JSON-ready dicts, never arrays.

Heavy imports (torch, the NeRF trainer, the model) happen inside the task bodies so that
importing a flow file (``prefect deploy``, a worker loading an entrypoint) stays cheap.

Retry policy: every task here retries with exponential back-off on *transient* errors
only (:func:`retry_if_transient`): a ``ValueError`` (bad scene, bad config, grid failing
validation) or a ``FileNotFoundError`` gives the same answer every time, so it fails at
once with its message.

GPU work (NeRF training, grid extraction) runs inside :func:`gpu_slot`, a Prefect global
concurrency limit named :data:`GPU_LIMIT` that the flows create (or resize) at start, so
several flow runs sharing one machine never put more than ``gpu_slots`` jobs on it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import time
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from flows.run_logs import with_library_logs

GPU_LIMIT = "nerfmae-gpu"
"""Name of the Prefect global concurrency limit that GPU tasks occupy one slot of."""
GPU_SLOT_LEASE_S = 60.0
"""Lease on a held GPU slot (the server's minimum), renewed by Prefect every 0.75 lease while
the holder lives. A holder that dies (SIGKILL, out of memory, a lost worker) frees its slot
once the lease runs out and the server's repossessor (every 15 s) sees it: with Prefect's
default 300 s lease a rerun after a crash sat up to 5 minutes waiting for the dead run's
slot."""

# Files a NeRF is trained from besides transforms*.json: images, and depth maps (16-bit PNG
# or float32 .npy, nerfstudio's depth_file_path).
CAPTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".exr", ".webp", ".tif", ".tiff", ".npy"})
# Errors that repeat identically on every attempt: retrying them only delays the report.
PERMANENT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, TypeError)


def retry_if_transient(task_: Any, task_run: TaskRun, state: State) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the failure is a permanent one."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, PERMANENT_ERRORS)


@contextmanager
def gpu_slot(limit_name: str | None) -> Iterator[None]:
    """Hold one slot of the global concurrency limit ``limit_name`` (None: no limit)."""
    if limit_name is None:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(limit_name, occupy=1, lease_duration=GPU_SLOT_LEASE_S):
        yield


def ensure_gpu_limit(slots: int, name: str = GPU_LIMIT) -> str:
    """Create the global concurrency limit ``name`` with ``slots`` slots, or resize it.

    Doing it here means no one has to run ``prefect gcl create`` before the first flow.

    Without a configured server (no ``PREFECT_API_URL``) Prefect starts a temporary one for
    this process over the profile's database. Slots it still counts as active can only be
    those of an earlier run that died holding them: a temporary server serves its own
    process only and runs no repossessor, so nothing would ever free them and this run
    would wait for them forever. They are reset to 0, with a warning. (Runs that should
    share the GPU limit across processes need a running ``prefect server``.)
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.logging import get_logger
    from prefect.settings import get_current_settings

    if slots < 1:
        raise ValueError(f"gpu_slots must be >= 1, got {slots}")
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, slots)
        if get_current_settings().api.url is None:
            stale = client.read_global_concurrency_limit_by_name(name).active_slots
            if stale:
                get_logger("nerfmae.flows").warning(
                    "concurrency limit %r: %d slot(s) held by a run that died; freed "
                    "(a temporary Prefect server serves this run only)",
                    name,
                    stale,
                )
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(active_slots=0)
                )
    return name


def default_gpu_slots() -> int:
    """One slot per visible CUDA device; 1 on a CPU-only machine."""
    import torch

    return max(1, torch.cuda.device_count())


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build the config dataclass ``cls`` from JSON-ready ``values`` (a deployment's
    parameters): nested dataclass fields may be given as dicts; unknown keys are an error.
    """
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        hints = [f"{name!r}: {' or '.join(map(repr, close))}" for name in unknown
                 if (close := _close_fields(name, known))]  # fmt: skip
        did_you_mean = f" (did you mean {'; '.join(hints)}?)" if hints else ""
        raise ValueError(
            f"{cls.__name__}: unknown field(s) {unknown}{did_you_mean}; known: {sorted(known)}"
        )
    kwargs = {}
    for name, value in values.items():
        nested = _dataclass_in(hints[name])
        kwargs[name] = (
            config_from_dict(nested, value) if nested and isinstance(value, dict) else value
        )
    return cls(**kwargs)


def _close_fields(name: str, known: set[str]) -> list[str]:
    """Known fields a mistyped ``name`` may mean: those containing it (``steps`` ->
    ``max_steps``), else the closest spellings."""
    containing = sorted(k for k in known if name in k)
    return containing[:3] or difflib.get_close_matches(name, sorted(known), n=2, cutoff=0.75)


def _dataclass_in(annotation: Any) -> type | None:
    """The dataclass in ``X`` or ``X | None``, else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


# ----------------------------------------------------------------- fingerprint
def scene_fingerprint(scene_dir: str | os.PathLike, mode: str = "content") -> str:
    """Hash of what a NeRF is trained from: the ``transforms*.json`` files, the images and
    the depth maps.

    ``mode="content"`` hashes file bytes (survives copies and regenerated identical
    scenes); ``mode="stat"`` hashes sizes and modification times (cheap on huge scenes).
    ``ground_truth/`` is left out: it does not change what the NeRF sees.
    """
    scene = Path(scene_dir)
    if mode not in ("content", "stat"):
        raise ValueError(f"hash_mode must be 'content' or 'stat', got {mode!r}")
    if not scene.is_dir():
        raise FileNotFoundError(f"{scene}: scene folder does not exist")
    if not any(scene.glob("transforms*.json")):
        raise FileNotFoundError(
            f"{scene}: not a scene folder: no transforms.json (nor Blender transforms_<split>.json)"
        )
    digest = hashlib.sha256()
    for path in sorted(scene.rglob("*")):
        rel = path.relative_to(scene)
        if not path.is_file() or rel.parts[0] == "ground_truth" or rel.name.startswith("."):
            continue
        is_transforms = (
            rel.parent == Path(".") and rel.name.startswith("transforms") and rel.suffix == ".json"
        )
        if not is_transforms and path.suffix.lower() not in CAPTURE_SUFFIXES:
            continue
        digest.update(rel.as_posix().encode() + b"\0")
        if mode == "content" or is_transforms:
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        else:
            st = path.stat()
            digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        digest.update(b"\0")
    return digest.hexdigest()


@task(name="fingerprint_scene", cache_policy=NO_CACHE)
def fingerprint_scene(scene_dir: str, mode: str = "content") -> str:
    """Content hash of a scene folder (see :func:`scene_fingerprint`)."""
    return scene_fingerprint(scene_dir, mode)


# ----------------------------------------------------------------- NeRF
def run_is_complete(run_dir: str | os.PathLike) -> bool:
    """A NeRF run folder whose training finished (its checkpoint and metrics are there)."""
    run = Path(run_dir)
    return (run / "checkpoint.pt").is_file() and (run / "metrics.json").is_file()


def _train_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    # The key is the scene content + NeRF/extract config hash and the run folder the
    # result (metrics) describes; the flows refresh it when that folder was deleted.
    where = hashlib.sha256(os.fspath(Path(parameters["run_dir"]).resolve()).encode()).hexdigest()
    return f"train-nerf-{parameters['cache_token']}-{where[:16]}"


@task(
    name="train_nerf",
    cache_key_fn=_train_cache_key,
    retries=2,
    retry_delay_seconds=[10, 30],
    retry_condition_fn=retry_if_transient,
)
def train_nerf_task(
    scene_dir: str,
    run_dir: str,
    nerf: dict[str, Any],
    cache_token: str,
    gpu_limit: str | None = GPU_LIMIT,
) -> dict[str, Any]:
    """Train one scene's NeRF into ``run_dir``; returns its metrics (a small dict).

    ``nerf`` holds ``TrainerConfig`` field overrides. ``cache_token`` (the hash of the
    scene's content and the NeRF settings) keys Prefect's result cache, so a rerun after
    a crash later in the chain reuses the trained run instead of training again.
    """
    from nerf_training import train_nerf
    from nerf_training.trainer import TrainerConfig

    config = config_from_dict(TrainerConfig, nerf)
    with gpu_slot(gpu_limit):
        metrics = train_nerf(Path(scene_dir), Path(run_dir), config=config)
    return dict(metrics)


# ----------------------------------------------------------------- grids
def float16_megabytes(shape: Sequence[int]) -> float:
    """The size in MB of a ``(X, Y, Z)`` grid's four channels at float16, as the store
    holds them (before compression)."""
    x, y, z = (int(s) for s in shape)
    return round(4 * 2 * x * y * z / 2**20, 3)


@task(
    name="extract_grid",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10, 30],
    retry_condition_fn=retry_if_transient,
)
def extract_grid_task(
    run_dir: str,
    grid_path: str,
    resolution: int,
    extract: dict[str, Any],
    gpu_limit: str | None = GPU_LIMIT,
    labels_from: str | None = None,
) -> dict[str, Any]:
    """Sample a trained run into a grid saved as contract-1 ``.npz`` at ``grid_path``, with
    the ground-truth labels of the scene folder ``labels_from`` when given
    (``pipeline.labels``).

    Returns ``{"grid_path", "shape", "megabytes"}`` (the float16 size the store holds).
    """
    from pipeline.extract import ExtractConfig, extract_grid
    from pipeline.labels import attach_scene_labels

    config = config_from_dict(ExtractConfig, {**extract, "resolution": resolution})
    with gpu_slot(gpu_limit):
        grid = extract_grid(Path(run_dir), config=config)
    if labels_from is not None:
        grid = attach_scene_labels(grid, labels_from)
    grid.save_npz(grid_path)
    return {"grid_path": str(grid_path), "shape": list(grid.shape),
            "megabytes": float16_megabytes(grid.shape)}  # fmt: skip


@task(
    name="write_grid",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=retry_if_transient,
)
def write_grid_task(
    grid_path: str, store: str, scene_id: str, extra_attrs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write the ``.npz`` grid at ``grid_path`` into the store as ``scene_id`` (atomic).

    ``extra_attrs`` go into the scene's attributes (they override the grid's own
    ``config_hash``: the flows key reruns on theirs).
    """
    from grid_store import GridStore, RadianceGrid

    grid = RadianceGrid.load_npz(grid_path)
    GridStore(store, mode="a").write_grid(scene_id, grid, extra_attrs=extra_attrs)
    return {"scene_id": scene_id, "shape": list(grid.shape)}


# ----------------------------------------------------------------- synthetic scenes
@task(name="generate_scene", cache_policy=NO_CACHE)
@with_library_logs
def generate_scene_task(
    out_dir: str, seed: int, n_views: int = 50, image_size: int = 64, grid_resolution: int = 160
) -> str:
    """Write one synthetic scene folder (skipped when a finished one is already there)."""
    from pipeline.synthetic import generate_scene

    out = Path(out_dir)
    if (out / "transforms.json").is_file() and (out / "ground_truth" / "grid.npz").is_file():
        get_run_logger().info("scene %s already generated, kept", out)
        return str(out)
    t0 = time.perf_counter()
    path = generate_scene(
        out, seed=seed, n_views=n_views, image_size=image_size, grid_resolution=grid_resolution
    )
    get_run_logger().info("generated %s in %.1f s", path, time.perf_counter() - t0)
    return str(path)
