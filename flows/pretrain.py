"""Flow ``pretrain-mae``: NeRF-MAE pretraining on a grid store.

One device: :func:`model.engine.pretrain` runs inside the task. Several devices
(``nproc_per_node > 1``): the task launches
``python -m torch.distributed.run --standalone --nproc_per_node N -m model.engine ...``
(what ``torchrun`` is) as a subprocess, streams its output into the task's log, and
reads the summary the engine leaves in ``RUN/metrics.json``. Either way the run ends
with a markdown artifact of the final metrics and the path of the reconstruction
pictures.

From the shell::

    python flows/pretrain.py --store data/grids.zarr --preset tiny --epochs 5  # a new run folder
    python flows/pretrain.py --store data/grids.zarr --out runs/mae --preset tiny --epochs 5
    python flows/pretrain.py --store s3://bucket/grids.zarr --out runs/mae --nproc-per-node 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.run_logs import with_library_logs

PRETRAIN_ARTIFACT_KEY = "pretrain-report"
# Flags of ``python -m model.engine`` whose names differ from the config field.
_FLAG_NAMES = {"store_url": "--store", "out_dir": "--out"}


def engine_argv(config: dict[str, Any]) -> list[str]:
    """``python -m model.engine`` flags for a ``PretrainConfig`` given as a dict."""
    argv: list[str] = []
    for name, value in config.items():
        if value is None:
            continue
        flag = _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            if value:
                argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def torchrun_command(config: dict[str, Any], nproc_per_node: int) -> list[str]:
    """The ``torchrun`` command line, with this interpreter (same environment)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={int(nproc_per_node)}",
        "-m",
        "model.engine",
        *engine_argv(config),
    ]


@task(name="pretrain_mae", cache_policy=NO_CACHE)
@with_library_logs
def run_pretraining(config: dict[str, Any], nproc_per_node: int = 1) -> dict[str, Any]:
    """Pretrain with ``PretrainConfig(**config)``; returns the engine's summary dict."""
    from model.engine import PretrainConfig, pretrain

    resolved = PretrainConfig(**config)  # bad fields fail here, before any process starts
    if nproc_per_node <= 1:
        return pretrain(resolved)

    logger = get_run_logger()
    command = torchrun_command(dataclasses.asdict(resolved), nproc_per_node)
    logger.info("launching %s", " ".join(command))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=os.getcwd(),
    ) as proc:
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            logger.info(line.rstrip())
            tail = (tail + [line])[-40:]
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with {proc.returncode}; last output:\n{''.join(tail)}")
    metrics_path = Path(resolved.out_dir) / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: torchrun finished without writing the summary")
    return json.loads(metrics_path.read_text())


def metrics_markdown(summary: dict[str, Any], store: str) -> str:
    """The artifact text: final metrics as a table, then where the outputs are."""

    def fmt(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    rows = [
        ("steps", summary.get("steps")),
        ("train loss", summary.get("train_loss")),
        (
            "train loss (rgb / alpha)",
            f"{fmt(summary.get('train_loss_rgb'))} / {fmt(summary.get('train_loss_alpha'))}",
        ),
        ("val loss", summary.get("val_loss")),
        ("val PSNR (dB)", summary.get("val_psnr")),
        ("val alpha MSE", summary.get("val_alpha_mse")),
        ("grids / s", summary.get("grids_per_s")),
        ("seconds", summary.get("seconds")),
        ("preset / parameters", f"{summary.get('preset')} / {summary.get('parameters')}"),
        ("device x world size", f"{summary.get('device')} x {summary.get('world_size')}"),
        ("scenes (train / val)", f"{summary.get('train_scenes')} / {summary.get('val_scenes')}"),
    ]
    lines = [
        "# NeRF-MAE pretraining",
        "",
        f"Store: `{store}`",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {name} | {fmt(value)} |" for name, value in rows]
    recon = summary.get("recon_png")
    lines += ["", "## Outputs", ""]
    if recon:
        recon_path = Path(recon).resolve()
        lines.append(
            f"- reconstruction pictures: [{recon_path.parent}]({recon_path.parent.as_uri()})"
            f" (latest: `{recon_path.name}`)"
        )
    else:
        lines.append("- reconstruction pictures: none (no validation scenes)")
    for label, key in (
        ("run folder", "run_dir"),
        ("checkpoint", "checkpoint"),
        ("TensorBoard", "tensorboard_dir"),
        ("metrics", "metrics_path"),
    ):
        if summary.get(key):
            lines.append(f"- {label}: `{summary[key]}`")
    return "\n".join(lines) + "\n"


def new_run_dir(runs_dir: str | os.PathLike, now: time.struct_time | None = None) -> Path:
    """A new, empty run folder under ``runs_dir`` named by the date and time.

    A deployment started twice with its default parameters must not land in the first
    run's folder (the engine refuses a folder that holds checkpoints, rightly).
    """
    root = Path(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", now or time.localtime())
    candidate, n = root / stamp, 1
    while True:
        try:
            candidate.mkdir()  # atomic: two runs started in the same second get two folders
            return candidate
        except FileExistsError:
            n += 1
            candidate = root / f"{stamp}-{n}"


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
        options: any other ``model.engine.PretrainConfig`` field (``lr``, ``max_steps``...).
    """
    if out_dir is None:
        out_dir = str(new_run_dir(runs_dir))
        get_run_logger().info("run folder %s", out_dir)
    config = {
        "store_url": store,
        "out_dir": out_dir,
        "preset": preset,
        "epochs": epochs,
        "batch_size": batch_size,
        "resolution": resolution,
        **(options or {}),
    }
    summary = run_pretraining(config, nproc_per_node)
    create_markdown_artifact(
        key=PRETRAIN_ARTIFACT_KEY,
        markdown=metrics_markdown(summary, store),
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True)
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--out", help="run folder (default: a new dated folder under --runs-dir)")
    out.add_argument("--runs-dir", default="runs/pretrain-mae", help="parent of dated run folders")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument(
        "--options", type=json.loads, default={}, help="JSON object of PretrainConfig fields"
    )
    args = parser.parse_args(argv)
    summary = pretrain_mae(
        store=args.store,
        out_dir=args.out,
        runs_dir=args.runs_dir,
        preset=args.preset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        resolution=args.resolution,
        nproc_per_node=args.nproc_per_node,
        options=args.options,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
