"""NeRF-RPN / NeRF-MAE .npz interop: axis order, the flattened form, density rules against
hand-computed values, their inversion, boxes, bad files, and the ``nerfmae store`` commands."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from grid_store.grid import RadianceGrid
from nerfmae.cli import main as cli_main
from pipeline.interop import (
    NGP_EMPTY_SENTINEL,
    alpha_to_density,
    boxes_voxel_to_world,
    boxes_world_to_voxel,
    density_to_alpha,
    export_rpn_npz,
    import_rpn_npz,
)

SHAPE = (5, 4, 3)


def index_coded(shape=SHAPE) -> np.ndarray:
    """(W, L, H, 4) whose every channel encodes the sample's (x, y, z) index."""
    i, j, k = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    return np.stack(
        [
            i / (shape[0] - 1),
            j / (shape[1] - 1),
            k / (shape[2] - 1),
            (i * 100 + j * 10 + k) / 1000.0,
        ],
        -1,
    ).astype(np.float32)


def index_coded_grid(shape=SHAPE, **kw) -> RadianceGrid:
    voxel = 0.25
    bmin = np.array([1.0, -2.0, 0.5])
    return RadianceGrid(
        rgba=np.moveaxis(index_coded(shape), -1, 0),
        bbox_min=bmin,
        bbox_max=bmin + (np.array(shape) - 1) * voxel,
        voxel_size=voxel,
        delta=voxel,
        **kw,
    )


def write_rpn(path, rgbsigma, bbox_min=(1.0, -2.0, 0.5), voxel=0.25, resolution=None, **extra):
    shape = rgbsigma.shape[:3] if rgbsigma.ndim == 4 else tuple(resolution)
    arrays = dict(
        rgbsigma=rgbsigma,
        bbox_min=np.asarray(bbox_min, dtype=np.float32),
        bbox_max=np.asarray(bbox_min, dtype=np.float32) + (np.array(shape) - 1) * voxel,
        **extra,
    )
    if resolution is not None:
        arrays["resolution"] = np.asarray(resolution)
    np.savez_compressed(path, **arrays)
    return path


# ------------------------------------------------------------ axis order
def test_export_writes_xyz_order_and_round_trips(tmp_path):
    grid = index_coded_grid()
    path = export_rpn_npz(grid, tmp_path / "scene.npz", density="alpha")
    with np.load(path) as f:
        rgbsigma = f["rgbsigma"]
        assert rgbsigma.shape == (*SHAPE, 4)
        assert f["resolution"].tolist() == list(SHAPE)
        # The sample at x=3, y=2, z=1 holds its own index.
        np.testing.assert_allclose(rgbsigma[3, 2, 1], [3 / 4, 2 / 3, 1 / 2, 0.321], atol=1e-7)
        np.testing.assert_allclose(f["bbox_max"], grid.bbox_max)
    back = import_rpn_npz(path, density="alpha")
    np.testing.assert_array_equal(back.rgba, grid.rgba)
    np.testing.assert_allclose(back.bbox_min, grid.bbox_min)
    assert back.voxel_size == pytest.approx(0.25) and back.delta == 0.01
    assert back.meta["density_rule"] == "alpha" and back.meta["source"] == str(path)


def test_import_flattened_instant_ngp_form_x_fastest(tmp_path):
    coded = index_coded()  # (x, y, z, 4)
    rx, ry, rz = SHAPE
    flat = np.empty((rx * ry * rz, 4), dtype=np.float32)
    for x in range(rx):
        for y in range(ry):
            for z in range(rz):
                flat[x + y * rx + z * rx * ry] = coded[x, y, z]
    path = write_rpn(tmp_path / "ngp.npz", flat, resolution=[rx, ry, rz])
    grid = import_rpn_npz(path, density="alpha")
    assert grid.shape == SHAPE
    np.testing.assert_array_equal(grid.rgba, np.moveaxis(coded, -1, 0))


def test_ngp_y_up_frame_is_rotated_to_z_up(tmp_path):
    coded = index_coded()  # in ngp's frame: axes (a, b, c)
    path = write_rpn(tmp_path / "yup.npz", coded, bbox_min=(1.0, 2.0, 3.0))
    grid = import_rpn_npz(path, density="alpha", ngp_y_up=True)
    # The README's transpose(2, 0, 1): z-up index (x, y, z) = ngp (y, z, x).
    assert grid.shape == (SHAPE[2], SHAPE[0], SHAPE[1])
    np.testing.assert_array_equal(grid.rgba[:, 2, 4, 1], coded[4, 1, 2])
    np.testing.assert_allclose(grid.bbox_min, [3.0, 1.0, 2.0])


