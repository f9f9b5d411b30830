"""The detector: NeRF-MAE's Swin encoder under an FPN and NeRF-RPN's anchor-free FCOS head.

Facts section 6.1 (``SwinTransformer_FPN_Pretrained_Skip`` + ``fcos.py``):

- the encoder with its frozen sin-cos positional table, as in pretraining (and as in
  :class:`model.networks.skip_net.SkipNet`, so a pretraining checkpoint's ``encoder.*`` maps onto
  ``encoder.*`` here; the FPN and head always start fresh);
- an FPN over the four stage outputs (strides ``p, 2p, 4p, 8p`` for patch size ``p``):
  1x1x1 laterals to ``channels``, top-down nearest upsampling added in, a 3x3x3 output
  conv per level, no extra levels;
- the FCOS head, shared by every level: a classification tower and a regression tower of
  ``num_convs`` x [3x3x3 conv, GroupNorm, ReLU]; objectness logits (one class, or one per
  class with ``num_classes``; bias set for a prior probability of 0.01), 8 OBB channels and
  the centerness logit, both on the regression tower, and a learnable scale per level.

Regression outputs are in units of the level's stride (``norm_reg_targets``): the 6
distances are ``relu(scale_l * conv)`` and are multiplied by the stride to decode; the two
offsets ``alpha, beta`` of the midpoint-offset encoding are ``scale_l * conv`` as in the
reference (``DetectorConfig.scale_offsets``; unscaled in detectors trained before it), and
the decoder clamps them.

Locations: cell ``(i, j, k)`` of a level with stride ``s`` sits at voxel coordinate
``((i, j, k) + 0.5) * s``, the centre of the ``s^3`` voxels it covers (voxel ``i`` covers
``[i, i + 1]``, :mod:`grid_store.boxes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from model.networks.decoder import CL3D
from model.networks.encoder import EncoderFront
from model.networks.mae import MAEConfig

UNBOUNDED = 1e6
"""An upper size bound beyond any grid (voxels): JSON, where configs are saved, has no
infinity."""


@dataclass
class DetectorConfig:
    """The FPN, FCOS head, target assignment, losses and inference of the detector."""

    channels: int = 256
    """FPN and head width (the reference's 256; fewer make CPU runs affordable)."""
    num_classes: int = 1
    """1: class-agnostic objectness (NeRF-RPN's). ``K > 1``: one logit per box class (the
    stored ``box_labels``, ``0 .. K-1``), as FCOS's multi-class head, for per-class AP."""
    num_convs: int = 4
    """Convolutions per head tower."""
    norm_groups: int = 32
    """GroupNorm groups of the towers (reduced to a divisor of at most half of ``channels``)."""
    prior_prob: float = 0.01
    """Initial objectness probability (the classification bias)."""
    size_ranges: list[list[float]] = field(
        default_factory=lambda: [[-1.0, 16.0], [16.0, 32.0], [32.0, 64.0], [64.0, UNBOUNDED]]
    )
    """Per level, the range of a positive location's largest regression distance (voxels);
    the last level's bound :data:`UNBOUNDED` stands for NeRF-RPN's infinity."""
    center_sampling_radius: float = 1.5
    """Positives lie within this many strides of the box centre (and inside its hull)."""
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    reg_loss_weight: float = 1.0
    stage_norm: Literal["none", "layer"] = "none"
    """What the FPN reads. "none" (the reference): the raw stage outputs. "layer": each stage
    output through a LayerNorm of its own (channels, at every cell), as Swin detection
    backbones add: an MAE's deep stages come out several times larger than an untrained
    encoder's and few-dimensional, and the FPN's top-down sums then carry them into every
    level; normalised, each stage enters at one scale whatever initialised the encoder."""
    scale_offsets: bool = True
    """The level's learnable scale multiplies all 8 regression channels, the two OBB offsets
    too, as the reference's head does (what its published detector needs). False: only the 6
    distances (this project's detectors trained before the field existed record False)."""
    pre_nms_thresh: float = 0.05
    """Inference keeps locations whose objectness probability exceeds this."""
    pre_nms_top_n: int = 2500
    """Per level, at most this many candidates enter NMS."""
    nms_thresh: float = 0.3
    post_nms_top_n: int = 2500
    """Detections kept per grid after NMS."""

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"DetectorConfig.num_classes must be >= 1, got {self.num_classes}")
        if self.channels < 1 or self.num_convs < 0:
            raise ValueError("DetectorConfig: channels must be >= 1 and num_convs >= 0")
        if not 0.0 < self.prior_prob < 1.0:
            raise ValueError(f"DetectorConfig.prior_prob must be in (0, 1), got {self.prior_prob}")
        if self.stage_norm not in ("none", "layer"):
            raise ValueError(f"DetectorConfig.stage_norm={self.stage_norm!r} is not one of "
                             "'none', 'layer'")  # fmt: skip
        if len(self.size_ranges) != 4 or any(len(r) != 2 for r in self.size_ranges):
            raise ValueError("DetectorConfig.size_ranges: expected 4 [low, high] pairs")
        self.size_ranges = [[float(lo), float(hi)] for lo, hi in self.size_ranges]


