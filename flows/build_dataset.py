"""Flow ``build-dataset``: scene folders in, radiance grids in a Zarr store out.

Per scene: ``train_nerf -> extract_grid -> write_grid`` (see :mod:`flows.scenes`), all
scenes fanned out on the chosen task runner. The NeRFs are ours, or nerfstudio's
(``nerf_backend="nerfstudio"``: ns-train and extraction in nerfstudio's environment, see
:mod:`flows.nerfstudio_backend`); finished nerfstudio runs among the inputs are extracted
without training. A scene that fails is reported with its
reason and never stops the others; the run ends with a table artifact (status, PSNR,
time, grid size per scene) and returns the same rows. Its state says how it went: Completed
with a message such as ``"2 written, 1 failed; reasons in build-dataset-report"``, or Failed
when no scene of its input is in the store at the end (called from Python, it then raises
:class:`NoSceneStored`, which carries the rows).

From the shell (Prefect 3 has no ``prefect run``; run the file, or a deployment)::

    python flows/build_dataset.py --scenes data/scenes --store data/grids.zarr --steps 2000
    python flows/build_dataset.py --scenes data/scenes --store data/grids.zarr \
        --nerf-backend nerfstudio --time-budget 600 --nerf-option method=instant-ngp
    python flows/build_dataset.py --scenes outputs --store data/grids.zarr   # finished runs
    prefect deployment run 'build-dataset/build-dataset' --param scenes=data/scenes

From Python::

    from flows.build_dataset import build_dataset
    rows = build_dataset(scenes="data/scenes", store="data/grids.zarr", nerf={"max_steps": 2000})
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed, State

from flows.local_server import patient_server_start
from flows.run_logs import with_library_logs
from flows.runners import choose_task_runner, gpu_resources
from flows.scenes import (
    BuildSettings,
    SceneJob,
    default_runs_dir,
    discover_scenes,
    plan_jobs,
    process_scene,
    scene_report,
)
from flows.tasks import GPU_LIMIT, default_gpu_slots, ensure_gpu_limit

REPORT_ARTIFACT_KEY = "build-dataset-report"


@flow(name="build-dataset-scenes")
def process_scenes(
    jobs: list[SceneJob], settings: BuildSettings, gpus_per_task: float | None = None
) -> list[dict[str, Any]]:
    """Run every scene's chain on this flow's task runner; one report per job, never raises."""
    with gpu_resources(gpus_per_task):
        futures = [process_scene.submit(job, settings) for job in jobs]
    reports = []
    for job, future in zip(jobs, futures, strict=True):
        outcome = future.result(raise_on_failure=False)
        if isinstance(outcome, BaseException):
            get_run_logger().error("scene %s failed: %s", job.scene_id, outcome)
            reports.append(scene_report(job.scene_id, "failed", reason=_reason(outcome)))
        else:
            reports.append(outcome)
    return reports


@flow(name="build-dataset")
@with_library_logs
def build_dataset(
    scenes: str | list[str],
    store: str,
    runs_dir: str | None = None,
    nerf: dict[str, Any] | None = None,
    resolution: int = 160,
    extract: dict[str, Any] | None = None,
    min_psnr: float | None = None,
    retries: int = 2,
    retry_delay_s: float = 10.0,
    gpu_slots: int | None = None,
    max_parallel: int = 2,
    hash_mode: str = "content",
    dask_address: str | None = None,
    local_dask_workers: int | None = None,
    dask_processes: bool = True,
    dask_gpus_per_task: float | None = None,
    nerf_backend: str = "ours",
) -> list[dict[str, Any]]:
    """Build a grid store from scene folders; returns one report row per scene.

    Args:
        scenes: a folder of scene folders, one scene folder, a glob, or a list of these;
            finished nerfstudio runs likewise (a run's ``config.yml`` or folder, or a folder
            of runs such as ``outputs/``): extracted, not trained.
        store: grid store URL (created if absent).
        runs_dir: where NeRF runs go (default: ``nerf_runs`` beside a local store).
        nerf: ``TrainerConfig`` overrides, e.g. ``{"max_steps": 2000, "time_budget_s": 120}``;
            with the nerfstudio backend, ``flows.nerfstudio_backend.NerfstudioConfig``
            fields (method, max_num_iterations, time_budget_s, scale_factor...).
        resolution: grid samples along the longest side of each scene box.
        extract: ``ExtractConfig`` overrides (``directions``, ``box``...).
        min_psnr: quality gate on the held-out PSNR (dB); None disables it.
        retries, retry_delay_s: per-step retries on transient errors, exponential back-off.
        gpu_slots: size of the ``nerfmae-gpu`` concurrency limit (default: CUDA devices, >= 1).
        max_parallel: scenes in flight at once with the default (thread pool) runner.
        hash_mode: scene fingerprint, ``content`` or ``stat``.
        dask_address: run the scenes on this Dask scheduler instead.
        local_dask_workers: or on a temporary local Dask cluster of this many workers.
        dask_processes: local cluster workers are processes (False: threads).
        dask_gpus_per_task: Dask ``GPU`` resource each scene needs (clusters declaring GPUs).
        nerf_backend: ``ours`` (nerf_training, in the task) or ``nerfstudio`` (ns-train in
            nerfstudio's environment, ``make nerfstudio``); part of each scene's config hash.
    """
    logger = get_run_logger()
    settings = BuildSettings(
        store=store,
        runs_dir=runs_dir or default_runs_dir(store),
        nerf=dict(nerf or {}),
        resolution=resolution,
        extract=dict(extract or {}),
        min_psnr=min_psnr,
        retries=retries,
        retry_delay_s=retry_delay_s,
        gpu_limit=GPU_LIMIT,
        hash_mode=hash_mode,
        nerf_backend=nerf_backend,
    )
    jobs, reports = plan_jobs(discover_scenes(scenes))
    logger.info(
        "%d scene folders, store %s, %s NeRFs in %s",
        len(jobs) + len(reports),
        store,
        nerf_backend,
        settings.runs_dir,
    )

    from grid_store import GridStore

    GridStore(store, mode="a")  # create the store once, before writers race to
    ensure_gpu_limit(gpu_slots or default_gpu_slots(), GPU_LIMIT)
    runner = choose_task_runner(
        max_parallel=max_parallel,
        dask_address=dask_address,
        local_dask_workers=local_dask_workers,
        dask_processes=dask_processes,
        gpus_per_worker=1 if dask_gpus_per_task and local_dask_workers else None,
    )
    if jobs:
        reports += process_scenes.with_options(task_runner=runner)(
            jobs, settings, dask_gpus_per_task
        )
    reports.sort(key=lambda r: r["scene_id"])

    outcome = summarize(reports)
    create_table_artifact(
        key=REPORT_ARTIFACT_KEY,
        table=[_artifact_row(r) for r in reports],
        description=f"build-dataset into `{store}`: {outcome}",
    )
    if not any(r["status"] in STORED for r in reports):
        message = f"no scene reached the store ({outcome}); reasons in {REPORT_ARTIFACT_KEY}"
        logger.error("build-dataset: %s", message)
        return Failed(message=message, data=NoSceneStored(message, reports))
    if any(r["status"] not in STORED for r in reports):
        outcome += f"; reasons in {REPORT_ARTIFACT_KEY}"
        logger.warning("build-dataset: %s", outcome)
    else:
        logger.info("build-dataset: %s", outcome)
    return Completed(message=outcome, data=reports)


class NoSceneStored(RuntimeError):
    """A ``build-dataset`` run after which no scene of its input is in the store.

    The flow run ends Failed with this as its result; ``reports`` holds the per-scene
    rows (what the report artifact shows).
    """

    def __init__(self, message: str, reports: list[dict[str, Any]]) -> None:
        super().__init__(message, reports)
        self.reports = reports

    def __str__(self) -> str:
        return str(self.args[0])


def reports_of(state: State) -> list[dict[str, Any]]:
    """The report rows of a finished ``build-dataset`` run, Completed or Failed."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, NoSceneStored):
        return result.reports
    if isinstance(result, BaseException):
        raise result
    return result


STORED = frozenset({"written", "cached"})
"""Report statuses of scenes that are in the store when the run ends."""


def summarize(reports: list[dict[str, Any]]) -> str:
    """``"2 written, 1 cached, 1 failed"``."""
    counts: dict[str, int] = {}
    for r in reports:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no scenes"


def _artifact_row(report: dict[str, Any]) -> dict[str, Any]:
    shape = report["grid_shape"]
    return {
        "scene": report["scene_id"],
        "status": report["status"],
        "psnr_db": report["psnr"],
        "seconds": report["seconds"],
        "grid": "x".join(map(str, shape)) if shape else "",
        "grid_mb": report["grid_mb"],
        "reason": report["reason"],
    }


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenes", nargs="+", required=True, help="scene folders, a folder of them, or globs"
    )
    parser.add_argument("--store", required=True, help="grid store URL")
    parser.add_argument("--runs-dir")
    parser.add_argument(
        "--nerf-backend",
        choices=("ours", "nerfstudio"),
        default="ours",
        help="who trains the NeRFs: ours, or nerfstudio's ns-train in .venv-nerfstudio",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="NeRF optimiser steps per scene (TrainerConfig.max_steps; nerfstudio: "
        "max_num_iterations)",
    )
    parser.add_argument("--time-budget", type=float, help="NeRF seconds per scene")
    parser.add_argument(
        "--backend",
        choices=("auto", "tcnn", "torch"),
        help="hash grid implementation (nerfstudio: implementation, tcnn or torch)",
    )
    parser.add_argument(
        "--nerf-option",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="any other TrainerConfig field, e.g. --nerf-option target_samples=16384 "
        "(nerfstudio: a NerfstudioConfig field, e.g. method=instant-ngp)",
    )
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--min-psnr", type=float)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--retry-delay", type=float, default=10.0)
    parser.add_argument("--gpu-slots", type=int)
    parser.add_argument("--max-parallel", type=int, default=2)
    parser.add_argument("--dask-address")
    parser.add_argument("--dask-workers", type=int, help="temporary local Dask cluster")
    parser.add_argument("--dask-gpus-per-task", type=float)
    args = parser.parse_args(argv)

    nerf = parse_options(args.nerf_option)
    nerfstudio = args.nerf_backend == "nerfstudio"
    if nerfstudio and args.backend == "auto":
        raise SystemExit("--backend auto: with --nerf-backend nerfstudio, leave it out instead")
    for key, value in (
        ("max_num_iterations" if nerfstudio else "max_steps", args.steps),
        ("time_budget_s", args.time_budget),
        ("implementation" if nerfstudio else "backend", args.backend),
    ):
        if value is not None:
            nerf[key] = value
    with patient_server_start():
        state = build_dataset(
            scenes=args.scenes if len(args.scenes) > 1 else args.scenes[0],
            store=args.store,
            runs_dir=args.runs_dir,
            nerf=nerf,
            resolution=args.resolution,
            min_psnr=args.min_psnr,
            retries=args.retries,
            retry_delay_s=args.retry_delay,
            gpu_slots=args.gpu_slots,
            max_parallel=args.max_parallel,
            dask_address=args.dask_address,
            local_dask_workers=args.dask_workers,
            dask_gpus_per_task=args.dask_gpus_per_task,
            nerf_backend=args.nerf_backend,
            return_state=True,
        )
    reports = reports_of(state)
    for r in reports:
        print(json.dumps(r))
    if state.is_failed():
        print(f"build-dataset: {state.message}", file=sys.stderr)
    return 1 if state.is_failed() or any(r["status"] == "failed" for r in reports) else 0


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["max_steps=100", "backend=torch"]`` -> ``{"max_steps": 100, "backend": "torch"}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


if __name__ == "__main__":
    sys.exit(main())
