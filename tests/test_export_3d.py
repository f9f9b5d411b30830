"""PLY export of a store scene (points, GT and predicted boxes), boxes.json, ``export-3d``."""

from __future__ import annotations

import itertools
import json

import numpy as np
import open3d as o3d
import pytest

from grid_store import GridStore, RadianceGrid
from grid_store.boxes import BOX_EDGES, box_corners
from nerfmae.cli import main
from pipeline.export_3d import (
    GT_COLOUR,
    PRED_COLOUR,
    box_line_set,
    export_scene,
    occupied_points,
    ply_element_counts,
    read_boxes_json,
    write_boxes,
    write_boxes_json,
    write_point_cloud,
)

SHAPE = (6, 5, 4)
BBOX_MIN = np.array([-1.0, 0.5, 2.0])
VOXEL = 0.25
# index -> (r, g, b, alpha); colours are quarters (exact in float16). The last one is below
# the 0.01 threshold: empty space.
VOXELS = {
    (0, 0, 0): (1.0, 0.0, 0.0, 1.0),
    (1, 2, 3): (0.25, 0.5, 0.75, 0.5),
    (5, 4, 3): (0.0, 1.0, 0.25, 0.02),
    (3, 1, 2): (0.5, 0.5, 0.5, 0.75),
}
FAINT = (2, 2, 2)
# World units, exact in float32: one axis-aligned box, one yawed.
BOXES = np.array(
    [[-0.5, 1.0, 2.5, 0.5, 0.75, 1.0, 0.0], [0.25, 1.25, 2.25, 1.0, 0.5, 0.25, 0.5]], np.float32
)
LABELS = np.array([3, 7])
PLY_COLOUR_TOL = 0.5 / 255 + 1e-9  # PLY stores colours as 8-bit


def make_grid(boxes: bool = True) -> RadianceGrid:
    rgba = np.zeros((4, *SHAPE), np.float32)
    for index, value in VOXELS.items():
        rgba[(slice(None), *index)] = value
    rgba[(slice(None), *FAINT)] = (1.0, 1.0, 1.0, 0.005)
    return RadianceGrid(
        rgba=rgba,
        bbox_min=BBOX_MIN,
        bbox_max=BBOX_MIN + (np.array(SHAPE) - 1) * VOXEL,
        voxel_size=VOXEL,
        delta=VOXEL,
        boxes=BOXES if boxes else None,
        box_labels=LABELS if boxes else None,
    )


@pytest.fixture
def store_url(tmp_path):
    url = str(tmp_path / "grids.zarr")
    store = GridStore(url)
    store.write_grid("room_0", make_grid())
    store.write_grid("bare", make_grid(boxes=False))
    return url


def expected_points() -> tuple[np.ndarray, np.ndarray]:
    """World positions and colours of the occupied voxels, written out by hand."""
    pts = np.array([BBOX_MIN + np.array(i) * VOXEL for i in VOXELS])
    cols = np.array([v[:3] for v in VOXELS.values()])
    return pts, cols


