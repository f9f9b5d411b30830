"""NeRF-MAE features of any scene: the encoder's four stage maps over a stored grid, for any
head a user puts on them (the authors' first advertised use of the published encoder).

The grid is read as training reads it (:class:`grid_store.dataset.GridDataset`: zero-padded
at the high end to the network's cube, its alpha re-expressed as the checkpoint's network was
trained on); stage ``i`` has stride ``p * 2**i`` voxels (``p`` the patch size), and its cell
``(a, b, c)`` covers voxels ``[a s, (a + 1) s)`` per axis of the stored grid, whose voxel
``(i, j, k)`` sits at ``bbox_min + (i, j, k) * voxel_size`` in world units.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grid_store import GridStore
from grid_store.dataset import GridDataset
from model.checkpoints.loading import network_of
from model.checkpoints.reading import read_checkpoint
from model.networks.encoder import EncoderFront

logger = logging.getLogger(__name__)


@torch.no_grad()
def scene_features(
    checkpoint_path: str | Path,
    store_url: str,
    scene_id: str,
    device: str = "cpu",
    alpha_step: float | None = None,
) -> dict[str, Any]:
    """The encoder's stage maps of one scene: ``{"stages": [(C_i, D_i, H_i, W_i) float32 arrays],
    "strides", "bbox_min", "voxel_size", "grid_shape", "input_size", "alpha_step",
    "checkpoint"}``; ``alpha_step`` overrides the opacity step the checkpoint was trained
    on."""
    checkpoint = read_checkpoint(checkpoint_path)
    model = network_of(checkpoint)
    if not isinstance(model, EncoderFront):
        raise ValueError(f"{checkpoint_path}: this {checkpoint.task} network has no encoder")
    model = model.to(device)
    size = model.config.resolution
    attrs = GridStore(store_url, mode="r").scene_attrs(scene_id)
    shape = [int(n) for n in attrs["resolution"]]
    if max(shape) > size:
        logger.warning("scene %s is %s voxels; the encoder sees its first %d^3 (the network's "
                       "cube)", scene_id, "x".join(map(str, shape)), size)  # fmt: skip
    alpha_step = alpha_step if alpha_step is not None else checkpoint.alpha_step
    dataset = GridDataset(store_url, [scene_id], size=size, alpha_step=alpha_step)
    rgba = dataset[0]["rgba"][None].to(device)  # (1, 4, S, S, S)
    stages = model.encode(model.embed_tokens(rgba))  # 4 x (1, C_i, D_i, H_i, W_i)
    patch = model.config.patch_size
    return {
        "stages": [s[0].float().cpu().contiguous().numpy() for s in stages],
        "strides": [patch * 2**i for i in range(len(stages))],
        "bbox_min": np.asarray(attrs["bbox_min"], np.float64),
        "voxel_size": float(attrs["voxel_size"]),
        "grid_shape": shape,
        "input_size": size,
        "alpha_step": alpha_step,
        "checkpoint": str(checkpoint_path),
    }


def save_features(features: dict[str, Any], path: str | Path) -> Path:
    """``features`` as an ``.npz``: ``stage_0..3``, ``strides``, ``bbox_min``, ``voxel_size``,
    ``grid_shape``, ``input_size`` and a ``meta`` JSON string (checkpoint, alpha step)."""
    import json

    from nerfmae_common.files import atomic_write

    arrays = {f"stage_{i}": stage for i, stage in enumerate(features["stages"])}
    arrays.update(strides=np.asarray(features["strides"]), bbox_min=features["bbox_min"],
                  voxel_size=np.float64(features["voxel_size"]),
                  grid_shape=np.asarray(features["grid_shape"]),
                  input_size=np.int64(features["input_size"]),
                  meta=np.array(json.dumps({"checkpoint": features["checkpoint"],
                                            "alpha_step": features["alpha_step"]})))  # fmt: skip
    return atomic_write(path, lambda f: np.savez(f, **arrays))
