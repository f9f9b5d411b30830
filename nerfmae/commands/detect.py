"""``nerfmae detect``: one scene's oriented boxes from a detection checkpoint, in world units.

The whole scene is searched: a grid larger than the detector's cube is read through
overlapping cubes whose boxes are merged with rotated NMS. Writes ``boxes.json``:
``{"scene_id", "units": "world", "box_format": [cx, cy, cz, w, l, h, yaw], "detections":
[{"box": [...], "score": s, "label": k, "class": "chair"}, ...]}``, best first (``label``
null for a class-agnostic detector); view it with ``nerfmae export-3d --boxes boxes.json``
(PLY) or ``--picture`` (PNG).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from nerfmae.commands import add_network_flags, add_window_flag


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "detect",
        help="detect oriented 3D boxes in one whole scene (boxes.json, world units)",
        description="Run a `nerfmae finetune detect` checkpoint on one scene of a store.",
    )
    p.add_argument("--store", required=True, help="grid store URL")
    p.add_argument("--scene-id", required=True, help="the scene to detect boxes in")
    p.add_argument("--checkpoint", required=True,
                   help="RUN/checkpoints/best.pt (or latest.pt) of a detect run")  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="boxes.json to write")
    p.add_argument("--score-threshold", type=float, default=0.0,
                   help="keep detections scoring at least this (default: all)")  # fmt: skip
    p.add_argument("--picture", type=Path, help="also draw the boxes over the grid (PNG)")
    add_window_flag(p)
    add_network_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model.inference.detection import detect_scenes, draw_scene, load_detector
    from pipeline.export_3d import write_boxes_json

    detector = load_detector(args.checkpoint, args.device, args.alpha_step)
    found = next(detect_scenes(detector, args.store, [args.scene_id], args.device,
                               args.window_overlap))  # fmt: skip
    keep = found.scores >= args.score_threshold
    classes = detector.class_names
    write_boxes_json(args.out, args.scene_id, found.world_boxes[keep], found.scores[keep],
                     found.labels[keep] if classes else None, classes)  # fmt: skip
    counted = ""
    if classes:
        counts = Counter(classes[k] for k in found.labels[keep])
        counted = " (" + ", ".join(f"{n} {name}" for name, n in counts.most_common()) + ")"
    print(f"{args.out}: {int(keep.sum())} boxes (world units) in scene {args.scene_id}{counted}")
    if args.picture is not None:
        draw_scene(args.picture, found, detector, keep)
        print(f"{args.picture}: bird's-eye view and slices (legend: stored and detected boxes)")
    return 0
