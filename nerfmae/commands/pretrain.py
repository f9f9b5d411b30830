"""``nerfmae pretrain``: self-supervised MAE pretraining on the grids of a store (contract 5).

The flags are generated from :class:`model.tasks.pretrain.PretrainConfig` (``nerfmae pretrain
--help``); the parser is built only when the command runs, so ``nerfmae --help`` stays fast.
Multi-GPU: ``torchrun --nproc_per_node=N -m model.pretrain --store URL --out RUN`` runs the
same command on every rank.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        add_help=False,  # --help goes to the generated parser
        help="pretrain the 3D Swin MAE on a grid store",
        description="Pretrain NeRF-MAE on every grid of a store (nerfmae pretrain --help).",
    )
    p.set_defaults(func=run, passthrough=True)


def run(args: argparse.Namespace) -> int:
    from model.pretrain import main

    return main(args.extra, prog="nerfmae pretrain")
