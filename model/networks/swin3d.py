"""3D Swin Transformer encoder (Liu et al. 2021, extended to voxels as in NeRF-MAE).

Tokens live channels-last, ``(B, D, H, W, C)``, between blocks; the encoder returns its four
stage outputs channels-first, ``(B, C_i, D_i, H_i, W_i)``, for the decoder and downstream heads.

Semantics follow the NeRF-MAE reference encoder (a 3D port of torchvision's Swin):

- window attention pads the (already layer-normed) feature map with zeros at the high end of
  each axis to a multiple of the window, and the padded tokens take part in attention as keys;
- odd blocks of a stage roll the map by ``-window // 2`` and mask attention across the regions
  the roll brought together with -100; an axis whose padded size is <= the window is not shifted;
- a learned relative position bias ``((2w - 1)^3, heads)`` is added to the attention logits;
- no norm after the last stage.

The attention logits bias (relative position bias plus region mask) is handed to
``scaled_dot_product_attention`` as a float ``attn_mask``; the region masks depend only on the
padded size, so they are built once per size and cached.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# Logit added across shifted-window region boundaries (the reference's value, not -inf: a
# window whose tokens all come from one region keeps exactly the reference's numbers).
REGION_MASK_VALUE = -100.0


def window_partition(x: Tensor, window: int) -> Tensor:
    """``(B, D, H, W, C)`` with sides divisible by ``window`` -> ``(B, nW, window^3, C)``."""
    return rearrange(
        x, "b (d p) (h q) (w r) c -> b (d h w) (p q r) c", p=window, q=window, r=window
    )


def window_reverse(windows: Tensor, window: int, size: Sequence[int]) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B, nW, window^3, C)`` -> ``(B, D, H, W, C)``."""
    d, h, w = (s // window for s in size)
    return rearrange(
        windows,
        "b (d h w) (p q r) c -> b (d p) (h q) (w r) c",
        d=d, h=h, w=w, p=window, q=window, r=window,
    )


def relative_position_index(window: int) -> Tensor:
    """``(window^3, window^3)`` long: row of the bias table for each (query, key) pair."""
    coords = torch.stack(
        torch.meshgrid(*(torch.arange(window),) * 3, indexing="ij")
    ).flatten(1)  # (3, N)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (3, N, N) in [0, 2w-2]
    side = 2 * window - 1
    return rel[0] * side * side + rel[1] * side + rel[2]


def shifted_window_region_mask(
    padded_size: Sequence[int], window: int, shift: Sequence[int]
) -> Tensor:
    """``(nW, N, N)`` float: 0 within a region, -100 across regions, after a roll by -shift.

    The rolled map is cut, per axis, into ``[0, -window)``, ``[-window, -shift)`` and
    ``[-shift, end)``; tokens of one window that came from different cuts must not attend.
    """
    labels = torch.zeros(tuple(padded_size))  # (Dp, Hp, Wp)
    cuts = [
        ((0, -window), (-window, -s), (-s, None)) if s > 0 else ((0, None),) for s in shift
    ]
    count = 0
    for d0, d1 in cuts[0]:
        for h0, h1 in cuts[1]:
            for w0, w1 in cuts[2]:
                labels[d0:d1, h0:h1, w0:w1] = count
                count += 1
    windows = window_partition(labels[None, ..., None], window)[0, ..., 0]  # (nW, N)
    different = windows[:, None, :] != windows[:, :, None]  # (nW, N, N)
    return torch.zeros(different.shape).masked_fill(different, REGION_MASK_VALUE)


class WindowAttention3D(nn.Module):
    """(Shifted) window multi-head self-attention with a relative position bias."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window = window
        self.shift = shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 3, num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer(
            "relative_position_index", relative_position_index(window).flatten(), persistent=False
        )
        self._region_masks: dict[tuple, Tensor] = {}

    def relative_position_bias(self) -> Tensor:
        """``(heads, N, N)`` bias gathered from the learned table."""
        n = self.window**3
        bias = self.relative_position_bias_table[self.relative_position_index]  # (N*N, heads)
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def _region_mask(self, padded_size: tuple[int, ...], shift: tuple[int, ...], like: Tensor):
        key = (padded_size, shift, like.device, like.dtype)
        if key not in self._region_masks:
            mask = shifted_window_region_mask(padded_size, self.window, shift)
            self._region_masks[key] = mask.to(device=like.device, dtype=like.dtype)
        return self._region_masks[key]

    def _windows(self, x: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...], tuple[int, ...]]:
        """``(B, D, H, W, C)`` -> ``(qkv, bias, padded size, shift)``: ``qkv``
        ``(3, B, nW, heads, N, head_dim)`` of the padded, rolled windows and the additive
        ``bias`` ``(heads, N, N)`` (``(nW, heads, N, N)`` when shifted)."""
        win = self.window
        pads = [(win - s % win) % win for s in x.shape[1:4]]
        if any(pads):
            x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        padded = tuple(x.shape[1:4])
        shift = tuple(0 if win >= s else self.shift for s in padded)
        if any(shift):
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))

        windows = window_partition(x, win)  # (B, nW, N, C)
        qkv = rearrange(
            self.qkv(windows), "b nw n (three heads hd) -> three b nw heads n hd",
            three=3, heads=self.num_heads,
        )
        bias = self.relative_position_bias()  # (heads, N, N)
        if any(shift):
            bias = bias + self._region_mask(padded, shift, bias)[:, None]  # (nW, heads, N, N)
        return qkv, bias, padded, shift

    def attention_weights(self, x: Tensor) -> Tensor:
        """``(B, D, H, W, C)`` -> ``(B, nW, heads, N, N)``: how much each token of each window
        takes from each other (rows sum to 1), as :meth:`forward` weighs them."""
        qkv, bias, _, _ = self._windows(x)
        logits = qkv[0] @ qkv[1].transpose(-1, -2) * qkv.shape[-1] ** -0.5
        return (logits + bias).softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, D, H, W, C)`` -> ``(B, D, H, W, C)``."""
        d, h, w = x.shape[1:4]
        qkv, bias, padded, shift = self._windows(x)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias)
        out = self.proj(rearrange(out, "b nw heads n hd -> b nw n (heads hd)"))
        x = window_reverse(out, self.window, padded)  # (B, Dp, Hp, Wp, C)

        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w]


