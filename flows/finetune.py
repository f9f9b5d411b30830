"""Flow ``finetune-nerfmae``: a pretrained NeRF-MAE encoder fine-tuned on a downstream task.

The tasks are those of :data:`model.tasks.FINETUNE_TASKS`: ``semantics`` (voxel labels, from a store
whose scenes carry a ``semantic`` array), ``superres`` (voxel super-resolution, against
a second store of the same scenes sampled finer, ``target_store``) and ``detect``
(oriented 3D boxes, :mod:`model.tasks.detect`, from a store whose scenes carry a
``boxes`` array; class-agnostic unless ``num_classes`` is in options; ``fpn_channels`` sets
the width of its FPN and head, 256 by default, 64 or fewer for a CPU). The encoder comes
from a pretraining checkpoint (``pretrained``, e.g. a ``pretrain-mae`` run's
``checkpoints/latest.pt``) or starts random (``scratch``, the baseline to compare with);
for ``detect`` only the encoder carries over.

One device: :func:`model.tasks.train` runs inside the task. Several devices
(``nproc_per_node > 1``): the task launches ``torchrun ... -m model.finetune TASK ...`` as
:mod:`flows.pretrain` does for pretraining (:mod:`flows.training_runs`) and reads the
summary from ``RUN/metrics.json``. Either way the run ends with a markdown artifact of the
task's metrics (mIoU; PSNR; AP25/AP50 and recalls, fractions in per cent; the rows are the
task's own), the validation scenes, the latest validation picture and where the outputs are,
and with one log line of the headline figures and the run folder.

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

import dataclasses
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.run_logs import with_library_logs
from flows.training_runs import (
    flow_arg_parser,
    in_percent,
    report_markdown,
    run_flow_command,
    run_folder,
    run_training,
)
from model.tasks import FINETUNE_TASKS

FINETUNE_ARTIFACT_KEY = "finetune-report"
TASKS = FINETUNE_TASKS  # the registry's names: importing it loads neither torch nor a task


def finetune_config(task_name: str, fields: dict[str, Any]):
    """The task's config from the flow's fields; a field the task's config lacks is an error
    that names it and the task."""
    from model.tasks import make_config, task_class

    config_class = task_class(task_name).config_class
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not settings of the {task_name!r} task "
                         f"({config_class.__name__})")  # fmt: skip
    return make_config(task_name, **fields)


@task(name="finetune_nerfmae", cache_policy=NO_CACHE)
@with_library_logs
def run_finetuning(
    task_name: str, config: dict[str, Any], nproc_per_node: int = 1
) -> dict[str, Any]:
    """Fine-tune ``task_name`` with ``config`` (its config's fields); returns the summary."""
    resolved = finetune_config(task_name, config)  # bad fields fail here, before any process
    # The library opens the checkpoint only once the scenes are split and their labels
    # counted; a path left unset in a deployment should not cost that first.
    if resolved.pretrained and not Path(resolved.pretrained).is_file():
        raise FileNotFoundError(
            f"pretrained: {resolved.pretrained}: no such checkpoint (give a pretraining "
            "run's RUN/checkpoints/latest.pt, or scratch=True)"
        )
    return run_training(resolved, nproc_per_node, get_run_logger())


def _fpn_overrides(task_name: str, fpn_channels: int, options: dict[str, Any]) -> None:
    """Put ``fpn_channels`` where the task's config takes it (its ``--fpn-channels``)."""
    from model.tasks import config_class

    shortcut = config_class(task_name).cli_shortcuts.get("--fpn-channels")
    if shortcut is None:
        owners = [n for n in FINETUNE_TASKS if "--fpn-channels" in config_class(n).cli_shortcuts]
        raise ValueError(f"fpn_channels: only the {' and '.join(owners)} task has an FPN, "
                         f"not {task_name!r}")  # fmt: skip
    options[shortcut.field] = {**(options.get(shortcut.field) or {}), shortcut.key: fpn_channels}


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
            ``model.networks.detector.DetectorConfig`` can be given in through options.
        options: any other field of the task's config (``model.tasks.config_class(task)``:
            ``lr``, ``max_steps``, ``val_scenes``, ``num_classes``, ``detector_overrides``...).
    """
    from model.tasks import task_class
    from model.training.task import report_value

    logger = get_run_logger()
    options = dict(options or {})
    if fpn_channels is not None:
        _fpn_overrides(task, fpn_channels, options)
    if target_store is not None:
        options["target_store_url"] = target_store
    with run_folder(out_dir, runs_dir, logger) as folder:
        config = {"store_url": store, "out_dir": folder, "pretrained": pretrained,
                  "scratch": scratch, "preset": preset, "epochs": epochs,
                  "batch_size": batch_size, "resolution": resolution,
                  "label_fraction": label_fraction, **options}  # fmt: skip
        summary = run_finetuning(task, config, nproc_per_node)
    create_markdown_artifact(
        key=FINETUNE_ARTIFACT_KEY,
        markdown=report_markdown(summary, store, f"NeRF-MAE fine-tuning: {task}"),
        description=f"{task} fine-tuning on {store} ({summary.get('init')})",
    )
    # the summary's transfer report lists every tensor by name: the line gives figures only
    logger.info(
        "%s fine-tuning (%s) done: %s; train loss %s; run folder %s",
        task,
        summary.get("init"),
        task_class(task).headline(in_percent(summary)),
        report_value(summary.get("train_loss")),
        summary.get("run_dir"),
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = flow_arg_parser(__doc__.split("\n\n")[0], "runs/finetune", "the task's config")
    parser.add_argument("--task", choices=TASKS, default="semantics")
    init = parser.add_mutually_exclusive_group(required=True)
    init.add_argument("--pretrained", help="pretraining checkpoint (RUN/checkpoints/latest.pt)")
    init.add_argument("--scratch", action="store_true", help="start from random weights")
    parser.add_argument("--target-store", help="superres: store of the higher-resolution grids")
    parser.add_argument("--label-fraction", type=float, default=1.0)
    parser.add_argument(
        "--fpn-channels", type=int, help="detect: FPN and head width (default 256; 64 on a CPU)"
    )
    return run_flow_command(finetune_nerfmae, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
