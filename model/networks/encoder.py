"""The encoder front every NeRF-MAE network shares: check the grid, embed its patches, add the
frozen sin-cos positional table, run the four Swin stages.

:class:`EncoderFront` is the base of the MAE, the dense skip network and the detector. It
owns ``encoder`` (the :class:`~model.networks.swin3d.SwinTransformer3D`) and ``pos_embed``
as direct children, so each network's state dict names them ``encoder.*`` and
``pos_embed`` and a pretraining checkpoint's encoder fits every network unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor, nn

from model.networks.decoder import CL3D
from model.networks.pos_embed import sincos_3d
from model.networks.swin3d import SwinTransformer3D


class Architecture(Protocol):
    """What the encoder front reads of a config (:class:`model.networks.mae.MAEConfig` is one)."""

    resolution: int
    in_channels: int
    patch_size: int
    embed_dim: int
    depths: Sequence[int]
    num_heads: Sequence[int]
    window: int
    mlp_ratio: float
    drop_path: float

    @property
    def token_grid(self) -> int: ...


def build_encoder(config: Architecture) -> SwinTransformer3D:
    """The Swin encoder ``config`` describes."""
    return SwinTransformer3D(
        in_channels=config.in_channels,
        patch_size=config.patch_size,
        embed_dim=config.embed_dim,
        depths=config.depths,
        num_heads=config.num_heads,
        window=config.window,
        mlp_ratio=config.mlp_ratio,
        drop_path=config.drop_path,
    )


def frozen_pos_embed(config: Architecture) -> nn.Parameter:
    """The fixed sin-cos positional table ``(1, T, T, T, C)`` of ``config``'s resolution: a
    frozen Parameter (not a buffer) so that parameter counts match the reference's."""
    return nn.Parameter(sincos_3d(config.token_grid, config.embed_dim), requires_grad=False)


def check_input_grid(rgba: Tensor, config: Architecture) -> None:
    """Refuse an input that is not ``(B, in_channels, S, S, S)`` at ``config.resolution``."""
    s = config.resolution
    if rgba.ndim != 5 or tuple(rgba.shape[1:]) != (config.in_channels, s, s, s):
        raise ValueError(
            f"rgba has shape {tuple(rgba.shape)}; expected "
            f"(B, {config.in_channels}, {s}, {s}, {s}) (MAEConfig.resolution)"
        )


class EncoderFront(nn.Module):
    """Swin encoder plus frozen positional table for ``(B, 4, S, S, S)`` padded RGBA grids.

    Args:
        config: the architecture (a preset's :class:`~model.networks.mae.MAEConfig`; networks
            other than the MAE ignore its masking and loss fields).
    """

    def __init__(self, config: Architecture) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config)
        self.pos_embed = frozen_pos_embed(config)  # (1, T, T, T, C)

    def embed_tokens(self, rgba: Tensor) -> Tensor:
        """``(B, 4, S, S, S)`` -> ``(B, T, T, T, C)`` patch tokens plus the positional table."""
        check_input_grid(rgba, self.config)
        return self.encoder.embed(rgba) + self.pos_embed

    def encode(self, tokens: Tensor) -> list[Tensor]:
        """Tokens -> the 4 stage outputs ``(B, C_i, D_i, H_i, W_i)`` in ``channels_last_3d``
        memory (what the convolutional decoders and the FPN read fastest)."""
        return [f.contiguous(memory_format=CL3D) for f in self.encoder.forward_tokens(tokens)]

    def encoder_stages(self, rgba: Tensor) -> list[Tensor]:
        """Unmasked encoder pyramid of ``(B, 4, S, S, S)`` grids: 4 ``(B, C_i, D_i, H_i, W_i)``,
        whatever a subclass builds on it (what probes and comparisons of encoders read)."""
        return self.encode(self.embed_tokens(rgba))

    def forward_features(self, rgba: Tensor) -> list[Tensor]:
        """The features this network's head reads; here the encoder pyramid (subclasses put
        their FPN or decoder on it)."""
        return self.encoder_stages(rgba)
