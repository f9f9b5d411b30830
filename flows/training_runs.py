"""What the training flows share: running a training config in the task or under
``torchrun``, the report artifact of a run, and fresh run folders.

One device: the run goes through :func:`model.tasks.train` inside the Prefect task. Several
(``nproc_per_node > 1``): the task launches ``python -m torch.distributed.run --standalone
--nproc_per_node N -m model.pretrain|model.finetune TASK ...`` (what ``torchrun`` is) with
the config's flags (:func:`model.training.cli.config_argv`), streams its output into the
task's log and reads the summary the engine leaves in ``RUN/metrics.json``.

Reports: the rows and tables of a run's figures come from its task
(:meth:`model.training.task.Task.report_rows`), so a flow never switches on task names.
Fractions (AP, recall, IoU, accuracy: :data:`PERCENT_KEYS`) are shown in per cent, as
BENCHMARKS.md gives them; the latest validation picture is embedded in the markdown (a
``data:`` URI), since a browser elsewhere cannot open a path on the worker.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flows.local_server import patient_server_start
from flows.processes import stream_process

PERCENT_KEYS = re.compile(
    r"val_(ap\d+|recall\d+@\d+|average_recall|miou|macc|allacc|per_class_(ap\d+|iou|acc))"
)
"""Summary keys whose figures are fractions (per-class ones are dicts of them)."""

PICTURE_MAX_EDGE = 1200
"""Longest side, in pixels, of a picture embedded in a report (sharp enough on a screen)."""

PICTURE_MAX_CHARS = 1_000_000
"""Largest base64 picture a report embeds: Prefect stores an artifact's markdown whole in its
database and sends it whole to the UI, so a report stays well under a few megabytes."""

LISTED_SCENES = 20
"""Validation scenes a report names before it only counts the rest."""


def torchrun_command(config: Any, nproc_per_node: int) -> list[str]:
    """The ``torchrun`` command line of a training config, with this interpreter (same
    environment)."""
    from model.tasks import PRETRAINING
    from model.training.cli import config_argv

    entry = ["model.pretrain"] if config.task == PRETRAINING else ["model.finetune", config.task]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={int(nproc_per_node)}", "-m", *entry, *config_argv(config),
    ]  # fmt: skip


def run_training(config: Any, nproc_per_node: int, logger) -> dict[str, Any]:
    """Train ``config`` on ``nproc_per_node`` devices; returns the run's summary. ``logger``
    receives the launched processes' output line by line."""
    from model.tasks import train

    if nproc_per_node <= 1:
        return train(config)
    status, output = stream_process(torchrun_command(config, nproc_per_node), logger)
    if status != 0:
        raise RuntimeError(f"torchrun exited with {status}; last output:\n{output}")
    metrics_path = Path(config.out_dir) / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: torchrun finished without writing the summary")
    return json.loads(metrics_path.read_text())


def flow_arg_parser(description: str, runs_dir: str, config_name: str) -> argparse.ArgumentParser:
    """The flags a training flow's command line shares; each is the flow parameter of its
    name (``--out`` sets ``out_dir``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--store", required=True)
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--out", dest="out_dir",
                     help="run folder (default: a new dated folder under --runs-dir)")  # fmt: skip
    out.add_argument("--runs-dir", default=runs_dir, help="parent of dated run folders")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("--options", type=json.loads, default={},
                        help=f"JSON object of {config_name} fields")  # fmt: skip
    return parser


def run_flow_command(flow_fn, parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse the flow's command line, run the flow with it, print the summary."""
    args = parser.parse_args(argv)
    with patient_server_start():
        summary = flow_fn(**vars(args))
    print(json.dumps(summary, indent=2))
    return 0


class Percent(float):
    """A fraction shown in per cent: ``f"{p:.4g}"`` is the bare number (a report's row or
    column says "%"), ``f"{p}"`` carries the sign (a log line)."""

    def __format__(self, spec: str) -> str:
        return format(100 * float(self), spec or ".4g") + ("" if spec else " %")


