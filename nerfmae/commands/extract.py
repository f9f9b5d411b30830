"""``nerfmae extract``: sample a trained NeRF (or a scene, trained first) into a radiance grid."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="sample a NeRF run (or a scene folder: trains first) into a RadianceGrid",
        description="Sample a trained field on a regular grid in the scene box: RGB averaged over "
        "viewing directions, alpha = 1 - exp(-sigma * voxel_size). Write a .npz or a store scene.",
    )
    parser.add_argument(
        "source",
        type=Path,
        help="NeRF run folder (checkpoint.pt), a scene folder (a NeRF is trained first, 300 s "
        "budget, into --run-dir), or a nerfstudio run's config.yml (nerfacto, instant-ngp; "
        "run this command from .venv-nerfstudio, see make nerfstudio)",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="write the grid to this .npz (contract 1)")
    target.add_argument("--store", help="write into this grid store URL (needs --scene-id)")
    parser.add_argument("--scene-id", help="scene id in the store")
    parser.add_argument("--resolution", type=int, default=160, help="samples on the longest side")
    parser.add_argument(
        "--directions",
        choices=("cameras", "fixed", "fibonacci"),
        default="cameras",
        help="colour averaged over: training cameras towards each sample (default), "
        "NeRF-RPN's 18 fixed directions, or a Fibonacci sphere",
    )
    parser.add_argument(
        "--max-cameras",
        type=int,
        default=32,
        help="at most K cameras, strided (0 = all; default 32)",
    )
    parser.add_argument(
        "--box",
        choices=("scene", "occupied"),
        default="scene",
        help="scene box (transforms.json aabb) or occupied extent + --margin",
    )
    parser.add_argument("--margin", type=float, default=0.1, help="occupied box margin per side")
    parser.add_argument(
        "--empty-below",
        type=float,
        default=0.01,
        help="store voxels with alpha below this as empty (alpha and colour 0); 0 keeps all",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="scene folder: train the NeRF here (default: SCENE_nerf beside the scene)",
    )
    parser.add_argument(
        "--no-labels",
        dest="labels",
        action="store_false",
        help="leave out the scene's ground-truth labels; by default, when the scene folder has "
        "ground_truth/grid.npz, its semantic labels are resampled onto the grid (nearest "
        "voxel) and its boxes kept",
    )
    parser.add_argument("--device", default=None, help="torch device (default: the field's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.store is not None and not args.scene_id:
        raise ValueError("--store needs --scene-id")
    if args.scene_id is not None and args.store is None:
        raise ValueError("--scene-id is only used with --store")
    if args.max_cameras < 0:
        raise ValueError(f"--max-cameras must be >= 0, got {args.max_cameras}")

    from grid_store import GridStore, validate_scene_id
    from pipeline.extract import extract_grid
    from pipeline.labels import attach_scene_labels

    if args.store is not None:
        validate_scene_id(args.scene_id)  # before the (long) extraction
    grid = extract_grid(
        args.source,
        args.resolution,
        run_dir=args.run_dir,
        directions=args.directions,
        max_cameras=args.max_cameras or None,
        box=args.box,
        margin=args.margin,
        empty_below=args.empty_below,
        device=args.device,
    )
    scene_dir = scene_folder_of(args.source)
    if args.labels and scene_dir is not None:
        grid = attach_scene_labels(grid, scene_dir)
    if args.out is not None:
        grid.save_npz(args.out)
        where = str(args.out)
    else:
        GridStore(args.store, mode="a").write_grid(args.scene_id, grid)
        where = f"{args.store} scene {args.scene_id}"
    print(extraction_line(grid, where))
    return 0


def scene_folder_of(source: Path) -> Path | None:
    """The scene folder behind ``source``: itself, or the one a run folder was trained on
    (its ``config.json``, contract 4); None when that is not known."""
    import json

    from pipeline.nerfstudio.run import find_run, is_nerfstudio_config

    if source.is_file() and is_nerfstudio_config(source):
        return find_run(source).transforms_json.parent
    if (source / "transforms.json").is_file() or (source / "transforms_train.json").is_file():
        return source
    config = source / "config.json"
    if config.is_file():
        scene_dir = json.loads(config.read_text()).get("scene_dir")
        return Path(scene_dir) if scene_dir else None
    return None


def extraction_line(grid, where: str) -> str:
    """What ``nerfmae extract`` prints: the grid, how much of it is occupied, the NeRF's
    held-out PSNR, and where it went."""
    import numpy as np

    psnr = (grid.meta.get("nerf") or {}).get("psnr_holdout")
    alpha = grid.alpha
    labels = []
    if grid.semantic is not None:
        labels.append(f"{np.unique(grid.semantic).size} semantic labels")
    if grid.boxes is not None:
        labels.append(f"{len(grid.boxes)} boxes")
    return (
        f"grid {'x'.join(map(str, grid.shape))}, voxel {grid.voxel_size:.4g}; "
        f"occupied (alpha > 0.5) {float((alpha > 0.5).mean()):.2%} of voxels, "
        f"non-empty (alpha > 0) {float((alpha > 0).mean()):.2%}; "
        f"NeRF held-out PSNR {f'{psnr:.2f} dB' if psnr is not None else 'unknown'}"
        f"{'; ' + ', '.join(labels) + ' from the ground truth' if labels else ''} -> {where}"
    )
