"""3D Swin encoder: windows, shifted-window attention against brute force, merging, counts."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from model import build_mae
from model.networks.swin3d import (
    PatchMerging3D,
    WindowAttention3D,
    relative_position_index,
    window_partition,
    window_reverse,
)


def brute_force_window_attention(attn: WindowAttention3D, x: torch.Tensor) -> torch.Tensor:
    """Full attention over every (padded) token, allowing only pairs that share a window.

    Written independently of the windowed code: a pair may attend when, after the cyclic shift,
    both tokens fall in one window AND they are within one window of each other in the
    un-rolled grid (no wrap-around, which is what the region mask forbids); the bias is looked
    up by the plain coordinate difference. Padded tokens are zeros and take part as keys.
    """
    b, d, h, w, c = x.shape
    win, heads = attn.window, attn.num_heads
    padded = [-(-s // win) * win for s in (d, h, w)]
    xp = torch.zeros(b, *padded, c)
    xp[:, :d, :h, :w] = x
    shift = [0 if win >= s else attn.shift for s in padded]
    coords = torch.stack(torch.meshgrid(*(torch.arange(s) for s in padded), indexing="ij"), -1)
    coords = coords.reshape(-1, 3)  # (L, 3)
    rolled = (coords - torch.tensor(shift)) % torch.tensor(padded)
    window_id = rolled // win
    same_window = (window_id[:, None] == window_id[None]).all(-1)
    diff = coords[:, None] - coords[None]  # (L, L, 3)
    no_wrap = (diff.abs() < win).all(-1)
    allowed = same_window & no_wrap
    side = 2 * win - 1
    rel = (diff + win - 1).clamp(0, side - 1)
    flat = rel[..., 0] * side * side + rel[..., 1] * side + rel[..., 2]
    bias = attn.relative_position_bias_table[flat]
    bias = bias.permute(2, 0, 1)  # (heads, L, L)
    tokens = xp.reshape(b, -1, c)
    q, k, v = rearrange(attn.qkv(tokens), "b l (t n e) -> t b n l e", t=3, n=heads)
    logits = q @ k.transpose(-1, -2) * (c // heads) ** -0.5 + bias
    logits = logits.masked_fill(~allowed, float("-inf"))
    out = attn.proj(rearrange(logits.softmax(-1) @ v, "b n l e -> b l (n e)"))
    return out.reshape(b, *padded, c)[:, :d, :h, :w]


@pytest.mark.parametrize(
    ("size", "window", "shift"),
    [((4, 4, 4), 2, 0), ((4, 4, 4), 2, 1), ((5, 4, 7), 2, 1), ((8, 8, 8), 4, 2), ((6, 8, 5), 4, 2)],
)
def test_window_attention_equals_brute_force(size, window, shift):
    torch.manual_seed(0)
    attn = WindowAttention3D(dim=8, num_heads=2, window=window, shift=shift)
    with torch.no_grad():  # a non-trivial bias so that a wrong lookup shows
        attn.relative_position_bias_table.normal_(std=1.0)
    x = torch.randn(2, *size, 8)
    expected = brute_force_window_attention(attn, x)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_shift_actually_changes_output():
    torch.manual_seed(0)
    plain = WindowAttention3D(8, 2, window=2, shift=0)
    shifted = WindowAttention3D(8, 2, window=2, shift=1)
    shifted.load_state_dict(plain.state_dict())
    x = torch.randn(1, 4, 4, 4, 8)
    assert not torch.allclose(plain(x), shifted(x), atol=1e-3)


def test_window_partition_round_trip():
    x = torch.randn(2, 4, 6, 8, 3)
    windows = window_partition(x, 2)
    assert windows.shape == (2, 2 * 3 * 4, 8, 3)
    # window 1 is the second along the last axis: tokens [0:2, 0:2, 2:4]
    torch.testing.assert_close(windows[:, 1].reshape(2, 2, 2, 2, 3), x[:, 0:2, 0:2, 2:4])
    torch.testing.assert_close(window_reverse(windows, 2, (4, 6, 8)), x)


def test_relative_position_index_is_translation_invariant():
    index = relative_position_index(3)  # (27, 27)
    centre = (3 * 2 - 1) ** 3 // 2
    assert torch.all(index.diagonal() == centre)
    # token (0,0,0) vs (0,0,1) and (1,1,1) vs (1,1,2) share the offset
    assert index[0, 1] == index[13, 14]
    assert index.max() == 5**3 - 1 and index.min() == 0


def test_patch_merging_concatenation_order_and_odd_padding():
    torch.manual_seed(0)
    merge = PatchMerging3D(dim=2)
    x = torch.randn(1, 3, 4, 4, 2)  # odd first side is zero-padded to 4
    xp = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 0, 0, 1))
    parts = [xp[:, i::2, j::2, k::2] for k in (0, 1) for j in (0, 1) for i in (0, 1)]
    expected = merge.reduction(merge.norm(torch.cat(parts, -1)))
    out = merge(x)
    assert out.shape == (1, 2, 2, 2, 4)
    torch.testing.assert_close(out, expected)


def test_swin_s_parameter_counts_match_reference():
    with torch.device("meta"):  # counts need no values; initialising 76M numbers is slow
        model = build_mae("swin_s")
    count = lambda params: sum(p.numel() for p in params)  # noqa: E731
    assert count(model.parameters()) == 76_184_938
    assert count(p for p in model.parameters() if p.requires_grad) == 70_040_938
    assert not model.pos_embed.requires_grad and model.pos_embed.numel() == 6_144_000
    assert count(model.encoder.parameters()) == 50_458_422
    assert [count(s.parameters()) for s in model.encoder.stages] == [
        225_738,
        1_042_836,
        32_607_336,
        16_557_648,
    ]
    assert count(model.decoder.parameters()) == 19_582_420
    assert model.mask_token.numel() == 96
    with torch.device("meta"):
        assert count(build_mae("swin_s", resolution=64).parameters()) == 70_434_154


def test_stochastic_depth_rises_linearly_to_drop_path():
    with torch.device("meta"):
        model = build_mae("swin_s", resolution=32)
    rates = [
        blk.drop_path.p
        for stage in model.encoder.stages
        for blk in stage
        if hasattr(blk, "drop_path")
    ]
    assert len(rates) == 24 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert rates[12] == pytest.approx(0.1 * 12 / 23)


@pytest.mark.parametrize(
    ("preset", "resolution", "device"),
    [("tiny", 32, "cpu"), ("tiny", 64, "cpu"), ("swin_t", 96, "meta"), ("swin_s", 160, "meta")],
)
def test_feature_pyramid_shapes(preset, resolution, device):
    # The large presets run on the meta device: shapes propagate without the arithmetic.
    with torch.device(device):
        model = build_mae(preset, resolution=resolution).eval()
        c = model.config.embed_dim
        t = resolution // model.config.patch_size
        with torch.no_grad():
            feats = model.forward_features(torch.rand(1, 4, resolution, resolution, resolution))
    assert [tuple(f.shape) for f in feats] == [
        (1, c * 2**i, t // 2**i, t // 2**i, t // 2**i) for i in range(4)
    ]
