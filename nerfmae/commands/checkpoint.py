"""``nerfmae checkpoint info|export``: what a checkpoint is (this project's of any task, or
NeRF-MAE's published files), and ours written in the published layouts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "checkpoint",
        help="inspect a checkpoint (ours or NeRF-MAE's published files); export ours in the "
        "published layout",
    )
    sub = parser.add_subparsers(dest="checkpoint_command", metavar="ACTION", required=True)
    info = sub.add_parser(
        "info",
        help="format, task, architecture, epoch/step and tensor counts (JSON)",
        description="Read a checkpoint (weights_only) and describe it; the architecture of a "
        "published file is read from its tensor shapes.",
    )
    info.add_argument("file", type=Path)
    info.set_defaults(func=run_info)
    export = sub.add_parser(
        "export",
        help="write a pretraining or detection checkpoint in NeRF-MAE's published layout",
        description="Write one of this project's pretraining or detection checkpoints as "
        "nerf_mae_pretrained.pt / front3d_obb_finetuned.pt are laid out, for the reference code.",
    )
    export.add_argument("file", type=Path)
    export.add_argument("--format", choices=("reference",), default="reference",
                        help="the layout (reference: NeRF-MAE's published files)")  # fmt: skip
    export.add_argument("--out", type=Path, required=True, help="the .pt file to write")
    export.set_defaults(func=run_export)


def run_info(args: argparse.Namespace) -> int:
    from model.checkpoints.export import checkpoint_info

    print(json.dumps(checkpoint_info(args.file), indent=2))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from model.checkpoints.export import export_reference
    from model.checkpoints.reading import FORMAT_NAMES

    out, kind = export_reference(args.file, args.out)
    print(f"{out}: {FORMAT_NAMES[kind]}")
    return 0
