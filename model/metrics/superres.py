"""Voxel super-resolution: the loss and the PSNR (facts section 6.3).

Both score RGB only, on the voxels where the *target* (high-resolution) grid is occupied,
alpha > 0.01; alpha itself is not supervised (as in the reference).

- **Loss**: the mean squared RGB error over those voxels of the batch (3 values each).
- **PSNR** over a validation set: ``-10 log10(SSE / N)`` with the squared errors ``SSE``
  and value counts ``N`` summed over *every* validation voxel first (:class:`PooledColourPSNR`).
  The reference averages the PSNRs of its batches instead, which depends on the batch size
  and lets a batch of few occupied voxels weigh as much as a full one; both are reported
  (``psnr`` and ``mean_batch_psnr``) so the figures can be compared with the paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from model.metrics.reconstruction import ALPHA_THRESHOLD, color_sse
from nerfmae_common.psnr import psnr_from_mse


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.ndim != 5 or pred.shape[1] < 3 or target.ndim != 5 or target.shape[1] != 4:
        raise ValueError(
            f"pred (B, >=3, X, Y, Z) and target (B, 4, X, Y, Z) expected, "
            f"got {tuple(pred.shape)} / {tuple(target.shape)}"
        )
    if pred.shape[0] != target.shape[0] or pred.shape[2:] != target.shape[2:]:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)}: batch and grid differ "
            "(the head's output must match the high-resolution target)"
        )


def occupied_rgb_errors(
    pred: torch.Tensor, target: torch.Tensor, threshold: float = ALPHA_THRESHOLD
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of squared RGB errors and the number of RGB values scored, both scalars.

    ``pred`` ``(B, C>=3, X, Y, Z)`` (channels 0-2 RGB), ``target`` ``(B, 4, X, Y, Z)``;
    padding has target alpha 0 and so is never scored.
    """
    _check(pred, target)
    sse, n_values = color_sse(pred[:, :3], target, threshold)  # (B,), (B,)
    return sse.sum(), n_values.sum().long()


def superres_loss(
    pred: torch.Tensor, target: torch.Tensor, threshold: float = ALPHA_THRESHOLD
) -> torch.Tensor:
    """MSE of RGB over the target's occupied voxels (0 with a gradient when there are none)."""
    sse, count = occupied_rgb_errors(pred, target, threshold)
    return sse / count.clamp_min(1)


@dataclass
class PooledColourPSNR:
    """Accumulates squared errors and counts over batches; PSNR of the pooled MSE, beside the
    mean of the batches' PSNRs (the reference's figure)."""

    sse: float = 0.0
    count: int = 0
    batch_psnrs: list[float] = field(default_factory=list)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predictions ``(B, >=3, X, Y, Z)`` and targets ``(B, 4, X, Y, Z)``."""
        sse, count = occupied_rgb_errors(pred.detach(), target)
        self.add_errors(float(sse), int(count))

    def add_errors(self, sse: float, count: int) -> None:
        """Add a batch's summed squared errors over ``count`` RGB values (as
        :func:`occupied_rgb_errors` gives them)."""
        self.sse += sse
        self.count += count
        if count > 0:
            self.batch_psnrs.append(psnr_from_mse(sse / count))

    def state_dict(self) -> dict:
        return {"sse": self.sse, "count": self.count, "batch_psnrs": list(self.batch_psnrs)}

    def merge(self, state: dict) -> None:
        """Add another accumulator's errors and batch PSNRs (another rank's share)."""
        self.sse += state["sse"]
        self.count += state["count"]
        self.batch_psnrs += state["batch_psnrs"]

    def compute(self) -> dict[str, float | int]:
        """``psnr`` (pooled; +inf for a perfect prediction), ``mse``, ``mean_batch_psnr`` (the
        reference's), ``values`` (RGB values scored); NaN where nothing was scored."""
        mse = self.sse / self.count if self.count else math.nan
        batches = self.batch_psnrs
        return {
            "psnr": psnr_from_mse(mse),
            "mse": mse,
            "mean_batch_psnr": sum(batches) / len(batches) if batches else math.nan,
            "values": self.count,
        }
