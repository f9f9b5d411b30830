"""Flow ``finetune-nerfmae``: a pretrained NeRF-MAE encoder fine-tuned on a downstream task.

The tasks are those of :mod:`model.finetune`: ``semantics`` (voxel labels, from a store
whose scenes carry a ``semantic`` array), ``superres`` (voxel super-resolution, against
a second store of the same scenes sampled finer, ``target_store``) and ``detect``
(oriented 3D boxes, :mod:`model.detection.task`, from a store whose scenes carry a
``boxes`` array; class-agnostic unless ``num_classes`` is in options; ``fpn_channels`` sets
the width of its FPN and head, 256 by default, 64 or fewer for a CPU). The encoder comes
from a pretraining checkpoint (``pretrained``, e.g. a ``pretrain-mae`` run's
``checkpoints/latest.pt``) or starts random (``scratch``, the baseline to compare with);
for ``detect`` only the encoder carries over.

One device: :func:`model.finetune.finetune` runs inside the task. Several devices
(``nproc_per_node > 1``): the task launches
``python -m torch.distributed.run --standalone --nproc_per_node N -m model.finetune ...``
as :mod:`flows.pretrain` does for pretraining and reads the summary from
``RUN/metrics.json``. Either way the run ends with a markdown artifact of the task's
metrics (mIoU; PSNR; AP25/AP50 and recalls) and where the outputs are.

From the shell::

    python flows/finetune.py --store data/grids.zarr --task semantics \\
        --pretrained runs/pretrain-mae/RUN/checkpoints/latest.pt --epochs 20
    python flows/finetune.py --store data/grids.zarr --task semantics --scratch --epochs 20
    python flows/finetune.py --store data/grids_160.zarr --task superres \\
        --target-store data/grids_384.zarr --pretrained CKPT --out runs/superres
    python flows/finetune.py --store data/grids.zarr --task detect --pretrained CKPT \\
        --resolution 32 --fpn-channels 64 --runs-dir runs/detect --epochs 50

The detect run's checkpoint (``RUN/checkpoints/latest.pt``) then feeds ``nerfmae detect``,
``nerfmae evaluate`` and ``nerfmae export-3d --boxes``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.pretrain import engine_argv, new_run_dir
from flows.run_logs import with_library_logs

FINETUNE_ARTIFACT_KEY = "finetune-report"
# model.finetune.FINETUNE_TASKS, spelled out so that parsing the command line does not
# import torch (tests/test_flow_finetune.py keeps the two equal).
TASKS = ("semantics", "superres", "detect")


def torchrun_command(config: dict[str, Any], nproc_per_node: int) -> list[str]:
    """The ``torchrun`` command line of ``model.finetune``, with this interpreter."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={int(nproc_per_node)}",
        "-m",
        "model.finetune",
        *engine_argv(config),
    ]


@task(name="finetune_nerfmae", cache_policy=NO_CACHE)
@with_library_logs
def run_finetuning(config: dict[str, Any], nproc_per_node: int = 1) -> dict[str, Any]:
    """Fine-tune with ``FinetuneConfig(**config)``; returns the run's summary dict."""
    from model.finetune import FinetuneConfig, finetune

    resolved = FinetuneConfig(**config)  # bad fields fail here, before any process starts
    # The library opens the checkpoint only once the scenes are split and their labels
    # counted; a path left unset in a deployment should not cost that first.
    if resolved.pretrained and not Path(resolved.pretrained).is_file():
        raise FileNotFoundError(
            f"pretrained: {resolved.pretrained}: no such checkpoint (give a pretraining "
            "run's RUN/checkpoints/latest.pt, or scratch=True)"
        )
    if nproc_per_node <= 1:
        return finetune(resolved)

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


