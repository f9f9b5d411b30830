"""What a checkpoint is (``nerfmae checkpoint info``), and this project's pretraining and
detection checkpoints written in NeRF-MAE's published layouts (``nerfmae checkpoint export
--format reference``), so the reference code loads them as it loads the authors' files:

- a pretraining checkpoint -> ``{"epoch", "state_dict", "train_args"}`` (the MAE's state dict
  in the reference's names, with every Swin block's ``relative_position_index``);
- a detection checkpoint -> ``{"epoch", "backbone_state_dict", "fcos_state_dict",
  "train_args"}`` (with the reference's fifth, unused FCOS scale, set to 1).

Weights keep their dtype (float32); ``train_args`` holds plain values only, so the file reads
with ``torch.load(weights_only=True)``. A detector whose head scales only the 6 distances
(``scale_offsets=False``, detectors trained before the field existed) is refused: the
reference's head scales all 8 channels, so it would decode such a detector's boxes otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from model.checkpoints.reading import (
    FORMAT_NAMES,
    REFERENCE_DETECTOR,
    REFERENCE_MAE,
    Checkpoint,
    read_checkpoint,
)
from model.checkpoints.reference import (
    BACKBONE_RULES,
    FCOS_RULES,
    MAE_RULES,
    plain_train_args,
    to_reference,
)
from nerfmae_common.files import atomic_write

REFERENCE_FCOS_SCALES = 5
"""The reference builds one FCOS scale more than it has FPN levels."""


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Format, task, architecture, epoch/step and tensor counts of a checkpoint."""
    checkpoint = read_checkpoint(path)
    tensors = checkpoint.state.values()
    return {
        "path": str(path),
        "format": checkpoint.format,
        "format_name": FORMAT_NAMES[checkpoint.format],
        "task": checkpoint.task,
        "architecture": checkpoint.mae_config,
        "detector": checkpoint.detector_config,
        "network": checkpoint.network,
        "epoch": checkpoint.epoch,
        "step": checkpoint.step,
        "tensors": len(checkpoint.state),
        "parameters": int(sum(t.numel() for t in tensors)),
        "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in tensors}),
    }


def _train_args(checkpoint: Checkpoint) -> dict[str, Any]:
    return plain_train_args({
        "exported_by": "nerf-mae (this project): nerfmae checkpoint export",
        "source": checkpoint.path,
        "task": checkpoint.task,
        "mae_config": checkpoint.mae_config,
        "detector_config": checkpoint.detector_config,
        "config": checkpoint.raw.get("config", checkpoint.raw.get("train_args", {})),
    })  # fmt: skip


def reference_layout(checkpoint: Checkpoint) -> dict[str, Any]:
    """The dictionary of the published file ``checkpoint`` becomes (see the module doc)."""
    epoch = checkpoint.epoch if checkpoint.epoch is not None else 0
    if checkpoint.task == "pretrain":
        return {"epoch": epoch, "state_dict": to_reference(checkpoint.state, MAE_RULES),
                "train_args": _train_args(checkpoint)}  # fmt: skip
    if checkpoint.task != "detect":
        raise ValueError(f"{checkpoint.path}: task: {checkpoint.task!r} checkpoints have no "
                         "published layout (pretraining and detection do)")  # fmt: skip
    if not checkpoint.detector_config.get("scale_offsets", False):
        raise ValueError(
            f"{checkpoint.path}: detector.scale_offsets: this detector's head scales only the 6 "
            "distances; the reference's scales all 8 regression channels and would decode its "
            "boxes otherwise (detectors trained since scale_offsets exists export)"
        )
    backbone = {n: t for n, t in checkpoint.state.items() if not n.startswith("head.")}
    head = {n: t for n, t in checkpoint.state.items() if n.startswith("head.")}
    fcos = to_reference(head, FCOS_RULES)
    levels = sum(1 for n in fcos if n.startswith("head.scales."))
    for level in range(levels, REFERENCE_FCOS_SCALES):
        fcos[f"head.scales.{level}.scale"] = torch.ones(1)
    return {"epoch": epoch, "backbone_state_dict": to_reference(backbone, BACKBONE_RULES),
            "fcos_state_dict": fcos, "train_args": _train_args(checkpoint)}  # fmt: skip


def export_reference(path: str | Path, out: str | Path) -> tuple[Path, str]:
    """Write the checkpoint at ``path`` in its published layout to ``out`` (atomically);
    returns ``(out, the layout's format name)``."""
    checkpoint = read_checkpoint(path)
    content = reference_layout(checkpoint)
    atomic_write(out, lambda f: torch.save(content, f))
    kind = REFERENCE_MAE if "state_dict" in content else REFERENCE_DETECTOR
    return Path(out), kind


def tensor_layout(state: Mapping[str, torch.Tensor]) -> dict[str, tuple]:
    """``{name: (shape, floating or integer)}``: what two layouts must share."""
    return {n: (tuple(t.shape), t.is_floating_point()) for n, t in state.items()}
