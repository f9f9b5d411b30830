"""Label slices, reconstruction and grid-fidelity pictures: the legends, colour bars and views
a reader needs are there (box pictures: test_detection_pictures.py)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from benchmark_scripts import load_benchmark

from grid_store import RadianceGrid
from model.pictures import dense, reconstruction
from model.pictures.reconstruction import ceiling_cut, surface_height


@pytest.fixture(autouse=True)
def _no_open_figures():
    yield
    assert plt.get_fignums() == [], "a figure was left open"


@pytest.fixture
def drawn(monkeypatch):
    """The figures the picture modules would write, kept open for the test to read."""
    figures = []
    for module in (dense, reconstruction):
        monkeypatch.setattr(module, "save_figure", lambda fig, path: figures.append(fig) or path)
    yield figures
    for fig in figures:
        plt.close(fig)


def room() -> np.ndarray:
    """``(4, 16, 12, 10)`` rgba: floor (z 0), ceiling (z 8-9), a table whose top is at z 4."""
    rgba = np.zeros((4, 16, 12, 10), np.float32)
    rgba[:3] = 0.5
    rgba[3, :, :, 0] = 1.0
    rgba[3, :, :, 8:] = 1.0
    rgba[3, 4:8, 3:6, 1:4] = 1.0
    return rgba


def test_label_slices_have_a_class_legend_and_an_error_legend(drawn, tmp_path):
    target = torch.zeros(8, 6, 4, dtype=torch.long)
    target[:, :, :] = 2
    target[:4] = 1
    pred = target.clone()
    pred[0, 0, :] = 2  # wrong everywhere it is shown
    dense.save_label_slices(tmp_path / "l.png", target, pred, torch.ones(8, 6, 4, dtype=bool),
                            class_names=["void", "floor", "chair"])  # fmt: skip
    (fig,) = drawn
    legends = {leg.get_title().get_text(): [t.get_text() for t in leg.get_texts()]
               for leg in fig.legends}  # fmt: skip
    assert legends == {"classes": ["void (unlabelled)", "floor", "chair"],
                       "errors": list(dense.ERROR_NAMES)}  # fmt: skip
    errors = fig.axes[2 * len(fig.axes) // 3]  # the first panel of the errors row
    image = errors.images[0]
    wrong = image.cmap(image.norm(image.get_array()[0, 0]))[:3]  # array rows are y
    right = image.cmap(image.norm(image.get_array()[1, 1]))[:3]
    assert np.allclose(wrong, dense.ERROR_COLOURS[2]) and np.allclose(right, dense.ERROR_COLOURS[1])
    assert "voxels" in fig.axes[0].get_title()


def test_ceiling_cut_finds_a_rooms_ceiling_and_nothing_in_an_object():
    assert ceiling_cut(room()[3]) == 8
    floor_only = room()[3]
    floor_only[:, :, 8:] = 0.0
    assert ceiling_cut(floor_only) == 10  # a floor is not a ceiling
    assert ceiling_cut(np.ones((4, 4, 6))) == 6  # solid to the bottom: no room under it
    heights = surface_height(room()[3], 8)
    assert heights[5, 4] == 4.0 and heights[0, 0] == 1.0  # table top, floor top
    assert np.isnan(surface_height(floor_only[:, :, 4:], 6)).all()  # nothing there


def test_reconstruction_looks_under_the_ceiling_with_a_height_colour_bar(drawn, tmp_path):
    rgba = torch.from_numpy(room())
    pred = rgba.clone()
    pred[3] = torch.logit(rgba[3].clamp(0.01, 0.99))
    mask = torch.zeros(rgba.shape[1:], dtype=torch.bool)
    mask[8:] = True
    reconstruction.save_reconstruction(tmp_path / "r.png", rgba, torch.ones(rgba.shape[1:],
                                       dtype=torch.bool), pred, mask)  # fmt: skip
    (fig,) = drawn
    (bar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert "height" in bar.get_ylabel() and "voxels" in bar.get_ylabel()
    panels = [ax for ax in fig.axes if ax is not bar]
    assert "below the ceiling (z < 8)" in panels[3].get_title()
    for row in range(4):
        heights = panels[4 * row + 3].images[0].get_array()
        assert len(np.unique(heights[np.isfinite(heights)])) > 1, f"row {row} is one value"
    target = panels[15].images[0].get_array()  # rows are y, columns x
    assert target[4, 5] == 4.0 and target[0, 0] == 1.0
    # Looking down under the ceiling, the top-down colour is the room's, not black or white.
    top_down = panels[14].images[0].get_array()
    assert np.allclose(top_down, 0.5, atol=0.01)


def test_fidelity_slices_have_a_labelled_colour_bar(monkeypatch, tmp_path):
    bench = load_benchmark("bench_grid_fidelity")
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure open to read it
    rgba = room()
    grid = RadianceGrid(rgba=rgba, bbox_min=np.zeros(3), bbox_max=np.array([15, 11, 9]) * 0.1,
                        voxel_size=0.1, delta=0.1)  # fmt: skip
    path = bench.draw_slices({"ground truth": grid, "rgb": grid}, tmp_path / "s.png", "seed 0")
    monkeypatch.undo()
    (fig,) = figures
    try:
        (bar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert bar.get_ylabel().startswith("opacity")
        assert bar.get_ylim() == (0.0, 1.0)
        assert path.read_bytes()[:4] == b"\x89PNG"
    finally:
        plt.close(fig)
