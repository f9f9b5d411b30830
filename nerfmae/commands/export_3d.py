"""``nerfmae export-3d``: one store scene as PLY files for a 3D viewer: its occupied voxels as
a coloured point cloud, its ground-truth boxes (green) and a ``boxes.json``'s detections (red)
as line sets, all in world units."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-3d",
        help="write a store scene as PLY: occupied voxels (point cloud), GT and predicted "
        "boxes (line sets), for Open3D / MeshLab / CloudCompare",
        description="Write <OUT>/<scene>_points.ply (the samples with alpha >= "
        "--alpha-threshold, in their colours), <scene>_gt_boxes.ply (the boxes the scene "
        "stores, green) and, with --boxes, <scene>_pred_boxes.ply (the detections scoring at "
        "least --score-threshold, red). World units throughout.",
    )
    parser.add_argument("--store", required=True, help="store URL (path, memory://, s3://...)")
    parser.add_argument("--scene-id", required=True, help="the scene to export")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PLY files")
    parser.add_argument(
        "--boxes",
        type=Path,
        default=None,
        help="a boxes.json of detections for this scene (nerfmae detect's output)",
    )
    parser.add_argument(
        "--alpha-threshold",
        type=float,
        default=0.01,
        help="samples with alpha at least this are points (default 0.01, the store's "
        "empty-space rule)",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.0,
        help="export detections scoring at least this (default 0.0)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.export_3d import export_scene, ply_element_counts, read_boxes_json

    written = export_scene(
        args.store,
        args.scene_id,
        args.out,
        boxes_json=args.boxes,
        alpha_threshold=args.alpha_threshold,
        score_threshold=args.score_threshold,
    )

    for kind, path in written.items():
        counts = ply_element_counts(path)
        if kind == "points":
            print(f"{path}: {counts.get('vertex', 0)} points")
            continue
        n = counts.get("edge", 0) // 12
        if kind == "gt_boxes":
            print(f"{path}: {n} ground-truth boxes")
        else:
            total = len(read_boxes_json(args.boxes)[0])
            print(f"{path}: {n} of {total} predicted boxes (score >= {args.score_threshold:g})")
    return 0
