"""``nerfmae finetune semantics|superres|detect``: a downstream task from a pretraining checkpoint
(``--pretrained``) or from random weights (``--scratch``), same network and schedule.

The flags of each task are generated from its config class (``nerfmae finetune TASK --help``);
the parser is built only when the command runs, so ``nerfmae --help`` stays fast. Multi-GPU:
``torchrun --nproc_per_node=N -m model.finetune TASK --store URL --out RUN --pretrained CKPT``
runs the same command on every rank.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        add_help=False,  # --help goes to the generated parser
        help="fine-tune a pretrained encoder: semantic voxels, super-resolution or 3D boxes",
        description="Fine-tune NeRF-MAE downstream (nerfmae finetune TASK --help).",
    )
    p.set_defaults(func=run, passthrough=True)


def run(args: argparse.Namespace) -> int:
    from model.finetune import main

    return main(args.extra, prog="nerfmae finetune")
