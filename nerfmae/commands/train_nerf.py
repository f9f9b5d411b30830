"""``nerfmae train-nerf SCENE_DIR --out RUN_DIR``: train one scene's NeRF (DESIGN contract 5)."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-nerf",
        help="train a hash-grid NeRF on one scene folder",
        description="Train an Instant-NGP NeRF on SCENE_DIR; writes config.json, "
        "checkpoint.pt, metrics.json and renders/ to RUN_DIR. Frames with depth maps "
        "(depth_file_path) supervise each ray's depth too, and metrics.json then holds the "
        "held-out depth error.",
    )
    p.add_argument("scene_dir", metavar="SCENE_DIR", help="scene folder (transforms.json)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    p.add_argument("--steps", type=int, default=None, help="maximum optimiser steps")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="training wall-time budget (evaluation excluded)",
    )
    p.add_argument(
        "--target-psnr",
        type=float,
        default=None,
        metavar="DB",
        help="stop once the held-out PSNR check reaches this",
    )
    p.add_argument("--backend", choices=("auto", "tcnn", "torch"), default="auto")
    p.add_argument("--downscale", type=int, default=1, metavar="K", help="image downscale")
    p.add_argument(
        "--finest-resolution",
        type=int,
        default=None,
        metavar="N",
        help="finest hash-grid resolution (default: matched to the training pixels, about one "
        "cell per pixel footprint over the scene box, capped at the preset's 512 on CPU / "
        "2048 on CUDA: 64 for 64x64 synthetic rooms, 256 for 200x200 lego)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads (1 is fastest on a shared, oversubscribed CPU)",
    )
    p.add_argument(
        "--no-depth",
        dest="use_depth",
        action="store_false",
        help="ignore the frames' depth maps (depth_file_path): train from the colours alone",
    )
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nerf_training import TrainerConfig, train_nerf

    if args.steps is None and args.time_budget is None and args.target_psnr is None:
        max_steps = TrainerConfig().max_steps
    else:
        max_steps = args.steps
    config = TrainerConfig(
        max_steps=max_steps,
        time_budget_s=args.time_budget,
        target_psnr=args.target_psnr,
        backend=args.backend,
        downscale=args.downscale,
        finest_resolution=args.finest_resolution,
        progress=not args.no_progress,
        num_threads=args.threads,
        use_depth=args.use_depth,
    )
    metrics = train_nerf(args.scene_dir, args.out, config, resume=args.resume)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0
