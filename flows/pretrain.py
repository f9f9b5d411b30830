"""Flow ``pretrain-mae``: NeRF-MAE pretraining on a grid store.

One device: :func:`model.tasks.pretrain.pretrain` runs inside the task. Several devices
(``nproc_per_node > 1``): the task launches ``torchrun ... -m model.pretrain ...`` and reads
the summary from ``RUN/metrics.json`` (:mod:`flows.training_runs`). Either way the run ends
with a markdown artifact of the final metrics, the validation scenes and the latest
reconstruction picture.

From the shell::

    python flows/pretrain.py --store data/grids.zarr --preset tiny --epochs 5  # a new run folder
    python flows/pretrain.py --store data/grids.zarr --out runs/mae --preset tiny --epochs 5
    python flows/pretrain.py --store s3://bucket/grids.zarr --out runs/mae --nproc-per-node 8
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.run_logs import with_library_logs
from flows.training_runs import (
    flow_arg_parser,
    report_markdown,
    run_flow_command,
    run_folder,
    run_training,
)

PRETRAIN_ARTIFACT_KEY = "pretrain-report"


@task(name="pretrain_mae", cache_policy=NO_CACHE)
@with_library_logs
def run_pretraining(config: dict[str, Any], nproc_per_node: int = 1) -> dict[str, Any]:
    """Pretrain with ``PretrainConfig(**config)``; returns the engine's summary dict."""
    from model.tasks.pretrain import PretrainConfig

    resolved = PretrainConfig(**config)  # bad fields fail here, before any process starts
    return run_training(resolved, nproc_per_node, get_run_logger())


@flow(name="pretrain-mae")
@with_library_logs
def pretrain_mae(
    store: str,
    out_dir: str | None = None,
    runs_dir: str = "runs/pretrain-mae",
    preset: str = "tiny",
    epochs: int = 10,
    batch_size: int = 4,
    resolution: int | None = None,
    nproc_per_node: int = 1,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pretrain the MAE on ``store`` into ``out_dir``; returns the engine's summary.

    Args:
        store: grid store URL.
        out_dir: run folder (checkpoints, TensorBoard, ``recon/`` pictures, ``metrics.json``);
            None: a new folder named by the date and time under ``runs_dir``.
        runs_dir: where runs without an ``out_dir`` go.
        preset: model preset (``tiny`` on a CPU, ``swin_s`` is the paper's model).
        epochs, batch_size: the schedule; ``batch_size`` is global over all devices.
        resolution: cube edge the grids are padded/cropped to (None: the preset's).
        nproc_per_node: devices; above 1 the engine runs under ``torchrun``.
        options: any other ``model.tasks.pretrain.PretrainConfig`` field (``lr``,
            ``max_steps``...).
    """
    with run_folder(out_dir, runs_dir, get_run_logger()) as folder:
        config = {"store_url": store, "out_dir": folder, "preset": preset, "epochs": epochs,
                  "batch_size": batch_size, "resolution": resolution,
                  **(options or {})}  # fmt: skip
        summary = run_pretraining(config, nproc_per_node)
    create_markdown_artifact(
        key=PRETRAIN_ARTIFACT_KEY,
        markdown=report_markdown(summary, store, "NeRF-MAE pretraining"),
        description=f"pretraining on {store}",
    )
    get_run_logger().info(
        "pretraining: loss %s, val PSNR %s dB, pictures %s",
        summary.get("train_loss"),
        summary.get("val_psnr"),
        summary.get("recon_png"),
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = flow_arg_parser(__doc__.split("\n\n")[0], "runs/pretrain-mae", "PretrainConfig")
    return run_flow_command(pretrain_mae, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
