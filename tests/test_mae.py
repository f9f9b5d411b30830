"""NeRF-MAE wrapper: patchify, block masking, the loss by hand, gradients, overfitting."""

from __future__ import annotations

import math
import time

import pytest
import torch
from einops import rearrange

from model import MAEConfig, build_mae, list_presets
from model.networks.mae import room_shell
from model.networks.pos_embed import sincos_3d


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return build_mae("tiny", resolution=32)


def test_presets_registry():
    assert {"swin_s", "swin_t", "tiny"} <= set(list_presets())
    with pytest.raises(ValueError, match="unknown model preset"):
        build_mae("swin_xl")
    with pytest.raises(ValueError, match="unknown MAEConfig field"):
        build_mae("tiny", resolutoin=32)
    with pytest.raises(ValueError, match="MAEConfig.resolution=40"):
        build_mae("tiny", resolution=40)


def test_unpatchify_inverts_patchify_and_layout(tiny):
    x = torch.randn(2, 4, 32, 32, 32)
    patches = tiny.patchify(x)
    assert patches.shape == (2, 8, 8, 8, 64, 4)
    # voxel (1, 2, 3) of token (0, 1, 0) sits at patch entry 1*16 + 2*4 + 3
    assert torch.equal(patches[0, 0, 1, 0, 16 + 8 + 3], x[0, :, 1, 4 + 2, 3])
    assert torch.equal(tiny.unpatchify(patches), x)


def test_pos_embed_matches_hand_computed_entry():
    emb = sincos_3d(4, 12)  # 4 channels per axis, omega = [1, 1/100]
    assert emb.shape == (1, 4, 4, 4, 12)
    d, h, w = 1, 2, 3  # the reference's meshgrid order puts the second axis first
    expected = []
    for pos in (h, d, w):
        expected += [math.sin(pos), math.sin(pos / 100), math.cos(pos), math.cos(pos / 100)]
    torch.testing.assert_close(emb[0, d, h, w], torch.tensor(expected))


def test_pos_embed_is_frozen_and_added(tiny):
    assert not tiny.pos_embed.requires_grad
    torch.testing.assert_close(tiny.pos_embed, sincos_3d(8, 24))


def test_masking_ratio_and_block_structure():
    model = build_mae("tiny", resolution=64, mask_block=4)  # 16^3 tokens, 4^3 blocks
    g = torch.Generator().manual_seed(0)
    masks = torch.stack([model.random_masking(1, (16, 16, 16), g)[0] for _ in range(200)])
    assert abs(masks.float().mean().item() - 0.75) < 0.02
    blocks = masks.view(200, 4, 4, 4, 4, 4, 4)  # (draw, bd, i, bh, j, bw, k)
    per_block = blocks.float().mean(dim=(2, 4, 6))
    assert torch.all((per_block == 0) | (per_block == 1)), "a 4^3-token block is split"
    voxel = model.voxel_mask(masks[:3])  # (3, 64, 64, 64): constant on aligned 16^3 cubes
    cubes = voxel.view(3, 4, 16, 4, 16, 4, 16).float().mean(dim=(2, 4, 6))
    assert torch.all((cubes == 0) | (cubes == 1))
    torch.testing.assert_close(cubes, per_block[:3])


def test_masking_same_for_batch_by_default_and_reproducible():
    shared = build_mae("tiny", resolution=64, mask_block=4)
    m = shared.random_masking(3, (16, 16, 16), torch.Generator().manual_seed(1))
    assert torch.equal(m[0], m[1]) and torch.equal(m[0], m[2])
    again = shared.random_masking(3, (16, 16, 16), torch.Generator().manual_seed(1))
    assert torch.equal(m, again)
    per_sample = build_mae("tiny", resolution=64, mask_block=4, mask_per_sample=True)
    m = per_sample.random_masking(3, (16, 16, 16), torch.Generator().manual_seed(1))
    assert not torch.equal(m[0], m[1])


def _hand_example(model, region_mask_x=8, valid_x=16):
    s = model.config.resolution
    rgba = torch.zeros(1, 4, s, s, s)
    rgba[0, :, 0, 0, 0] = torch.tensor([1.0, 0.5, 0.0, 0.5])  # opaque voxel A
    rgba[0, :, 1, 0, 0] = torch.tensor([1.0, 1.0, 1.0, 0.005])  # below the 0.01 gate
    rgba[0, :, 9, 0, 0] = torch.tensor([0.2, 0.2, 0.2, 0.8])  # opaque, outside the mask
    pred = torch.zeros(1, 4, s, s, s)
    pred[0, :3, 0, 0, 0] = 0.5
    valid = torch.zeros(1, s, s, s, dtype=torch.bool)
    valid[:, :valid_x] = True
    voxel_mask = torch.zeros(1, s, s, s, dtype=torch.bool)
    voxel_mask[:, :region_mask_x] = True
    return rgba, pred, valid, voxel_mask


