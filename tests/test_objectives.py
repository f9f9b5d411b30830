"""Pretraining objectives: the colour weight along its schedule, the objective a run resolves
and records, and the shuffled-target control."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from model.tasks.objectives import OBJECTIVES, Objective, shuffled_targets
from model.tasks.pretrain import PretrainConfig


def test_cosine_ramp_weights_by_hand():
    ramp = Objective(rgb_schedule="cosine")
    # 11 steps: t = step / 10
    assert [ramp.rgb_weight(s, 11) for s in (0, 5, 10)] == pytest.approx([0.0, 0.5, 1.0])
    assert ramp.rgb_weight(2, 11) == pytest.approx((1 - math.cos(math.pi * 0.2)) / 2)
    half = Objective(rgb_schedule="cosine", rgb_ramp=0.5)  # over the first 5 steps of 11
    assert [half.rgb_weight(s, 11) for s in (0, 5, 7, 10)] == pytest.approx([0, 1, 1, 1])
    weights = [ramp.rgb_weight(s, 50) for s in range(50)]
    assert all(a <= b for a, b in zip(weights, weights[1:], strict=False))  # never falls
    assert {OBJECTIVES["paper"].rgb_weight(s, 50) for s in range(50)} == {1.0}
    assert {OBJECTIVES["opacity_only_decorrelated"].rgb_weight(s, 50) for s in range(50)} == {0.0}
    with pytest.raises(ValueError, match="rgb_ramp"):
        Objective(rgb_schedule="cosine", rgb_ramp=0.0)


def test_a_run_resolves_its_objective_from_the_name_and_the_overrides():
    config = PretrainConfig(store_url="s", out_dir="o", objective="paper",
                            rgb_schedule="cosine", model_overrides={"alpha_balance":
                                                                    "occupied_empty"})  # fmt: skip
    resolved = config.resolved_objective()
    assert resolved.rgb_schedule == "cosine" and resolved.alpha_balance == "occupied_empty"
    assert resolved.rgb_region == "all_opaque"  # the paper's, untouched
    balanced = PretrainConfig(store_url="s", out_dir="o",
                              objective="opacity_only_balanced_decorrelated").resolved_objective()
    assert balanced.model_fields() == {"rgb_region": "all_opaque", "rgb_weighting": "gate",
                                       "alpha_balance": "occupied_empty", "alpha_target": "alpha",
                                       "decorrelation": 0.2}
    assert balanced.rgb_weight(0, 10) == balanced.rgb_weight(9, 10) == 0.0
    normalised = PretrainConfig(store_url="s", out_dir="o",
                                objective="opacity_only_normalised_decorrelated")
    assert normalised.resolved_objective().alpha_target == "patch_normalised"
    objects = PretrainConfig(store_url="s", out_dir="o",
                             objective="opacity_only_objects_decorrelated").resolved_objective()
    assert objects.model_fields()["alpha_balance"] == "shell_object_empty"
    assert objects.rgb_weight(0, 10) == objects.rgb_weight(9, 10) == 0.0
    from model.tasks.pretrain import MAETask
    from model.training.distributed import DistributedContext

    task = MAETask(dataclasses.replace(normalised, preset="tiny", resolution=32),
                   DistributedContext(0, 1, 0, torch.device("cpu")))
    assert task.mae_config.alpha_target == "patch_normalised"
    with pytest.raises(ValueError, match="objective"):
        PretrainConfig(store_url="s", out_dir="o", objective="colour_last")
    with pytest.raises(ValueError, match="rgb_schedule"):
        PretrainConfig(store_url="s", out_dir="o", rgb_schedule="linear")


def test_shuffled_targets_keep_each_grids_voxels_and_lose_their_places():
    g = torch.Generator().manual_seed(0)
    rgba = torch.rand(2, 4, 8, 8, 8, generator=g)
    valid = torch.zeros(2, 8, 8, 8, dtype=torch.bool)
    valid[:, :6] = True
    out = shuffled_targets(rgba, valid, ["a", "b"])
    assert torch.equal(out[:, :, 6:], rgba[:, :, 6:])  # outside the grid: untouched
    for b in range(2):
        inside, moved = rgba[b][:, valid[b]], out[b][:, valid[b]]  # (4, n) voxels
        # the same voxels (whole RGBA vectors move together), in another order
        assert torch.equal(inside[:, inside[3].argsort()], moved[:, moved[3].argsort()])
        assert (inside != moved).any(0).float().mean() > 0.9
    assert torch.equal(out, shuffled_targets(rgba, valid, ["a", "b"]))  # fixed per scene
    assert not torch.equal(out[0], shuffled_targets(rgba, valid, ["c", "b"])[0])


def test_pretraining_logs_the_colour_ramp_and_records_the_objective(tmp_path):
    from grid_store import GridStore
    from model.tasks.pretrain import pretrain
    from pipeline.synthetic.ground_truth import sample_ground_truth
    from pipeline.synthetic.room import make_room

    store = GridStore(str(tmp_path / "g.zarr"))
    for i in range(2):
        store.write_grid(f"room{i}", sample_ground_truth(make_room(i), 32).with_empty_space(0.01))
    run = tmp_path / "run"
    summary = pretrain(PretrainConfig(
        store_url=store.url, out_dir=str(run), preset="tiny", resolution=32, epochs=5,
        batch_size=1, num_workers=0, val_scenes=["room1"], log_every=1, eval_every=100,
        objective="structure_first_decorrelated", model_overrides={"head": "token"},
        shuffle_targets=True,
    ))  # fmt: skip
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["rgb_weight"] for r in log] == pytest.approx([0.0, 0.1464466, 0.5, 0.8535534, 1.0])
    assert all(0 < r["loss_decorrelation"] <= 1 for r in log)
    assert summary["objective"] == "structure_first_decorrelated"
    assert summary["shuffle_targets"] is True
    assert summary["objective_settings"]["rgb_schedule"] == "cosine"
    saved = json.loads((run / "config.json").read_text())
    assert saved["model_config"]["head"] == "token"
    assert saved["model_config"]["decorrelation"] == 0.2
    assert saved["resolved"]["objective_settings"]["alpha_balance"] == "none"
