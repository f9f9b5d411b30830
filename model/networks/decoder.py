"""UNETR-style convolutional decoder from the four Swin stage outputs back to voxels.

``decoder4..2`` upsample 2x with a transposed conv, concatenate the encoder skip, and refine
with a residual block; ``decoder1`` upsamples by the patch size to full resolution without a
skip; a 1x1x1 conv maps to the output channels. Blocks follow MONAI's ``UnetResBlock`` as the
NeRF-MAE reference uses it (InstanceNorm without affine parameters, LeakyReLU 0.01).

Four exact rewrites for the CPU path (tests compare them with the plain layers):

- activations and conv weights are ``channels_last_3d``, which routes every conv to oneDNN
  (its 3D backward is much faster there than the strided fallback);
- a transposed conv whose kernel equals its stride is one matmul per token plus a reshuffle
  (:func:`upsample_kernel_stride`) instead of PyTorch's slow transposed-conv kernel;
- the first 3x3x3 conv after ``decoder1``'s 4x upsampling is folded into it
  (:func:`upsample_then_conv`): both are linear, so together they are one transposed conv
  of kernel 6 on the token grid, 3.4 input tokens per output voxel instead of 27 voxels
  (a quarter of the FLOPs; 11-15% off a ``swin_s`` CPU step at 64^3-96^3, BENCHMARKS.md);
- instance norm keeps ``channels_last_3d`` (:mod:`model.networks.instance_norm`), where
  ``instance_norm`` copies to and from it, with float32 accuracy at any volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from model.networks.instance_norm import InstanceNorm3dCL

CL3D = torch.channels_last_3d


def upsample_kernel_stride(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``ConvTranspose3d`` with kernel = stride = s, as a matmul.

    ``x`` ``(B, Cin, D, H, W)``, ``weight`` ``(Cin, Cout, s, s, s)`` -> ``(B, Cout, sD, sH, sW)``
    in ``channels_last_3d`` memory.
    """
    cin, cout, s = weight.shape[0], weight.shape[1], weight.shape[2]
    tokens = x.permute(0, 2, 3, 4, 1)  # (B, D, H, W, Cin)
    w = weight.permute(0, 2, 3, 4, 1).reshape(cin, s**3 * cout)  # (Cin, (i j k o))
    out = torch.matmul(tokens, w) + bias.repeat(s**3)  # (B, D, H, W, s^3 Cout)
    out = rearrange(out, "b d h w (i j k o) -> b (d i) (h j) (w k) o", i=s, j=s, k=s)
    return out.permute(0, 4, 1, 2, 3)


def compose_upsample_conv(up_weight: Tensor, up_bias: Tensor, conv_weight: Tensor) -> Tensor:
    """Kernel of ``conv3d(conv_transpose3d(x, up, stride=s), conv, padding=k // 2)`` as one
    transposed conv of stride ``s``, kernel ``s + k - 1`` and padding ``k // 2``.

    ``up_weight`` ``(Cin, Cmid, s, s, s)``, ``up_bias`` ``(Cmid,)``, ``conv_weight``
    ``(Cout, Cmid, k, k, k)`` (odd ``k``) -> ``(Cin + 1, Cout, K, K, K)``, ``K = s + k - 1``.
    The extra input channel carries the upsampling's bias: it must be fed as a channel of
    ones, which the transposed conv's implicit zeros beyond the token grid cut off exactly
    where the conv's zero padding cuts the upsampled bias off.

    Output voxel ``q`` of the pair sums ``conv[n] @ up[j]^T x[b]`` over ``s b + j = q + n -
    k // 2``; the single transposed conv sums ``W[m] x[b]`` over ``m = q + k // 2 - s b``, so
    ``W[m] = sum over j - n + k - 1 = m`` of ``conv[n] @ up[j]^T``: a full correlation of the
    two kernels over space, contracted over ``Cmid``.
    """
    cmid, s, k = up_weight.shape[1], up_weight.shape[2], conv_weight.shape[2]
    up = torch.cat([up_weight, up_bias.reshape(1, cmid, 1, 1, 1).expand(1, cmid, s, s, s)])
    # The full correlation as a conv over the zero-padded upsampling kernel, its Cin+1 input
    # channels taken as the batch: oneDNN does it in ~30 ms fwd+bwd for decoder1, 3x faster
    # than scattering the (j, n) tap-pair products with one-hot contractions.
    return F.conv3d(F.pad(up, [k - 1] * 6), conv_weight)  # (Cin+1, Cout, K, K, K)


