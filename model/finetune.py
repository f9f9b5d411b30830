"""``python -m model.finetune TASK --store URL --out RUN (--pretrained CKPT | --scratch)
[--field value ...]``: fine-tune a downstream task of :data:`model.tasks.FINETUNE_TASKS`, one
process or one rank under ``torchrun --nproc_per_node=N``.

Each task's flags are its config class's fields (help from their docstrings); ``--task TASK``
anywhere on the line is the same as ``TASK`` first. ``nerfmae finetune`` is the same command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from model.tasks import FINETUNE_TASKS, finetune, task_class
from model.training.cli import add_config_flags, config_from_args, run_config_command


def build_arg_parser(prog: str = "python -m model.finetune") -> argparse.ArgumentParser:
    """A subcommand per fine-tuning task, one flag per field of its config class."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune NeRF-MAE downstream: a task's network starts from a pretraining "
        "checkpoint (--pretrained) or from random weights (--scratch); writes checkpoints, "
        "TensorBoard events, pictures, config.json and metrics.json under the run folder and "
        "prints the summary.",
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for name in FINETUNE_TASKS:
        task = task_class(name)
        sub = tasks.add_parser(
            name, help=task.description,
            description=f"{task.description}. Each flag sets the {task.config_class.__name__} "
            "field of its name; flags left out keep their defaults.",
        )  # fmt: skip
        add_config_flags(sub, task.config_class)
    return parser


def task_first(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--task T`` / ``--task=T`` moved to the front as the subcommand."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--task" and i + 1 < len(argv):
            return [argv[i + 1], *argv[:i], *argv[i + 2 :]]
        if arg.startswith("--task="):
            return [arg.split("=", 1)[1], *argv[:i], *argv[i + 1 :]]
    return argv


def config_from_namespace(args: argparse.Namespace):
    """The config of a parsed fine-tuning command line (its task's config class)."""
    return config_from_args(task_class(args.task).config_class, args)


def main(argv: Sequence[str] | None = None, prog: str = "python -m model.finetune") -> int:
    argv = task_first(sys.argv[1:] if argv is None else argv)
    return run_config_command(build_arg_parser(prog), config_from_namespace, finetune, argv)


if __name__ == "__main__":
    sys.exit(main())
