"""Start a downstream network from a pretraining checkpoint: which tensors carry over.

A NeRF-MAE pretraining checkpoint (this project's, :mod:`model.training.checkpointing`, or
the published ``nerf_mae_pretrained.pt``; :func:`model.checkpoints.reading.read_checkpoint`
reads both) holds the whole MAE. A downstream :class:`model.networks.skip_net.SkipNet`
takes from it:

- ``encoder.*`` (patch embedding, every Swin stage) -> ``encoder.*``;
- ``decoder.decoder{4,3,2}.*`` -> ``decoder{4,3,2}.*`` (the reference fine-tunes them too);

and leaves out the rest: ``mask_token`` (there is no masking downstream), the MAE's
``decoder.decoder1`` and ``decoder.out`` (the downstream network has its own, with a skip),
and ``pos_embed``, which is the fixed sin-cos table of the network's own resolution (frozen
in both; recomputed, never loaded). Everything of the downstream network that is not
loaded starts fresh (``encoder1``, ``decoder1``, the head).

A checkpoint of another architecture (embedding width, depths, heads, window, patch size,
input channels) is refused with the field named. Another *resolution* only changes the
positional table; it is refused too unless ``allow_resolution_change`` says it is meant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from model.checkpoints.reading import FORMAT_NAMES, Checkpoint, read_checkpoint

ARCHITECTURE_FIELDS = (
    "in_channels", "patch_size", "embed_dim", "depths", "num_heads", "window", "mlp_ratio",
)  # fmt: skip
"""MAEConfig fields that shape the encoder's and decoder's tensors."""

CARRIED_PREFIXES = {
    "encoder.": "encoder.",
    "decoder.decoder4.": "decoder4.",
    "decoder.decoder3.": "decoder3.",
    "decoder.decoder2.": "decoder2.",
}
"""Pretraining state-dict prefix -> downstream prefix."""

ENCODER_ONLY = {"encoder.": "encoder."}
"""The detector's share of a checkpoint: NeRF-RPN's FPN and head start from scratch."""

ENCODER_STAGES = 4
"""Swin stages of every preset's encoder (``MAEConfig`` refuses other counts)."""


def first_stages(prefixes: dict[str, str], stages: int | None) -> dict[str, str]:
    """``prefixes`` cut to the patch embedding and the first ``stages`` encoder stages.

    ``None`` (or all four stages) returns ``prefixes`` unchanged. Fewer stages carry only
    those encoder tensors (a transfer of the early layers, the usual cure when a
    pretrained network's later layers suit the new task less than random ones do); the
    decoder blocks then start fresh too, since each reads a stage that no longer carries.
    """
    if stages is None or stages == ENCODER_STAGES:
        return dict(prefixes)
    if not 0 <= stages < ENCODER_STAGES:
        raise ValueError(f"carried_stages={stages}: must be in 0..{ENCODER_STAGES} or None")
    if "encoder." not in prefixes:
        raise ValueError(f"carried_stages={stages}: these prefixes carry no encoder: "
                         f"{sorted(prefixes)}")
    target = prefixes["encoder."]
    parts = ["patch_embed.", "patch_norm.", *(f"stages.{i}." for i in range(stages))]
    return {f"encoder.{part}": f"{target}{part}" for part in parts}


