"""Flow ``nerfmae-pipeline``: the whole job, scene folders (or synthetic scenes) to a
pretrained MAE and a fine-tuned downstream task: ``generate_scene`` (optional) ->
``build-dataset`` -> ``pretrain-mae`` -> ``finetune-nerfmae`` (optional).

The file is not called ``pipeline.py`` on purpose: Prefect (and ``python flows/x.py``)
put ``flows/`` first on ``sys.path`` when loading a flow file, and a ``flows/pipeline.py``
would then shadow the ``pipeline`` package for every later import in that process.

``make demo`` (:mod:`nerfmae.demo`) runs this flow on a few small synthetic scenes::

    python flows/end_to_end.py --synthetic-scenes 3 --store data/grids.zarr --work-dir data/demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Completed

from flows.build_dataset import build_dataset, summarize
from flows.local_server import patient_server_start
from flows.pretrain import pretrain_mae
from flows.run_logs import with_library_logs
from flows.tasks import generate_scene_task
from flows.training_runs import new_run_dir


@flow(name="nerfmae-pipeline")
@with_library_logs
def nerfmae_pipeline(
    store: str = "data/grids.zarr",
    work_dir: str = "data/pipeline",
    scenes: str | list[str] | None = None,
    synthetic_scenes: int = 0,
    synthetic_views: int = 50,
    synthetic_image_size: int = 64,
    nerf: dict[str, Any] | None = None,
    resolution: int = 160,
    extract: dict[str, Any] | None = None,
    min_psnr: float | None = None,
    pretraining: dict[str, Any] | None = None,
    mae_run: str | None = None,
    finetuning: dict[str, Any] | list[dict[str, Any]] | None = None,
    max_parallel: int = 2,
    dask_address: str | None = None,
    local_dask_workers: int | None = None,
) -> dict[str, Any]:
    """Scenes -> NeRFs -> grids in ``store`` -> MAE pretraining; returns what each stage reported.

    Args:
        store: grid store URL.
        work_dir: synthetic scenes (``scenes/``), NeRF runs (``nerf_runs/``) and MAE runs
            (``mae/<run>/``) go here.
        scenes: scene folders (as ``build_dataset`` takes them); None: the synthetic ones.
        synthetic_scenes: generate this many synthetic scenes first (seeds 0..N-1).
        synthetic_views, synthetic_image_size: their camera count and image edge.
        nerf, resolution, extract, min_psnr: as for ``build-dataset``.
        pretraining: ``pretrain-mae`` parameters (``preset``, ``epochs``, ``batch_size``,
            ``resolution``, ``nproc_per_node``, ``options``); None skips pretraining.
        mae_run: name of the MAE run folder under ``mae/`` (default: the date and time,
            so a rerun never collides with an earlier run's checkpoints).
        finetuning: ``finetune-nerfmae`` parameters (``task``, ``preset``, ``epochs``...),
            or a list of them (one run each, in order, e.g. semantics then detection), run
            from the pretraining's checkpoint into ``finetune/<the MAE run's name>/<task>``;
            None skips it (as does a run without pretraining).
        max_parallel, dask_address, local_dask_workers: the scene fan-out's task runner.
    """
    logger = get_run_logger()
    work = Path(work_dir)
    if synthetic_scenes:
        futures = [
            generate_scene_task.submit(
                str(work / "scenes" / f"synth_{seed:04d}"),
                seed,
                synthetic_views,
                synthetic_image_size,
                resolution,
            )
            for seed in range(synthetic_scenes)
        ]
        generated = [f.result() for f in futures]
        logger.info("%d synthetic scenes in %s", len(generated), work / "scenes")
        scenes = scenes or generated
    if not scenes:
        raise ValueError("nerfmae-pipeline: give scenes or synthetic_scenes > 0")

    # Raises NoSceneStored (this run then fails with its message) when no scene reached
    # the store: there is nothing to pretrain on.
    reports = build_dataset(
        scenes=scenes,
        store=store,
        runs_dir=str(work / "nerf_runs"),
        nerf=nerf,
        resolution=resolution,
        extract=extract,
        min_psnr=min_psnr,
        max_parallel=max_parallel,
        dask_address=dask_address,
        local_dask_workers=local_dask_workers,
    )
    summary: dict[str, Any] = {
        "store": store,
        "work_dir": str(work),
        "scenes": reports,
        "pretrain": None,
        "finetune": [],
    }
    outcome = f"scenes: {summarize(reports)}"
    if pretraining is not None:
        run_dir = work / "mae" / mae_run if mae_run else new_run_dir(work / "mae")
        summary["pretrain"] = pretrain_mae(store=store, out_dir=str(run_dir), **pretraining)
        outcome += f"; pretrained {summary['pretrain']['steps']} steps into {run_dir}"
        runs = [finetuning] if isinstance(finetuning, dict) else list(finetuning or [])
        for parameters in runs:
            from flows.finetune import finetune_nerfmae

            task = parameters.get("task", "semantics")
            tuned = finetune_nerfmae(
                store=store,
                pretrained=summary["pretrain"]["checkpoint"],
                out_dir=str(work / "finetune" / Path(run_dir).name / task),
                **parameters,
            )
            summary["finetune"].append(tuned)
            outcome += f"; fine-tuned {tuned['task']} for {tuned['steps']} steps"
    return Completed(message=outcome, data=summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="data/grids.zarr")
    parser.add_argument("--work-dir", default="data/pipeline")
    parser.add_argument("--scenes", nargs="+")
    parser.add_argument("--synthetic-scenes", type=int, default=0)
    parser.add_argument("--nerf", type=json.loads, default={}, help="JSON TrainerConfig overrides")
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--min-psnr", type=float)
    parser.add_argument("--pretraining", type=json.loads, help="JSON pretrain-mae parameters")
    parser.add_argument("--finetuning", type=json.loads, help="JSON finetune-nerfmae parameters")
    args = parser.parse_args(argv)
    with patient_server_start():
        summary = nerfmae_pipeline(
            store=args.store,
            work_dir=args.work_dir,
            scenes=args.scenes,
            synthetic_scenes=args.synthetic_scenes,
            nerf=args.nerf,
            resolution=args.resolution,
            min_psnr=args.min_psnr,
            pretraining=args.pretraining,
            finetuning=args.finetuning,
        )
    print(json.dumps(summary, indent=2, default=str))
    return 1 if any(r["status"] == "failed" for r in summary["scenes"]) else 0


if __name__ == "__main__":
    sys.exit(main())
