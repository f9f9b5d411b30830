"""``nerfmae evaluate``: a detection checkpoint's AP25/AP50 (per class too), recalls and
counts over a store's scenes (the evaluator validation uses; all scenes ranked together,
VOC all-point AP; whole scenes, as validation reads them).

By default the checkpoint is scored on the scenes its run held out for validation (recorded
in the checkpoint): figures on training scenes say little about a detector. Other scenes are
scored when asked for (``--scene-ids``, ``--all-scenes``), and the output says which scenes
were scored and how many of them the run trained on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nerfmae.commands import add_network_flags, add_window_flag


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a detection checkpoint on a store's boxes (AP25, AP50, recall)",
        description="Detect boxes in whole scenes and score them against the stored boxes "
                    "(default: the validation scenes of the checkpoint's run).",
    )  # fmt: skip
    p.add_argument("--store", required=True, help="grid store URL (scenes with boxes)")
    p.add_argument("--checkpoint", required=True,
                   help="RUN/checkpoints/best.pt (or latest.pt) of a detect run")  # fmt: skip
    which = p.add_mutually_exclusive_group()
    which.add_argument("--scene-ids", nargs="+",
                       help="score these scenes (default: the run's validation ones)")
    which.add_argument("--all-scenes", action="store_true",
                       help="score every scene of the store (training ones included)")
    p.add_argument("--pictures", type=Path, help="draw each scene's boxes to DIR/<scene>.png")
    p.add_argument("--out", type=Path, help="also write the metrics as JSON here")
    add_window_flag(p)
    add_network_flags(p)
    p.set_defaults(func=run)


def scored_scenes(args: argparse.Namespace, detector) -> tuple[list[str], str]:
    """The scenes to score and how they were chosen."""
    if args.scene_ids:
        return list(args.scene_ids), "given (--scene-ids)"
    if args.all_scenes:
        from grid_store import GridStore

        return GridStore(args.store, mode="r").list_scenes(), "every scene of the store"
    if not detector.val_scenes:
        raise ValueError(
            f"{args.checkpoint}: records no validation scenes of its run (published weights, "
            "or a run without validation): name the scenes to score with --scene-ids, or "
            "--all-scenes"
        )
    return list(detector.val_scenes), "validation scenes of the checkpoint's run"


def run(args: argparse.Namespace) -> int:
    from model.inference.detection import evaluate_detector, load_detector

    detector = load_detector(args.checkpoint, args.device, args.alpha_step)
    scenes, chosen = scored_scenes(args, detector)
    trained = sorted(set(scenes) & set(detector.train_scenes or ()))
    metrics = evaluate_detector(detector, args.store, scenes, args.device, args.pictures,
                                args.window_overlap)  # fmt: skip
    metrics["scored_scenes"] = {"chosen": chosen, "count": len(scenes), "ids": scenes,
                                "training_scenes_of_the_run": trained}  # fmt: skip
    text = json.dumps(metrics, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    print(f"scored {len(scenes)} scenes: {chosen}", file=sys.stderr)
    if trained:
        print(f"note: {len(trained)} of them are training scenes of the checkpoint's run "
              f"({', '.join(trained[:5])}{', ...' if len(trained) > 5 else ''}): these figures "
              "are not held-out", file=sys.stderr)  # fmt: skip
    return 0
