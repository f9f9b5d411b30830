"""Instance norm (no affine, no running statistics) that keeps ``channels_last_3d`` memory and
float32 accuracy at any volume.

``F.group_norm`` with one group per channel reads ``channels_last_3d`` directly, but its CPU
kernel accumulates the statistics of a channel in float32 one element after another, so its
error grows with the volume: against float64, 2.4e-4 at 64^3 and 1.3e-2 at 160^3 (the decoder's
full-resolution blocks at the paper's size). ``F.instance_norm`` is exact but copies the
tensor to and from the contiguous layout each way (2x the time). Here the statistics are
torch's reductions over the spatial axes (pairwise sums, accurate to ~1e-7 relative), two
passes (the mean, then the variance about it, so a large mean costs no accuracy), and the
normalisation and its gradient are elementwise passes in the input's layout:

    y = (x - mean) * rstd,    dx = rstd * (dy - mean(dy) - y * mean(dy * y))

with means over the spatial axes of each (sample, channel). The backward keeps the input and
the statistics, as group norm does (so the output may be changed in place, as the decoder's
blocks do), and recomputes ``y``. Half-precision inputs are normalised in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SPATIAL = (2, 3, 4)


class _InstanceNorm3d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, eps: float) -> Tensor:
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        n = x.shape[2] * x.shape[3] * x.shape[4]
        mean = x.sum(SPATIAL, keepdim=True) / n  # (B, C, 1, 1, 1)
        centred = x - mean  # (B, C, D, H, W), x's layout
        var = (centred * centred).sum(SPATIAL, keepdim=True) / n
        rstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, mean, rstd)
        ctx.input_dtype = dtype
        return centred.mul_(rstd)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, None]:
        x, mean, rstd = ctx.saved_tensors
        y = (x - mean).mul_(rstd)
        dy = dy.to(y.dtype)
        n = y.shape[2] * y.shape[3] * y.shape[4]
        mean_dy = dy.sum(SPATIAL, keepdim=True) / n
        mean_dy_y = (dy * y).sum(SPATIAL, keepdim=True) / n
        dx = dy - mean_dy
        dx.addcmul_(y, mean_dy_y, value=-1.0).mul_(rstd)
        return dx.to(ctx.input_dtype), None


def instance_norm_3d(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``(B, C, D, H, W)`` normalised per sample and channel; same shape and memory format."""
    return _InstanceNorm3d.apply(x, eps)


class InstanceNorm3dCL(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d(C)`` (no affine, no running stats) by :func:`instance_norm_3d`: no
    parameters or buffers, so state dicts are those of ``nn.InstanceNorm3d``."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, D, H, W)`` -> same shape and memory format."""
        return instance_norm_3d(x, self.eps)
