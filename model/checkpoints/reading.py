"""Every checkpoint the project knows, read one way and told apart by content.

- this project's run checkpoints (:mod:`model.training.checkpointing`: pretraining, semantic
  labelling, super-resolution, detection), any task;
- NeRF-MAE's published MAE (``nerf_mae_pretrained.pt``: ``state_dict``) and detector
  (``front3d_obb_finetuned.pt``: ``backbone_state_dict`` + ``fcos_state_dict``), as they are.

:func:`read_checkpoint` gives a :class:`Checkpoint`: the weights in our names, the
architecture as our configs' fields (read from the tensor shapes for published files), the
task, and where training stood. Files are read with ``torch.load(weights_only=True)``: a file
that holds Python objects beyond tensors and plain values is refused with the object named
(``trusted=True`` unpickles it, for a file whose origin you trust); a truncated or corrupt
file is refused with its path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from model.checkpoints.reference import (
    BACKBONE_RULES,
    FCOS_RULES,
    MAE_RULES,
    REFERENCE_ALPHA_STEP,
    from_reference,
    infer_detector_config,
    infer_mae_config,
)
from model.training.checkpointing import (
    CHECKPOINT_FORMAT,
    LEGACY_FORMATS,
    check_checkpoint,
    load_file,
)

OURS = CHECKPOINT_FORMAT
REFERENCE_MAE = "reference-mae"
REFERENCE_DETECTOR = "reference-detector"
FORMAT_NAMES = {
    OURS: "a nerf-mae run checkpoint",
    REFERENCE_MAE: "NeRF-MAE's published MAE layout (nerf_mae_pretrained.pt)",
    REFERENCE_DETECTOR: "NeRF-MAE's published detector layout (front3d_obb_finetuned.pt)",
}


@dataclass
class Checkpoint:
    """A checkpoint of any known format, in this project's terms."""

    path: str
    format: str
    """``nerf-mae-run``, ``reference-mae`` or ``reference-detector``."""
    task: str
    """``pretrain``, ``semantics``, ``superres`` or ``detect``."""
    state: dict[str, Tensor]
    """The network's weights under our names."""
    mae_config: dict[str, Any]
    """:class:`~model.networks.mae.MAEConfig` fields of the encoder (and MAE)."""
    detector_config: dict[str, Any] | None = None
    """:class:`~model.networks.detector.DetectorConfig` fields (detection only)."""
    network: dict[str, Any] = field(default_factory=dict)
    """What else builds the network (``num_classes`` of a semantic head and
    ``semantic_network`` of its body, ``scale`` of a super-resolution head)."""
    alpha_step: float | None = None
    """The opacity convention the network was trained on (see
    :attr:`model.training.config.TrainingConfig.alpha_step`): grids meet it re-expressed
    for this step; ``None``: as stored."""
    class_names: list[str] | None = None
    """Names of the network's classes, by index (semantic labels, box classes), where the
    run recorded them."""
    step: int | None = None
    epoch: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    """The file's own dictionary (our format: everything; published: ``train_args``)."""

    def describe(self) -> str:
        return f"{self.path} ({FORMAT_NAMES[self.format]}, task {self.task})"


def detect_format(content: Any) -> str | None:
    """The format of a loaded file, or ``None`` when it is none of the known ones."""
    if not isinstance(content, Mapping):
        return None
    if content.get("format") in (CHECKPOINT_FORMAT, *LEGACY_FORMATS):
        return OURS
    if "backbone_state_dict" in content and "fcos_state_dict" in content:
        return REFERENCE_DETECTOR
    state = content.get("state_dict")
    if isinstance(state, Mapping) and "patch_partition.0.weight" in state:
        return REFERENCE_MAE
    return None


def read_checkpoint(path: str | Path, trusted: bool = False) -> Checkpoint:
    """The checkpoint at ``path``, whatever its format (see the module doc)."""
    content = load_file(path, trusted)
    kind = detect_format(content)
    if kind is None:
        keys = sorted(content)[:8] if isinstance(content, Mapping) else type(content).__name__
        raise ValueError(f"{path}: not a {OURS!r} checkpoint nor a published NeRF-MAE file "
                         f"(keys {keys}); known: {', '.join(FORMAT_NAMES.values())}")  # fmt: skip
    if kind == OURS:
        return _ours(str(path), check_checkpoint(content, path))
    train_args = dict(content.get("train_args") or {})
    epoch = content.get("epoch")
    if kind == REFERENCE_MAE:
        state = content["state_dict"]
        return Checkpoint(
            str(path), kind, "pretrain", from_reference(state, MAE_RULES, str(path)),
            infer_mae_config(state, train_args), alpha_step=REFERENCE_ALPHA_STEP, epoch=epoch,
            raw={"train_args": train_args},
        )  # fmt: skip
    backbone, fcos = content["backbone_state_dict"], content["fcos_state_dict"]
    state = {**from_reference(backbone, BACKBONE_RULES, str(path)),
             **from_reference(fcos, FCOS_RULES, str(path))}  # fmt: skip
    return Checkpoint(
        str(path), kind, "detect", state, infer_mae_config(backbone, train_args, prefix="base."),
        infer_detector_config(fcos, backbone, train_args), alpha_step=REFERENCE_ALPHA_STEP,
        epoch=epoch, raw={"train_args": train_args},
    )  # fmt: skip


def _ours(path: str, content: dict[str, Any]) -> Checkpoint:
    saved = dict(content.get("model_config") or {})
    detector = saved.pop("detector", None)
    network = {key: saved.pop(key)
               for key in ("network", "num_classes", "scale", "semantic_network")
               if key in saved}  # fmt: skip
    alpha_step = saved.pop("alpha_step", None)
    class_names = saved.pop("class_names", None)
    state = content["model"]
    task = content.get("task", "pretrain")
    if task == "semantics" and "num_classes" not in network and "head.weight" in state:
        network["num_classes"] = int(state["head.weight"].shape[0])  # before it was recorded
    if detector is not None:
        detector = {"scale_offsets": False, **detector}  # recorded since the field exists
    position = content.get("position") or {}
    return Checkpoint(path, OURS, task, state, saved, detector, network, alpha_step,
                      class_names=class_names, step=position.get("step"),
                      epoch=position.get("epoch"), raw=content)  # fmt: skip