def test_loss_equals_hand_computed_value(tiny):
    rgba, pred, valid, voxel_mask = _hand_example(tiny)
    loss, loss_rgb, loss_alpha = tiny.forward_loss(rgba, pred, valid, voxel_mask)
    # colour over the two opaque voxels, per voxel (not per channel):
    # A: (0.5-1)^2 + 0 + (0.5-0)^2 = 0.5 ; C at x=9: 3 * 0.2^2 = 0.12
    assert loss_rgb.item() == pytest.approx((0.5 + 0.12) / 2)
    # alpha over the masked valid region x < 8 (8*32*32 voxels), sigmoid(0) = 0.5
    n = 8 * 32 * 32
    expected_alpha = ((0.5 - 0.5) ** 2 + (0.5 - 0.005) ** 2 + (n - 2) * 0.25) / n
    assert loss_alpha.item() == pytest.approx(expected_alpha, rel=1e-6)
    assert loss.item() == pytest.approx(loss_rgb.item() + loss_alpha.item())


def test_loss_paper_variants(tiny):
    rgba, pred, valid, voxel_mask = _hand_example(tiny)
    masked = build_mae("tiny", rgb_region="masked_opaque")
    _, loss_rgb, _ = masked.forward_loss(rgba, pred, valid, voxel_mask)
    assert loss_rgb.item() == pytest.approx(0.5)  # only A lies in the masked region
    weighted = build_mae("tiny", rgb_weighting="alpha")
    _, loss_rgb, _ = weighted.forward_loss(rgba, pred, valid, voxel_mask)
    assert loss_rgb.item() == pytest.approx((0.5 * 0.5 + 0.8 * 0.12) / (0.5 + 0.8))
    with pytest.raises(ValueError, match="rgb_region"):
        MAEConfig(resolution=32, rgb_region="everywhere")


def test_loss_ignores_padding(tiny):
    rgba, pred, valid, voxel_mask = _hand_example(tiny)
    base = tiny.forward_loss(rgba, pred, valid, voxel_mask)
    g = torch.Generator().manual_seed(0)
    noisy_rgba, noisy_pred = rgba.clone(), pred.clone()
    noisy_rgba[:, :, 16:] = torch.rand(noisy_rgba[:, :, 16:].shape, generator=g)  # alpha > 0.01
    noisy_pred[:, :, 16:] = torch.randn(noisy_pred[:, :, 16:].shape, generator=g)
    noisy = tiny.forward_loss(noisy_rgba, noisy_pred, valid, voxel_mask)
    for a, b in zip(base, noisy, strict=True):
        assert a.item() == b.item()


