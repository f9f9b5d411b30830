"""Folding the 4x upsampling into the next 3x3x3 conv
(``model.networks.decoder.upsample_then_conv``) gives the numbers and gradients of the two
plain layers, edges and biases included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.networks.decoder import UpBlock, compose_upsample_conv, upsample_then_conv


@pytest.mark.parametrize("scale, tokens", [(4, (3, 2, 4)), (2, (2, 3, 1)), (4, (1, 1, 1))])
def test_folded_upsample_conv_equals_the_two_layers_in_float64(scale, tokens):
    torch.manual_seed(0)
    up = nn.ConvTranspose3d(5, 3, scale, stride=scale).double()
    conv = nn.Conv3d(3, 4, 3, padding=1).double()
    with torch.no_grad():  # non-zero biases: the upsampled bias must stop at the volume's edge
        up.bias.normal_()
        conv.bias.normal_()
    x = torch.randn(2, 5, *tokens, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 4, *(scale * t for t in tokens), dtype=torch.float64)

    plain = conv(up(x))
    folded = upsample_then_conv(x, up, conv)
    assert folded.shape == plain.shape
    torch.testing.assert_close(folded, plain, atol=1e-12, rtol=0)

    params = [x, up.weight, up.bias, conv.weight, conv.bias]
    g_plain = torch.autograd.grad(plain, params, grad)
    g_folded = torch.autograd.grad(folded, params, grad)
    names = ("x", "up.w", "up.b", "conv.w", "conv.b")
    for name, a, b in zip(names, g_folded, g_plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0, msg=name)


def test_composed_kernel_by_hand_in_one_dimension():
    """1 channel, s = 2, k = 3, along x only: W[m] = sum_{j - n + 2 = m} up[j] conv[n]."""
    up = torch.zeros(1, 1, 2, 2, 2)
    up[0, 0, :, 0, 0] = torch.tensor([2.0, 3.0])  # j_x = 0, 1 at j_y = j_z = 0
    conv = torch.zeros(1, 1, 3, 3, 3)
    conv[0, 0, :, 1, 1] = torch.tensor([5.0, 7.0, 11.0])  # n_x = 0, 1, 2 at the centre in y, z
    kernel = compose_upsample_conv(up, torch.zeros(1), conv)  # (2, 1, 4, 4, 4)
    # m = j - n + 2:  m=0: j0 n2 = 2*11; m=1: j0 n1 + j1 n2 = 2*7 + 3*11; m=2: 2*5 + 3*7; m=3: 3*5
    line = kernel[0, 0, :, 1, 1]  # in y and z: j = 0, n = 1, so m = 1
    torch.testing.assert_close(line, torch.tensor([22.0, 47.0, 31.0, 15.0]))
    assert kernel[1].abs().sum() == 0  # zero bias: the ones channel adds nothing
    assert kernel[0].abs().sum() == line.abs().sum()


def test_block_without_skip_uses_the_fold_and_matches_plain_layers():
    torch.manual_seed(1)
    block = UpBlock(6, 4, 4, skip=False).to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 6, 2, 3, 2, requires_grad=True)
    out = block(x)
    plain = block.block(block.up(x))  # nn.ConvTranspose3d, then the block's own conv1
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    (g_out,) = torch.autograd.grad(out.square().sum(), x)
    (g_plain,) = torch.autograd.grad(plain.square().sum(), x)
    torch.testing.assert_close(g_out, g_plain, atol=1e-5, rtol=1e-4)
