"""``nerfmae features``: the encoder's four stage maps of one scene (any checkpoint with an
encoder: pretraining, fine-tuning, detection, or NeRF-MAE's published files) as an ``.npz``
with their strides and the grid's box, for any head you put on them."""

from __future__ import annotations

import argparse
from pathlib import Path

from nerfmae.commands import add_network_flags


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "features",
        help="NeRF-MAE encoder features of one scene (4 stage maps, strides, grid box) as .npz",
        description="Run a checkpoint's encoder on one scene of a store and write its stage "
        "maps (stage_0..stage_3, (C, D, H, W) float32), strides, bbox_min and voxel_size.",
    )
    p.add_argument("--store", required=True, help="grid store URL")
    p.add_argument("--scene-id", required=True)
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="a checkpoint with an encoder (or nerf_mae_pretrained.pt)")  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="the .npz to write")
    add_network_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model.inference.features import save_features, scene_features

    features = scene_features(args.checkpoint, args.store, args.scene_id, args.device,
                              args.alpha_step)  # fmt: skip
    save_features(features, args.out)
    shapes = ", ".join("x".join(map(str, s.shape)) for s in features["stages"])
    print(f"{args.out}: {len(features['stages'])} stages ({shapes}), strides "
          f"{features['strides']}")  # fmt: skip
    return 0
