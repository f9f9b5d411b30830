"""Super-resolution loss and PSNR on hand-made grids with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from model.metrics.superres import PooledColourPSNR, superres_loss


def target_grid(occupied: int, total: int = 8) -> torch.Tensor:
    """``(1, 4, total, 1, 1)``: colour 0.5 everywhere, alpha 1 on the first ``occupied``."""
    target = torch.full((1, 4, total, 1, 1), 0.5)
    target[0, 3] = 0.0
    target[0, 3, :occupied] = 1.0
    return target


def test_loss_scores_rgb_on_occupied_target_voxels_only():
    target = target_grid(occupied=2)
    pred = target.clone()
    pred[0, :3, 0] += 0.1  # an occupied voxel off by 0.1 in R, G and B
    pred[0, :3, 5] += 0.9  # an empty voxel: not scored
    pred[0, 3] = -5.0  # alpha is not supervised
    # 3 values of 0.01 over 2 voxels x 3 values
    assert float(superres_loss(pred, target)) == pytest.approx(0.03 / 6)


def test_pooled_psnr_differs_from_the_mean_of_batch_psnrs():
    metric = PooledColourPSNR()
    # batch 1: 4 occupied voxels off by 0.1 -> MSE 0.01 (20 dB)
    t1 = target_grid(occupied=4)
    p1 = t1.clone()
    p1[0, :3, :4] += 0.1
    metric.update(p1, t1)
    # batch 2: 1 occupied voxel, one value off by sqrt(3e-4) -> MSE 3e-4 / 3 = 1e-4 (40 dB)
    t2 = target_grid(occupied=1)
    p2 = t2.clone()
    p2[0, 0, 0] += math.sqrt(3e-4)
    metric.update(p2, t2)
    result = metric.compute()
    # pooled: (12 * 0.01 + 3e-4) / 15 values
    pooled_mse = (12 * 0.01 + 3e-4) / 15
    assert result["mse"] == pytest.approx(pooled_mse)
    assert result["psnr"] == pytest.approx(-10 * math.log10(pooled_mse))
    assert result["mean_batch_psnr"] == pytest.approx(30.0, abs=1e-4)  # (20 + 40) / 2
    assert result["values"] == 15
    assert result["psnr"] < result["mean_batch_psnr"]


def test_shapes_are_checked_and_nothing_scored_is_nan():
    with pytest.raises(ValueError, match="batch and grid differ"):
        superres_loss(torch.zeros(1, 4, 4, 4, 4), torch.zeros(1, 4, 8, 8, 8))
    metric = PooledColourPSNR()
    metric.update(torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2))  # all empty
    assert math.isnan(metric.compute()["psnr"])
    assert float(superres_loss(torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2))) == 0.0


def test_a_perfect_prediction_is_infinite_psnr_and_ranks_merge_to_the_whole_set():
    target = target_grid(occupied=3)
    perfect = PooledColourPSNR()
    perfect.update(target.clone(), target)
    assert perfect.compute()["psnr"] == math.inf and perfect.compute()["mse"] == 0.0

    # two ranks' shares merged (what the trainer does under DDP) = one pass over both batches
    t1, t2 = target_grid(occupied=4), target_grid(occupied=1)
    p1, p2 = t1 + 0.1, t2 + 0.2
    whole, rank0, rank1 = PooledColourPSNR(), PooledColourPSNR(), PooledColourPSNR()
    for metric, batches in ((whole, [(p1, t1), (p2, t2)]), (rank0, [(p1, t1)]),
                            (rank1, [(p2, t2)])):  # fmt: skip
        for pred, target in batches:
            metric.update(pred, target)
    rank0.merge(rank1.state_dict())
    assert rank0.compute() == pytest.approx(whole.compute())
    assert rank0.compute()["mean_batch_psnr"] != pytest.approx(rank1.compute()["psnr"])
