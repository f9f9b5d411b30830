"""What an MAE fills into masked blocks, by kind of voxel, against the zero and position priors:
hand-made rooms and stand-in networks whose answers are known."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from model.networks.presets import build_mae, get_config
from model.probing.reconstruction import (
    masked_reconstruction,
    position_prior,
    visible_neighbourhood_mean,
    voxel_categories,
)
from model.probing.rooms import ProbeRooms

S = 4
FURNITURE = (3,)


def hand_rooms() -> ProbeRooms:
    """Two 4^3 rooms: a floor (class 1, alpha 1) on z = 0, one chair voxel (class 3) of alpha
    0.8 in room 0 and 0.4 in room 1, everything else free; room 1's top layer is padding."""
    rgba = torch.zeros(2, 4, S, S, S)
    semantic = torch.zeros(2, S, S, S, dtype=torch.uint8)
    rgba[:, 3, :, :, 0] = 1.0
    semantic[:, :, :, 0] = 1
    rgba[0, 3, 1, 1, 1], rgba[1, 3, 1, 1, 1] = 0.8, 0.4
    semantic[:, 1, 1, 1] = 3
    valid = torch.ones(2, S, S, S, dtype=torch.bool)
    valid[1, :, :, 3] = False
    return ProbeRooms(store_url="hand", scene_ids=["a", "b"], alpha_step=None, rgba=rgba,
                      valid=valid, semantic=semantic, points=[], point_weights=[], boxes=[],
                      box_labels=[], box_voxels=[], class_names=None)  # fmt: skip


class StandIn(torch.nn.Module):
    """Masks the first half of the grid along x; predicts ``answer(rgba)`` as alpha."""

    def __init__(self, answer) -> None:
        super().__init__()
        self.answer = answer
        self.config = SimpleNamespace(alpha_threshold=0.01, patch_size=2)

    def forward(self, rgba, valid, generator=None):
        mask = torch.zeros_like(valid)
        mask[:, : S // 2] = True
        alpha = self.answer(rgba).clamp(1e-6, 1 - 1e-6)
        pred = torch.cat([rgba[:, :3], torch.logit(alpha)[:, None]], dim=1)
        return SimpleNamespace(pred=pred, mask=mask)


def test_the_position_prior_averages_valid_voxels_only():
    prior = position_prior(hand_rooms())
    assert float(prior[1, 1, 1]) == pytest.approx(0.6)  # (0.8 + 0.4) / 2
    assert float(prior[0, 0, 0]) == 1.0 and float(prior[2, 2, 2]) == 0.0
    assert float(prior[0, 0, 3]) == 0.0  # valid only in room 0, free there


def test_the_neighbourhood_mean_agrees_with_a_loop_over_each_cube():
    g = torch.Generator().manual_seed(0)
    alpha = torch.rand(2, 6, 6, 6, generator=g)
    visible = torch.rand(2, 6, 6, 6, generator=g) < 0.3
    got = visible_neighbourhood_mean(alpha, visible, 3)
    for b, i, j, k in [(0, 0, 0, 0), (0, 2, 3, 4), (1, 5, 5, 0), (1, 3, 1, 2)]:
        cube = (b, slice(max(i - 1, 0), i + 2), slice(max(j - 1, 0), j + 2),
                slice(max(k - 1, 0), k + 2))  # fmt: skip
        seen = visible[cube]
        want = alpha[cube][seen].mean() if seen.any() else torch.tensor(0.0)
        assert float(got[b, i, j, k]) == pytest.approx(float(want), abs=1e-6)
    lone = torch.zeros(1, 6, 6, 6, dtype=torch.bool)
    lone[0, 0, 0, 0] = True
    spread = visible_neighbourhood_mean(torch.full((1, 6, 6, 6), 0.7), lone, 3)
    assert float(spread[0, 1, 1, 1]) == pytest.approx(0.7) and float(spread[0, 2, 0, 0]) == 0.0
    with pytest.raises(ValueError, match="width"):
        visible_neighbourhood_mean(alpha, visible, 4)


def test_voxels_fall_into_free_shell_and_furniture():
    rooms = hand_rooms()
    kinds = voxel_categories(rooms.rgba[:, 3], rooms.semantic, FURNITURE, 0.01)
    assert [int(kinds[k].sum()) for k in ("free", "shell", "furniture")] == [94, 32, 2]
    assert sum(kinds.values()).max() == 1  # a partition


def test_scores_by_kind_of_voxel_match_hand_counts():
    rooms = hand_rooms()
    prior = position_prior(rooms)
    oracle = masked_reconstruction(StandIn(lambda rgba: rgba[:, 3]), rooms, prior, FURNITURE)
    empty = masked_reconstruction(StandIn(lambda rgba: torch.zeros_like(rgba[:, 3])), rooms,
                                  prior, FURNITURE)  # fmt: skip
    # masked (x < 2) and valid: room 0 has 8 floor voxels, room 1 too; 2 draws each
    assert oracle["shell"]["network"]["voxels"] == 32
    assert oracle["furniture"]["network"]["voxels"] == 4  # the chair voxel, 2 rooms x 2 draws
    assert oracle["furniture"]["network"]["mse"] == pytest.approx(0.0, abs=1e-9)
    assert oracle["furniture"]["network"]["correct"] == 1.0
    # predicting free space is exactly the zero predictor
    for kind in ("free", "shell", "furniture"):
        assert empty[kind]["network"]["mse"] == pytest.approx(empty[kind]["zero"]["mse"], abs=1e-5)
    # zero on the chair: (0.8^2 + 0.4^2) / 2; prior 0.6: (0.2^2 + 0.2^2) / 2
    assert oracle["furniture"]["zero"]["mse"] == pytest.approx(0.4)
    assert oracle["furniture"]["prior"]["mse"] == pytest.approx(0.04)
    # at 0.5 the prior (0.6) is right on room 0's chair (0.8) and wrong on room 1's (0.4)
    assert oracle["furniture"]["prior"]["correct"] == pytest.approx(0.5)
    assert oracle["shell"]["prior"]["mse"] == pytest.approx(0.0)  # the floor never moves
    # nearby (the whole 4^3 room in view): the visible half's mean alpha, 8 floor voxels of
    # 32 in room 0 and of 24 valid ones in room 1
    nearby = ((0.8 - 8 / 32) ** 2 + (0.4 - 8 / 24) ** 2) / 2
    assert oracle["furniture"]["nearby"]["mse"] == pytest.approx(nearby)
    # the chair's 2^3 patch: 4 floor voxels (1.0), the chair and 3 free voxels
    patch = ((0.8 - 4.8 / 8) ** 2 + (0.4 - 4.4 / 8) ** 2) / 2
    assert oracle["furniture"]["patch_mean"]["mse"] == pytest.approx(patch)


def test_a_real_mae_is_scored_on_the_same_masks_each_call():
    torch.manual_seed(0)
    mae = build_mae(get_config("tiny", resolution=32))
    rooms = hand_rooms()
    padded = {k: torch.nn.functional.pad(getattr(rooms, k), (0, 28) * 3)
              for k in ("rgba", "valid", "semantic")}  # fmt: skip
    big = ProbeRooms(**{**rooms.__dict__, **padded})
    first = masked_reconstruction(mae, big, position_prior(big), FURNITURE, seed=1)
    again = masked_reconstruction(mae, big, position_prior(big), FURNITURE, seed=1)
    assert first == again and 0 < first["free"]["network"]["mse"] < 1
