"""The token probe (model.probing.tokens): offsets and containing cells by hand, weighted rows,
class-balanced weights, and a code that depends on where a voxel sits in its patch, which the
token probe reads and one map shared by every voxel cannot."""

from __future__ import annotations

import pytest
import torch

from model.probing.linear import fit_logistic, logistic_params
from model.probing.tokens import (
    class_balanced_weights,
    finest_stride,
    fit_token_logistic,
    patch_offsets,
    token_rows,
)

torch.set_num_threads(1)

SIZE, STRIDE = 16, 4


def test_offsets_and_containing_cells_by_hand():
    points = torch.tensor([[0, 0, 0], [3, 2, 1], [4, 5, 6], [15, 15, 15], [9, 0, 14]])
    assert patch_offsets(points, STRIDE).tolist() == [0, 57, 6, 63, 18]
    assert patch_offsets(points, 1).tolist() == [0] * 5
    # each cell holds its own flat index; the coarse map's cells are 8 voxels wide
    fine = torch.arange(64.0).view(1, 4, 4, 4).expand(2, 4, 4, 4).clone()
    fine[1] *= -1
    coarse = torch.arange(8.0).view(1, 2, 2, 2)
    rows = token_rows([fine, coarse], points, SIZE)
    # cells (0,0,0), (0,0,0), (1,1,1), (3,3,3), (2,0,3); coarse (0,0,0), .., (1,1,1), (1,0,1)
    assert rows[:, 0].tolist() == [0, 0, 21, 63, 35]
    assert rows[:, 1].tolist() == [0, 0, -21, -63, -35]
    assert rows[:, 2].tolist() == [0, 0, 0, 7, 5]
    assert finest_stride([fine, coarse], SIZE) == STRIDE
    with pytest.raises(ValueError, match="does not tile"):
        finest_stride([torch.zeros(1, 5, 5, 5)], SIZE)


def test_a_row_of_weight_two_counts_as_that_row_twice():
    torch.manual_seed(0)
    xs, target = torch.randn(30, 3), torch.randint(0, 3, (30,))
    weight = torch.ones(30, dtype=torch.float64)
    weight[:5] = 2
    weighted = logistic_params(xs, target, 3, 0.1, 100, None, weight)
    twice = torch.cat([xs, xs[:5]]), torch.cat([target, target[:5]])
    repeated = logistic_params(*twice, 3, 0.1, 100, None)
    torch.testing.assert_close(weighted, repeated, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(weighted, logistic_params(xs, target, 3, 0.1, 100, None), atol=1e-3)


def test_class_balanced_weights_give_every_class_the_same_total():
    weights = class_balanced_weights(torch.tensor([7, 7, 7, 2]))
    torch.testing.assert_close(weights, torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0],
                                                     dtype=torch.float64))  # fmt: skip


def position_coded_rooms(rooms: int, seed: int, noise: bool = False):
    """Rooms of ``4^3`` tokens with 6 random features each. A voxel in the low half of its
    patch along x has class 1 or 2 by the sign of its token's feature 0, one in the high half
    class 3 or 4 by the sign of feature 1: the label is linear in the token for each position,
    and the same token gives two labels. With ``noise``, labels are drawn at random."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.stack(torch.meshgrid(*[torch.arange(SIZE)] * 3, indexing="ij"), -1)
    points = points.reshape(-1, 3)
    x, y, offsets, groups = [], [], [], []
    for room in range(rooms):
        tokens = torch.randn(6, 4, 4, 4, generator=generator)
        rows = token_rows([tokens], points, SIZE)
        low = points[:, 0] % STRIDE < STRIDE // 2
        label = torch.where(low, 1 + (rows[:, 0] > 0).long(), 3 + (rows[:, 1] > 0).long())
        if noise:
            label = torch.randint(1, 5, (len(points),), generator=generator)
        x.append(rows)
        y.append(label)
        offsets.append(patch_offsets(points, STRIDE))
        groups.append(torch.full((len(points),), room))
    return tuple(torch.cat(t) for t in (x, y, offsets, groups))


def test_the_token_probe_reads_a_position_dependent_code_that_one_shared_map_cannot():
    x, y, offsets, groups = position_coded_rooms(6, seed=0)
    tx, ty, toffsets, _ = position_coded_rooms(2, seed=1)
    probe, _ = fit_token_logistic(x, y, offsets, groups, STRIDE, (1e-3, 1e-1), max_iter=40)
    assert probe.weight.shape == (64, 4, 6) and probe.stride == STRIDE
    assert (probe.predict(tx, toffsets) == ty).double().mean() > 0.95
    # the same token features through one map for every voxel: half the patch at best
    shared, _ = fit_logistic(x, y, groups, max_iter=40)
    assert (shared.predict(tx) == ty).double().mean() < 0.6


def test_the_token_probe_finds_nothing_in_noise_and_refuses_bad_offsets():
    x, y, offsets, groups = position_coded_rooms(6, seed=2, noise=True)
    tx, ty, toffsets, _ = position_coded_rooms(2, seed=3, noise=True)
    probe, _ = fit_token_logistic(x, y, offsets, groups, STRIDE, (1e-3, 1e-1), max_iter=40)
    assert (probe.predict(tx, toffsets) == ty).double().mean() < 0.3  # four classes
    with pytest.raises(ValueError, match="offsets outside"):
        fit_token_logistic(x, y, offsets + 64, groups, STRIDE)
    with pytest.raises(ValueError, match="feature rows"):
        fit_token_logistic(x, y[:-1], offsets, groups, STRIDE)
