"""RadianceGrid (contract 1): npz round trip and every validation error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from grid_store.grid import (
    GridValidationError,
    RadianceGrid,
    alpha_from_density,
    grid_points,
    grid_shape_for_box,
)


def make_grid(shape=(5, 4, 3), **kw) -> RadianceGrid:
    rng = np.random.default_rng(1)
    rgba = rng.uniform(0, 1, size=(4, *shape)).astype(np.float32)
    voxel = 0.5
    bmin = np.array([-1.0, 0.0, 2.0])
    args = dict(
        rgba=rgba,
        bbox_min=bmin,
        bbox_max=bmin + (np.array(shape) - 1) * voxel,
        voxel_size=voxel,
        delta=voxel,
        meta={"source": "test", "nerf": {"backend": "torch", "steps": 3}},
    )
    args.update(kw)
    return RadianceGrid(**args)


def test_npz_round_trip_with_labels(tmp_path):
    g = make_grid(
        semantic=np.arange(60, dtype=np.uint8).reshape(5, 4, 3) % 7,
        boxes=np.array([[0, 0.5, 2.5, 1, 1, 0.5, 0.3]], dtype=np.float32),
        box_labels=np.array([4]),
    )
    path = g.save_npz(tmp_path / "sub" / "grid.npz")
    back = RadianceGrid.load_npz(path)
    np.testing.assert_array_equal(back.rgba, g.rgba)
    np.testing.assert_array_equal(back.semantic, g.semantic)
    np.testing.assert_array_equal(back.boxes, g.boxes)
    np.testing.assert_array_equal(back.box_labels, [4])
    assert back.voxel_size == 0.5 and back.delta == 0.5
    assert back.meta["nerf"] == {"backend": "torch", "steps": 3}
    assert back.meta["schema_version"] == 1
    with np.load(path) as raw:
        assert set(raw.files) == {
            "rgba",
            "bbox_min",
            "bbox_max",
            "voxel_size",
            "delta",
            "meta",
            "semantic",
            "boxes",
            "box_labels",
        }
        assert json.loads(str(raw["meta"]))["source"] == "test"
    assert not list(tmp_path.glob("sub/.*tmp")), "temp file left behind"


def test_npz_without_optional_labels(tmp_path):
    back = RadianceGrid.load_npz(make_grid().save_npz(tmp_path / "g.npz"))
    assert back.semantic is None and back.boxes is None and back.box_labels is None


def test_repr_shows_shape_and_metadata_not_voxels():
    g = make_grid(shape=(40, 30, 20), boxes=np.ones((2, 7), np.float32), box_labels=np.ones(2, int))
    text = repr(g)
    assert text.startswith("RadianceGrid(shape=(40, 30, 20), dtype=float32, bbox_min=(-1, 0, 2)")
    assert "voxel_size=0.5" in text and "boxes=2" in text and "source='test'" in text
    assert len(text) < 400  # the dataclass repr printed all 96000 values


def test_grid_is_frozen():
    g = make_grid()
    with pytest.raises(ValueError):
        g.rgba[0, 0, 0, 0] = 0.5
    with pytest.raises(AttributeError):
        g.voxel_size = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        g.meta["source"] = "x"  # type: ignore[index]


def test_sample_positions_are_corner_aligned():
    g = make_grid()
    pts = g.points()
    assert pts.shape == (5, 4, 3, 3)
    np.testing.assert_allclose(pts[0, 0, 0], g.bbox_min)
    np.testing.assert_allclose(pts[-1, -1, -1], g.bbox_max)
    np.testing.assert_allclose(pts[2, 1, 0], g.bbox_min + [1.0, 0.5, 0.0])
    np.testing.assert_allclose(g.world_to_index(pts[3, 2, 1]), [3, 2, 1])


@pytest.mark.parametrize(
    "kw, fragment",
    [
        (dict(rgba=np.zeros((4, 5, 4), np.float32)), "rank 4"),
        (dict(rgba=np.zeros((3, 5, 4, 3), np.float32)), "4 channels"),
        (dict(rgba=np.zeros((4, 5, 4, 3), np.int32)), "dtype"),
        (dict(rgba=np.full((4, 5, 4, 3), np.nan, np.float32)), "non-finite"),
        (dict(rgba=np.full((4, 5, 4, 3), 1.5, np.float32)), "outside [0, 1]"),
        (dict(bbox_max=np.array([9.0, 9.0, 9.0])), "inconsistent"),
        (dict(voxel_size=0.0), "voxel_size"),
        (dict(delta=float("nan")), "delta"),
        (dict(bbox_min=np.array([0.0, np.inf, 0.0])), "bbox_min"),
        (dict(semantic=np.zeros((5, 4, 2), np.uint8)), "semantic"),
        (dict(boxes=np.zeros((1, 7), np.float32)), "together"),
        (dict(boxes=np.zeros((1, 6), np.float32), box_labels=np.array([1])), "(N, 7)"),
        (dict(boxes=np.ones((2, 7), np.float32), box_labels=np.array([1])), "box_labels"),
        (dict(meta={"x": object()}), "JSON"),
    ],
)
def test_validation_errors(kw, fragment):
    with pytest.raises(
        GridValidationError,
        match=fragment.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        make_grid(**kw)


def test_alpha_channel_out_of_range_names_channel():
    rgba = np.zeros((4, 5, 4, 3), np.float32)
    rgba[3, 1, 1, 1] = -0.2
    with pytest.raises(GridValidationError, match="channel A"):
        make_grid(rgba=rgba)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        RadianceGrid.load_npz(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, rgba=np.zeros((4, 2, 2, 2), np.float32))
    with pytest.raises(GridValidationError, match=r"bad\.npz.*bbox_min"):
        RadianceGrid.load_npz(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(GridValidationError, match="junk.npz"):
        RadianceGrid.load_npz(junk)


def test_grid_shape_for_box_keeps_aspect_ratio():
    # A 4 x 2 x 1 box with 9 samples on the long side: voxel 0.5, so 9 x 5 x 3 samples.
    shape, vs, bmax = grid_shape_for_box(np.zeros(3), np.array([4.0, 2.0, 1.0]), 9)
    assert shape == (9, 5, 3) and vs == 0.5
    np.testing.assert_allclose(bmax, [4.0, 2.0, 1.0])
    # Extents that are not multiples of the voxel are rounded to the nearest sample.
    shape, vs, bmax = grid_shape_for_box(np.zeros(3), np.array([1.0, 0.33, 0.1]), 11)
    assert shape == (11, 4, 2) and vs == pytest.approx(0.1)
    np.testing.assert_allclose(bmax, [1.0, 0.3, 0.1])
    with pytest.raises(GridValidationError):
        grid_shape_for_box(np.zeros(3), np.array([1.0, -1.0, 1.0]), 8)


def test_grid_points_and_alpha_hand_values():
    pts = grid_points(np.array([1.0, 2.0, 3.0]), 0.25, (2, 3, 2))
    np.testing.assert_allclose(pts[1, 2, 1], [1.25, 2.5, 3.25])
    np.testing.assert_allclose(
        alpha_from_density(np.array([0.0, np.log(2) / 0.5, -3.0]), 0.5), [0.0, 0.5, 0.0]
    )
