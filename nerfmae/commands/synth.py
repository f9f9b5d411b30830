"""``nerfmae synth OUT_DIR --scenes N --image-size S``: synthetic scenes with ground truth."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.synthetic import RoomConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate procedural indoor scenes with exact ground truth",
        description="Write OUT_DIR/scene_0000 ... : images, depth maps and transforms.json "
        "rendered from an analytic room along a hand-held-like path (one loop at standing and "
        "one at crouching height), ground_truth/grid.npz (RGBA, semantics, boxes) and "
        "contact_sheet.png.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the scene folders into")
    p.add_argument("--scenes", type=int, default=1, help="number of scenes (default 1)")
    # The defaults are a capture like a real indoor one (two loops at standing and crouching
    # height, 150 views of 128x128, ~1.5 CPU minutes a scene); make demo and the tests
    # pass smaller ones.
    p.add_argument(
        "--image-size", type=int, default=128, help="image width = height in pixels (default 128)"
    )
    p.add_argument("--views", type=int, default=150, help="images per scene (default 150)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the first scene; scene i uses seed+i"
    )
    p.add_argument(
        "--grid-resolution",
        type=int,
        default=160,
        help="ground-truth samples along the longest side of the scene box",
    )
    p.add_argument(
        "--no-depth",
        dest="depth",
        action="store_false",
        help="write no depth maps (an RGB-only capture); by default each view gets its exact "
        "z-depth as a 16-bit millimetre PNG (depth/, nerfstudio's depth_file_path)",
    )
    p.add_argument(
        "--depth-noise",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="sensor-like multiplicative depth noise, e.g. 0.01 for 1%% (default 0: exact)",
    )
    p.add_argument(
        "--depth-holes",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of pixels without a depth measurement, at random (default 0)",
    )
    p.add_argument(
        "--texture-policy",
        choices=("by_class", "independent"),
        default="by_class",
        help="by_class (default): each furniture class has its own material recipe, so colour "
        "gives labels away; independent: every object's materials (and the floor's, ceiling's "
        "and walls') are drawn at random, independent of its class",
    )
    p.add_argument(
        "--min-part-size",
        type=float,
        default=0.0,
        metavar="METRES",
        help="thicken every furniture part to at least this along each axis (default 0: as "
        "built); ~1.5 voxels of the grid you will sample, e.g. 0.12 for 64^3 of a room up to "
        "6 m, keeps legs, lamp poles and shelf boards whole",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: a scene is many small tensor ops, so more threads "
        "gain little and spin badly on a busy machine; run several processes instead)",
    )
    p.set_defaults(func=run)


def room_config(args: argparse.Namespace) -> RoomConfig:
    """The :class:`RoomConfig` the command line asks for (it validates the values)."""
    from pipeline.synthetic import RoomConfig

    return RoomConfig(texture_policy=args.texture_policy, min_part_size=args.min_part_size)


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    import torch

    from pipeline.synthetic import DepthConfig, generate_scene

    if args.scenes < 1:
        raise ValueError(f"--scenes must be >= 1, got {args.scenes}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    room = room_config(args)
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    for i in range(args.scenes):
        started = time.perf_counter()
        seed = args.seed + i
        scene = generate_scene(
            out / f"scene_{i:04d}",
            seed=seed,
            n_views=args.views,
            image_size=args.image_size,
            grid_resolution=args.grid_resolution,
            room_config=room,
            depth_config=DepthConfig(
                write=args.depth, noise=args.depth_noise, holes=args.depth_holes
            ),
        )
        print(
            f"{scene}  seed {seed}  {args.views} views {args.image_size}x{args.image_size}  "
            f"{time.perf_counter() - started:.1f}s"
        )
    return 0
