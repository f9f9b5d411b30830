"""``nerfmae finetune semantics|superres|detect``: a downstream task from a pretraining checkpoint
(``--pretrained``) or from random weights (``--scratch``), same network and schedule.

Multi-GPU: ``torchrun --nproc_per_node=N -m model.finetune --task semantics --store URL
--out RUN --pretrained CKPT`` runs the same engine (every ``FinetuneConfig`` field is a flag).
"""

from __future__ import annotations

import argparse
import json


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="grid store URL of the input grids")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
    init = p.add_mutually_exclusive_group(required=True)
    init.add_argument(
        "--pretrained",
        metavar="CKPT",
        help="pretraining checkpoint (RUN/checkpoints/latest.pt of nerfmae pretrain)",
    )
    init.add_argument(
        "--scratch",
        action="store_true",
        default=None,
        help="random initialisation of the same network",
    )
    p.add_argument(
        "--allow-resolution-change",
        action="store_true",
        default=None,
        help="accept a checkpoint pretrained at another resolution",
    )
    p.add_argument("--train-scenes", nargs="+", help="train only on these scene ids")
    p.add_argument(
        "--label-fraction",
        type=float,
        help="share of the training scenes whose labels are used (default 1)",
    )
    p.add_argument("--val-scenes", nargs="+", help="explicit validation scene ids")
    p.add_argument("--val-fraction", type=float, help="scenes held out (default 0.05)")
    p.add_argument("--preset", default="swin_s", help="model preset: tiny, swin_t, swin_s")
    p.add_argument("--resolution", type=int, help="input cube edge S (default: the preset's)")
    p.add_argument("--epochs", type=int, help="epochs of the one-cycle schedule (default 1000)")
    p.add_argument("--batch-size", type=int, help="global batch (default 8)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 3e-4)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-3)")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="random z-rotation and x/y flips (default off, as the reference)",
    )
    p.add_argument("--num-workers", type=int, help="DataLoader workers (default 2)")
    p.add_argument("--log-every", type=int, help="steps between logged figures (default 10)")
    p.add_argument("--eval-every", type=int, help="steps between validations (default 1000)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 1000)")
    p.add_argument("--max-steps", type=int, help="stop after N steps (schedule unchanged)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), help="mixed precision")
    p.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue from RUN_DIR/checkpoints/latest.pt",
    )
    p.set_defaults(func=run)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained encoder: semantic voxels, super-resolution or 3D boxes",
        description="Fine-tune NeRF-MAE downstream; writes checkpoints, TensorBoard events, "
        "pictures, config.json and metrics.json under RUN_DIR and prints the summary.",
    )
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    semantics = tasks.add_parser(
        "semantics",
        help="label every voxel (mIoU, mAcc, allAcc)",
        description="Semantic voxel labelling: the store's grids must carry labels "
        "('semantic' arrays; class names from their semantic_classes).",
    )
    _common(semantics)
    semantics.add_argument(
        "--num-classes", type=int, help="classes including void (default: the stored class names)"
    )
    superres = tasks.add_parser(
        "superres",
        help="predict a finer grid (PSNR on occupied voxels)",
        description="Voxel super-resolution: targets are the same scene ids in a second "
        "store at a higher resolution; the factor is the ratio of the voxel sizes.",
    )
    _common(superres)
    superres.add_argument(
        "--target-store",
        dest="target_store_url",
        required=True,
        help="store of the same scenes at the higher resolution",
    )


    detect = tasks.add_parser(
        "detect",
        help="oriented 3D boxes, NeRF-RPN's anchor-free FCOS head (AP25, AP50)",
        description="3D object detection: the store's scenes must carry boxes ('boxes' "
        "arrays, world units). Only the encoder comes from the checkpoint; the FPN and the "
        "head start fresh. With --augment, also NeRF-RPN's small rotation and scaling.",
    )
    _common(detect)
    detect.add_argument(
        "--num-classes",
        type=int,
        help="learn the stored box classes (box_labels 0..K-1) and report per-class AP "
        "(default: class-agnostic, as NeRF-RPN)",
    )
    detect.add_argument(
        "--fpn-channels",
        type=int,
        help="FPN and head width (default 256, the reference's; 64 makes CPU runs affordable)",
    )


def run(args: argparse.Namespace) -> int:
    from model.finetune import FinetuneConfig, finetune

    given = {
        name: value
        for name, value in vars(args).items()
        if name not in ("store", "out", "func", "command", "verbose", "fpn_channels")
        and value is not None
    }
    if getattr(args, "fpn_channels", None) is not None:
        given["detector_overrides"] = {"channels": args.fpn_channels}
    summary = finetune(FinetuneConfig(store_url=args.store, out_dir=args.out, **given))
    print(json.dumps(summary, indent=2))
    return 0
