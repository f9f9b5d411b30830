"""``nerfmae evaluate``: a detection checkpoint's AP25/AP50 and recalls over a store's scenes
(the evaluator validation uses; all scenes ranked together, VOC all-point AP)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nerfmae.commands import add_network_flags


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a detection checkpoint on a store's boxes (AP25, AP50, recall)",
        description="Detect boxes in every given scene and score them against the stored boxes.",
    )
    p.add_argument("--store", required=True, help="grid store URL (scenes with boxes)")
    p.add_argument("--checkpoint", required=True, help="RUN/checkpoints/latest.pt of a detect run")
    p.add_argument("--scene-ids", nargs="+", help="scenes to score (default: every scene)")
    p.add_argument("--pictures", type=Path, help="draw each scene's boxes to DIR/<scene>.png")
    p.add_argument("--out", type=Path, help="also write the metrics as JSON here")
    add_network_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from grid_store import GridStore
    from model.inference.detection import evaluate_detector, load_detector

    model, alpha_step = load_detector(args.checkpoint, args.device, args.alpha_step)
    scenes = args.scene_ids or GridStore(args.store, mode="r").list_scenes()
    metrics = evaluate_detector(model, args.store, scenes, args.device, args.pictures, alpha_step)
    text = json.dumps(metrics, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0