def in_percent(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with the figures of :data:`PERCENT_KEYS` as :class:`Percent`."""

    def wrap(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: wrap(v) for k, v in value.items()}
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return Percent(value) if is_number else value

    return {k: wrap(v) if PERCENT_KEYS.fullmatch(k) else v for k, v in summary.items()}


def _cell(value: Any) -> str:
    from model.training.task import report_value

    return report_value(value).replace("|", "\\|")  # a cell (class names, paths) must not split


def _percent_label(name: str, values: list[Any]) -> str:
    """A row's or column's name, saying "%" when its figures are in per cent."""
    return f"{name} (%)" if any(isinstance(v, Percent) for v in values) else name


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def _resolved(summary: dict[str, Any]) -> dict[str, Any]:
    """What the run resolved (``RUN/config.json``: the scene split, the transfer report...)."""
    path = summary.get("config_path")
    return json.loads(Path(path).read_text())["resolved"] if path and Path(path).is_file() else {}


def _scene_list(names: list[str]) -> str:
    shown = ", ".join(f"`{name}`" for name in names[:LISTED_SCENES])
    rest = len(names) - LISTED_SCENES
    return shown + (f" and {rest} more (`RUN/config.json`)" if rest > 0 else "")


def _embedded_png(path: str | Path) -> str | None:
    """The picture as a ``data:image/png`` URI no longer than :data:`PICTURE_MAX_CHARS`,
    its longest side brought down to :data:`PICTURE_MAX_EDGE`; None when still too large."""
    from PIL import Image

    with Image.open(path) as image:
        image.thumbnail((PICTURE_MAX_EDGE, PICTURE_MAX_EDGE))
        png = io.BytesIO()
        image.save(png, format="PNG", optimize=True)
    data = base64.b64encode(png.getvalue()).decode("ascii")
    return f"data:image/png;base64,{data}" if len(data) <= PICTURE_MAX_CHARS else None


def report_markdown(summary: dict[str, Any], store: str, title: str) -> str:
    """A run's report: its task's figures as tables, the validation scenes and picture, then
    where the outputs are (paths on the worker)."""
    from model.tasks import task_class

    task = task_class(summary.get("task", "pretrain"))
    shown = in_percent(summary)
    rows: list[list[Any]] = [
        ["steps", summary.get("steps")],
        *([name, value] for name, value in task.report_rows(shown)),
        ["grids / s", summary.get("grids_per_s")],
        ["seconds", summary.get("seconds")],
        ["preset / parameters", f"{summary.get('preset')} / {summary.get('parameters')}"],
        ["device x world size", f"{summary.get('device')} x {summary.get('world_size')}"],
        list(task.scene_row(summary)),
    ]
    rows = [[_percent_label(name, [value]), value] for name, value in rows]
    lines = [f"# {title}", "", f"Store: `{store}`", "", *_table(["metric", "value"], rows)]
    val_scenes = _resolved(summary).get("val_scenes")
    if val_scenes:
        lines += ["", f"Validation scenes ({len(val_scenes)}): {_scene_list(val_scenes)}"]
    for heading, header, table_rows in task.report_tables(shown):
        header = [_percent_label(name, [row[i] for row in table_rows])
                  for i, name in enumerate(header)]  # fmt: skip
        lines += ["", f"## {heading}", "", *_table(header, table_rows)]
    picture = summary.get(f"{task.picture_dir}_png")
    if picture:
        uri = _embedded_png(picture)
        shown_as = f"![{task.picture_dir}]({uri})" if uri else "(too large to embed: see below)"
        lines += ["", f"## Validation picture (`{Path(picture).name}`)", "", shown_as]
    lines += ["", "## Outputs (on the worker)", ""]
    if picture:
        lines.append(f"- validation pictures: `{Path(picture).parent}`")
    else:
        lines.append("- validation pictures: none (no validation scenes)")
    outputs = (("run folder", "run_dir"), ("checkpoint", "checkpoint"),
               ("TensorBoard", "tensorboard_dir"), ("metrics", "metrics_path"))  # fmt: skip
    for label, key in outputs:
        if summary.get(key):
            lines.append(f"- {label}: `{summary[key]}`")
    if summary.get("transfer") and summary.get("config_path"):
        lines.append(f"- tensors loaded, fresh and dropped: `{summary['config_path']}` "
                     "(`resolved.transfer`)")  # fmt: skip
    return "\n".join(lines) + "\n"


@contextmanager
def run_folder(out_dir: str | None, runs_dir: str, logger) -> Iterator[str]:
    """The run's folder: ``out_dir``, or a new dated one under ``runs_dir``
    (:func:`new_run_dir`) that is removed again if the run fails before writing into it (a
    deployment started with a placeholder parameter leaves no empty folder behind)."""
    if out_dir is not None:
        yield out_dir
        return
    folder = new_run_dir(runs_dir)
    logger.info("run folder %s", folder)
    try:
        yield str(folder)
    except BaseException:
        if not any(folder.iterdir()):
            folder.rmdir()
            logger.info("run failed before writing into %s: removed it", folder)
        raise


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
