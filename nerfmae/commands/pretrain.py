"""``nerfmae pretrain``: self-supervised MAE pretraining on the grids of a store (contract 5).

Multi-GPU: ``torchrun --nproc_per_node=N -m model.engine --store URL --out RUN`` runs the
same engine (every ``PretrainConfig`` field is a flag there).
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain the 3D Swin MAE on a grid store",
        description="Pretrain NeRF-MAE on every grid of a store; writes checkpoints, TensorBoard "
        "events, reconstruction PNGs, config.json and metrics.json under RUN_DIR and prints "
        "the summary. Options left out take the PretrainConfig defaults (the paper's schedule).",
    )
    p.add_argument("--store", required=True, help="grid store URL (path, memory://, s3://)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument("--preset", default="swin_s", help="model preset: tiny, swin_t, swin_s")
    p.add_argument("--resolution", type=int, help="cube edge S (default: the preset's)")
    p.add_argument("--epochs", type=int, help="epochs of the one-cycle schedule (default 2000)")
    p.add_argument("--batch-size", type=int, help="global batch over ranks (default 32)")
    p.add_argument("--grad-accum", type=int, dest="grad_accum_steps",
                   help="micro-batches accumulated per optimiser step (default 1)")  # fmt: skip
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-4)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-3)")
    p.add_argument("--val-fraction", type=float, help="scenes held out (default 0.05)")
    p.add_argument("--val-scenes", nargs="+", help="explicit validation scene ids")
    p.add_argument("--crop", choices=("pad", "random"), help="cut of oversized grids")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="random z-rotation and x/y flips (default on)")  # fmt: skip
    p.add_argument("--num-workers", type=int, help="DataLoader workers (default 2)")
    p.add_argument("--log-every", type=int, help="steps between logged figures (default 10)")
    p.add_argument("--eval-every", type=int, help="steps between validations (default 1000)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 1000)")
    p.add_argument("--max-steps", type=int, help="stop after N steps (schedule unchanged)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("--amp", choices=("auto", "bf16", "off"),
                   help="auto (default): bf16 autocast on CUDA, fp32 on CPU; bf16 also runs on "
                        "CPU (faster with AVX512-BF16, see BENCHMARKS.md)")  # fmt: skip
    p.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR/checkpoints/latest.pt")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model.engine import PretrainConfig, pretrain

    given = {
        name: value
        for name, value in vars(args).items()
        if name not in ("store", "out", "func", "command", "verbose") and value is not None
    }
    summary = pretrain(PretrainConfig(store_url=args.store, out_dir=args.out, **given))
    print(json.dumps(summary, indent=2))
    return 0