@dataclass
class TransferReport:
    """What :func:`load_pretrained` did, tensor by tensor (downstream names)."""

    source: str
    format: str = ""
    """Which layout the checkpoint was read in (:data:`~model.checkpoints.reading.FORMAT_NAMES`)."""
    loaded: list[str] = field(default_factory=list)
    """Downstream tensors set from the checkpoint."""
    fresh: list[str] = field(default_factory=list)
    """Downstream tensors left at their random (or fixed sin-cos) initialisation."""
    dropped: list[str] = field(default_factory=list)
    """Checkpoint tensors not used (pretraining names)."""
    step: int | None = None
    """The pretraining step the checkpoint was saved at."""
    epoch: int | None = None
    """The pretraining epoch it was saved at."""

    def summary(self) -> str:
        """One line: how many tensors of which modules were loaded, fresh and dropped."""
        when = f"step {self.step}" if self.step is not None else f"epoch {self.epoch}"
        return (
            f"{self.source} ({FORMAT_NAMES.get(self.format, self.format)}, {when}): loaded "
            f"{len(self.loaded)} tensors "
            f"({_modules(self.loaded)}), fresh {len(self.fresh)} ({_modules(self.fresh)}), "
            f"dropped {len(self.dropped)} ({_modules(self.dropped)})"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def _modules(names: list[str]) -> str:
    """The modules the tensor names belong to (``decoder.decoder1`` kept two deep)."""
    parts = {
        ".".join(n.split(".")[:2]) if n.startswith("decoder.") else n.split(".")[0] for n in names
    }
    return ", ".join(sorted(parts)) or "none"


def load_pretrained(
    model: nn.Module,
    source: str | Path | Checkpoint,
    *,
    allow_resolution_change: bool = False,
    prefixes: dict[str, str] | None = None,
) -> TransferReport:
    """Copy a pretraining checkpoint's encoder and decoder blocks 4-2 into ``model``.

    ``source`` is the checkpoint's path, or the checkpoint already read. ``model`` is a
    :class:`model.networks.skip_net.SkipNet` (anything with ``config`` and the same module
    names). ``prefixes`` (default :data:`CARRIED_PREFIXES`) says which checkpoint
    tensors go where; the detector takes only the encoder (``{"encoder.": "encoder."}``,
    :data:`ENCODER_ONLY`), the rest is dropped. Returns the report; nothing of ``model``
    changes when it raises.

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: not a checkpoint of a known format, another architecture, another
            resolution (without ``allow_resolution_change``), or a tensor whose shape differs.
    """
    checkpoint = source if isinstance(source, Checkpoint) else read_checkpoint(source)
    path = checkpoint.path
    task = checkpoint.task
    if task != "pretrain":
        raise ValueError(
            f"{path}: task: this is a {task!r} fine-tuning checkpoint; the encoder comes from a "
            "pretraining run's checkpoint (RUN/checkpoints/latest.pt of `nerfmae pretrain`)"
        )
    saved_config = checkpoint.mae_config
    config = asdict(model.config)
    for name in ARCHITECTURE_FIELDS:
        if name not in saved_config:
            raise ValueError(f"{path}: model_config has no {name!r}: not a NeRF-MAE checkpoint")
        if saved_config[name] != config[name]:
            raise ValueError(
                f"{path}: model_config.{name} is {saved_config[name]!r}, this network's is "
                f"{config[name]!r}: the checkpoint is of another model preset"
            )
    if saved_config.get("resolution") != config["resolution"] and not allow_resolution_change:
        raise ValueError(
            f"{path}: model_config.resolution is {saved_config.get('resolution')}, this "
            f"network's is {config['resolution']}; the encoder's weights do not depend on it "
            "(only the fixed sin-cos positional table does): allow the change on purpose "
            "(allow_resolution_change=True, --allow-resolution-change)"
        )

    carried = CARRIED_PREFIXES if prefixes is None else prefixes
    own = model.state_dict()
    updates = {}
    report = TransferReport(source=str(path), format=checkpoint.format, step=checkpoint.step,
                            epoch=checkpoint.epoch)  # fmt: skip
    for name, tensor in checkpoint.state.items():
        target = next(
            (
                new + name[len(old) :]
                for old, new in carried.items()
                if name.startswith(old)
            ),
            None,
        )
        if target is None:
            report.dropped.append(name)
            continue
        if target not in own or own[target].shape != tensor.shape:
            got = tuple(own[target].shape) if target in own else "absent"
            raise ValueError(
                f"{path}: tensor {name} {tuple(tensor.shape)} does not fit {target} ({got})"
            )
        updates[target] = tensor
    model.load_state_dict(updates, strict=False)
    report.loaded = sorted(updates)
    report.fresh = sorted(set(own) - set(updates))
    return report


def share_with_initialisation(
    model: nn.Module, initial: dict[str, Tensor], names: list[str], share: float
) -> None:
    """Move the tensors ``names`` of ``model`` (just loaded from a checkpoint) to
    ``share x loaded + (1 - share) x initial[name]``, ``initial`` being the model's state
    before loading (its fresh initialisation).

    A pretrained network that trains to a worse optimum than a fresh one (a warm start) is
    shrunk towards, and perturbed by, a fresh initialisation; using the network's own
    (seeded) one makes ``share`` a path from the scratch run (0) to the pretrained one (1).
    Floating-point tensors only (integer buffers are left as loaded).
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share={share}: must be in [0, 1]")
    state = model.state_dict()
    missing = sorted(set(names) - set(initial))
    if missing:
        raise ValueError(f"no initial value for {missing[:3]}: pass the state before loading")
    with torch.no_grad():
        for name in names:
            tensor = state[name]
            if tensor.is_floating_point():
                tensor.mul_(share).add_(initial[name].to(tensor), alpha=1.0 - share)
