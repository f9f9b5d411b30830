"""Linear probes of frozen features (model.probing, benchmarks/bench_probe.py): trilinear reads
at voxel centres, box pooling, probes that find a planted signal and not noise, the frozen
encoder's features of real rooms, and bad input refused by name."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from benchmark_scripts import load_benchmark

from grid_store import GridStore, RadianceGrid
from model.checkpoints.reading import read_checkpoint
from model.networks.presets import build_mae, get_config
from model.probing import (
    ProbeConfig,
    load_rooms,
    probe_source,
    random_source,
    run_checkpoints,
)
from model.probing.interpolation import pool_map, pooling_matrix, sample_map, sample_maps
from model.probing.linear import LinearMap
from model.probing.probe import room_maps
from model.probing.rank import FeatureMoments, effective_rank
from model.probing.rooms import box_voxels
from model.probing.semantic import linear_read
from model.training.checkpointing import DataPosition, make_checkpoint, save_checkpoint
from pipeline.synthetic.ground_truth import sample_ground_truth
from pipeline.synthetic.room import make_room

torch.set_num_threads(1)


def voxels(*index) -> torch.Tensor:
    return torch.tensor(index, dtype=torch.long).reshape(-1, 3)


# ---------------------------------------------------------------- reads at voxel centres
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_ramp_map_reads_its_value_at_the_voxel_centre(axis):
    # 16 voxels, stride 4: cell j holds its centre's coordinate (j + 0.5) * 4 = 2, 6, 10, 14
    line = torch.tensor([2.0, 6.0, 10.0, 14.0])
    ramp = line.view([-1 if a == axis else 1 for a in range(3)]).expand(4, 4, 4)[None]
    at = [0] * 3
    for v, expected in ((5, 5.5), (6, 6.5), (8, 8.5), (0, 2.0), (1, 2.0), (15, 14.0)):
        at[axis] = v  # between cell centres: the ramp itself; beyond the outer ones: the edge
        assert sample_map(ramp, voxels(*at), 16).item() == pytest.approx(expected)
    # across the other axes the ramp is constant
    other = [3, 3, 3]
    other[axis] = 9
    assert sample_map(ramp, voxels(*other), 16).item() == pytest.approx(9.5)


def test_reads_agree_with_grid_sample_and_stages_concatenate():
    torch.manual_seed(0)
    maps = [torch.randn(3, 8, 4, 2), torch.randn(2, 16, 16, 16)]
    points = torch.randint(0, 16, (50, 3))
    # grid_sample's last axis is (W, H, D) = our (k, j, i); -1/+1 are the cube's faces
    grid = ((points.flip(1).float() + 0.5) / 16 * 2 - 1).view(1, 1, 1, -1, 3)
    for m, got in zip(maps, sample_maps(maps, points, 16).split([3, 2], 1), strict=True):
        reference = F.grid_sample(m[None], grid, align_corners=False, padding_mode="border")
        torch.testing.assert_close(got, reference.view(m.shape[0], -1).T)
    with pytest.raises(ValueError, match="does not tile"):
        sample_map(torch.randn(1, 3, 4, 4), points, 16)


def test_a_linear_read_of_projected_maps_equals_the_linear_map_of_the_features():
    torch.manual_seed(1)
    maps = [torch.randn(4, 4, 4, 4), torch.randn(6, 2, 2, 2)]
    linear = LinearMap(torch.randn(3, 10), torch.randn(3))
    points = torch.randint(0, 16, (40, 3))
    torch.testing.assert_close(linear_read(maps, linear, points, 16),
                               linear(sample_maps(maps, points, 16)))  # fmt: skip


# ---------------------------------------------------------------- boxes
def test_a_rotated_box_holds_exactly_the_voxels_centred_inside_it():
    # a square of side 2*sqrt(2) turned 45 degrees is the diamond |dx| + |dy| <= 2 about
    # (8, 8); one voxel layer (z centre 8.5). Unrotated it would hold only the middle 2x2.
    box = torch.tensor([[8.0, 8.0, 8.5, 2 * math.sqrt(2), 2 * math.sqrt(2), 1.0, math.pi / 4]])
    valid = torch.ones(16, 16, 16, dtype=torch.bool)
    diamond = {(7, 7), (7, 8), (8, 7), (8, 8), (6, 7), (6, 8), (9, 7), (9, 8), (7, 6), (8, 6),
               (7, 9), (8, 9)}  # fmt: skip
    (found,) = box_voxels(box, valid)
    assert {tuple(v) for v in found.tolist()} == {(x, y, 8) for x, y in diamond}
    # a box turned 90 degrees: w runs along y
    upright = torch.tensor([[8.0, 8.0, 8.0, 4.0, 2.0, 2.0, math.pi / 2]])
    valid[7, 9, 7] = False  # invalid voxels are never pooled
    (found,) = box_voxels(upright, valid)
    expected = {(x, y, z) for x in (7, 8) for y in range(6, 10) for z in (7, 8)} - {(7, 9, 7)}
    assert {tuple(v) for v in found.tolist()} == expected


def test_pooling_averages_the_reads_over_each_box_voxel_set():
    torch.manual_seed(2)
    sets = [voxels((1, 2, 3), (1, 2, 4), (9, 9, 9)), voxels((15, 0, 7))]
    for cells in ((16, 16, 16), (4, 4, 4), (2, 8, 1)):
        feature_map = torch.randn(5, *cells)
        pooled = pool_map(pooling_matrix(sets, 16, cells), feature_map)
        expected = torch.stack([sample_map(feature_map, s, 16).mean(0) for s in sets])
        torch.testing.assert_close(pooled, expected)
    assert pool_map(pooling_matrix([], 16, (4, 4, 4)), torch.randn(5, 4, 4, 4)).shape == (0, 5)
    # at voxel resolution a read is the voxel's own value
    feature_map = torch.randn(2, 16, 16, 16)
    torch.testing.assert_close(pool_map(pooling_matrix(sets[:1], 16, (16,) * 3), feature_map)[0],
                               feature_map[:, [1, 1, 9], [2, 2, 9], [3, 4, 9]].mean(1))  # fmt: skip


# ---------------------------------------------------------------- planted signal vs noise
SIZE = 16
CLASSES = (4, 5, 6)


def planted_grid(seed: int, planted: bool) -> RadianceGrid:
    """A 16^3 room: a wall (class 1) at y = 0 and three axis-aligned boxes of random classes
    and sizes, one per x slab. With ``planted``, R holds the label / 10 and G, B, A the box's
    log extents inside it; everything else (all of it without ``planted``) is uniform noise."""
    rng = np.random.default_rng(seed)
    rgba = rng.uniform(0, 1, (4, SIZE, SIZE, SIZE)).astype(np.float32)
    semantic = np.zeros((SIZE,) * 3, np.uint8)
    semantic[:, 0] = 1
    boxes, labels = [], []
    for slab in range(3):
        w, l, h = rng.integers(2, 5), rng.integers(2, 9), rng.integers(2, 9)
        lo = np.array([1 + 5 * slab, 1 + rng.integers(0, 15 - l), rng.integers(0, 17 - h)])
        label = int(rng.choice(CLASSES))
        inside = tuple(slice(a, a + n) for a, n in zip(lo, (w, l, h), strict=True))
        semantic[inside] = label
        if planted:
            rgba[(slice(1, 4), *inside)] = (np.log([w, l, h]) / np.log(16))[:, None, None, None]
        boxes.append([*(lo + np.array([w, l, h]) / 2 - 0.5), w, l, h, 0.0])  # world = voxel - 0.5
        labels.append(label)
    if planted:
        rgba[0] = semantic / 10
    return RadianceGrid(rgba, np.zeros(3), np.full(3, SIZE - 1.0), 1.0, 1.0, semantic=semantic,
                        boxes=np.array(boxes), box_labels=np.array(labels))  # fmt: skip


class PlantedSource:
    """Features of the planted rooms: one channel per class, on where R reads that label / 10
    (a class's own channel encodes it, as a linear reader needs), then G, B, A (the log box
    extents), a voxel-resolution noise channel and a stride-4 noise map (coarse maps pool and
    read like encoder stages)."""

    name = "planted"

    def maps(self, rgba: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(int(rgba.sum() * 1000))
        label = (rgba[:, 0] * 10).round().long()  # (B, S, S, S)
        one_hot = torch.stack([label == c for c in (1, *CLASSES)], 1).float()
        noise = torch.rand(rgba.shape[0], 1, SIZE, SIZE, SIZE, generator=generator)
        coarse = torch.rand(rgba.shape[0], 8, 4, 4, 4, generator=generator)
        return [torch.cat([one_hot, rgba[:, 1:], noise], 1), coarse]


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory) -> str:
    store = GridStore(str(tmp_path_factory.mktemp("probing") / "planted.zarr"))
    for i in range(16):
        store.write_grid(f"planted{i:02d}", planted_grid(i, planted=True))
        store.write_grid(f"noise{i:02d}", planted_grid(i, planted=False))
    return store.url


@pytest.mark.parametrize("planted", [True, False])
def test_the_probes_find_a_planted_signal_and_not_noise(planted_store, planted):
    name = "planted" if planted else "noise"
    train = load_rooms(planted_store, [f"{name}{i:02d}" for i in range(8)], SIZE)
    test = load_rooms(planted_store, [f"{name}{i:02d}" for i in range(8, 16)], SIZE)
    result = probe_source(PlantedSource(), train, test, ProbeConfig(furniture_classes=CLASSES))
    semantic, objects = result["semantic"], result["objects"]
    assert semantic["classes_present"] == ["1", "4", "5", "6"]
    assert objects["test_boxes"] == 24 and objects["train_boxes"] == 24
    # one per map; the coarse map is 8 independent noise channels
    assert len(result["effective_rank"]) == 2 and result["effective_rank"][1] > 7.5
    token = result["semantic_token"]
    assert token["stride"] == 1 and token["classes_present"] == ["1", "4", "5", "6"]
    if planted:
        assert semantic["miou"] > 0.95 and semantic["furniture_miou"] > 0.95
        assert token["miou"] > 0.95 and token["furniture_miou"] > 0.95
        assert objects["accuracy"] > 0.95 and objects["size_r2"] > 0.95
    else:  # four classes, three of them equally rare: chance is far below these
        assert semantic["furniture_miou"] < 0.25 and semantic["miou"] < 0.35
        assert token["furniture_miou"] < 0.25 and token["miou"] < 0.35
        assert objects["balanced_accuracy"] < 0.6 and objects["size_r2"] < 0.3


# ---------------------------------------------------------------- effective rank
def test_effective_rank_counts_independent_signals_however_mixed_and_scaled():
    generator = torch.Generator().manual_seed(0)
    signals = torch.randn(20_000, 3, generator=generator)  # 3 independent unit signals
    mixed = torch.cat([signals, signals[:, :1] * 5 + 1, -2 * signals[:, 1:2]], dim=1)
    # the correlation has blocks [[1, 1], [1, 1]], [[1, -1], [-1, 1]] and [1]: eigenvalues
    # 2, 0, 2, 0, 1, so PR = (2 + 2 + 1)^2 / (4 + 4 + 1) = 25 / 9 (a copy weighs in, unlike
    # a count of signals: the ratio measures how evenly the channels spread)
    assert math.isclose(effective_rank(mixed), 25 / 9, rel_tol=0.02)
    scaled = signals * torch.tensor([1e-3, 1.0, 1e3])
    assert math.isclose(effective_rank(scaled), 3.0, rel_tol=0.02)
    moments = FeatureMoments()
    moments.add(scaled + 5.0)  # RMS of the standard deviations 1e-3, 1 and 1e3
    assert math.isclose(moments.scale(), math.sqrt((1e-6 + 1 + 1e6) / 3), rel_tol=0.02)
    one = torch.randn(5000, 1, generator=generator)
    assert math.isclose(effective_rank(one * torch.tensor([1.0, -3.0, 0.5, 2.0])), 1.0,
                        rel_tol=1e-6)  # fmt: skip
    constant = torch.cat([signals[:, :2], torch.full((20_000, 1), 7.0)], dim=1)
    assert math.isclose(effective_rank(constant), 2.0, rel_tol=0.02)  # constant channel: none


def test_feature_moments_over_maps_equal_the_rank_of_all_their_cells():
    generator = torch.Generator().manual_seed(1)
    maps = [torch.randn(6, 3, 4, 5, generator=generator) for _ in range(3)]
    moments = FeatureMoments()
    for feature_map in maps:
        moments.add_map(feature_map)
    cells = torch.cat([m.reshape(6, -1).T for m in maps])  # (180, 6)
    expected = torch.corrcoef(cells.T.double())
    assert torch.allclose(moments.correlation(), expected, atol=1e-10)
    assert moments.effective_rank() == pytest.approx(effective_rank(cells), rel=1e-9)
    single = FeatureMoments()
    single.add_map(maps[0][:, :1, :1, :1])
    assert math.isnan(single.effective_rank()) and math.isnan(single.scale())  # one cell


# ---------------------------------------------------------------- real rooms, frozen encoder
@pytest.fixture(scope="module")
def room_store(tmp_path_factory) -> str:
    store = GridStore(str(tmp_path_factory.mktemp("probing") / "rooms.zarr"))
    for i in range(2):
        store.write_grid(f"room{i}", sample_ground_truth(make_room(i), 32).with_empty_space(0.01))
    return store.url


def test_normalised_entropy_is_one_for_uniform_and_zero_for_one_hot_rows():
    from model.probing.attention import normalised_entropy

    assert float(normalised_entropy(torch.full((3, 8, 8), 1 / 8))) == pytest.approx(1.0)
    assert float(normalised_entropy(torch.eye(8))) == pytest.approx(0.0, abs=1e-6)
    half = torch.tensor([[0.5, 0.5, 0.0, 0.0]])  # log 2 / log 4
    assert float(normalised_entropy(half)) == pytest.approx(0.5)


def test_attention_entropy_falls_as_queries_and_keys_grow():
    from model.probing.attention import attention_entropy

    torch.manual_seed(0)
    mae = build_mae(get_config("tiny", resolution=64))  # stage 4: 2^3 tokens, one window
    rgba = torch.rand(1, 4, 64, 64, 64)
    untrained = attention_entropy(mae, rgba)
    with torch.no_grad():
        for name, tensor in mae.named_parameters():
            if name.endswith("attn.qkv.weight"):
                tensor[: 2 * tensor.shape[0] // 3] *= 30
    sharpened = attention_entropy(mae, rgba)
    with torch.no_grad():
        for name, tensor in mae.named_parameters():
            if name.endswith(("attn.qkv.weight", "relative_position_bias_table")):
                tensor.zero_()
    flat = attention_entropy(mae, rgba)
    assert len(untrained) == 4 and mae.training  # training mode restored
    assert all(s < u - 0.05 for s, u in zip(sharpened, untrained, strict=True))
    # no logits at all: only the shifted windows' region masks keep a stage below 1
    assert all(f >= u - 1e-6 for f, u in zip(flat, untrained, strict=True))
    assert flat[3] == pytest.approx(1.0)  # stage 4 fits one unshifted window: uniform


def test_encoder_features_of_real_rooms_are_the_frozen_stage_maps_read_at_voxels(room_store):
    rooms = load_rooms(room_store, ["room0", "room1"], 32)
    source = random_source(get_config("tiny"), seed=3)
    assert not any(p.requires_grad for p in source.network.parameters())
    maps = dict(room_maps(source, rooms, batch_size=2))
    assert [tuple(m.shape) for m in maps[1]] == [(24, 8, 8, 8), (48, 4, 4, 4), (96, 2, 2, 2),
                                                 (192, 1, 1, 1)]  # fmt: skip
    with torch.no_grad():
        stages = source.network.encoder.forward_tokens(source.network.embed_tokens(rooms.rgba))
    point = rooms.points[1][:1]  # a labelled voxel of room 1
    features = sample_maps(maps[1], point, 32)
    assert features.shape == (1, 360) and features.isfinite().all()
    torch.testing.assert_close(features[0, 24:72], sample_map(stages[1][1], point, 32)[0])
    # the same seed is the same network, another seed another one
    again = dict(room_maps(random_source(get_config("tiny"), seed=3), rooms, batch_size=1))
    other = dict(room_maps(random_source(get_config("tiny"), seed=4), rooms, batch_size=1))
    torch.testing.assert_close(again[1][0], maps[1][0])
    assert not torch.allclose(other[1][0], maps[1][0])
    # every box holds voxels and every training voxel is labelled and valid
    for r in range(2):
        assert len(rooms.boxes[r]) == len(rooms.box_voxels[r]) > 0
        p = rooms.points[r]
        assert (rooms.semantic[r][p[:, 0], p[:, 1], p[:, 2]] > 0).all()


def pretraining_run(tmp_path, steps, **overrides) -> str:
    config = get_config("tiny", **overrides)
    for step in steps:
        torch.manual_seed(step)
        mae = build_mae(config)
        optimizer = torch.optim.SGD(mae.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        save_checkpoint(make_checkpoint(mae, optimizer, scheduler, DataPosition(step, 0, step),
                                        [], {}, dataclasses.asdict(config), task="pretrain"),
                        tmp_path / "run" / "checkpoints")  # fmt: skip
    return str(tmp_path / "run")


def test_bench_probe_probes_every_step_of_a_run_and_the_controls(room_store, tmp_path, capsys):
    bench = load_benchmark("bench_probe")
    run = pretraining_run(tmp_path, [5, 10, 15])
    out = tmp_path / "probe.json"
    assert bench.main(["--store", room_store, "--train-scenes", "room0", "--test-scenes",
                       "room1", "--runs", run, "--every", "2", "--controls", "colour",
                       "--resolution", "32", "--out", str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [(r["label"], r["step"]) for r in rows] == [("colour", None), ("run@5", 5),
                                                       ("run@15", 15)]  # fmt: skip
    for row in rows:
        assert 0 <= row["semantic"]["miou"] <= 1 and row["objects"]["train_boxes"] >= 3
    assert rows[0]["attention_entropy"] is None  # colour has no attention
    assert all(len(r["attention_entropy"]) == 4 for r in rows[1:])
    assert all(0 <= e <= 1 for r in rows[1:] for e in r["attention_entropy"])
    assert "reconstruction" not in rows[0]  # colour is no MAE
    for row in rows[1:]:  # the real rooms hold every kind of voxel
        assert set(row["reconstruction"]) == {"free", "shell", "furniture"}
    printed = capsys.readouterr().out
    assert "run@15" in printed and "masked blocks of the test rooms" in printed


def test_a_patch_normalised_mae_is_shown_beside_its_patch_mean_floor(tmp_path, capsys):
    """Such an MAE reports alpha through the truth's patch means: the random control must not
    (it is built plain), and the table prints the patch-mean predictor under its row."""
    bench = load_benchmark("bench_probe")
    run = pretraining_run(tmp_path, [5], alpha_target="patch_normalised")
    args = argparse.Namespace(preset="tiny", resolution=32)
    job = {"path": f"{run}/checkpoints/step_000005.pt"}
    assert read_checkpoint(job["path"]).mae_config["alpha_target"] == "patch_normalised"
    config, _ = bench.random_config(args, [job])
    assert config.alpha_target == "alpha" and config.resolution == 32
    scores = {"network": {"mse": 0.1, "correct": 0.9}, "nearby": {"mse": 0.2, "correct": 0.8},
              "prior": {"mse": 0.3, "correct": 0.7}, "patch_mean": {"mse": 0.042, "correct": 0.66}}
    rows = [{"label": "plain", "step": None, "alpha_target": "alpha",
             "reconstruction": {"free": scores}},
            {"label": "normalised", "step": 5, "alpha_target": "patch_normalised",
             "reconstruction": {"free": scores}}]  # fmt: skip
    bench.print_reconstruction(rows)
    lines = capsys.readouterr().out.splitlines()
    floors = [i for i, line in enumerate(lines) if "patch-mean floor" in line]
    assert len(floors) == 1 and lines[floors[0] - 1].startswith("normalised")
    assert "0.042 (66 %)" in lines[floors[0]]


# ---------------------------------------------------------------- bad input
def test_stores_without_labels_or_boxes_and_runs_without_checkpoints_are_named(tmp_path):
    store = GridStore(str(tmp_path / "bare.zarr"))
    grid = planted_grid(0, planted=False)
    store.write_grid("bare", RadianceGrid(grid.rgba, grid.bbox_min, grid.bbox_max, 1.0, 1.0))
    store.write_grid("no_boxes", RadianceGrid(grid.rgba, grid.bbox_min, grid.bbox_max, 1.0,
                                              1.0, semantic=grid.semantic))  # fmt: skip
    with pytest.raises(ValueError, match=r"bare\.zarr: scene\(s\) \['bare'\] store no semantic"):
        load_rooms(store.url, ["no_boxes", "bare"], SIZE)
    with pytest.raises(ValueError, match=r"bare\.zarr: scene\(s\) \['no_boxes'\] store no boxes"):
        load_rooms(store.url, ["no_boxes"], SIZE)
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="empty_run: no checkpoints/step_"):
        run_checkpoints(tmp_path / "empty_run")