# ------------------------------------------------------------ density rules
def test_density_rules_against_hand_values(tmp_path):
    ln2 = math.log(2)
    raw = np.array([NGP_EMPTY_SENTINEL, 0.0, math.log(100 * ln2), 10.0], dtype=np.float32)
    np.testing.assert_allclose(
        density_to_alpha(raw, "ngp"), [0.0, 1 - math.exp(-0.01), 0.5, 1.0], rtol=1e-6, atol=1e-7
    )
    raw = np.array([-5.0, 0.0, 100 * ln2, 100.0], dtype=np.float32)
    np.testing.assert_allclose(
        density_to_alpha(raw, "relu"), [0.0, 0.0, 0.5, 1 - math.exp(-1)], rtol=1e-6, atol=1e-7
    )
    np.testing.assert_array_equal(
        density_to_alpha(np.array([-0.5, 0.25, 1.5]), "alpha"), [0.0, 0.25, 1.0]
    )

    # Through a file: the 4th channel becomes alpha, colour untouched.
    coded = index_coded()
    coded[..., 3] = math.log(100 * ln2)
    coded[0, 0, 0, 3] = NGP_EMPTY_SENTINEL
    grid = import_rpn_npz(write_rpn(tmp_path / "d.npz", coded), density="ngp")
    assert grid.alpha[0, 0, 0] == 0.0
    np.testing.assert_allclose(grid.alpha[1:], 0.5, rtol=1e-6)
    np.testing.assert_array_equal(grid.rgba[:3], np.moveaxis(coded[..., :3], -1, 0))