def sort_rows(points: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    order = np.lexsort(points.T[::-1])
    return [points[order], *(o[order] for o in others)]


def segments(line_set) -> set[tuple]:
    """A line set's segments as unordered pairs of rounded endpoints."""
    pts = np.asarray(line_set.points)
    return {
        tuple(sorted((tuple(np.round(pts[a], 9)), tuple(np.round(pts[b], 9)))))
        for a, b in np.asarray(line_set.lines)
    }


# --------------------------------------------------------------------------- points
def test_occupied_points_are_the_voxels_above_the_threshold_in_world_units():
    grid = make_grid()
    points, colours = occupied_points(grid.rgba, grid.bbox_min, grid.voxel_size)
    assert points.dtype == np.float64 and colours.dtype == np.float64
    want_pts, want_cols = expected_points()
    got = sort_rows(points, colours)
    want = sort_rows(want_pts, want_cols)
    np.testing.assert_allclose(got[0], want[0], atol=1e-12)
    np.testing.assert_allclose(got[1], want[1], atol=1e-12)
    # A higher threshold drops the faint ones; 0 keeps every sample.
    assert len(occupied_points(grid.rgba, grid.bbox_min, VOXEL, alpha_threshold=0.1)[0]) == 3
    assert len(occupied_points(grid.rgba, grid.bbox_min, VOXEL, 0.0)[0]) == np.prod(SHAPE)
    with pytest.raises(ValueError, match="rgba"):
        occupied_points(grid.rgba[:3], grid.bbox_min, VOXEL)
    with pytest.raises(ValueError, match="alpha_threshold"):
        occupied_points(grid.rgba, grid.bbox_min, VOXEL, alpha_threshold=1.5)
    with pytest.raises(ValueError, match="voxel_size"):
        occupied_points(grid.rgba, grid.bbox_min, 0.0)


def test_empty_point_cloud_and_line_set_are_valid_ply(tmp_path):
    p = write_point_cloud(tmp_path / "none.ply", np.zeros((0, 3)), np.zeros((0, 3)))
    b = write_boxes(tmp_path / "none_boxes.ply", np.zeros((0, 7)))
    assert ply_element_counts(p) == {"vertex": 0}
    assert ply_element_counts(b) == {"vertex": 0, "edge": 0}
    assert len(o3d.io.read_point_cloud(str(p)).points) == 0
    assert len(o3d.io.read_line_set(str(b)).lines) == 0
    with pytest.raises(ValueError, match="colours"):
        write_point_cloud(tmp_path / "x.ply", np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"\.ply"):
        write_boxes(tmp_path / "x.obj", BOXES)


# --------------------------------------------------------------------------- boxes
def test_box_line_set_corners_edges_and_colours():
    lines = box_line_set(BOXES, [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    pts, idx, cols = (np.asarray(a) for a in (lines.points, lines.lines, lines.colors))
    assert pts.shape == (16, 3) and idx.shape == (24, 2) and cols.shape == (24, 3)
    np.testing.assert_allclose(pts, box_corners(BOXES).reshape(-1, 3), atol=1e-12)
    np.testing.assert_array_equal(idx, np.concatenate([BOX_EDGES, BOX_EDGES + 8]))
    np.testing.assert_array_equal(cols[:12], np.tile([0.0, 1.0, 0.0], (12, 1)))
    np.testing.assert_array_equal(cols[12:], np.tile([0.0, 0.0, 1.0], (12, 1)))
    # Independently of box_corners: the axis-aligned box's corners are its min/max products,
    cx, cy, cz, w, l, h, _ = BOXES[0].astype(np.float64)
    want = set(itertools.product((cx - w / 2, cx + w / 2), (cy - l / 2, cy + l / 2),
                                 (cz - h / 2, cz + h / 2)))  # fmt: skip
    assert {tuple(p) for p in pts[:8]} == want
    # and every box's 12 edges are 4 of length w, 4 of l, 4 of h, lines within the box.
    for n, box in enumerate(BOXES.astype(np.float64)):
        e = idx[12 * n : 12 * n + 12]
        assert e.min() == 8 * n and e.max() == 8 * n + 7
        lengths = np.sort(np.linalg.norm(pts[e[:, 0]] - pts[e[:, 1]], axis=1))
        np.testing.assert_allclose(lengths, np.sort(np.repeat(box[3:6], 4)), atol=1e-9)
    # One colour for all; bad colours and boxes are refused.
    assert np.allclose(np.asarray(box_line_set(BOXES, (1.0, 0.0, 0.0)).colors), [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="colours"):
        box_line_set(BOXES, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="boxes"):
        box_line_set(np.zeros((2, 6)))


# --------------------------------------------------------------------------- export
def test_export_scene_writes_points_and_gt_boxes_read_back_by_open3d(store_url, tmp_path):
    out = tmp_path / "out"
    written = export_scene(store_url, "room_0", out)
    assert written == {"points": out / "room_0_points.ply", "gt_boxes": out / "room_0_gt_boxes.ply"}

    cloud = o3d.io.read_point_cloud(str(written["points"]))
    got_pts, got_cols = sort_rows(np.asarray(cloud.points), np.asarray(cloud.colors))
    want_pts, want_cols = sort_rows(*expected_points())
    assert got_pts.shape == (len(VOXELS), 3)
    np.testing.assert_allclose(got_pts, want_pts, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_cols, want_cols, rtol=0, atol=PLY_COLOUR_TOL)

    lines = o3d.io.read_line_set(str(written["gt_boxes"]))
    assert len(lines.points) == 16 and len(lines.lines) == 24
    np.testing.assert_allclose(np.asarray(lines.points), box_corners(BOXES).reshape(-1, 3),
                               rtol=0, atol=1e-12)  # fmt: skip
    np.testing.assert_array_equal(
        np.asarray(lines.lines), np.concatenate([BOX_EDGES, BOX_EDGES + 8])
    )
    np.testing.assert_allclose(np.asarray(lines.colors), np.tile(GT_COLOUR, (24, 1)),
                               atol=PLY_COLOUR_TOL)  # fmt: skip
    assert segments(lines) == segments(box_line_set(BOXES))

    # A scene without boxes gets no GT file.
    assert set(export_scene(store_url, "bare", out)) == {"points"}


def test_export_scene_with_predictions_applies_the_score_threshold(store_url, tmp_path):
    pred = np.array([[0.0, 1.0, 2.5, 0.5, 0.5, 0.5, 0.3], [-0.5, 1.5, 2.0, 0.25, 0.5, 0.75, -1.0],
                     [0.5, 1.0, 2.5, 1.0, 1.0, 1.0, 0.0]])  # fmt: skip
    scores = np.array([0.9, 0.2, 0.6])
    boxes_json = write_boxes_json(tmp_path / "det" / "boxes.json", "room_0", pred, scores)
    written = export_scene(store_url, "room_0", tmp_path / "out", boxes_json, score_threshold=0.5)
    assert written["pred_boxes"] == tmp_path / "out" / "room_0_pred_boxes.ply"
    lines = o3d.io.read_line_set(str(written["pred_boxes"]))
    assert len(lines.points) == 16 and len(lines.lines) == 24
    assert segments(lines) == segments(box_line_set(pred[[0, 2]]))
    np.testing.assert_allclose(np.asarray(lines.colors), np.tile(PRED_COLOUR, (24, 1)),
                               atol=PLY_COLOUR_TOL)  # fmt: skip
    # Every detection at threshold 0; none above all scores (still a valid file).
    everything = export_scene(store_url, "room_0", tmp_path / "all", boxes_json)
    assert ply_element_counts(everything["pred_boxes"]) == {"vertex": 24, "edge": 36}
    none = export_scene(store_url, "room_0", tmp_path / "none", boxes_json, score_threshold=0.95)
    assert ply_element_counts(none["pred_boxes"]) == {"vertex": 0, "edge": 0}
    # A boxes.json of another scene is refused before anything is written.
    with pytest.raises(ValueError, match="'bare'"):
        export_scene(store_url, "bare", tmp_path / "wrong", boxes_json)
    assert not (tmp_path / "wrong").exists()


# --------------------------------------------------------------------------- boxes.json
def test_boxes_json_round_trip(tmp_path):
    scores = np.array([0.75, 0.125])
    path = write_boxes_json(tmp_path / "b.json", "room_0", BOXES, scores, np.array([3, 7]))
    doc = json.loads(path.read_text())
    assert doc["scene_id"] == "room_0" and doc["units"] == "world"
    assert doc["box_format"] == ["cx", "cy", "cz", "w", "l", "h", "yaw"]
    assert doc["detections"][1] == {"box": BOXES[1].tolist(), "score": 0.125, "label": 7}
    boxes, got_scores, labels = read_boxes_json(path)
    assert boxes.dtype == np.float64 and boxes.shape == (2, 7)
    np.testing.assert_array_equal(boxes, BOXES.astype(np.float64))
    np.testing.assert_array_equal(got_scores, scores)
    assert labels == [3, 7]
    # No labels -> None; some labels -> None where missing; no detections at all.
    assert read_boxes_json(write_boxes_json(path, "room_0", BOXES, scores))[2] is None
    assert read_boxes_json(write_boxes_json(path, "room_0", BOXES, scores, [None, 2]))[2] == [
        None,
        2,
    ]
    empty = read_boxes_json(write_boxes_json(path, "room_0", np.zeros((0, 7)), []))
    assert empty[0].shape == (0, 7) and empty[1].shape == (0,) and empty[2] is None
    with pytest.raises(ValueError, match="scores"):
        write_boxes_json(path, "room_0", BOXES, [0.5])
    with pytest.raises(ValueError, match="labels"):
        write_boxes_json(path, "room_0", BOXES, scores, [1])
    with pytest.raises(ValueError, match="boxes"):
        write_boxes_json(path, "room_0", BOXES[:, :6], scores)


def _valid_doc() -> dict:
    return {
        "scene_id": "room_0",
        "units": "world",
        "box_format": ["cx", "cy", "cz", "w", "l", "h", "yaw"],
        "detections": [
            {"box": [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0], "score": 0.9, "label": 1},
            {"box": [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0], "score": 0.5, "label": None},
        ],
    }


def _drop(key):
    def edit(doc):
        del doc[key]

    return edit


def _set_det(i, key, value):
    def edit(doc):
        doc["detections"][i][key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (_drop("detections"), "missing key 'detections'"),
        (_drop("scene_id"), "missing key 'scene_id'"),
        (lambda d: d.update(units="voxel"), "'units'"),
        (lambda d: d.update(box_format=["x", "y", "z", "w", "l", "h", "yaw"]), "'box_format'"),
        (lambda d: d.update(detections={}), "'detections'"),
        (_set_det(1, "box", [0.0] * 6), r"detections\[1\]\.box: expected 7"),
        (
            _set_det(0, "box", [0.0, 0.0, float("nan"), 1.0, 1.0, 1.0, 0.0]),
            r"detections\[0\]\.box\[2\]: non-finite",
        ),
        (_set_det(0, "box", [0.0, 0.0, 0.0, -1.0, 1.0, 1.0, 0.0]), r"detections\[0\]\.box"),
        (_set_det(1, "score", float("inf")), r"detections\[1\]\.score: non-finite"),
        (_set_det(1, "score", "high"), r"detections\[1\]\.score"),
        (lambda d: d["detections"][0].pop("score"), r"detections\[0\]: missing key 'score'"),
        (_set_det(0, "label", 1.5), r"detections\[0\]\.label"),
    ],
)
def test_malformed_boxes_json_names_the_file_and_field(tmp_path, edit, field):
    doc = _valid_doc()
    edit(doc)
    path = tmp_path / "bad_boxes.json"
    path.write_text(json.dumps(doc))  # NaN/Infinity are written as JSON's NaN/Infinity
    with pytest.raises(ValueError, match=field) as info:
        read_boxes_json(path)
    assert str(path) in str(info.value)


def test_boxes_json_not_json_or_absent(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON") as info:
        read_boxes_json(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError):
        read_boxes_json(tmp_path / "absent.json")


# --------------------------------------------------------------------------- CLI
def test_cli_export_3d_writes_the_files_and_reports_counts(store_url, tmp_path, capsys):
    boxes_json = write_boxes_json(tmp_path / "boxes.json", "room_0", BOXES, [0.9, 0.3])
    out = tmp_path / "cli"
    argv = ["export-3d", "--store", store_url, "--scene-id", "room_0", "--out", str(out),
            "--boxes", str(boxes_json), "--score-threshold", "0.5"]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out.splitlines()
    assert stdout == [
        f"{out / 'room_0_points.ply'}: {len(VOXELS)} points",
        f"{out / 'room_0_gt_boxes.ply'}: 2 ground-truth boxes",
        f"{out / 'room_0_pred_boxes.ply'}: 1 of 2 predicted boxes (score >= 0.5)",
    ]
    assert len(o3d.io.read_point_cloud(str(out / "room_0_points.ply")).points) == len(VOXELS)
    assert len(o3d.io.read_line_set(str(out / "room_0_pred_boxes.ply")).lines) == 12

    argv = ["export-3d", "--store", store_url, "--scene-id", "bare", "--out", str(out),
            "--alpha-threshold", "0.1"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [f"{out / 'bare_points.ply'}: 3 points"]


def test_cli_export_3d_bad_input_is_a_clean_error(store_url, tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert main(["export-3d", "--store", store_url, "--scene-id", "nope", "--out", out]) == 2
    assert "no complete scene 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**_valid_doc(), "units": "voxel"}))
    argv = ["export-3d", "--store", store_url, "--scene-id", "room_0", "--out", out,
            "--boxes", str(bad)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'units'" in err
