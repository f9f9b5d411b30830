"""``nerfmae store ls|add|import-npz|export-npz``: list a grid store, add contract-1 grids
(ground truth), NeRF-RPN/MAE .npz in and out."""

from __future__ import annotations

import argparse
from pathlib import Path

DENSITY_CHOICES = ("ngp", "relu", "alpha")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "store",
        help="list a grid store; add grids (ground truth); import/export NeRF-RPN / NeRF-MAE "
        ".npz grids",
    )
    sub = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    ls = sub.add_parser("ls", help="table of the store's scenes")
    ls.add_argument("url", help="store URL (path, memory://, s3://bucket/prefix)")
    ls.set_defaults(func=run_ls)

    add = sub.add_parser(
        "add",
        help="add grids in this project's .npz format (RadianceGrid.save_npz), e.g. the "
        "ground truth of synthetic scenes",
        description="Write contract-1 grids into a store: each SOURCE is a grid .npz (scene id: "
        "its name without .npz) or a scene folder with ground_truth/grid.npz (scene id: the "
        "folder's name). Labels (semantic, boxes) are kept.",
    )
    add.add_argument("url", help="store URL (created if absent)")
    add.add_argument("sources", nargs="+", type=Path, metavar="SOURCE")
    add.add_argument(
        "--empty-below",
        type=float,
        default=0.01,
        help="store voxels with alpha below this as empty (alpha and colour 0), the rule "
        "extracted grids follow, so both look alike as inputs (default 0.01; 0 keeps all)",
    )
    add.set_defaults(func=run_add)

    imp = sub.add_parser("import-npz", help="import NeRF-RPN / NeRF-MAE .npz grids")
    imp.add_argument("url", help="store URL (created if absent)")
    imp.add_argument("files", nargs="+", type=Path, help=".npz files with 'rgbsigma'")
    imp.add_argument(
        "--density",
        choices=DENSITY_CHOICES,
        default="ngp",
        help="how the 4th channel becomes alpha: ngp = 1-exp(-exp(raw)/100) (instant-ngp, "
        "NeRF-MAE pretraining data), relu = 1-exp(-relu(raw)/100) (ScanNet), alpha = already alpha "
        "(Hypersim release) (default: ngp)",
    )
    imp.add_argument(
        "--scene-id-from",
        choices=("stem",),
        default="stem",
        help="scene id of each file: its name without .npz (default)",
    )
    imp.add_argument(
        "--boxes",
        "--boxes-dir",
        dest="boxes_dir",
        type=Path,
        default=None,
        help="folder of NeRF-RPN boxes <stem>.npy (voxel units) to attach where present",
    )
    imp.add_argument(
        "--ngp-y-up", action="store_true", help="files are raw instant-ngp (y-up) output"
    )
    imp.set_defaults(func=run_import)

    exp = sub.add_parser("export-npz", help="export scenes as NeRF-RPN / NeRF-MAE .npz")
    exp.add_argument("url", help="store URL")
    exp.add_argument("out_dir", type=Path, help="folder for <scene_id>.npz")
    exp.add_argument("--scene-id", nargs="+", default=None, help="scenes to export (default: all)")
    exp.add_argument(
        "--density",
        choices=DENSITY_CHOICES,
        default="alpha",
        help="what the 4th channel holds: alpha (default), or raw values for the ngp/relu rule",
    )
    exp.set_defaults(func=run_export)


def run_ls(args: argparse.Namespace) -> int:
    from grid_store import GridStore

    store = GridStore(args.url, mode="r")
    rows = [("scene_id", "shape", "voxel_size", "source", "psnr")]
    for scene_id in store.list_scenes():
        attrs = store.scene_attrs(scene_id)
        nerf = attrs.get("nerf") or {}
        psnr = nerf.get("psnr_holdout")
        rows.append(
            (
                scene_id,
                "x".join(str(s) for s in attrs.get("resolution", [])),
                f"{attrs.get('voxel_size', float('nan')):.4g}",
                str(attrs.get("source", "")),
                "" if psnr is None else f"{psnr:.2f}",
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(rows) - 1} scene(s) in {args.url}")
    return 0


def refuse_duplicate_ids(ids: list[str], what: str) -> None:
    """Two inputs must not write the same scene (the second would replace the first)."""
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"two {what} give the same scene id: {sorted(i for i in ids if ids.count(i) > 1)}"
        )


def run_add(args: argparse.Namespace) -> int:
    from grid_store import GridStore, RadianceGrid, validate_scene_id
    from pipeline.labels import GROUND_TRUTH_FILE

    # Every source and id is checked (and every grid read) before the store is touched.
    jobs = []
    for source in args.sources:
        path, scene_id = source, source.stem
        if source.is_dir():
            path, scene_id = source / GROUND_TRUTH_FILE, source.name
        grid = RadianceGrid.load_npz(path).with_empty_space(args.empty_below)
        jobs.append((validate_scene_id(scene_id), grid, path))
    refuse_duplicate_ids([j[0] for j in jobs], "sources")
    store = GridStore(args.url, mode="a")
    for scene_id, grid, path in jobs:
        store.write_grid(scene_id, grid)
        labels = "semantic" if grid.semantic is not None else "no semantic"
        boxes = f"{len(grid.boxes)} boxes" if grid.boxes is not None else "no boxes"
        print(f"{scene_id}: {'x'.join(map(str, grid.shape))} voxel {grid.voxel_size:.4g}, "
              f"{labels}, {boxes} <- {path}")  # fmt: skip
    print(f"added {len(jobs)} scene(s) to {args.url}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from grid_store import GridStore, validate_scene_id
    from pipeline.interop import import_rpn_npz

    # Every file and id is checked before the store is touched.
    jobs = []
    for path in args.files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such .npz file")
        scene_id = validate_scene_id(path.stem)
        boxes = None
        if args.boxes_dir is not None and (args.boxes_dir / f"{path.stem}.npy").is_file():
            boxes = args.boxes_dir / f"{path.stem}.npy"
        jobs.append((path, scene_id, boxes))
    refuse_duplicate_ids([j[1] for j in jobs], "files")

    store = GridStore(args.url, mode="a")
    for path, scene_id, boxes in jobs:
        grid = import_rpn_npz(path, density=args.density, boxes=boxes, ngp_y_up=args.ngp_y_up)
        store.write_grid(scene_id, grid)
        print(f"{scene_id}: {'x'.join(map(str, grid.shape))} voxel {grid.voxel_size:.4g} <- {path}")
    print(f"imported {len(jobs)} scene(s) into {args.url}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from grid_store import GridStore
    from pipeline.interop import export_rpn_npz

    store = GridStore(args.url, mode="r")
    available = store.list_scenes()
    wanted = args.scene_id or available
    missing = [s for s in wanted if s not in available]
    if missing:
        raise ValueError(f"{args.url}: no complete scene(s) {missing}")
    for scene_id in wanted:
        out = export_rpn_npz(
            store.read_grid(scene_id), args.out_dir / f"{scene_id}.npz", density=args.density
        )
        print(f"{scene_id} -> {out}")
    print(f"exported {len(wanted)} scene(s) to {args.out_dir}")
    return 0
