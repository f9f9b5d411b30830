"""Ground-truth labels put onto grids of another lattice (pipeline.labels), and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from grid_store.grid import RadianceGrid
from pipeline.labels import attach_labels, attach_scene_labels, ground_truth_path


def make_truth(shape=(10, 8, 6), voxel=0.5, seed=0) -> RadianceGrid:
    rng = np.random.default_rng(seed)
    return RadianceGrid(
        rgba=np.zeros((4, *shape), np.float32),
        bbox_min=np.array([-1.0, 0.0, 2.0]),
        bbox_max=np.array([-1.0, 0.0, 2.0]) + voxel * (np.array(shape) - 1),
        voxel_size=voxel,
        delta=voxel,
        semantic=rng.integers(0, 6, shape).astype(np.uint8),
        boxes=np.array([[0.5, 1.0, 3.0, 1.0, 2.0, 0.5, 0.3]], np.float32),
        box_labels=np.array([4]),
        meta={"semantic_classes": ["void", "wall", "floor", "a", "b", "c"]},
    )


def make_grid(bbox_min, voxel, shape) -> RadianceGrid:
    bbox_min = np.asarray(bbox_min, np.float64)
    return RadianceGrid(
        rgba=np.full((4, *shape), 0.25, np.float32),
        bbox_min=bbox_min,
        bbox_max=bbox_min + voxel * (np.array(shape) - 1),
        voxel_size=voxel,
        delta=voxel,
        meta={"source": "a nerf"},
    )


def brute_force_nearest_labels(grid: RadianceGrid, truth: RadianceGrid) -> np.ndarray:
    """Label of the truth sample at the smallest distance from each grid sample, by search."""
    samples = truth.points().reshape(-1, 3).astype(np.float64)
    points = grid.points().reshape(-1, 3).astype(np.float64)
    distance = np.linalg.norm(points[:, None, :] - samples[None, :, :], axis=-1)
    return truth.semantic.reshape(-1)[distance.argmin(1)].reshape(grid.shape)


def test_labels_are_the_nearest_ground_truth_samples():
    truth = make_truth()
    # Another lattice inside the truth's box, offset so that no point is equidistant from
    # two truth samples (the brute force and the rounding would then break ties differently).
    grid = make_grid([-0.93, 0.11, 2.07], 0.37, (12, 9, 6))
    labelled = attach_labels(grid, truth, source="gt.npz")
    np.testing.assert_array_equal(labelled.semantic, brute_force_nearest_labels(grid, truth))
    np.testing.assert_array_equal(labelled.rgba, grid.rgba)  # opacity and colour untouched
    np.testing.assert_array_equal(labelled.boxes, truth.boxes)  # world units: unchanged
    np.testing.assert_array_equal(labelled.box_labels, [4])
    assert labelled.meta["labels"]["source"] == "gt.npz"
    assert labelled.meta["semantic_classes"][1] == "wall"
    assert labelled.meta["source"] == "a nerf"


def test_a_grid_on_the_truths_own_lattice_gets_its_labels_exactly():
    truth = make_truth()
    same = make_grid(truth.bbox_min, truth.voxel_size, truth.shape)
    np.testing.assert_array_equal(attach_labels(same, truth).semantic, truth.semantic)
    # known points: grid samples at world (0.5, 1, 2.5) and (1.5, 2, 3.5) are the truth's
    # samples (3, 2, 1) and (5, 4, 3)
    two = make_grid([0.5, 1.0, 2.5], 1.0, (2, 2, 2))
    semantic = attach_labels(two, truth).semantic
    assert semantic[0, 0, 0] == truth.semantic[3, 2, 1]
    assert semantic[1, 1, 1] == truth.semantic[5, 4, 3]


def test_a_grid_reaching_beyond_the_labels_is_refused():
    truth = make_truth()  # voxel 0.5
    # Past the outermost truth samples by up to one truth voxel plus half a grid voxel
    # (0.5 + 0.25): still the same scene, the edge labels are nearest.
    edge = make_grid(truth.bbox_min - 0.7, 0.5, (3, 3, 3))
    assert attach_labels(edge, truth).semantic[0, 0, 0] == truth.semantic[0, 0, 0]
    beyond = make_grid(truth.bbox_min + 1.0, 0.5, (3, 3, (truth.shape[2] + 1)))
    with pytest.raises(ValueError, match=r"gt\.npz: 'semantic' does not fit the scene"):
        attach_labels(beyond, truth, source="gt.npz")
    with pytest.raises(ValueError, match="does not fit"):
        attach_labels(make_grid(truth.bbox_min - 0.8, 0.5, (3, 3, 3)), truth, source="gt.npz")


def test_ground_truth_without_labels_is_refused():
    truth = make_grid([0, 0, 0], 1.0, (2, 2, 2))
    with pytest.raises(ValueError, match="gt.npz: has no labels"):
        attach_labels(make_grid([0, 0, 0], 1.0, (2, 2, 2)), truth, source="gt.npz")


def test_scene_folder_without_ground_truth_leaves_the_grid_alone(tmp_path):
    grid = make_grid([0, 0, 0], 1.0, (2, 2, 2))
    assert ground_truth_path(tmp_path) is None
    assert attach_scene_labels(grid, tmp_path) is grid


def test_extract_cli_stores_the_scenes_labels_with_the_grid(tmp_path, capsys):
    """A synthetic room through train-nerf and extract: the stored grid carries its room's
    labels (walls and floor where the room's are) and boxes; --no-labels leaves them out."""
    from grid_store import GridStore
    from nerfmae.cli import main
    from pipeline.synthetic import generate_scene

    scene = generate_scene(tmp_path / "room", seed=1, n_views=6, image_size=16, grid_resolution=40)
    run = tmp_path / "run"
    assert main(["train-nerf", str(scene), "--out", str(run), "--steps", "5"]) == 0
    store = str(tmp_path / "grids.zarr")
    extract = ["extract", str(run), "--resolution", "24"]
    assert main([*extract, "--store", store, "--scene-id", "r"]) == 0
    assert "semantic labels" in capsys.readouterr().out
    grid = GridStore(store, mode="r").read_grid("r")
    truth = RadianceGrid.load_npz(scene / "ground_truth" / "grid.npz")
    np.testing.assert_array_equal(grid.boxes, truth.boxes)
    index, _ = truth.nearest_voxel(grid.points())  # clamped: the lattices end differently
    np.testing.assert_array_equal(grid.semantic, truth.semantic[tuple(np.moveaxis(index, -1, 0))])
    assert set(np.unique(grid.semantic)) >= {1, 2}  # walls and floor at least
    assert json.loads(json.dumps(grid.meta["labels"]))["source"].endswith("grid.npz")

    out = tmp_path / "bare.npz"
    assert main([*extract, "--out", str(out), "--no-labels"]) == 0
    assert RadianceGrid.load_npz(out).semantic is None


def test_empty_space_rule_zeroes_faint_voxels_and_keeps_labels():
    grid = make_truth(shape=(2, 2, 2), voxel=1.0)
    rgba = np.full((4, 2, 2, 2), 0.7, np.float32)
    rgba[3, 0, 0, 0] = 0.005  # below 0.01: empty space
    rgba[3, 1, 1, 1] = 0.01  # at the threshold: kept
    emptied = grid.replace(rgba=rgba).with_empty_space(0.01)
    np.testing.assert_array_equal(emptied.rgba[:, 0, 0, 0], 0.0)
    assert emptied.rgba[3, 1, 1, 1] == pytest.approx(0.01)
    assert np.count_nonzero(emptied.rgba == 0) == 4  # only that voxel's four channels
    np.testing.assert_array_equal(emptied.semantic, grid.semantic)
    assert emptied.meta["empty_space"] == {"below": 0.01, "zero_fraction": 1 / 8}


def test_store_add_writes_ground_truth_grids_with_labels_and_the_empty_space_rule(tmp_path, capsys):
    from grid_store import GridStore
    from nerfmae.cli import main
    from pipeline.synthetic import generate_scene

    scene = generate_scene(tmp_path / "room_a", seed=2, n_views=2, image_size=8, grid_resolution=24)
    truth = RadianceGrid.load_npz(scene / "ground_truth" / "grid.npz")
    assert (truth.rgb[:, truth.alpha < 0.01] > 0).any()  # the truth keeps colour in free space
    other = make_truth()
    other.save_npz(tmp_path / "other.npz")
    store = str(tmp_path / "g.zarr")
    assert main(["store", "add", store, str(scene), str(tmp_path / "other.npz")]) == 0
    assert "added 2 scene(s)" in capsys.readouterr().out
    reader = GridStore(store, mode="r")
    assert reader.list_scenes() == ["other", "room_a"]
    stored = reader.read_grid("room_a")
    np.testing.assert_array_equal(stored.semantic, truth.semantic)
    np.testing.assert_array_equal(stored.boxes, truth.boxes)
    assert (stored.rgba[:, truth.alpha < 0.01] == 0).all()  # free space as extraction stores it

    # bad input fails before anything is written, with the reason
    assert main(["store", "add", str(tmp_path / "g2.zarr"), str(scene), str(scene)]) == 2
    assert "two sources give the same scene id: ['room_a', 'room_a']" in capsys.readouterr().err
    assert main(["store", "add", str(tmp_path / "g2.zarr"), str(tmp_path / "nope.npz")]) == 2
    assert "nope.npz: no such grid file" in capsys.readouterr().err
    assert not (tmp_path / "g2.zarr").exists()
