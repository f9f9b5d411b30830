"""The decoder's channels-last instance norm equals ``nn.InstanceNorm3d``, alone and in a block,
and keeps float32 accuracy at the volumes where group norm's CPU kernel lost it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from model.networks.decoder import UnetResBlock
from model.networks.instance_norm import InstanceNorm3dCL

CL3D = torch.channels_last_3d


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL3D])
def test_group_norm_instance_norm_equals_instance_norm_in_float64(memory_format):
    torch.manual_seed(0)
    x = (3 * torch.randn(2, 5, 7, 4, 3, dtype=torch.float64) + 1).contiguous(
        memory_format=memory_format
    )
    x.requires_grad_(True)
    grad = torch.randn(2, 5, 7, 4, 3, dtype=torch.float64)
    ours, ref = InstanceNorm3dCL(5)(x), nn.InstanceNorm3d(5)(x)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-12, rtol=0)
    assert ours.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("mean", [1.0, 100.0])
def test_float32_matches_float64_at_a_volume_where_group_norm_drifted(mean):
    """128^3: ``F.group_norm`` on channels_last_3d was off by 1.8e-3 (4e-2 with a mean of 100)
    against float64; the fix stays at float32 rounding, forward and backward."""
    torch.manual_seed(0)
    x = (3 * torch.randn(1, 4, 128, 128, 128) + mean).contiguous(memory_format=CL3D)
    grad = torch.randn_like(x)
    # the reference in the contiguous layout: torch's own instance_norm backward on
    # channels_last_3d disagrees with its contiguous one (by 2.0 at 16^3, torch 2.13 CPU)
    x64 = x.double().contiguous().requires_grad_(True)
    x32 = x.clone().requires_grad_(True)
    ref, ours = nn.InstanceNorm3d(4)(x64), InstanceNorm3dCL(4)(x32)
    assert ours.is_contiguous(memory_format=CL3D)
    assert (ours.double() - ref).abs().max() < 1e-5
    (g_ref,) = torch.autograd.grad(ref, x64, grad.double().contiguous())
    (g_ours,) = torch.autograd.grad(ours, x32, grad)
    assert (g_ours.double() - g_ref).abs().max() < 1e-5 * g_ref.abs().max()


def test_half_precision_is_normalised_in_float32():
    x = (3 * torch.randn(1, 2, 8, 8, 8) + 1).to(torch.bfloat16).requires_grad_(True)
    y = InstanceNorm3dCL(2)(x)
    ref = nn.InstanceNorm3d(2)(x.detach().float())
    assert y.dtype == torch.float32 and (y - ref).abs().max() < 1e-5
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16


def test_no_state_so_checkpoints_keep_their_keys():
    assert InstanceNorm3dCL(8).state_dict() == nn.InstanceNorm3d(8).state_dict() == {}


@pytest.mark.parametrize("cin", [6, 12])  # identity and 1x1-conv residual
def test_block_equals_block_with_plain_instance_norm(cin):
    """float32: the two norms sum in different orders; a 1e-4 tolerance on O(1) outputs is
    ~10x the float32 rounding of a 500-voxel mean/variance, far below any real defect."""
    torch.manual_seed(0)
    ours = UnetResBlock(cin, 6).to(memory_format=CL3D)
    plain = copy.deepcopy(ours)
    plain.norm1, plain.norm2 = nn.InstanceNorm3d(6), nn.InstanceNorm3d(6)
    if cin != 6:
        plain.residual[1] = nn.InstanceNorm3d(6)
    x = torch.randn(2, cin, 9, 8, 7).contiguous(memory_format=CL3D)
    out_ours, out_plain = ours(x), plain(x)
    torch.testing.assert_close(out_ours, out_plain, atol=1e-4, rtol=1e-4)
    out_ours.square().sum().backward()
    out_plain.square().sum().backward()
    # conv biases before a norm have zero gradient up to rounding: compare on the block's scale
    scale = max(q.grad.abs().max() for q in plain.parameters())
    for (name, p), q in zip(ours.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5 * scale, rtol=0, msg=name)