def upsample_then_conv(x: Tensor, up: nn.ConvTranspose3d, conv: nn.Conv3d) -> Tensor:
    """``conv(up(x))`` for an upsampling with kernel = stride and a same-padded odd conv.

    ``x`` ``(B, Cin, D, H, W)`` -> ``(B, Cout, sD, sH, sW)`` in ``channels_last_3d`` memory,
    computed at the token resolution with :func:`compose_upsample_conv`'s kernel.
    """
    k = conv.kernel_size[0]
    kernel = compose_upsample_conv(up.weight, up.bias, conv.weight)
    ones = x.new_ones(x.shape[0], 1, *x.shape[2:])
    tokens = torch.cat([x, ones], dim=1).contiguous(memory_format=CL3D)  # (B, Cin+1, D, H, W)
    return F.conv_transpose3d(
        tokens,
        kernel.contiguous(memory_format=CL3D),
        conv.bias,
        stride=up.stride[0],
        padding=k // 2,
    )


def tokens_to_voxels(tokens: Tensor, patch_size: int) -> Tensor:
    """``(B, p^3 C, T, T, T)`` per-token predictions -> ``(B, C, pT, pT, pT)`` voxels (the
    token heads' layout: voxel ``(i, j, k)`` of a token is channel block ``(i p + j) p + k``)."""
    p = patch_size
    return rearrange(tokens, "b (i j k c) d h w -> b c (d i) (h j) (w k)", i=p, j=p, k=p)