def _fmt(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")  # a table cell (class names, paths) must not split


def metrics_markdown(summary: dict[str, Any], store: str) -> str:
    """The artifact text: the task's final metrics as tables, then where the outputs are."""
    task_name = summary.get("task")
    transfer = summary.get("transfer") or {}
    rows: list[tuple[str, Any]] = [
        ("steps", summary.get("steps")),
        ("init", summary.get("init")),
        ("transfer", transfer.get("summary", "none (from scratch)")),
        ("train loss", summary.get("train_loss")),
        ("val loss", summary.get("val_loss")),
    ]
    if task_name == "semantics":
        rows += [
            ("val mIoU", summary.get("val_miou")),
            ("val mAcc", summary.get("val_macc")),
            ("val allAcc", summary.get("val_allacc")),
        ]
    elif task_name == "superres":
        rows += [
            ("val PSNR, pooled (dB)", summary.get("val_psnr")),
            ("val PSNR, mean of batches (dB)", summary.get("val_mean_batch_psnr")),
            ("val MSE", summary.get("val_mse")),
            ("scale", summary.get("scale")),
        ]
    elif task_name == "detect":
        rows += [
            ("val AP25", summary.get("val_ap25")),
            ("val AP50", summary.get("val_ap50")),
            *((f"val recall50@{k}", summary.get(f"val_recall50@{k}")) for k in (300, 1000, 2500)),
            ("val average recall", summary.get("val_average_recall")),
            ("val GT boxes / detections",
             f"{summary.get('val_num_gt')} / {summary.get('val_num_detections')}"),
            ("val loss (cls / reg / ctr)", " / ".join(
                _fmt(summary.get(f"val_loss_{t}")) for t in ("cls", "reg", "ctr"))),
            ("FPN channels", (summary.get("detector") or {}).get("channels")),
        ]  # fmt: skip
    rows += [
        ("grids / s", summary.get("grids_per_s")),
        ("seconds", summary.get("seconds")),
        ("preset / parameters", f"{summary.get('preset')} / {summary.get('parameters')}"),
        ("device x world size", f"{summary.get('device')} x {summary.get('world_size')}"),
        (
            "scenes (train / labelled / val)",
            f"{summary.get('train_scenes')} / {summary.get('labelled_scenes')} / "
            f"{summary.get('val_scenes')}",
        ),
    ]
    lines = [
        f"# NeRF-MAE fine-tuning: {task_name}",
        "",
        f"Store: `{store}`",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in rows]

    iou = summary.get("val_per_class_iou") or {}
    if iou:
        acc = summary.get("val_per_class_acc") or {}
        lines += ["", "## Per-class IoU (validation)", "", "| class | IoU | accuracy |"]
        lines.append("|---|---|---|")
        lines += [f"| {_fmt(c)} | {_fmt(v)} | {_fmt(acc.get(c))} |" for c, v in iou.items()]

    ap25 = summary.get("val_per_class_ap25") or {}
    ap50 = summary.get("val_per_class_ap50") or {}
    if ap25 or ap50:  # detection with num_classes
        lines += ["", "## Per-class AP (validation)", "", "| class | AP25 | AP50 |"]
        lines.append("|---|---|---|")
        lines += [f"| {_fmt(c)} | {_fmt(ap25.get(c))} | {_fmt(ap50.get(c))} |"
                  for c in {**ap25, **ap50}]  # fmt: skip

    lines += ["", "## Outputs", ""]
    picture = summary.get("labels_png") or summary.get("superres_png") or summary.get("boxes_png")
    if picture:
        path = Path(picture).resolve()
        lines.append(
            f"- validation pictures: [{path.parent}]({path.parent.as_uri()})"
            f" (latest: `{path.name}`)"
        )
    else:
        lines.append("- validation pictures: none (no validation scenes)")
    for label, key in (
        ("run folder", "run_dir"),
        ("checkpoint", "checkpoint"),
        ("TensorBoard", "tensorboard_dir"),
        ("metrics", "metrics_path"),
    ):
        if summary.get(key):
            lines.append(f"- {label}: `{summary[key]}`")
    return "\n".join(lines) + "\n"


@flow(name="finetune-nerfmae")
@with_library_logs
def finetune_nerfmae(
    store: str,
    task: str = "semantics",
    pretrained: str | None = None,
    scratch: bool = False,
    out_dir: str | None = None,
    runs_dir: str = "runs/finetune",
    preset: str = "tiny",
    epochs: int = 10,
    batch_size: int = 4,
    resolution: int | None = None,
    target_store: str | None = None,
    label_fraction: float = 1.0,
    nproc_per_node: int = 1,
    fpn_channels: int | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune on ``store`` into ``out_dir``; returns the run's summary.

    Args:
        store: grid store URL (for ``semantics`` its scenes need ``semantic`` labels).
        task: ``semantics``, ``superres`` or ``detect`` (its scenes need ``boxes``).
        pretrained: pretraining checkpoint whose encoder starts the run (a ``pretrain-mae``
            run's ``checkpoints/latest.pt``); give it or ``scratch``, not both.
        scratch: start from random weights instead (the baseline).
        out_dir: run folder (checkpoints, TensorBoard, pictures, ``metrics.json``);
            None: a new folder named by the date and time under ``runs_dir``.
        runs_dir: where runs without an ``out_dir`` go.
        preset: model preset; the checkpoint's (``tiny`` on a CPU, ``swin_s`` is the paper's).
        epochs, batch_size: the schedule; ``batch_size`` is global over all devices.
        resolution: cube edge the grids are padded/cropped to (None: the preset's); a
            checkpoint pretrained at another one needs ``allow_resolution_change`` in options.
        target_store: ``superres``: the store of the same scenes at the higher resolution.
        label_fraction: share of the training scenes whose labels are used.
        nproc_per_node: devices; above 1 the run goes under ``torchrun``.
        fpn_channels: ``detect``: width of the FPN and head (None: 256, the reference's);
            the ``channels`` of ``detector_overrides``, which other fields of
            ``model.detection.detector.DetectorConfig`` can be given in through options.
        options: any other ``model.finetune.FinetuneConfig`` field (``lr``, ``max_steps``,
            ``val_scenes``, ``num_classes``, ``detector_overrides``...).
    """
    options = dict(options or {})
    if fpn_channels is not None:
        if task != "detect":
            raise ValueError(f"fpn_channels: only the detect task has an FPN, not {task!r}")
        options["detector_overrides"] = {
            **(options.get("detector_overrides") or {}),
            "channels": fpn_channels,
        }
    if out_dir is None:
        out_dir = str(new_run_dir(runs_dir))
        get_run_logger().info("run folder %s", out_dir)
    config = {
        "store_url": store,
        "out_dir": out_dir,
        "task": task,
        "pretrained": pretrained,
        "scratch": scratch,
        "preset": preset,
        "epochs": epochs,
        "batch_size": batch_size,
        "resolution": resolution,
        "target_store_url": target_store,
        "label_fraction": label_fraction,
        **options,
    }
    summary = run_finetuning(config, nproc_per_node)
    create_markdown_artifact(
        key=FINETUNE_ARTIFACT_KEY,
        markdown=metrics_markdown(summary, store),
        description=f"{task} fine-tuning on {store} ({summary.get('init')})",
    )
    headline = {
        "semantics": f"val mIoU {summary.get('val_miou')}",
        "superres": f"val PSNR {summary.get('val_psnr')} dB",
        "detect": f"val AP50 {summary.get('val_ap50')}, AP25 {summary.get('val_ap25')}",
    }.get(summary.get("task"), "")
    get_run_logger().info(
        "%s fine-tuning (%s): loss %s, %s, checkpoint %s",
        summary.get("task"),
        summary.get("init"),
        summary.get("train_loss"),
        headline,
        summary.get("checkpoint"),
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--task", choices=TASKS, default="semantics")
    init = parser.add_mutually_exclusive_group(required=True)
    init.add_argument("--pretrained", help="pretraining checkpoint (RUN/checkpoints/latest.pt)")
    init.add_argument("--scratch", action="store_true", help="start from random weights")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--out", help="run folder (default: a new dated folder under --runs-dir)")
    out.add_argument("--runs-dir", default="runs/finetune", help="parent of dated run folders")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--target-store", help="superres: store of the higher-resolution grids")
    parser.add_argument("--label-fraction", type=float, default=1.0)
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument(
        "--fpn-channels", type=int, help="detect: FPN and head width (default 256; 64 on a CPU)"
    )
    parser.add_argument(
        "--options", type=json.loads, default={}, help="JSON object of FinetuneConfig fields"
    )
    args = parser.parse_args(argv)
    summary = finetune_nerfmae(
        store=args.store,
        task=args.task,
        pretrained=args.pretrained,
        scratch=args.scratch,
        out_dir=args.out,
        runs_dir=args.runs_dir,
        preset=args.preset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        resolution=args.resolution,
        target_store=args.target_store,
        label_fraction=args.label_fraction,
        nproc_per_node=args.nproc_per_node,
        fpn_channels=args.fpn_channels,
        options=args.options,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
