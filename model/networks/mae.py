"""NeRF-MAE: masked autoencoding of radiance grids with a 3D Swin encoder (SimMIM-style).

Layout follows facebookresearch/mae's ``models_mae.py``: ``patchify`` / ``unpatchify``,
``random_masking``, ``forward_encoder``, ``forward_decoder``, ``forward_loss``, ``forward``.
Unlike MAE, no token is dropped: masked tokens are replaced by a learned mask token and the
whole grid goes through the encoder, as in the NeRF-MAE reference code.

Where the paper and the reference code disagree, :class:`MAEConfig` has a field whose default
is the code's behaviour (the released checkpoints were trained with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from model.networks.decoder import BottleneckDecoder, TokenDecoder, UNETRDecoder
from model.networks.encoder import EncoderFront

HEADS = {"voxel": UNETRDecoder, "token": TokenDecoder, "bottleneck": BottleneckDecoder}
"""``MAEConfig.head`` -> the decoder class."""


@dataclass
class MAEConfig:
    """Architecture, masking and loss of one NeRF-MAE model (asdict-able for checkpoints)."""

    resolution: int = 160
    """Side of the padded cubic input grid in voxels; the positional embedding is sized for it."""
    in_channels: int = 4
    """Input channels per voxel: R, G, B, alpha."""
    out_channels: int = 4
    """Predicted channels per voxel: R, G, B (linear) and an alpha logit."""
    patch_size: int = 4
    """Side of the voxel patch embedded into one token."""
    embed_dim: int = 96
    """Width of the first encoder stage (doubles per stage); divisible by 6 (3D sin-cos)."""
    depths: list[int] = field(default_factory=lambda: [2, 2, 18, 2])
    """Swin blocks per stage."""
    num_heads: list[int] = field(default_factory=lambda: [3, 6, 12, 24])
    """Attention heads per stage."""
    window: int = 4
    """Attention window side in tokens; shifted blocks roll by ``window // 2``."""
    mlp_ratio: float = 4.0
    """MLP hidden width over block width."""
    drop_path: float = 0.1
    """Stochastic depth of the last block (linear from 0 over all blocks)."""
    mask_ratio: float = 0.75
    """Probability that a block of tokens is masked (the number masked is random)."""
    mask_block: int = 4
    """Side, in tokens, of the cubic blocks masked together (4 tokens = 16 voxels)."""
    mask_per_sample: bool = False
    """False (reference code): one mask for the whole batch. True: an independent mask per grid."""
    alpha_threshold: float = 0.01
    """Voxels with ground-truth alpha above this count as opaque for the colour loss."""
    rgb_region: Literal["all_opaque", "masked_opaque"] = "all_opaque"
    """Where the colour loss applies. "all_opaque" (code): every opaque voxel, visible or masked.
    "masked_opaque" (the paper's masked-reconstruction reading): opaque voxels in masked blocks."""
    rgb_weighting: Literal["gate", "alpha"] = "gate"
    """How voxels weigh in the colour loss. "gate" (code): 1 for opaque voxels, normalised by their
    count. "alpha" (the paper's "opacity-aware" formula, unverified): the opaque voxels' squared
    error weighted by their ground-truth alpha, normalised by the sum of those alphas."""
    alpha_balance: Literal["none", "occupied_empty", "shell_object_empty"] = "none"
    """How masked voxels weigh in the alpha loss. "none" (code): all alike, so the ~85 % that
    are empty space dominate it. "occupied_empty": the mean over masked occupied voxels and
    the mean over masked empty ones, averaged, so surfaces weigh as much as free space.
    "shell_object_empty": three means averaged, over masked voxels of the room's shell
    (:func:`room_shell`: occupied voxels on an axis-aligned plane mostly occupied, i.e.
    walls, floor, ceiling), over masked occupied voxels off it (the objects, ~3 % of masked
    voxels, ~20 % of occupied ones), and over masked empty ones: no labels, and the
    objects weigh as much as the shell that continues from its visible neighbours."""
    shell_fill: float = 0.5
    """Share of a slice's valid voxels that must be occupied for the slice to count as the
    room's shell (``alpha_balance`` "shell_object_empty")."""
    alpha_target: Literal["alpha", "patch_normalised"] = "alpha"
    """What the alpha term reconstructs. "alpha" (code): each voxel's alpha, predicted as a
    logit. "patch_normalised": each patch's alpha standardised by the patch's own mean and
    standard deviation (MAE's ``norm_pix_loss``), predicted as is: a patch wholly empty or
    wholly solid asks for zeros, so the term scores where surfaces lie inside patches, not
    the room's free space (~85 % of masked voxels). ``MAEOutput.pred`` then carries, for
    reports, the alpha logit of the prediction mapped back with the *target's* patch
    statistics (as MAE's visualisation does): its alpha error is optimistic."""
    alpha_norm_eps: float = 0.01
    """Added to a patch's alpha variance before standardising (``alpha_target``
    "patch_normalised"): a floor of 0.1 on the divisor, so a patch with a faint haze is not
    blown up to unit variance."""
    decorrelation: float = 0.0
    """Weight of a penalty on the correlation between the channels of the encoder stages
    ``decorrelation_stages`` (:func:`channel_correlation`, over the batch's tokens). 0 (the
    reference): off. The pretrained encoders this project measured hand on deep stages
    with a few effective directions (BENCHMARKS.md); the penalty falls as the stages'
    participation-ratio rank rises."""
    decorrelation_stages: list[int] = field(default_factory=lambda: [2, 3, 4])
    """Encoder stages (1-based) the decorrelation penalty averages over."""
    head: Literal["voxel", "token", "bottleneck"] = "voxel"
    """The prediction head. "voxel" (code): the UNETR decoder's full-resolution block.
    "token": one linear map per token to its voxels (SimMIM's light head; cheaper on a CPU).
    "bottleneck": the deepest stage upsampled without encoder skips, then the token map, so
    the deep stages must carry the grid."""

    def __post_init__(self) -> None:
        stride = self.patch_size * 2 ** (len(self.depths) - 1)
        if self.resolution % stride:
            raise ValueError(f"MAEConfig.resolution={self.resolution} must be a multiple of "
                             f"patch_size * 2**(stages-1) = {stride}")
        if self.embed_dim % 6:
            raise ValueError(f"MAEConfig.embed_dim={self.embed_dim} must be divisible by 6")
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError(f"MAEConfig.depths={self.depths} / num_heads={self.num_heads}: "
                             "the decoder needs exactly 4 stages")
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"MAEConfig.mask_ratio={self.mask_ratio} is not in [0, 1]")
        if self.rgb_region not in ("all_opaque", "masked_opaque"):
            raise ValueError(f"MAEConfig.rgb_region={self.rgb_region!r} is not one of "
                             "'all_opaque', 'masked_opaque'")
        if self.rgb_weighting not in ("gate", "alpha"):
            raise ValueError(f"MAEConfig.rgb_weighting={self.rgb_weighting!r} is not one of "
                             "'gate', 'alpha'")
        if self.alpha_balance not in ("none", "occupied_empty", "shell_object_empty"):
            raise ValueError(f"MAEConfig.alpha_balance={self.alpha_balance!r} is not one of "
                             "'none', 'occupied_empty', 'shell_object_empty'")
        if not 0.0 < self.shell_fill <= 1.0:
            raise ValueError(f"MAEConfig.shell_fill={self.shell_fill} is not in (0, 1]")
        if self.alpha_target not in ("alpha", "patch_normalised"):
            raise ValueError(f"MAEConfig.alpha_target={self.alpha_target!r} is not one of "
                             "'alpha', 'patch_normalised'")
        if self.alpha_norm_eps <= 0:
            raise ValueError(f"MAEConfig.alpha_norm_eps={self.alpha_norm_eps} must be > 0")
        if self.decorrelation < 0:
            raise ValueError(f"MAEConfig.decorrelation={self.decorrelation} must be >= 0")
        if not self.decorrelation_stages or not set(self.decorrelation_stages) <= {1, 2, 3, 4}:
            raise ValueError(f"MAEConfig.decorrelation_stages={self.decorrelation_stages}: "
                             "stages are 1..4")
        if self.head not in HEADS:
            raise ValueError(f"MAEConfig.head={self.head!r} is not one of {', '.join(HEADS)}")

    @property
    def token_grid(self) -> int:
        """Side of the token grid of the first stage."""
        return self.resolution // self.patch_size