class StochasticDepth(nn.Module):
    """Drop the whole residual branch per sample with probability ``p`` ("row" mode)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class SwinBlock3D(nn.Module):
    """Pre-norm block: ``x + DropPath(W-MSA(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``."""

    def __init__(
        self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, num_heads, window, shift)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = StochasticDepth(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, D, H, W, C)`` -> ``(B, D, H, W, C)``."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging3D(nn.Module):
    """Halve each side: concatenate the 8 sub-voxels (8C), LayerNorm, Linear 8C -> 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8 * dim)
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, D, H, W, C)`` -> ``(B, ceil(D/2), ceil(H/2), ceil(W/2), 2C)``."""
        d, h, w = x.shape[1:4]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        # Sub-voxel order (first axis fastest) is the reference's x0..x7 concatenation order.
        x = rearrange(x, "b (d i) (h j) (w k) c -> b d h w (k j i c)", i=2, j=2, k=2)
        return self.reduction(self.norm(x))


class SwinTransformer3D(nn.Module):
    """Patch embedding + four Swin stages; ``forward`` returns the stage outputs.

    Args:
        in_channels: input channels (4: RGBA).
        patch_size: side of the cubic patch embedded into one token.
        embed_dim: width of stage 1; stage i has ``embed_dim * 2**i``.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window: side of the cubic attention window (in tokens); odd blocks shift by half of it.
        mlp_ratio: MLP hidden width over block width.
        drop_path: stochastic-depth probability of the last block; it rises linearly from 0.
    """

    def __init__(
        self,
        in_channels: int = 4,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window: int = 4,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(
                f"depths {list(depths)} and num_heads {list(num_heads)} differ in length"
            )
        self.patch_size = patch_size
        self.dims = [embed_dim * 2**i for i in range(len(depths))]
        self.patch_embed = nn.Conv3d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.patch_norm = nn.LayerNorm(embed_dim)

        total = sum(depths)
        rates = [drop_path * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            layers: list[nn.Module] = [PatchMerging3D(self.dims[i - 1])] if i > 0 else []
            for j in range(depth):
                layers.append(
                    SwinBlock3D(
                        self.dims[i], heads, window, 0 if j % 2 == 0 else window // 2,
                        mlp_ratio, rates[sum(depths[:i]) + j],
                    )
                )
            self.stages.append(nn.Sequential(*layers))
        self.apply(_init_linear)

    def embed(self, x: Tensor) -> Tensor:
        """``(B, Cin, D, H, W)`` voxels -> ``(B, D/p, H/p, W/p, C)`` layer-normed patch tokens."""
        return self.patch_norm(rearrange(self.patch_embed(x), "b c d h w -> b d h w c"))

    def forward_tokens(self, tokens: Tensor) -> list[Tensor]:
        """``(B, D, H, W, C)`` tokens -> the 4 stage outputs, each ``(B, C_i, D_i, H_i, W_i)``."""
        feats = []
        x = tokens
        for stage in self.stages:
            x = stage(x)
            feats.append(rearrange(x, "b d h w c -> b c d h w"))
        return feats

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, Cin, D, H, W)`` -> the 4 stage outputs (no positional embedding, no masking)."""
        return self.forward_tokens(self.embed(x))


def _init_linear(module: nn.Module) -> None:
    # The reference initialises every Linear this way after building its blocks, which
    # overwrites the Xavier init its MLPs are given at construction; we keep the net effect.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