class UnetResBlock(nn.Module):
    """conv3-IN-LReLU-conv3-IN, plus the input (1x1 conv + IN when channels change), LReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm1 = InstanceNorm3dCL(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.norm2 = InstanceNorm3dCL(out_channels)
        self.act = nn.LeakyReLU(0.01)
        self.residual: nn.Module = (
            nn.Sequential(nn.Conv3d(in_channels, out_channels, 1), InstanceNorm3dCL(out_channels))
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor, conv1_out: Tensor | None = None) -> Tensor:
        """``(B, Cin, D, H, W)`` -> ``(B, Cout, D, H, W)``; ``conv1_out``: ``self.conv1(x)``
        when the caller has a cheaper way to it."""
        first = self.conv1(x) if conv1_out is None else conv1_out
        out = F.leaky_relu(self.norm1(first), 0.01, inplace=True)
        out = self.norm2(self.conv2(out))
        out += self.residual(x)  # group norm's backward does not need its output
        return F.leaky_relu(out, 0.01, inplace=True)


class UpBlock(nn.Module):
    """Transposed conv (kernel = stride = ``scale``), optional skip concat, residual block."""

    def __init__(self, in_channels: int, out_channels: int, scale: int, skip: bool) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, scale, stride=scale)
        self.skip = skip
        self.block = UnetResBlock(2 * out_channels if skip else out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """``(B, Cin, D, H, W)`` [+ skip ``(B, Cout, sD, sH, sW)``] -> ``(B, Cout, sD, sH, sW)``."""
        up = upsample_kernel_stride(x, self.up.weight, self.up.bias)
        if self.skip:
            return self.block(torch.cat([up, skip], dim=1))
        # Without a skip the block's first conv sees only the upsampled tokens: fold the two.
        # ``up`` is still needed as the block's residual.
        return self.block(up, conv1_out=upsample_then_conv(x, self.up, self.block.conv1))


class SkipUpsampling:
    """``decoder4``, ``decoder3``, ``decoder2``: the three 2x upsampling blocks with encoder
    skips, shared by the MAE's decoder and the downstream skip network (both name them so,
    which is how a pretraining checkpoint's blocks 4-2 map onto the downstream network).
    A mixin of ``nn.Module`` s."""

    def add_skip_upsampling(self, dims: Sequence[int]) -> None:
        """Create the three blocks for encoder stage widths ``dims`` (4 of them)."""
        if len(dims) != 4:
            raise ValueError(f"the decoder takes 4 stage widths, got {list(dims)}")
        self.decoder4 = UpBlock(dims[3], dims[2], 2, skip=True)
        self.decoder3 = UpBlock(dims[2], dims[1], 2, skip=True)
        self.decoder2 = UpBlock(dims[1], dims[0], 2, skip=True)

    def skip_upsample(self, feats: Sequence[Tensor]) -> Tensor:
        """Stage outputs ``(B, C_i, D_i, H_i, W_i)`` -> ``(B, C_1, D_1, H_1, W_1)`` at the token
        resolution, stages 4..2 fused in."""
        f1, f2, f3, f4 = (f.contiguous(memory_format=CL3D) for f in feats)
        x = self.decoder4(f4, f3)
        x = self.decoder3(x, f2)
        return self.decoder2(x, f1)


class UNETRDecoder(SkipUpsampling, nn.Module):
    """Four stage outputs (widths ``dims``) -> ``(B, out_channels, D, H, W)`` voxels.

    Args:
        dims: encoder stage widths, e.g. ``[96, 192, 384, 768]``.
        patch_size: the encoder's patch side; the last upsampling restores it.
        out_channels: predicted channels per voxel (4: RGB and an alpha logit).
    """

    def __init__(self, dims: Sequence[int], patch_size: int, out_channels: int = 4) -> None:
        super().__init__()
        self.add_skip_upsampling(dims)
        self.decoder1 = UpBlock(dims[0], dims[0] // 2, patch_size, skip=False)
        self.out = nn.Conv3d(dims[0] // 2, out_channels, 1)
        self.to(memory_format=CL3D)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """Stage outputs ``(B, C_i, D_i, H_i, W_i)`` -> ``(B, out_channels, D, H, W)``."""
        return self.out(self.decoder1(self.skip_upsample(feats)))


class TokenDecoder(SkipUpsampling, nn.Module):
    """Blocks 4-2, then one linear map per token to its ``patch_size^3`` voxels (SimMIM's
    light prediction head): no full-resolution block, whose convolutions at ``S^3`` voxels
    are most of a small MAE's CPU step. Blocks 4-2 keep the UNETR decoder's names, so they
    transfer to the fine-tuning networks either way.
    """

    def __init__(self, dims: Sequence[int], patch_size: int, out_channels: int = 4) -> None:
        super().__init__()
        self.add_skip_upsampling(dims)
        self.patch_size = patch_size
        self.out = nn.Conv3d(dims[0], patch_size**3 * out_channels, 1)
        self.to(memory_format=CL3D)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """Stage outputs ``(B, C_i, D_i, H_i, W_i)`` -> ``(B, out_channels, D, H, W)``."""
        return tokens_to_voxels(self.out(self.skip_upsample(feats)), self.patch_size)


class BottleneckDecoder(nn.Module):
    """The deepest stage alone, upsampled 2x three times without encoder skips, then
    :class:`TokenDecoder`'s per-token linear map. Every prediction passes through stage 4:
    with skips a decoder can rebuild masked voxels from stage 1's features and leave the
    deep stages nothing to learn (they collapse to a few directions). Its blocks are named
    apart from :class:`SkipUpsampling`'s, whose shapes differ: fine-tuning starts them fresh.
    """

    def __init__(self, dims: Sequence[int], patch_size: int, out_channels: int = 4) -> None:
        super().__init__()
        self.up4 = UpBlock(dims[3], dims[2], 2, skip=False)
        self.up3 = UpBlock(dims[2], dims[1], 2, skip=False)
        self.up2 = UpBlock(dims[1], dims[0], 2, skip=False)
        self.patch_size = patch_size
        self.out = nn.Conv3d(dims[0], patch_size**3 * out_channels, 1)
        self.to(memory_format=CL3D)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """Stage outputs ``(B, C_i, D_i, H_i, W_i)`` (only the last is read) ->
        ``(B, out_channels, D, H, W)``."""
        x = self.up2(self.up3(self.up4(feats[-1].contiguous(memory_format=CL3D))))
        return tokens_to_voxels(self.out(x), self.patch_size)