@pytest.mark.parametrize("rule", ["ngp", "relu", "alpha"])
def test_density_inversion_round_trips(rule, tmp_path):
    alpha = np.array([0.0, 1e-6, 0.3, 0.5, 0.999, 1.0], dtype=np.float32)
    raw = alpha_to_density(alpha, rule)
    assert np.all(np.isfinite(raw))
    back = density_to_alpha(raw, rule)
    np.testing.assert_allclose(back[:-1], alpha[:-1], rtol=1e-5, atol=1e-9)
    assert back[0] == 0.0 and back[-1] >= 1 - 1e-6
    if rule == "ngp":
        assert raw[0] == NGP_EMPTY_SENTINEL
        assert raw[3] == pytest.approx(math.log(100 * math.log(2)), rel=1e-6)
    if rule == "relu":
        assert raw[0] == 0.0 and raw[3] == pytest.approx(100 * math.log(2), rel=1e-6)
    grid = index_coded_grid()
    back_grid = import_rpn_npz(export_rpn_npz(grid, tmp_path / "g.npz", density=rule), density=rule)
    np.testing.assert_allclose(back_grid.rgba, grid.rgba, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------ spacing and boxes
def test_anisotropic_box_uses_longest_axis_spacing_and_records_it(tmp_path, caplog):
    coded = index_coded()  # (5, 4, 3): spacing 0.25 on x, 0.26 on y, 0.25 on z
    path = tmp_path / "aniso.npz"
    np.savez(path, rgbsigma=coded, bbox_min=np.zeros(3), bbox_max=np.array([1.0, 0.78, 0.5]))
    grid = import_rpn_npz(path, density="alpha")
    assert grid.voxel_size == pytest.approx(0.25)
    np.testing.assert_allclose(grid.bbox_max, [1.0, 0.75, 0.5])
    np.testing.assert_allclose(grid.meta["source_spacing"], [0.25, 0.26, 0.25])
    assert "not isotropic" in caplog.text


def test_boxes_voxel_units_to_world_and_back(tmp_path):
    obb = np.array([[10.0, 5.0, 2.0, 4.0, 2.0, 2.0, 0.3]])
    world = boxes_voxel_to_world(obb, np.array([1.0, 2.0, 3.0]), 0.5)
    # sample i of the grid sits at voxel coordinate i + 0.5 (voxel i covers [i, i + 1])
    np.testing.assert_allclose(world, [[5.75, 4.25, 3.75, 2.0, 1.0, 1.0, 0.3]], rtol=1e-6)
    np.testing.assert_allclose(
        boxes_world_to_voxel(world, np.array([1.0, 2.0, 3.0]), 0.5), obb, rtol=1e-6
    )
    aabb = np.array([[0.0, 2.0, 4.0, 2.0, 6.0, 5.0]])  # (xmin, ymin, zmin, xmax, ymax, zmax)
    np.testing.assert_allclose(
        boxes_voxel_to_world(aabb, np.zeros(3), 1.0), [[0.5, 3.5, 4.0, 2, 4, 1, 0]]
    )

    np.save(tmp_path / "boxes.npy", obb)
    grid = import_rpn_npz(
        write_rpn(tmp_path / "s.npz", index_coded()), density="alpha", boxes=tmp_path / "boxes.npy"
    )
    np.testing.assert_allclose(grid.boxes, boxes_voxel_to_world(obb, grid.bbox_min, 0.25))
    assert grid.box_labels.tolist() == [0]
    export_rpn_npz(grid, tmp_path / "out.npz", boxes_path=tmp_path / "out_boxes.npy")
    np.testing.assert_allclose(np.load(tmp_path / "out_boxes.npy"), obb, rtol=1e-5)


# ------------------------------------------------------------ bad files
def test_bad_files_name_the_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        import_rpn_npz(tmp_path / "nope.npz")
    np.savez(tmp_path / "nokey.npz", rgbsigma=index_coded(), bbox_min=np.zeros(3))
    with pytest.raises(ValueError, match=r"nokey\.npz.*bbox_max"):
        import_rpn_npz(tmp_path / "nokey.npz")
    flat = index_coded().reshape(-1, 4)
    with pytest.raises(ValueError, match=r"flat\.npz.*resolution"):
        import_rpn_npz(_without_resolution(tmp_path / "flat.npz", flat))
    with pytest.raises(ValueError, match=r"mism\.npz.*resolution"):
        import_rpn_npz(write_rpn(tmp_path / "mism.npz", index_coded(), resolution=[5, 4, 4]))
    nan = index_coded()
    nan[1, 1, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"nan\.npz.*NaN"):
        import_rpn_npz(write_rpn(tmp_path / "nan.npz", nan), density="alpha")
    with pytest.raises(ValueError, match="density rule"):
        import_rpn_npz(tmp_path / "nan.npz", density="softplus")
    with pytest.raises(ValueError, match=r"u8\.npz.*integer"):
        import_rpn_npz(
            write_rpn(tmp_path / "u8.npz", (index_coded() * 255).astype(np.uint8)), density="ngp"
        )


def _without_resolution(path, flat):
    np.savez(path, rgbsigma=flat, bbox_min=np.zeros(3), bbox_max=np.ones(3))
    return path


def test_uint8_alpha_grids_are_scaled(tmp_path):
    u8 = (index_coded() * 255).round().astype(np.uint8)
    grid = import_rpn_npz(write_rpn(tmp_path / "u8.npz", u8), density="alpha")
    np.testing.assert_allclose(grid.rgba, np.moveaxis(u8, -1, 0) / 255.0, atol=1e-7)


# ------------------------------------------------------------ CLI
def test_store_cli_import_ls_export(tmp_path, capsys):
    src = tmp_path / "rpn"
    src.mkdir()
    coded = index_coded()
    coded[..., 3] = np.log(-100 * np.log1p(-np.clip(coded[..., 3], 0, 0.99)) + 1e-30)
    for name in ("scene_a", "scene_b"):
        write_rpn(src / f"{name}.npz", coded)
    store = str(tmp_path / "grids.zarr")
    assert (
        cli_main(
            ["store", "import-npz", store, *map(str, sorted(src.glob("*.npz"))), "--density", "ngp"]
        )
        == 0
    )
    assert cli_main(["store", "ls", store]) == 0
    out = capsys.readouterr().out
    assert "scene_a" in out and "scene_b" in out and "5x4x3" in out

    from grid_store import GridStore

    stored = GridStore(store, mode="r").read_grid("scene_a")
    assert stored.meta["density_rule"] == "ngp"
    np.testing.assert_allclose(stored.alpha, np.clip(index_coded()[..., 3], 0, 0.99), atol=1e-3)

    out_dir = tmp_path / "exported"
    assert (
        cli_main(
            [
                "store",
                "export-npz",
                store,
                str(out_dir),
                "--scene-id",
                "scene_b",
                "--density",
                "alpha",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out_dir.iterdir()) == ["scene_b.npz"]
    with np.load(out_dir / "scene_b.npz") as f:
        np.testing.assert_allclose(f["rgbsigma"][3, 2, 1, :3], [3 / 4, 2 / 3, 1 / 2], atol=1e-3)
    # Bad input: a clean error exit, nothing written.
    assert cli_main(["store", "export-npz", store, str(out_dir), "--scene-id", "missing"]) == 2
    assert cli_main(["store", "import-npz", store, str(tmp_path / "none.npz")]) == 2
    assert json.loads(json.dumps(GridStore(store, mode="r").list_scenes())) == [
        "scene_a",
        "scene_b",
    ]
