"""``nerfmae detect``: one scene's oriented boxes from a detection checkpoint, in world units.

Writes ``boxes.json``: ``{"scene_id", "units": "world", "box_format": [cx, cy, cz, w, l, h,
yaw], "detections": [{"box": [...], "score": s, "label": null}, ...]}``, best first; view it
with ``nerfmae export-3d --boxes boxes.json`` (PLY) or ``--picture`` (PNG).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nerfmae.commands import add_network_flags


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "detect",
        help="detect oriented 3D boxes in one scene (boxes.json, world units)",
        description="Run a `nerfmae finetune detect` checkpoint on one scene of a store.",
    )
    p.add_argument("--store", required=True, help="grid store URL")
    p.add_argument("--scene-id", required=True, help="the scene to detect boxes in")
    p.add_argument("--checkpoint", required=True, help="RUN/checkpoints/latest.pt of a detect run")
    p.add_argument("--out", required=True, type=Path, help="boxes.json to write")
    p.add_argument("--score-threshold", type=float, default=0.0,
                   help="keep detections scoring at least this (default: all)")  # fmt: skip
    p.add_argument("--picture", type=Path, help="also draw the boxes over the grid (PNG)")
    add_network_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model.inference.detection import detect_scenes, load_detector
    from model.pictures.boxes import save_box_views
    from pipeline.export_3d import write_boxes_json

    model, alpha_step = load_detector(args.checkpoint, args.device, args.alpha_step)
    found = next(detect_scenes(model, args.store, [args.scene_id], args.device, alpha_step))
    keep = found.scores >= args.score_threshold
    write_boxes_json(args.out, args.scene_id, found.world_boxes[keep], found.scores[keep])
    print(f"{args.out}: {int(keep.sum())} boxes (world units) in scene {args.scene_id}")
    if args.picture is not None:
        save_box_views(args.picture, found.rgba, found.valid, found.gt_boxes,
                       found.boxes[keep], found.scores[keep],
                       title=f"scene {args.scene_id}")  # fmt: skip
        print(f"{args.picture}: bird's-eye view and slices (green: stored boxes, red: detected)")
    return 0
