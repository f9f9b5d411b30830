"""The dense downstream network: NeRF-MAE's encoder and decoder under a new full-res skip.

The reference's voxel semantics and super-resolution models (facts section 6.2-6.3,
``SwinTransformer_VoxelSemantics_Pretrained_Skip`` / ``..._VoxelSR_...``) share one body:

- the pretrained Swin encoder (with the frozen sin-cos positional embedding) and the
  pretrained ``decoder4``, ``decoder3``, ``decoder2``;
- a new ``encoder1``, a residual block on the input voxels at full resolution (4 -> C/2,
  C = the first stage width), used as a skip;
- a new ``decoder1``: transposed conv by the patch size (C -> C/2), concatenated with
  ``encoder1``'s output, residual block (C -> C/2);
- a task head on the ``(B, C/2, S, S, S)`` features: a 1x1x1 conv to K classes for semantics,
  upsampling then a 1x1x1 conv to RGBA for super-resolution.

The head is passed in (composition, not a switch). Names follow the MAE's, so a pretraining
checkpoint's ``encoder.*`` and ``decoder.decoder{4,3,2}.*`` map onto ``encoder.*`` and
``decoder{4,3,2}.*`` here (:mod:`model.checkpoints.transfer`).

:class:`EncoderPathNet` is the same body without ``encoder1``: every output voxel is read
from the encoder's tokens (the MAE's own reconstruction path, a new ``decoder1`` and head).
The reference's full-resolution skip lets a network label voxels from their own colour and
opacity whatever its encoder holds; without it a fine-tuning comparison measures the encoder.
"""

from __future__ import annotations

from torch import Tensor, nn

from model.networks.decoder import CL3D, SkipUpsampling, UnetResBlock, UpBlock
from model.networks.encoder import EncoderFront
from model.networks.mae import MAEConfig


class SkipNet(SkipUpsampling, EncoderFront):
    """``(B, 4, S, S, S)`` padded RGBA -> ``head`` of ``(B, C/2, S, S, S)`` skip features.

    Args:
        config: the encoder's architecture (a pretraining preset's :class:`MAEConfig`; its
            masking and loss fields are unused).
        head: maps ``(B, C/2, S, S, S)`` features to the task's output.
    """

    def __init__(self, config: MAEConfig, head: nn.Module) -> None:
        super().__init__(config)  # encoder, pos_embed
        dims = self.encoder.dims
        self.add_skip_upsampling(dims)
        self.encoder1 = UnetResBlock(config.in_channels, dims[0] // 2)
        self.decoder1 = UpBlock(dims[0], dims[0] // 2, config.patch_size, skip=True)
        self.head = head
        self.to(memory_format=CL3D)

    def forward_features(self, rgba: Tensor) -> Tensor:
        """``(B, 4, S, S, S)`` -> ``(B, C/2, S, S, S)`` full-resolution features."""
        x = self.skip_upsample(self.encode(self.embed_tokens(rgba)))  # (B, C, T, T, T)
        skip = self.encoder1(rgba.contiguous(memory_format=CL3D))
        return self.decoder1(x, skip)

    def forward(self, rgba: Tensor) -> Tensor:
        return self.head(self.forward_features(rgba))


class EncoderPathNet(SkipUpsampling, EncoderFront):
    """``(B, 4, S, S, S)`` padded RGBA -> ``head`` of ``(B, C/2, S, S, S)`` features decoded
    from the encoder's stages alone (no full-resolution skip of the input).

    Args:
        config: the encoder's architecture, as for :class:`SkipNet`.
        head: maps ``(B, C/2, S, S, S)`` features to the task's output.
    """

    def __init__(self, config: MAEConfig, head: nn.Module) -> None:
        super().__init__(config)  # encoder, pos_embed
        dims = self.encoder.dims
        self.add_skip_upsampling(dims)
        self.decoder1 = UpBlock(dims[0], dims[0] // 2, config.patch_size, skip=False)
        self.head = head
        self.to(memory_format=CL3D)

    def forward_features(self, rgba: Tensor) -> Tensor:
        """``(B, 4, S, S, S)`` -> ``(B, C/2, S, S, S)`` features from the tokens alone."""
        return self.decoder1(self.skip_upsample(self.encode(self.embed_tokens(rgba))))

    def forward(self, rgba: Tensor) -> Tensor:
        return self.head(self.forward_features(rgba))


SEMANTIC_NETWORKS = {"skip": SkipNet, "encoder_path": EncoderPathNet}
"""``SemanticsConfig.network`` -> the body under the semantic head."""


def semantic_head(in_channels: int, num_classes: int) -> nn.Module:
    """``(B, C, S, S, S)`` -> ``(B, K, S, S, S)`` class logits (the reference's ``sem_out``)."""
    return nn.Conv3d(in_channels, num_classes, 1)


class SuperResolutionHead(nn.Module):
    """``(B, C, S, S, S)`` -> ``(B, 4, round(S * scale), ...)``: nearest upsampling by ``scale``
    (any factor, e.g. the reference's 2.4 for 160 -> 384), then a 1x1x1 conv to RGB and an
    alpha logit."""

    def __init__(self, in_channels: int, scale: float, out_channels: int = 4) -> None:
        super().__init__()
        self.scale = float(scale)
        self.out = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        up = nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")
        return self.out(up)


def build_semantic_net(
    config: MAEConfig, num_classes: int, network: str = "skip"
) -> SkipNet | EncoderPathNet:
    """The semantic-labelling network for ``num_classes`` labels (0 = void included), on the
    body ``network`` names (:data:`SEMANTIC_NETWORKS`; the reference's is ``"skip"``)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (void and one class), got {num_classes}")
    if network not in SEMANTIC_NETWORKS:
        raise ValueError(f"network={network!r} is not one of {', '.join(SEMANTIC_NETWORKS)}")
    return SEMANTIC_NETWORKS[network](config, semantic_head(config.embed_dim // 2, num_classes))


def build_superres_net(config: MAEConfig, scale: float) -> SkipNet:
    """The super-resolution network: inputs at ``config.resolution``, outputs ``scale`` x."""
    if scale <= 1:
        raise ValueError(f"scale must be > 1, got {scale}")
    return SkipNet(config, SuperResolutionHead(config.embed_dim // 2, scale))


__all__ = [
    "SEMANTIC_NETWORKS",
    "EncoderPathNet",
    "SkipNet",
    "SuperResolutionHead",
    "build_semantic_net",
    "build_superres_net",
    "semantic_head",
]