def test_forward_backward_every_parameter_gets_a_finite_gradient(tiny):
    s = 32
    rgba = torch.rand(2, 4, s, s, s)
    valid = torch.ones(2, s, s, s, dtype=torch.bool)
    out = tiny(rgba, valid, generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (2, 4, s, s, s) and out.mask.shape == (2, s, s, s)
    assert out.mask.dtype == torch.bool
    assert all(torch.isfinite(t) for t in (out.loss, out.loss_rgb, out.loss_alpha))
    out.loss.backward()
    for name, p in tiny.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
    assert tiny.pos_embed.grad is None


def test_forward_rejects_wrong_size(tiny):
    with pytest.raises(ValueError, match="MAEConfig.resolution"):
        tiny(torch.rand(1, 4, 16, 16, 16), torch.ones(1, 16, 16, 16, dtype=torch.bool))


def _synthetic_grid(s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A coloured sphere and a box in a grid whose last quarter along x is padding."""
    axis = torch.linspace(-1, 1, s)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    sphere = ((x + 0.3) ** 2 + y**2 + z**2 < 0.25).float()
    box = ((x - 0.2).abs() < 0.2) & ((y + 0.4).abs() < 0.3) & ((z - 0.3).abs() < 0.25)
    alpha = torch.clamp(sphere + box.float(), max=1.0)
    rgb = torch.stack([0.5 + 0.5 * x, 0.5 + 0.5 * y, box.float()]) * alpha
    valid = torch.ones(s, s, s, dtype=torch.bool)
    valid[3 * s // 4 :] = False
    rgba = torch.cat([rgb, alpha[None]]) * valid
    return rgba[None], valid[None]


@pytest.mark.slow
def test_tiny_overfits_one_grid():
    torch.manual_seed(0)
    model = build_mae("tiny", resolution=32)
    rgba, valid = _synthetic_grid(32)
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    start, losses = time.perf_counter(), []
    for _ in range(40):
        out = model(rgba, valid, generator=g)
        optim.zero_grad()
        out.loss.backward()
        optim.step()
        losses.append(out.loss.item())
    first, last = losses[0], sum(losses[-5:]) / 5
    assert last < first / 10, (first, last, time.perf_counter() - start)


def test_decoder_rewrites_equal_plain_layers():
    """channels-last + matmul upsampling give the plain ConvTranspose3d/Conv3d numbers."""
    torch.manual_seed(0)
    decoder = build_mae("tiny", resolution=32).decoder
    feats = [torch.randn(1, 24 * 2**i, 8 // 2**i, 8 // 2**i, 8 // 2**i) for i in range(4)]

    def plain_up(block, x, skip=None):
        up = block.up(x)  # nn.ConvTranspose3d
        return block.block(up if skip is None else torch.cat([up, skip], dim=1))

    f1, f2, f3, f4 = (f.contiguous() for f in feats)
    x = plain_up(
        decoder.decoder2, plain_up(decoder.decoder3, plain_up(decoder.decoder4, f4, f3), f2), f1
    )
    expected = decoder.out(plain_up(decoder.decoder1, x))
    torch.testing.assert_close(decoder(feats), expected, atol=1e-5, rtol=1e-5)


def test_balanced_alpha_loss_weighs_occupied_and_empty_masked_voxels_alike(tiny):
    rgba, pred, valid, voxel_mask = _hand_example(tiny)
    balanced = build_mae("tiny", alpha_balance="occupied_empty")
    _, _, loss_alpha = balanced.forward_loss(rgba, pred, valid, voxel_mask)
    # masked occupied (alpha > 0.01): only A (alpha 0.5, error 0); the other n - 1 masked
    # voxels are empty: B (alpha 0.005) and the zeros, each against sigmoid(0) = 0.5
    n = 8 * 32 * 32
    empty = ((0.5 - 0.005) ** 2 + (n - 2) * 0.25) / (n - 1)
    assert loss_alpha.item() == pytest.approx((0.0 + empty) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="alpha_balance"):
        MAEConfig(resolution=32, alpha_balance="per_class")


def test_patch_normalised_alpha_target_by_hand(tiny):
    rgba, pred, valid, voxel_mask = _hand_example(tiny)
    model = build_mae("tiny", alpha_target="patch_normalised")
    target, mean, std = model.normalise_patches(rgba[:, 3])
    # the first 4^3 patch holds A (0.5) and B (0.005) among 62 zeros; every other patch
    # inside the masked region is empty, so asks for 0 (and the one with C, at x = 9, lies
    # outside it)
    a = torch.zeros(64, dtype=torch.float64)
    a[0], a[16] = 0.5, 0.005  # (x, y, z) = (0, 0, 0) and (1, 0, 0) in (p q r) order
    var = a.var(unbiased=False).item()
    assert mean[0, 0, 0, 0].item() == pytest.approx(a.mean().item())
    assert std[0, 3, 3, 3].item() == pytest.approx((var + 0.01) ** 0.5)
    assert target[0, 0, 0, 0].item() == pytest.approx((0.5 - a.mean().item()) / (var + 0.01) ** 0.5)
    assert target[0, 4:8].abs().max().item() == 0.0
    assert target[0, 8:12, :4, :4].abs().max().item() > 1.0  # C's patch: a lone surface
    # predicting zeros: the term is the first patch's sum of squares over the region
    _, _, loss_alpha = model.forward_loss(rgba, pred, valid, voxel_mask)
    n = 8 * 32 * 32
    assert loss_alpha.item() == pytest.approx(64 * var / (var + 0.01) / n, rel=1e-5)
    perfect = pred.clone()
    perfect[:, 3] = target
    assert model.forward_loss(rgba, perfect, valid, voxel_mask)[2].item() == pytest.approx(0.0)
    # mapped back with the target's statistics, the perfect prediction is the grid's alpha
    reported = torch.sigmoid(model.alpha_logit_for_reports(perfect, rgba[:, 3])[:, 3])
    torch.testing.assert_close(reported, rgba[:, 3].clamp(1e-4, 1 - 1e-4), atol=1e-5, rtol=0)
    assert model.alpha_logit_for_reports(perfect, rgba[:, 3]).requires_grad is False
    assert tiny.alpha_logit_for_reports(pred, rgba[:, 3]) is pred  # the "alpha" target
    with pytest.raises(ValueError, match="alpha_target"):
        MAEConfig(resolution=32, alpha_target="sdf")


def test_patch_normalised_target_trains_and_reports_an_alpha():
    torch.manual_seed(0)
    model = build_mae("tiny", resolution=32, alpha_target="patch_normalised", head="token")
    rgba, valid = _synthetic_grid(32)
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):  # one mask throughout: fitting it must drive the term down
        out = model(rgba, valid, generator=torch.Generator().manual_seed(0))
        optim.zero_grad()
        out.loss.backward()
        optim.step()
        losses.append(out.loss_alpha.item())
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0], losses
    alpha = torch.sigmoid(out.pred[:, 3])
    assert alpha.min() >= 1e-4 - 1e-7 and alpha.max() <= 1 - 1e-4 + 1e-7


def test_colour_weight_scales_only_the_colour_term(tiny):
    rgba, pred, valid, voxel_mask = _hand_example(tiny)
    loss, loss_rgb, loss_alpha = tiny.forward_loss(rgba, pred, valid, voxel_mask, rgb_weight=0.25)
    assert loss.item() == pytest.approx(0.25 * loss_rgb.item() + loss_alpha.item())
    assert loss_rgb.item() == pytest.approx((0.5 + 0.12) / 2)  # the term itself unweighted


def test_token_head_predicts_every_voxel_from_its_own_token():
    model = build_mae("tiny", head="token").eval()
    rgba = torch.rand(1, 4, 32, 32, 32)
    valid = torch.ones(1, 32, 32, 32, dtype=torch.bool)
    out = model(rgba, valid, generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (1, 4, 32, 32, 32) and torch.isfinite(out.loss)
    # the linear head: voxel (i, j, k) of token (0, 0, 0) is output channel ((i*4+j)*4+k)*4+c
    with torch.no_grad():
        feats = model.decoder.skip_upsample(model.forward_features(rgba))
        tokens = model.decoder.out(feats)  # (1, 64 * 4, 8, 8, 8)
    assert torch.allclose(model.decoder(model.forward_features(rgba))[0, :, 1, 2, 3],
                          tokens[0, ((1 * 4 + 2) * 4 + 3) * 4 :][:4, 0, 0, 0], atol=1e-6)


def test_bottleneck_head_reads_only_the_deepest_stage():
    model = build_mae("tiny", head="bottleneck").eval()
    g = torch.Generator().manual_seed(0)
    feats = [f.detach() for f in model.forward_features(torch.rand(1, 4, 32, 32, 32, generator=g))]
    with torch.no_grad():
        pred = model.decoder(feats)
        shallow = model.decoder([torch.randn(f.shape, generator=g) for f in feats[:3]] + feats[3:])
        deep = model.decoder(feats[:3] + [torch.randn(feats[3].shape, generator=g)])
    assert pred.shape == (1, 4, 32, 32, 32)
    assert torch.equal(pred, shallow) and not torch.allclose(pred, deep)


def test_channel_correlation_is_the_rank_the_probes_report():
    from model.networks.mae import channel_correlation
    from model.probing.rank import effective_rank

    g = torch.Generator().manual_seed(0)
    one = torch.randn(2, 1, 4, 4, 4, generator=g)
    same = torch.cat([one, -2 * one, 3 * one], dim=1)  # one signal, three channels
    assert channel_correlation(same).item() == pytest.approx(1.0, abs=1e-4)
    # two channels with correlation 0.6 by construction: (0.6^2 + 0.6^2) / (2 * 1)
    a, b = torch.randn(2, 20_000, generator=g)
    pair = torch.stack([a, 0.6 * a + 0.8 * b]).reshape(1, 2, 20_000, 1, 1)
    assert channel_correlation(pair).item() == pytest.approx(0.36, abs=0.02)
    feats = torch.randn(2, 6, 5, 5, 5, generator=g)
    feats[:, 3:] += 2 * feats[:, :3]  # partly shared channels
    m, c = channel_correlation(feats).item(), 6
    rows = rearrange(feats, "b c d h w -> (b d h w) c")
    assert effective_rank(rows) == pytest.approx(c**2 / (c + c * (c - 1) * m), rel=1e-4)


def test_decorrelation_weight_adds_the_stages_penalty_to_the_loss():
    from model.networks.mae import channel_correlation

    rgba = torch.rand(2, 4, 32, 32, 32)
    valid = torch.ones(2, 32, 32, 32, dtype=torch.bool)
    plain = build_mae("tiny").eval()  # eval: no stochastic depth, the passes agree
    penalised = build_mae("tiny", decorrelation=0.5, decorrelation_stages=[3, 4]).eval()
    penalised.load_state_dict(plain.state_dict())
    out = plain(rgba, valid, generator=torch.Generator().manual_seed(0))
    both = penalised(rgba, valid, generator=torch.Generator().manual_seed(0))
    assert out.loss_decorrelation.item() == 0.0  # off: not computed
    feats = penalised.forward_encoder(rgba, penalised.random_masking(
        2, (8, 8, 8), torch.Generator().manual_seed(0)))  # fmt: skip
    expected = (channel_correlation(feats[2]) + channel_correlation(feats[3])) / 2
    assert both.loss_decorrelation.item() == pytest.approx(expected.item(), rel=1e-5)
    assert both.loss.item() == pytest.approx(out.loss.item() + 0.5 * expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="decorrelation_stages"):
        MAEConfig(resolution=32, decorrelation_stages=[5])


def test_room_shell_finds_walls_and_floor_not_furniture():
    occupied = torch.zeros(1, 8, 8, 8, dtype=torch.bool)
    valid = torch.zeros(1, 8, 8, 8, dtype=torch.bool)
    valid[:, :6, :6, :6] = True  # a 6^3 room padded to 8^3
    occupied[:, :6, :6, 0] = True  # floor: the whole z = 0 slice of the room
    occupied[:, 0, :6, :6] = True  # a wall: the whole x = 0 slice
    occupied[:, 2:4, 2:4, 1:3] = True  # a 2^3 box standing on the floor
    occupied[:, 7, 7, 7] = True  # padding: not valid, never shell
    shell = room_shell(occupied, valid, fill=0.5)
    expected = torch.zeros_like(shell)
    expected[:, :6, :6, 0] = True
    expected[:, 0, :6, :6] = True
    assert torch.equal(shell, expected)
    # the box's slices are at most 4 / 36 occupied besides the wall's row: a fill of
    # 0.1 takes them for shell too
    assert room_shell(occupied, valid, fill=0.1)[0, 2:4, 2:4, 1:3].all()


def test_shell_object_empty_loss_weighs_three_parts_alike():
    mae = build_mae("tiny", resolution=32, alpha_balance="shell_object_empty")
    s = 32
    rgba = torch.zeros(1, 4, s, s, s)
    rgba[0, 3, :, :, 0] = 1.0  # floor
    rgba[0, 3, 10:12, 10:12, 1:3] = 1.0  # an 8-voxel object
    valid = torch.ones(1, s, s, s, dtype=torch.bool)
    voxel_mask = torch.zeros(1, s, s, s, dtype=torch.bool)
    voxel_mask[:, :16] = True  # masked: half the floor (512), the object, 16*32*32 - 520 empty
    pred = torch.zeros(1, 4, s, s, s)  # sigmoid 0.5 everywhere: every voxel's error is 0.25
    pred[0, 3, :, :, 0] = 20.0  # the floor predicted right
    _, _, loss_alpha = mae.forward_loss(rgba, pred, valid, voxel_mask)
    # shell 0 (to float precision), object 0.25, empty 0.25: averaged by thirds
    assert loss_alpha.item() == pytest.approx((0.0 + 0.25 + 0.25) / 3, rel=1e-5)
    plain = build_mae("tiny", resolution=32)
    # unbalanced, the object is 8 of the 16 * 32 * 32 masked voxels
    n = 16 * 32 * 32
    assert plain.forward_loss(rgba, pred, valid, voxel_mask)[2].item() == pytest.approx(
        (n - 512) * 0.25 / n, rel=1e-5)
    with pytest.raises(ValueError, match="shell_fill"):
        MAEConfig(resolution=32, shell_fill=0.0)
