"""``python -m model.pretrain --store URL --out RUN [--field value ...]``: NeRF-MAE
pretraining, one process or one rank under ``torchrun --nproc_per_node=N``.

Every :class:`~model.tasks.pretrain.PretrainConfig` field is a flag (help from its
docstring); ``nerfmae pretrain`` is the same command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from model.tasks.pretrain import MAETask, PretrainConfig, pretrain
from model.training.cli import config_from_args, config_parser, run_config_command


def build_arg_parser(prog: str = "python -m model.pretrain") -> argparse.ArgumentParser:
    """One flag per :class:`PretrainConfig` field."""
    return config_parser(
        PretrainConfig, prog,
        f"NeRF-MAE pretraining: {MAETask.description}; writes checkpoints, TensorBoard events, "
        "reconstruction pictures, config.json and metrics.json under the run folder (single "
        "process, or one rank under torchrun).",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None, prog: str = "python -m model.pretrain") -> int:
    return run_config_command(build_arg_parser(prog),
                              lambda args: config_from_args(PretrainConfig, args), pretrain,
                              argv)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