@dataclass
class MAEOutput:
    """What one training step needs from the model."""

    loss: Tensor
    """Scalar: ``rgb_weight * loss_rgb + loss_alpha + decorrelation * loss_decorrelation``."""
    loss_rgb: Tensor
    """Scalar colour loss (see :meth:`NeRFMAE.forward_loss`)."""
    loss_alpha: Tensor
    """Scalar alpha loss on masked blocks inside the valid region."""
    pred: Tensor
    """``(B, 4, S, S, S)``: RGB (linear) and the alpha logit per voxel."""
    mask: Tensor
    """``(B, S, S, S)`` bool: voxels of masked blocks (padding included)."""
    loss_decorrelation: Tensor
    """Scalar: the stages' channel correlation (:meth:`NeRFMAE.forward_decorrelation`;
    computed only when its weight is not 0, else 0)."""


class NeRFMAE(EncoderFront):
    """Masked autoencoder over padded RGBA grids ``(B, 4, S, S, S)`` with validity masks."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__(config)  # encoder, pos_embed
        self.mask_token = nn.Parameter(torch.empty(config.embed_dim).normal_(std=0.02))
        head = HEADS[config.head]
        self.decoder = head(self.encoder.dims, config.patch_size, config.out_channels)

    def patchify(self, x: Tensor) -> Tensor:
        """``(B, C, S, S, S)`` -> ``(B, T, T, T, p^3, C)`` (the reference's patch layout)."""
        p = self.config.patch_size
        return rearrange(x, "b c (d p) (h q) (w r) -> b d h w (p q r) c", p=p, q=p, r=p)

    def unpatchify(self, x: Tensor) -> Tensor:
        """``(B, T, T, T, p^3, C)`` -> ``(B, C, S, S, S)``."""
        p = self.config.patch_size
        return rearrange(x, "b d h w (p q r) c -> b c (d p) (h q) (w r)", p=p, q=p, r=p)

    def random_masking(
        self, batch: int, token_grid: tuple[int, int, int], generator: torch.Generator | None = None
    ) -> Tensor:
        """``(B, T, T, T)`` bool token mask: each ``mask_block^3`` block masked with prob ``p``.

        Blocks are aligned at the origin; a partial block at the high end of an axis (only when the
        token grid is not a multiple of ``mask_block``) is drawn like a whole one. With
        ``mask_per_sample`` False every grid of the batch gets the same mask (reference code).
        """
        cfg = self.config
        blocks = [-(-t // cfg.mask_block) for t in token_grid]
        draws = batch if cfg.mask_per_sample else 1
        device = self.mask_token.device
        u = torch.rand((draws, *blocks), generator=generator, device=generator.device
                       if generator is not None else device)
        masked = (u < cfg.mask_ratio).to(device)  # (draws, nbD, nbH, nbW)
        b = cfg.mask_block
        masked = repeat(masked, "n d h w -> n (d i) (h j) (w k)", i=b, j=b, k=b)
        masked = masked[:, : token_grid[0], : token_grid[1], : token_grid[2]]
        return masked.expand(batch, -1, -1, -1)

    def forward_encoder(self, rgba: Tensor, token_mask: Tensor) -> list[Tensor]:
        """Embed, replace masked tokens (``(B, T, T, T)`` bool) by the mask token, encode.

        The mask token replaces the token *after* the positional embedding was added, so masked
        tokens carry no position (as in the reference).
        """
        tokens = self.embed_tokens(rgba)  # (B, T, T, T, C)
        tokens = torch.where(token_mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        return self.encode(tokens)

    def forward_decoder(self, feats: list[Tensor]) -> Tensor:
        """Stage outputs -> ``(B, 4, S, S, S)`` prediction (RGB linear, alpha logit)."""
        return self.decoder(feats)

    def forward_loss(
        self, target: Tensor, pred: Tensor, valid: Tensor, voxel_mask: Tensor,
        rgb_weight: float = 1.0,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """``(loss, loss_rgb, loss_alpha)`` for targets ``(B, 4, S, S, S)`` and predictions.

        With ``A = [alpha > alpha_threshold] * valid`` and ``R = valid * voxel_mask``, by default
        (the reference code)::

            loss_rgb   = sum_v A(v) * sum_k (pred_k(v) - rgb_k(v))^2 / sum_v A(v)
            loss_alpha = sum_v R(v) * (sigmoid(pred_alpha(v)) - alpha(v))^2 / sum_v R(v)
            loss       = rgb_weight * loss_rgb + loss_alpha

        The colour denominator counts voxels, not voxels x 3 channels. The code gates colour by
        alpha alone; zero padding has alpha 0, so also requiring ``valid`` changes nothing there
        and makes both terms blind to whatever the padding holds. ``rgb_region``,
        ``rgb_weighting``, ``alpha_balance`` and ``alpha_target`` select the variants (see
        :class:`MAEConfig`; with "patch_normalised" the alpha channel of ``pred`` is compared
        as is with :meth:`normalise_patches` of alpha);
        ``rgb_weight`` is the colour term's weight at this step (a pretraining schedule's). An
        empty region gives a zero term, not NaN.
        """
        cfg = self.config
        rgb, alpha = target[:, :3], target[:, 3]  # (B, 3, S, S, S), (B, S, S, S)
        pred_rgb, pred_alpha = pred[:, :3], pred[:, 3]
        valid = valid.to(torch.bool)
        occupied = (alpha > cfg.alpha_threshold) & valid  # (B, S, S, S)

        weight = occupied & voxel_mask if cfg.rgb_region == "masked_opaque" else occupied
        weight = weight.to(pred.dtype)
        if cfg.rgb_weighting == "alpha":
            weight = weight * alpha
        sq_rgb = (pred_rgb - rgb).square().sum(dim=1)  # (B, S, S, S)
        loss_rgb = (sq_rgb * weight).sum() / weight.sum().clamp_min(1e-12)

        if cfg.alpha_target == "patch_normalised":
            sq_alpha = (pred_alpha - self.normalise_patches(alpha)[0]).square()
        else:
            sq_alpha = (torch.sigmoid(pred_alpha) - alpha).square()
        region = valid & voxel_mask
        if cfg.alpha_balance == "occupied_empty":
            parts = (region & occupied, region & ~occupied)
            loss_alpha = sum(_masked_mean(sq_alpha, part) for part in parts) / 2
        elif cfg.alpha_balance == "shell_object_empty":
            shell = room_shell(occupied, valid, cfg.shell_fill)
            parts = (region & shell, region & occupied & ~shell, region & ~occupied)
            loss_alpha = sum(_masked_mean(sq_alpha, part) for part in parts) / 3
        else:
            loss_alpha = _masked_mean(sq_alpha, region)
        return rgb_weight * loss_rgb + loss_alpha, loss_rgb, loss_alpha

    def normalise_patches(self, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``alpha`` ``(B, S, S, S)`` standardised within each ``patch_size^3`` patch, with
        the patches' mean and standard deviation (``sqrt(var + alpha_norm_eps)``, population
        variance), each broadcast back to ``(B, S, S, S)``."""
        mean, var = patch_moments(alpha, self.config.patch_size)
        std = (var + self.config.alpha_norm_eps).sqrt()
        return (alpha - mean) / std, mean, std

    def alpha_logit_for_reports(self, pred: Tensor, target_alpha: Tensor) -> Tensor:
        """``pred`` ``(B, 4, S, S, S)`` with its alpha channel as a logit: unchanged for the
        "alpha" target; for "patch_normalised" the standardised prediction mapped back with
        ``target_alpha``'s patch statistics and clamped to (1e-4, 1 - 1e-4), detached (a
        report, not a loss's input)."""
        if self.config.alpha_target == "alpha":
            return pred
        _, mean, std = self.normalise_patches(target_alpha)
        alpha = (pred[:, 3].detach() * std + mean).clamp(1e-4, 1 - 1e-4)
        return torch.cat([pred[:, :3].detach(), torch.logit(alpha)[:, None]], dim=1)

    def forward_decorrelation(self, feats: list[Tensor]) -> Tensor:
        """Mean over ``decorrelation_stages`` of :func:`channel_correlation` of the stage
        outputs ``(B, C_i, D_i, H_i, W_i)`` of one forward pass."""
        stages = self.config.decorrelation_stages
        return torch.stack([channel_correlation(feats[i - 1]) for i in stages]).mean()

    def voxel_mask(self, token_mask: Tensor) -> Tensor:
        """``(B, T, T, T)`` token mask -> ``(B, S, S, S)`` voxel mask."""
        p = self.config.patch_size
        return repeat(token_mask, "b d h w -> b (d i) (h j) (w k)", i=p, j=p, k=p)

    def forward(
        self,
        rgba: Tensor,
        valid: Tensor,
        generator: torch.Generator | None = None,
        *,
        target: Tensor | None = None,
        rgb_weight: float = 1.0,
    ) -> MAEOutput:
        """``rgba`` ``(B, 4, S, S, S)`` zero-padded grids, ``valid`` ``(B, S, S, S)`` bool;
        ``target`` (default ``rgba``) is what the loss reconstructs (a control run passes
        shuffled grids), ``rgb_weight`` the colour term's weight."""
        t = self.config.token_grid
        token_mask = self.random_masking(rgba.shape[0], (t, t, t), generator)  # (B, T, T, T)
        feats = self.forward_encoder(rgba, token_mask)
        pred = self.forward_decoder(feats)
        voxel_mask = self.voxel_mask(token_mask)
        target = rgba if target is None else target
        loss, loss_rgb, loss_alpha = self.forward_loss(target, pred, valid, voxel_mask,
                                                       rgb_weight)  # fmt: skip
        weight = self.config.decorrelation
        decorrelation = self.forward_decorrelation(feats) if weight else loss.new_zeros(())
        reported = self.alpha_logit_for_reports(pred, target[:, 3])
        return MAEOutput(loss + weight * decorrelation, loss_rgb, loss_alpha, reported,
                         voxel_mask, decorrelation)  # fmt: skip


def channel_correlation(features: Tensor, eps: float = 1e-5) -> Tensor:
    """Mean squared off-diagonal entry of the channels' correlation matrix over every token
    of ``features`` ``(B, C, D, H, W)`` (batch and positions pooled), in float32.

    With ``R`` that ``C x C`` matrix, the participation-ratio rank ``tr(R)^2 / tr(R^2)`` is
    ``C^2 / (C + sum_{i != j} R_ij^2)``: driving this mean down raises the rank that
    :func:`model.probing.rank.effective_rank` reports. 0 for uncorrelated channels, 1 when
    every channel is one direction (a channel constant over the tokens, or a single token,
    counts as uncorrelated, through ``eps``).
    """
    c = features.shape[1]
    x = rearrange(features.float(), "b c d h w -> (b d h w) c")
    x = x - x.mean(dim=0)
    x = x * torch.rsqrt(x.square().mean(dim=0) + eps)  # eps inside: finite gradients at 0
    corr = x.T @ x / x.shape[0]  # (C, C)
    off = corr - torch.diag_embed(torch.diagonal(corr))
    return off.square().sum() / (c * (c - 1))


def patch_moments(alpha: Tensor, patch: int) -> tuple[Tensor, Tensor]:
    """Mean and population variance of ``alpha`` ``(B, S, S, S)`` over each ``patch^3``
    patch, each broadcast back to ``(B, S, S, S)``."""
    patches = rearrange(alpha, "b (d p) (h q) (w r) -> b d h w (p q r)", p=patch, q=patch,
                        r=patch)  # fmt: skip
    moments = torch.stack([patches.mean(dim=-1), patches.var(dim=-1, unbiased=False)])
    return tuple(repeat(moments, "m b d h w -> m b (d p) (h q) (w r)", p=patch, q=patch,
                        r=patch))  # fmt: skip


def room_shell(occupied: Tensor, valid: Tensor, fill: float = 0.5) -> Tensor:
    """``(B, S, S, S)`` bool: the occupied voxels that lie on an axis-aligned slice whose
    valid voxels are more than ``fill`` occupied: a room's walls, floor and ceiling, which
    span their slice, where furniture fills a small part of any slice. Rooms stored
    axis-aligned (Front3D's, the synthetic ones; the loader's augmentations turn by 90
    degrees) keep their shell on such slices. ``occupied`` and ``valid`` ``(B, S, S, S)``."""
    occupied = occupied & valid
    shell = torch.zeros_like(occupied)
    for axis in (1, 2, 3):
        others = tuple(a for a in (1, 2, 3) if a != axis)
        share = occupied.sum(others) / valid.sum(others).clamp_min(1)  # (B, S)
        shape = [share.shape[0], 1, 1, 1]
        shape[axis] = share.shape[1]
        shell |= (share > fill).reshape(shape)
    return shell & occupied


def _masked_mean(values: Tensor, region: Tensor) -> Tensor:
    """Mean of ``values`` over the ``True`` voxels of ``region`` (0 for an empty region)."""
    region = region.to(values.dtype)
    return (values * region).sum() / region.sum().clamp_min(1.0)
