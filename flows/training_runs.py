"""What the training flows share: running a training config in the task or under
``torchrun``, the report artifact of a run, and fresh run folders.

One device: the run goes through :func:`model.tasks.train` inside the Prefect task. Several
(``nproc_per_node > 1``): the task launches ``python -m torch.distributed.run --standalone
--nproc_per_node N -m model.pretrain|model.finetune TASK ...`` (what ``torchrun`` is) with
the config's flags (:func:`model.training.cli.config_argv`), streams its output into the
task's log and reads the summary the engine leaves in ``RUN/metrics.json``.

Reports: the rows and tables of a run's figures come from its task
(:meth:`model.training.task.Task.report_rows`), so a flow never switches on task names.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


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
    command = torchrun_command(config, nproc_per_node)
    logger.info("launching %s", " ".join(command))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, cwd=os.getcwd()) as proc:  # fmt: skip
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            logger.info(line.rstrip())
            tail = (tail + [line])[-40:]
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with {proc.returncode}; last output:\n{''.join(tail)}")
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
    summary = flow_fn(**vars(parser.parse_args(argv)))
    print(json.dumps(summary, indent=2))
    return 0


def _cell(value: Any) -> str:
    from model.training.task import report_value

    return report_value(value).replace("|", "\\|")  # a cell (class names, paths) must not split


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def report_markdown(summary: dict[str, Any], store: str, title: str) -> str:
    """A run's report: its task's figures as tables, then where the outputs are."""
    from model.tasks import task_class

    task = task_class(summary.get("task", "pretrain"))
    rows: list[list[Any]] = [
        ["steps", summary.get("steps")],
        *([name, value] for name, value in task.report_rows(summary)),
        ["grids / s", summary.get("grids_per_s")],
        ["seconds", summary.get("seconds")],
        ["preset / parameters", f"{summary.get('preset')} / {summary.get('parameters')}"],
        ["device x world size", f"{summary.get('device')} x {summary.get('world_size')}"],
        list(task.scene_row(summary)),
    ]
    lines = [f"# {title}", "", f"Store: `{store}`", "", *_table(["metric", "value"], rows)]
    for heading, header, table_rows in task.report_tables(summary):
        lines += ["", f"## {heading}", "", *_table(header, table_rows)]
    lines += ["", "## Outputs", ""]
    picture = summary.get(f"{task.picture_dir}_png")
    if picture:
        path = Path(picture).resolve()
        lines.append(f"- validation pictures: [{path.parent}]({path.parent.as_uri()})"
                     f" (latest: `{path.name}`)")  # fmt: skip
    else:
        lines.append("- validation pictures: none (no validation scenes)")
    outputs = (("run folder", "run_dir"), ("checkpoint", "checkpoint"),
               ("TensorBoard", "tensorboard_dir"), ("metrics", "metrics_path"))
    for label, key in outputs:
        if summary.get(key):
            lines.append(f"- {label}: `{summary[key]}`")
    return "\n".join(lines) + "\n"


def run_fields(store: str, out_dir: str | None, runs_dir: str, logger, **fields: Any) -> dict:
    """The config fields of a training flow's run: the store, the run folder (a new dated one
    under ``runs_dir`` when ``out_dir`` is None) and ``fields``."""
    if out_dir is None:
        out_dir = str(new_run_dir(runs_dir))
        logger.info("run folder %s", out_dir)
    return {"store_url": store, "out_dir": out_dir, **fields}


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