def _groups(channels: int, wanted: int) -> int:
    """The largest divisor of ``channels`` not above ``wanted`` nor ``channels / 2``: GroupNorm
    needs a divisor, and a group of one channel on the coarsest level (``1^3`` cells for a
    ``32^3`` input) would normalise a single value."""
    cap = max(1, min(wanted, channels // 2))
    return max(g for g in range(1, cap + 1) if channels % g == 0)


class FPN3D(nn.Module):
    """Four ``(B, C_i, D_i, D_i, D_i)`` stage outputs -> four ``(B, channels, D_i, ...)`` maps."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv3d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv3d(channels, channels, 3, padding=1)
                                    for _ in in_channels)  # fmt: skip
        for conv in [*self.lateral, *self.output]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            up = nn.functional.interpolate(merged[0], size=lateral.shape[-3:], mode="nearest")
            merged.insert(0, lateral + up)
        return [conv(m) for conv, m in zip(self.output, merged, strict=True)]


class StageNorm(nn.Module):
    """A LayerNorm over the channels of each ``(B, C_i, D_i, H_i, W_i)`` stage output."""

    def __init__(self, in_channels: list[int]) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in in_channels)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [norm(f.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
                for norm, f in zip(self.norms, features, strict=True)]  # fmt: skip


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


@dataclass
class HeadOutput:
    """Per level ``l`` (``D_l^3`` cells): class logits ``(B, K, D_l, D_l, D_l)`` (``K = 1``:
    objectness), OBB deltas ``(B, 8, ...)`` in stride units and centerness logits
    ``(B, 1, ...)``."""

    logits: list[Tensor]
    deltas: list[Tensor]
    centerness: list[Tensor]


class FCOSHead(nn.Module):
    """NeRF-RPN's FCOS head, shared by every level (see the module doc)."""

    def __init__(self, config: DetectorConfig, num_levels: int) -> None:
        super().__init__()
        c = config.channels
        groups = _groups(c, config.norm_groups)

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(config.num_convs):
                layers += [nn.Conv3d(c, c, 3, padding=1), nn.GroupNorm(groups, c), nn.ReLU()]
            return nn.Sequential(*layers)

        self.scale_offsets = config.scale_offsets
        self.cls_tower = tower()
        self.reg_tower = tower()
        self.cls_logits = nn.Conv3d(c, config.num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv3d(c, 8, 3, padding=1)
        self.centerness = nn.Conv3d(c, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        prior = config.prior_prob
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior) / prior))

    def forward(self, features: list[Tensor]) -> HeadOutput:
        logits, deltas, centerness = [], [], []
        for level, x in enumerate(features):
            cls = self.cls_tower(x)
            reg = self.reg_tower(x)
            logits.append(self.cls_logits(cls))
            raw = self.bbox_pred(reg)  # (B, 8, D, D, D)
            if self.scale_offsets:
                raw = self.scales[level](raw)
                deltas.append(torch.cat([torch.relu(raw[:, :6]), raw[:, 6:]], 1))
            else:
                distances = torch.relu(self.scales[level](raw[:, :6]))
                deltas.append(torch.cat([distances, raw[:, 6:]], 1))
            centerness.append(self.centerness(reg))
        return HeadOutput(logits, deltas, centerness)


class Detector(EncoderFront):
    """``(B, 4, S, S, S)`` padded RGBA -> :class:`HeadOutput` over the four FPN levels.

    Args:
        config: the encoder's architecture (a pretraining preset's :class:`MAEConfig`).
        detector: the FPN / head / assignment / inference settings.
    """

    def __init__(self, config: MAEConfig, detector: DetectorConfig) -> None:
        super().__init__(config)  # encoder, pos_embed
        self.detector = detector
        # absent (not an identity) without it: the reference's state dict keys stay exact
        if detector.stage_norm == "layer":
            self.stage_norm = StageNorm(self.encoder.dims)
        self.fpn = FPN3D(self.encoder.dims, detector.channels)
        self.head = FCOSHead(detector, len(self.encoder.dims))
        self.strides = [config.patch_size * 2**i for i in range(len(self.encoder.dims))]
        self.to(memory_format=CL3D)

    def forward_features(self, rgba: Tensor) -> list[Tensor]:
        """``(B, 4, S, S, S)`` -> the FPN maps, ``(B, channels, S / stride_l, ...)`` per level."""
        stages = self.encode(self.embed_tokens(rgba))
        if self.detector.stage_norm == "layer":
            stages = self.stage_norm(stages)
        return self.fpn(stages)

    def forward(self, rgba: Tensor) -> HeadOutput:
        return self.head(self.forward_features(rgba))


def level_locations(shape: tuple[int, int, int], stride: int, device=None) -> Tensor:
    """``(D*H*W, 3)`` voxel coordinates of a level's cells, in ``flatten`` order (x slowest)."""
    axes = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) * stride for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # (D, H, W, 3)
    return grid.reshape(-1, 3)


def flatten_levels(maps: list[Tensor]) -> Tensor:
    """Per-level ``(B, C, D_l, D_l, D_l)`` -> ``(B, L, C)`` with ``L = sum D_l^3`` (level by
    level, each in :func:`level_locations` order)."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)


__all__ = [
    "FPN3D",
    "Detector",
    "DetectorConfig",
    "FCOSHead",
    "HeadOutput",
    "StageNorm",
    "flatten_levels",
    "level_locations",
]
