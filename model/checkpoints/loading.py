"""``load_model(path)``: the network of any checkpoint the project knows, weights loaded
strictly, in eval mode.

Ours give back the network they were trained as (the MAE, the semantic or super-resolution
skip network, the detector); the published MAE gives a :class:`~model.networks.mae.NeRFMAE`
and the published Front3D detector a :class:`~model.networks.detector.Detector` whose
``forward_features`` / ``forward_encoder`` / ``forward_decoder`` / ``forward_loss`` and
``forward`` compute what the reference code computes.

Strict means: every tensor of the network is set from the file, every tensor of the file
has a place, shapes agree; anything else is an error naming the tensors. Two exceptions,
both checked: the fixed sin-cos ``pos_embed`` (verified against ours when the sizes agree,
never loaded, so ``resolution=`` may change it) and the reference's fifth, unused FCOS scale.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.checkpoints.reading import Checkpoint, read_checkpoint
from model.networks.detector import Detector, DetectorConfig
from model.networks.mae import MAEConfig, NeRFMAE
from model.networks.skip_net import build_semantic_net, build_superres_net

POS_EMBED = "pos_embed"


def _split_overrides(checkpoint: Checkpoint, overrides: dict[str, Any]):
    mae_fields = {f.name for f in dataclasses.fields(MAEConfig)}
    detector_fields = {f.name for f in dataclasses.fields(DetectorConfig)}
    mae, detector, network = {}, {}, {}
    for name, value in overrides.items():
        if name in mae_fields:
            mae[name] = value
        elif checkpoint.task == "detect" and name in detector_fields:
            detector[name] = value
        elif name in ("num_classes", "scale", "semantic_network"):
            network[name] = value
        else:
            raise ValueError(f"{name}: not a setting of this {checkpoint.task} network "
                             f"(MAEConfig, DetectorConfig, num_classes, scale)")  # fmt: skip
    return mae, detector, network


def build_network(checkpoint: Checkpoint, **overrides: Any) -> nn.Module:
    """The (randomly initialised) network a checkpoint's weights belong to; ``overrides``
    change :class:`MAEConfig` / :class:`DetectorConfig` fields or the head's ``num_classes``
    / ``scale``."""
    mae_over, detector_over, network_over = _split_overrides(checkpoint, overrides)
    config = MAEConfig(**{**checkpoint.mae_config, **mae_over})
    network = {**checkpoint.network, **network_over}
    if checkpoint.task == "pretrain":
        return NeRFMAE(config)
    if checkpoint.task == "detect":
        return Detector(config, DetectorConfig(**{**checkpoint.detector_config, **detector_over}))
    if checkpoint.task == "semantics":
        return build_semantic_net(config, int(network["num_classes"]),
                                  network.get("semantic_network", "skip"))
    if checkpoint.task == "superres":
        if "scale" not in network:
            raise ValueError(f"{checkpoint.path}: model_config.scale: not recorded (a "
                             "checkpoint from before it was); pass scale=<the target/input "
                             "voxel size ratio>")  # fmt: skip
        return build_superres_net(config, float(network["scale"]))
    raise ValueError(f"{checkpoint.path}: task: {checkpoint.task!r} has no network")


def _extra_scales(model: nn.Module, names: set[str]) -> set[str]:
    """The reference's unused FCOS scales (index beyond the network's levels)."""
    levels = len(getattr(getattr(model, "head", None), "scales", []))
    return {n for n in names if n.startswith("head.scales.") and int(n.split(".")[2]) >= levels}


def load_weights(model: nn.Module, checkpoint: Checkpoint) -> None:
    """Set every tensor of ``model`` from ``checkpoint`` (strict: see the module doc)."""
    own = model.state_dict()
    state = dict(checkpoint.state)
    table = state.pop(POS_EMBED, None)
    if table is not None and POS_EMBED in own and table.shape == own[POS_EMBED].shape:
        if not torch.allclose(table.float(), own[POS_EMBED], atol=1e-6):
            raise ValueError(f"{checkpoint.path}: {POS_EMBED}: not the fixed 3D sin-cos table "
                             "this project computes")  # fmt: skip
    unexpected = sorted(set(state) - set(own) - _extra_scales(model, set(state)))
    missing = sorted(set(own) - set(state) - {POS_EMBED})
    common = sorted(set(state) & set(own))
    misshapen = [f"{n} {tuple(state[n].shape)} vs {tuple(own[n].shape)}" for n in common
                 if state[n].shape != own[n].shape]  # fmt: skip
    if unexpected or missing or misshapen:
        raise ValueError(
            f"{checkpoint.describe()}: does not fit {type(model).__name__}: "
            + "; ".join(f"{what} {names[:6]}" for what, names in (
                ("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
                if names)  # fmt: skip
        )
    model.load_state_dict({n: t for n, t in state.items() if n in own}, strict=False)


def network_of(checkpoint: Checkpoint, **overrides: Any) -> nn.Module:
    """The network of a read checkpoint, weights loaded strictly, in eval mode on the CPU.
    ``overrides``: see :func:`build_network`."""
    model = build_network(checkpoint, **overrides)
    load_weights(model, checkpoint)
    return model.eval()


def load_model(path: str | Path, trusted: bool = False, **overrides: Any) -> nn.Module:
    """The network of the checkpoint at ``path`` (ours of any task, or a published NeRF-MAE
    file): :func:`network_of` the checkpoint :func:`read_checkpoint` reads."""
    return network_of(read_checkpoint(path, trusted), **overrides)
