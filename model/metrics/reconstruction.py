"""Validation metrics of the MAE reconstruction (facts section 4, ``run_swin_mae3d.py::eval``).

- Colour PSNR: ``-10 log10(MSE)`` with the MSE taken over the RGB values (a per-element
  mean over voxels x 3 channels) of the voxels whose ground-truth alpha exceeds 0.01,
  visible and masked alike. Padding has alpha 0, so it never counts.
- Alpha MSE: mean of ``(sigmoid(alpha_logit) - alpha)^2`` over the voxels of masked
  blocks inside the real (unpadded) grid, empty voxels included.

Both are computed per grid (``(B,)`` tensors, NaN for a grid with no voxel to score) and
averaged over grids by :class:`ReconstructionMetrics`, so a large scene does not outweigh
a small one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from nerfmae_common.psnr import psnr_from_mse

ALPHA_THRESHOLD = 0.01
"""Ground-truth alpha above which a voxel's colour is scored (the reference's gate)."""


def color_sse(
    pred_rgb: torch.Tensor, target_rgba: torch.Tensor, threshold: float = ALPHA_THRESHOLD
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-grid sum of squared colour errors over voxels with ground-truth alpha >
    ``threshold``, and the number of values summed (3 per voxel): two ``(B,)`` float32.

    Args:
        pred_rgb: ``(B, 3, X, Y, Z)`` predicted colour (linear, not clamped).
        target_rgba: ``(B, 4, X, Y, Z)`` ground truth; channel 3 is alpha.
    """
    if pred_rgb.shape[1] != 3 or target_rgba.shape[1] != 4:
        raise ValueError(
            f"pred_rgb (B, 3, ...) / target_rgba (B, 4, ...) expected, "
            f"got {tuple(pred_rgb.shape)} / {tuple(target_rgba.shape)}"
        )
    opaque = (target_rgba[:, 3] > threshold).float()  # (B, X, Y, Z)
    sq_err = (pred_rgb.float() - target_rgba[:, :3].float()).square().sum(dim=1)  # (B, X, Y, Z)
    n_values = 3.0 * opaque.flatten(1).sum(dim=1)  # (B,)
    sse = (sq_err * opaque).flatten(1).sum(dim=1)  # (B,)
    return sse, n_values


def color_mse(
    pred_rgb: torch.Tensor, target_rgba: torch.Tensor, threshold: float = ALPHA_THRESHOLD
) -> torch.Tensor:
    """Per-grid colour MSE over voxels with ground-truth alpha > ``threshold`` (shapes as
    :func:`color_sse`): ``(B,)`` float32, NaN where a grid has no voxel above the threshold."""
    sse, n_values = color_sse(pred_rgb, target_rgba, threshold)
    return torch.where(n_values > 0, sse / n_values.clamp_min(1.0), torch.full_like(sse, torch.nan))


def color_psnr(
    pred_rgb: torch.Tensor, target_rgba: torch.Tensor, threshold: float = ALPHA_THRESHOLD
) -> torch.Tensor:
    """Per-grid colour PSNR over voxels with ground-truth alpha > ``threshold``: ``(B,)``."""
    return psnr_from_mse(color_mse(pred_rgb, target_rgba, threshold))


def masked_alpha_mse(
    pred_alpha_logit: torch.Tensor,
    target_alpha: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """Per-grid MSE of ``sigmoid(pred_alpha_logit)`` against alpha over masked, valid voxels.

    Args:
        pred_alpha_logit: ``(B, X, Y, Z)`` predicted alpha before the sigmoid.
        target_alpha: ``(B, X, Y, Z)`` ground-truth alpha in [0, 1].
        mask: ``(B, X, Y, Z)`` bool, voxels in masked blocks.
        valid: ``(B, X, Y, Z)`` bool, voxels inside the real (unpadded) grid.

    Returns:
        ``(B,)`` float32; NaN where a grid has no masked valid voxel.
    """
    if not (pred_alpha_logit.shape == target_alpha.shape == mask.shape == valid.shape):
        raise ValueError(
            "pred_alpha_logit, target_alpha, mask, valid must share one (B, X, Y, Z) shape, got "
            f"{[tuple(t.shape) for t in (pred_alpha_logit, target_alpha, mask, valid)]}"
        )
    scored = (mask & valid).float()  # (B, X, Y, Z)
    sq_err = (torch.sigmoid(pred_alpha_logit.float()) - target_alpha.float()).square()
    n = scored.flatten(1).sum(dim=1)  # (B,)
    sse = (sq_err * scored).flatten(1).sum(dim=1)
    return torch.where(n > 0, sse / n.clamp_min(1.0), torch.full_like(sse, torch.nan))


@dataclass
class ReconstructionMetrics:
    """Running sums of per-grid metrics; ``compute()`` averages over the grids that scored."""

    psnr_sum: float = 0.0
    psnr_count: int = 0
    alpha_mse_sum: float = 0.0
    alpha_mse_count: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0

    def update(
        self,
        pred: torch.Tensor,
        target_rgba: torch.Tensor,
        mask: torch.Tensor,
        valid: torch.Tensor,
        loss: torch.Tensor | None = None,
    ) -> None:
        """Add one batch.

        ``pred`` / ``target_rgba`` ``(B, 4, X, Y, Z)``; ``mask`` / ``valid`` ``(B, X, Y, Z)``;
        ``loss`` the batch's mean loss (weighted by ``B`` in the mean over grids).
        """
        psnr = color_psnr(pred[:, :3], target_rgba)
        alpha_mse = masked_alpha_mse(pred[:, 3], target_rgba[:, 3], mask, valid)
        finite_psnr = psnr[torch.isfinite(psnr)]
        finite_alpha = alpha_mse[torch.isfinite(alpha_mse)]
        self.psnr_sum += float(finite_psnr.sum())
        self.psnr_count += int(finite_psnr.numel())
        self.alpha_mse_sum += float(finite_alpha.sum())
        self.alpha_mse_count += int(finite_alpha.numel())
        if loss is not None:
            batch = pred.shape[0]
            self.loss_sum += float(loss) * batch
            self.loss_count += batch

    def state_dict(self) -> dict[str, float]:
        """The running sums (to merge another rank's)."""
        return dataclasses.asdict(self)

    def merge(self, state: dict[str, float]) -> None:
        """Add the sums of another accumulator's :meth:`state_dict`."""
        for name, value in state.items():
            setattr(self, name, getattr(self, name) + value)

    def compute(self) -> dict[str, float | None]:
        """``{"psnr", "alpha_mse", "loss"}`` means over grids; ``None`` where nothing scored."""

        def mean(total: float, count: int) -> float | None:
            return total / count if count else None

        return {
            "psnr": mean(self.psnr_sum, self.psnr_count),
            "alpha_mse": mean(self.alpha_mse_sum, self.alpha_mse_count),
            "loss": mean(self.loss_sum, self.loss_count),
        }
