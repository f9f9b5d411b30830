"""The layouts of NeRF-MAE's published checkpoints, and our networks' names in them.

``nerf_mae_pretrained.pt`` (the MAE after 1200 epochs) is ``{"epoch", "state_dict",
"train_args"}``; ``front3d_obb_finetuned.pt`` (the Front3D detector) is ``{"epoch",
"backbone_state_dict", "fcos_state_dict", "train_args"}``. ``train_args`` is the training
script's ``args.__dict__``. Every tensor has the shape and memory layout of ours; the names
differ by the renames below, which are applied both ways (loading and export). Besides:

- the Swin blocks' ``relative_position_index`` buffers are in the files (ours are recomputed,
  not saved): they must equal ours, and export writes them;
- the reference builds five FCOS ``Scale`` s and uses four; ours are 0-d, theirs ``(1,)``;
- architectures are not written anywhere but in the tensor shapes: :func:`infer_mae_config`
  and :func:`infer_detector_config` read them back (``train_args`` where it helps).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from model.networks.swin3d import relative_position_index

# (reference name prefix, our name prefix); ``{x}`` is a number, the same on both sides. The
# first rule whose pattern matches a name's start renames it (specific rules come first).
ENCODER_RULES = [
    ("patch_partition.0.", "encoder.patch_embed."),
    ("patch_partition.2.", "encoder.patch_norm."),
    ("stages.{s}.{b}.mlp.3.", "encoder.stages.{s}.{b}.mlp.2."),
    ("stages.", "encoder.stages."),
    ("pos_embed", "pos_embed"),
]
MAE_RULES = [
    *ENCODER_RULES,
    ("mask_token", "mask_token"),
    ("decoder{d}.transp_conv.", "decoder.decoder{d}.up."),
    ("decoder{d}.conv_block.conv3.", "decoder.decoder{d}.block.residual.0."),
    ("decoder{d}.conv_block.", "decoder.decoder{d}.block."),
    ("out.conv.", "decoder.out."),
]
BACKBONE_RULES = [
    *(("base." + ref, ours) for ref, ours in ENCODER_RULES),
    ("fpn_neck.lateral_convs.", "fpn.lateral."),
    ("fpn_neck.fpn_convs.", "fpn.output."),
]
FCOS_RULES = [
    ("head.bbox_tower.", "head.reg_tower."),
    ("head.", "head."),
]
SCALE = re.compile(r"^head\.scales\.(\d+)\.scale$")
INDEX_BUFFER = "relative_position_index"
REFERENCE_ALPHA_STEP = 0.01
"""The step NeRF-MAE's data turned density into alpha with (``1 - exp(-exp(raw) / 100)``:
instant-ngp's density over 0.01 of its scene units; HM3D's units are metres, scale 1). A
grid of ours (alpha over its own ``delta``) meets the published weights re-expressed for it
(:func:`grid_store.dataset.rescale_alpha`)."""


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\\\{(\w)\\\}", r"(?P<\1>\\d+)", re.escape(template)))


def rename(name: str, rules: list[tuple[str, str]], reverse: bool = False) -> str | None:
    """``name`` under the first matching rule (reference -> ours; ``reverse``: ours ->
    reference), or ``None`` when no rule matches."""
    for ref, ours in rules:
        source, target = (ours, ref) if reverse else (ref, ours)
        match = _pattern(source).match(name)
        if match:
            return target.format(**match.groupdict()) + name[match.end():]
    return None


class ReferenceLayoutError(ValueError):
    """A published-format state dict that does not fit the network (names the tensors)."""


def from_reference(
    state: Mapping[str, Tensor], rules: list[tuple[str, str]], where: str
) -> dict[str, Tensor]:
    """The reference's state dict in our names: ``relative_position_index`` buffers checked
    against ours and dropped, FCOS scales reshaped to 0-d, a name no rule knows refused."""
    ours: dict[str, Tensor] = {}
    unknown = []
    for name, tensor in state.items():
        if name.endswith(INDEX_BUFFER):
            window = round(tensor.numel() ** (1 / 6))
            if not torch.equal(tensor.long(), relative_position_index(window).flatten()):
                raise ReferenceLayoutError(
                    f"{where}: {name}: relative position index differs from the one this "
                    "project computes: not the reference's Swin blocks"
                )
            continue
        target = rename(name, rules)
        if target is None:
            unknown.append(name)
            continue
        if SCALE.match(name):
            tensor = tensor.reshape(())
        ours[target] = tensor
    if unknown:
        raise ReferenceLayoutError(f"{where}: tensors this project does not know: {unknown[:8]}")
    return ours


def to_reference(state: Mapping[str, Tensor], rules: list[tuple[str, str]]) -> dict[str, Tensor]:
    """Our state dict in the reference's names (what its ``load_state_dict`` takes), with the
    ``relative_position_index`` buffer of every Swin block and ``(1,)`` FCOS scales."""
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        target = rename(name, rules, reverse=True)
        if target is None:
            continue
        if SCALE.match(target):
            tensor = tensor.reshape(1)
        out[target] = tensor
        if target.endswith(".attn.relative_position_bias_table"):
            side = round(tensor.shape[0] ** (1 / 3))  # (2w - 1)^3 rows
            index = relative_position_index((side + 1) // 2).flatten()
            out[target.replace("relative_position_bias_table", INDEX_BUFFER)] = index
    return out


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for name in state if (m := regex.match(name))})


def infer_mae_config(state: Mapping[str, Tensor], train_args: Mapping[str, Any],
                     prefix: str = "") -> dict[str, Any]:  # fmt: skip
    """The :class:`~model.networks.mae.MAEConfig` fields a reference encoder (and MAE
    decoder, when present) has, from tensor shapes (reference names, under ``prefix``)."""
    patch = state[f"{prefix}patch_partition.0.weight"]  # (C, in, p, p, p)
    stages = _count(state, rf"^{re.escape(prefix)}stages\.(\d+)\.")
    depths, heads = [], []
    window = None
    for s in range(stages):
        blocks = _count(state, rf"^{re.escape(prefix)}stages\.{s}\.(\d+)\.norm1\.weight$")
        depths.append(blocks)
        first = next(k for k in state
                     if re.match(rf"^{re.escape(prefix)}stages\.{s}\.\d+\.attn\."
                                 r"relative_position_bias_table$", k))  # fmt: skip
        table = state[first]  # ((2w - 1)^3, heads)
        heads.append(int(table.shape[1]))
        window = (round(table.shape[0] ** (1 / 3)) + 1) // 2
    dim = int(patch.shape[0])
    mlp = state[f"{prefix}stages.0.0.mlp.0.weight"]  # (hidden, dim)
    tokens = int(state[f"{prefix}pos_embed"].shape[1])
    config: dict[str, Any] = {
        "resolution": tokens * int(patch.shape[2]), "in_channels": int(patch.shape[1]),
        "patch_size": int(patch.shape[2]), "embed_dim": dim, "depths": depths,
        "num_heads": heads, "window": window, "mlp_ratio": mlp.shape[0] / dim,
        "drop_path": float(train_args.get("stochastic_depth_prob", 0.1)),
        "mask_ratio": float(train_args.get("masking_prob", 0.75)), "mask_block": 4,
    }  # fmt: skip
    if f"{prefix}out.conv.weight" in state:
        config["out_channels"] = int(state[f"{prefix}out.conv.weight"].shape[0])
    return config


def infer_detector_config(fcos: Mapping[str, Tensor], backbone: Mapping[str, Tensor],
                          train_args: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The :class:`~model.networks.detector.DetectorConfig` fields of the reference's FPN and
    FCOS head: width, tower depth and classes from shapes; the reference's decoding (the
    level's scale on all 8 regression channels) and evaluation threshold (0.0)."""
    convs = _count({k: v for k, v in fcos.items() if v.ndim == 5},
                   r"^head\.cls_tower\.(\d+)\.weight$")  # fmt: skip
    return {
        "channels": int(backbone["fpn_neck.lateral_convs.0.weight"].shape[0]),
        "num_classes": int(fcos["head.cls_logits.weight"].shape[0]),
        "num_convs": convs,
        "scale_offsets": True,
        "pre_nms_thresh": float(train_args.get("pre_nms_thresh", 0.0)),
    }


def plain_train_args(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with only what ``torch.load(weights_only=True)`` reads back (numbers,
    strings, booleans, None, lists and dicts of them)."""
    def plain(v):
        if isinstance(v, (bool, int, float, str)) or v is None:
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        return str(v)

    return {str(k): plain(v) for k, v in values.items()}
