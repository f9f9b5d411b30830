"""Box pictures: where the boxes land in the image, which predictions are drawn, the PNG."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb, to_rgba
from matplotlib.patches import Polygon

from model.pictures.boxes import (
    GT_COLOUR,
    GT_NAME,
    PRED_COLOUR,
    PRED_NAME,
    box_views_figure,
    box_views_image,
    save_box_views,
)

SHAPE = (32, 24, 16)
GT_RGB = np.array(to_rgb(GT_COLOUR)) * 255
PRED_RGB = np.array(to_rgb(PRED_COLOUR)) * 255


@pytest.fixture(autouse=True)
def _no_open_figures():
    yield
    assert plt.get_fignums() == [], "a figure was left open"
    plt.close("all")


def empty_grid() -> np.ndarray:
    return np.zeros((4, *SHAPE), np.float32)


def rectangle(box, yaw=None) -> np.ndarray:
    """The bird's-eye corners of a box, computed here (not with grid_store.boxes)."""
    cx, cy, _, w, l, _, yaw0 = box
    yaw = yaw0 if yaw is None else yaw
    local = np.array([[w, l], [-w, l], [-w, -l], [w, -l]]) / 2
    rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
    return local @ rot.T + [cx, cy]


def render(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float64)


def pixels_of(image: np.ndarray, rgb: np.ndarray, tol: float = 30.0) -> np.ndarray:
    """``(K, 2)`` display coordinates (origin bottom left) of the pixel centres of a colour."""
    rows, cols = np.nonzero(np.abs(image - rgb).max(-1) <= tol)
    return np.stack([cols + 0.5, image.shape[0] - rows - 0.5], 1)


def distance_to_outline(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Distance of ``(K, 2)`` points to the closed polygon ``(4, 2)`` (all in pixels)."""
    a, b = corners, np.roll(corners, -1, axis=0)  # (4, 2) segments a -> b
    ab = b - a
    t = np.clip(((points[:, None] - a) * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)  # (K, 4)
    nearest = a + t[..., None] * ab
    return np.linalg.norm(points[:, None] - nearest, axis=-1).min(1)


def along_outline(corners: np.ndarray, per_edge: int = 15) -> np.ndarray:
    t = np.linspace(0, 1, per_edge, endpoint=False)[:, None]
    return np.concatenate(
        [a + t * (b - a) for a, b in zip(corners, np.roll(corners, -1, 0), strict=True)]
    )


def near(samples: np.ndarray, pixels: np.ndarray, radius: float) -> np.ndarray:
    """``(S,)`` bool: a pixel of ``pixels`` lies within ``radius`` of each sample."""
    if not len(pixels):
        return np.zeros(len(samples), bool)
    return (np.linalg.norm(samples[:, None] - pixels[None], axis=-1) <= radius).any(1)


def inside(bbox, points: np.ndarray) -> np.ndarray:
    """``(K,)`` bool: the display points inside a matplotlib bounding box."""
    lo, hi = np.asarray(bbox.min), np.asarray(bbox.max)
    return ((points >= lo) & (points <= hi)).all(1)


def red_polygons(ax) -> list[Polygon]:
    red = to_rgba(PRED_COLOUR)
    return [p for p in ax.patches if isinstance(p, Polygon) and np.allclose(p.get_edgecolor(), red)]


# --------------------------------------------------------------------------- where
@pytest.mark.parametrize("yaw", [0.0, 0.6])
def test_gt_box_is_drawn_on_its_edges_in_every_panel_and_nowhere_else(yaw):
    gt = np.array([[12.0, 10.0, 8.0, 10.0, 8.0, 6.0, yaw]])
    rgba = empty_grid()
    rgba[:, 3, 4, :] = np.array([0.0, 0.0, 1.0, 1.0])[:, None]  # one opaque blue column
    fig, axes = box_views_figure(rgba, None, gt)
    try:
        image = render(fig)
        outlines = {name: ax.transData.transform(rectangle(gt[0])) for name, ax in axes.items()}
        blue_at = axes["bev"].transData.transform([[3.5, 4.5], [4.5, 3.5]])
        legend = fig.legends[0].get_window_extent()
    finally:
        plt.close(fig)
    np.testing.assert_array_equal(image, box_views_image(rgba, None, gt))  # same picture

    assert len(outlines) == 4  # bird's-eye + 3 slices, each crossed by the box
    green = pixels_of(image, GT_RGB)
    green = green[~inside(legend, green)]  # the legend's sample of a stored box
    for name, corners in outlines.items():
        hit = near(along_outline(corners), green, radius=2.0)
        assert hit.all(), f"{name}: no green near {(~hit).sum()} points of the box's edges"
    # Every green pixel is on some panel's outline (line width 2 pt = 2.2 px at 80 dpi).
    dist = np.min([distance_to_outline(green, c) for c in outlines.values()], axis=0)
    assert dist.max() <= 2.5, f"green pixel {dist.max():.1f} px from the box's edges"
    # A box one voxel off would not pass: one voxel is over 5 px here.
    assert np.ptp(outlines["bev"][:, 0]) / 10 > 5
    # The image's orientation: voxel (3, 4) is blue at (3.5, 4.5), not at (4.5, 3.5).
    h = image.shape[0]
    (bx, by), (sx, sy) = blue_at
    assert np.allclose(image[int(h - by), int(bx)], [0, 0, 255], atol=5)
    assert not np.allclose(image[int(h - sy), int(sx)], [0, 0, 255], atol=60)


def test_predictions_are_red_dashed_on_their_edges_with_score_labels():
    gt = np.array([[8.0, 8.0, 8.0, 6.0, 6.0, 6.0, 0.0]])
    pred = np.array([[22.0, 14.0, 8.0, 8.0, 6.0, 10.0, 0.3]])
    fig, axes = box_views_figure(empty_grid(), None, gt, pred, [0.87])
    try:
        image = render(fig)
        bev = axes["bev"]
        panel = bev.get_window_extent()
        outline = bev.transData.transform(rectangle(pred[0]))
        gt_outline = bev.transData.transform(rectangle(gt[0]))
        (label,) = [t for t in bev.texts if t.get_text() == "0.87"]
        text_box = label.get_window_extent(fig.canvas.get_renderer()).expanded(1.1, 1.3)
        (polygon,) = red_polygons(bev)
        assert polygon.get_linestyle() != "-" and polygon.get_fill() is False
    finally:
        plt.close(fig)
    red = pixels_of(image, PRED_RGB)
    red = red[inside(panel, red)]  # the bird's-eye panel's red pixels
    hit = near(along_outline(outline, per_edge=30), red, radius=2.0)
    assert hit.mean() >= 0.5, f"red on only {hit.mean():.0%} of the dashed outline"
    # Every red pixel is on the box's outline or in its score label; none on the GT box.
    off_line = red[distance_to_outline(red, outline) > 2.5]
    assert inside(text_box, off_line).all(), "red pixels away from the box and label"
    assert len(red) > 0 and (distance_to_outline(red, gt_outline) > 5).all()
    green = pixels_of(image, GT_RGB)
    assert near(along_outline(gt_outline), green, radius=2.0).all()


# --------------------------------------------------------------------------- which
PRED = np.array(
    [[4.0 + 5 * i, 6.0, 8.0, 3.0, 3.0, 4.0, 0.1 * i] for i in range(5)], dtype=np.float64
)
SCORES = np.array([0.9, 0.6, 0.4, 0.2, 0.55])
GT = np.array([[16.0, 16.0, 8.0, 4.0, 4.0, 6.0, 0.0]])


def drawn_boxes(ax) -> list[int]:
    """Indices into PRED of the red polygons, in drawing order."""
    out = []
    for poly in red_polygons(ax):
        xy = poly.get_xy()[:4]
        match = [i for i, b in enumerate(PRED) if np.allclose(xy, rectangle(b), atol=1e-9)]
        assert len(match) == 1
        out.append(match[0])
    return out


@pytest.mark.parametrize(
    ("max_pred", "threshold", "expected"),
    [
        (20, None, [3, 2, 4, 1, 0]),  # all, lowest score first (the best on top)
        (2, None, [1, 0]),
        (20, 0.5, [4, 1, 0]),
        (2, 0.5, [1, 0]),
        (20, 0.95, []),
    ],
)
def test_max_pred_and_score_threshold_limit_the_red_polygons(max_pred, threshold, expected):
    fig, axes = box_views_figure(empty_grid(), None, GT, PRED, SCORES, max_pred=max_pred,
                                 score_threshold=threshold)  # fmt: skip
    try:
        assert drawn_boxes(axes["bev"]) == expected
        assert sorted(t.get_text() for t in axes["bev"].texts) == sorted(
            f"{SCORES[i]:.2f}" for i in expected
        )
        assert f"{len(expected)} of 5 detected" in axes["bev"].get_title()
        for name, ax in axes.items():
            if name != "bev":  # every box crosses every slice; slices carry no labels
                assert drawn_boxes(ax) == expected and not ax.texts
        gt_polys = [p for p in axes["bev"].patches if p not in red_polygons(axes["bev"])]
        assert len(gt_polys) == 1
        assert np.allclose(gt_polys[0].get_edgecolor(), to_rgba(GT_COLOUR))
    finally:
        plt.close(fig)


def test_slices_show_only_the_boxes_crossing_them_and_no_scores_means_first_max_pred():
    # GT z range [5, 11]: slices at 6.5, 8 and 9.5; this prediction spans z in [9, 11].
    high = np.array([[20.0, 12.0, 10.0, 4.0, 4.0, 2.0, 0.0]])
    gt = np.array([[8.0, 8.0, 8.0, 4.0, 4.0, 6.0, 0.0]])
    fig, axes = box_views_figure(empty_grid(), None, gt, high)
    try:
        assert list(axes) == ["bev", "z=6.5", "z=8.0", "z=9.5"]
        assert [len(red_polygons(ax)) for ax in axes.values()] == [1, 0, 0, 1]
        assert not axes["bev"].texts  # no scores, no labels
    finally:
        plt.close(fig)
    fig, axes = box_views_figure(empty_grid(), None, GT, PRED, None, max_pred=3)
    try:
        assert drawn_boxes(axes["bev"]) == [0, 1, 2]
    finally:
        plt.close(fig)


def test_panels_show_the_valid_region_and_take_tensors():
    valid = torch.zeros(SHAPE, dtype=torch.bool)
    valid[:20, :16, :10] = True
    fig, axes = box_views_figure(
        torch.rand(4, *SHAPE), valid, torch.tensor(GT, dtype=torch.float32)
    )
    try:
        for ax in axes.values():
            assert ax.get_xlim() == (0.0, 20.0) and ax.get_ylim() == (0.0, 16.0)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- files, errors
def test_save_box_views_writes_the_png_of_box_views_image(tmp_path):
    path = save_box_views(tmp_path / "pics" / "scene.png", empty_grid(), None, GT, PRED, SCORES,
                          title="scene")  # fmt: skip
    assert path == tmp_path / "pics" / "scene.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = plt.imread(path)
    image = box_views_image(empty_grid(), None, GT, PRED, SCORES, title="scene")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert png.shape[:2] == image.shape[:2]
    assert np.abs(png[..., :3] * 255 - image).max() <= 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rgba": np.zeros((3, *SHAPE))}, "rgba"),
        ({"rgba": np.zeros(SHAPE)}, "rgba"),
        ({"valid": np.ones((32, 24, 8), bool)}, "valid"),
        ({"gt_boxes": np.zeros((1, 6))}, "gt_boxes"),
        ({"gt_boxes": np.array([[1.0, 1.0, np.nan, 1.0, 1.0, 1.0, 0.0]])}, "gt_boxes"),
        ({"pred_boxes": np.zeros((2, 8))}, "pred_boxes"),
        ({"pred_boxes": PRED, "pred_scores": SCORES[:3]}, "pred_scores"),
        ({"gt_labels": [1, 2]}, "gt_labels"),
        ({"pred_boxes": PRED, "labels": [1, 2]}, "labels"),
    ],
)
def test_bad_shapes_raise_value_error(kwargs, field):
    args = {"rgba": empty_grid(), "valid": None, "gt_boxes": GT, **kwargs}
    with pytest.raises(ValueError, match=field):
        box_views_figure(**args)
    with pytest.raises(ValueError, match=field):
        save_box_views("/nonexistent/never.png", **args)


@pytest.mark.parametrize("stored", [True, False])
def test_the_birds_eye_view_looks_under_the_ceiling(stored):
    # An opaque white ceiling over the whole grid and a blue voxel inside the box: looking
    # down through the boxes' height range (the detected ones' when none are stored), the
    # view shows the blue voxel, not the ceiling.
    box = np.array([[12.0, 10.0, 5.0, 10.0, 8.0, 6.0, 0.0]])  # z from 2 to 8
    rgba = empty_grid()
    rgba[:, :, :, -1] = 1.0  # the ceiling, above the box
    rgba[:, 12, 10, 4] = [0.0, 0.0, 1.0, 1.0]
    fig, axes = box_views_figure(rgba, None, *((box, None) if stored else (None, box)))
    try:
        image = render(fig)
        (bx, by), (wx, wy) = axes["bev"].transData.transform([[12.5, 10.5], [3.5, 3.5]])
    finally:
        plt.close(fig)
    h = image.shape[0]
    assert np.allclose(image[int(h - by), int(bx)], [0, 0, 255], atol=5)
    assert not np.allclose(image[int(h - wy), int(wx)], [255, 255, 255], atol=30)


# --------------------------------------------------------------------------- readable
def test_legend_axis_labels_units_and_size_on_a_non_cubic_room():
    room = (64, 50, 40)  # a whole room: not a cube, larger than SHAPE
    rgba = np.zeros((4, 64, 64, 64), np.float32)
    valid = np.zeros((64, 64, 64), bool)
    valid[: room[0], : room[1], : room[2]] = True
    gt = np.array([[20.0, 30.0, 6.0, 10.0, 8.0, 10.0, 0.0]])
    fig, axes = box_views_figure(rgba, valid, gt, gt + 1, [0.8], title="room")
    try:
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == [
            GT_NAME,
            f"{PRED_NAME} (label: score)",
        ]
        assert [h.get_color() for h in legend.legend_handles] == [GT_COLOUR, PRED_COLOUR]
        assert fig.get_size_inches()[0] * fig.dpi >= 1600
        assert axes["bev"].get_ylabel() == "y (voxels)"
        for name, ax in axes.items():
            assert ax.get_xlabel() == "x (voxels)"
            assert ax.get_xlim() == (0.0, 64.0) and ax.get_ylim() == (0.0, 50.0)
            assert ax.title.get_fontsize() >= 10
            assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 9
            if name != "bev":
                assert f"z = {name[2:]} voxels" in ax.get_title()
    finally:
        plt.close(fig)
    fig, _ = box_views_figure(rgba, valid, gt)  # no predictions: nothing to explain
    try:
        assert [t.get_text() for t in fig.legends[0].get_texts()] == [GT_NAME]
    finally:
        plt.close(fig)


def test_class_names_label_stored_and_detected_boxes():
    names = ["void", "table", "chair"]
    fig, axes = box_views_figure(empty_grid(), None, GT, PRED, SCORES, gt_labels=[1],
                                 labels=[2, 1, 2, 9, 2], class_names=names)  # fmt: skip
    try:
        texts = {t.get_text(): t.get_color() for t in axes["bev"].texts}
        assert texts == {"table": GT_COLOUR, "chair 0.90": PRED_COLOUR, "table 0.60": PRED_COLOUR,
                         "chair 0.40": PRED_COLOUR, "class 9 0.20": PRED_COLOUR,
                         "chair 0.55": PRED_COLOUR}  # fmt: skip
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert legend[1] == f"{PRED_NAME} (label: class score)"
    finally:
        plt.close(fig)


def test_crowded_labels_are_thinned_best_first_and_stay_inside_the_panel():
    # 15 detections piled on one spot, some at the panel's top edge.
    rng = np.random.default_rng(0)
    pred = np.array([[10.0, 20.0, 8.0, 4.0, 4.0, 4.0, 0.0]]) + rng.normal(0, 0.3, (15, 7))
    scores = np.linspace(0.95, 0.25, 15)
    fig, axes = box_views_figure(empty_grid(), None, GT, pred, scores)
    try:
        bev = axes["bev"]
        renderer = fig.canvas.get_renderer()
        boxes = [t.get_window_extent(renderer) for t in bev.texts]
        panel = bev.get_window_extent(renderer)
        shown = [t.get_text() for t in bev.texts]
    finally:
        plt.close(fig)
    assert "0.95" in shown and 1 <= len(shown) < 15
    for i, a in enumerate(boxes):
        assert panel.x0 <= a.x0 and a.x1 <= panel.x1 and panel.y0 <= a.y0 and a.y1 <= panel.y1
        assert not any(a.overlaps(b) for b in boxes[i + 1 :])
