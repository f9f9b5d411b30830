"""Grid extraction (pipeline.extract): exact against independent sampling, chunk-invariant,
hand-computed direction averages, boxes, metadata and bad inputs."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from grid_store.grid import RadianceGrid, grid_points, grid_shape_for_box
from pipeline.directions import (
    FixedDirections,
    fibonacci_directions,
    rpn_fixed_directions,
    select_cameras,
)
from pipeline.extract import ExtractConfig, config_hash, extract_grid, sample_field


class SphereField:
    """A Gaussian blob of density with a position-dependent colour (view-independent).

    ``numpy_density`` / ``numpy_color`` are the same formulas in float64 numpy: the
    independent implementation the extraction must agree with.
    """

    def __init__(self, lo=(-1.0, -0.5, 0.0), hi=(1.0, 0.5, 0.8), centre=(0.2, 0.0, 0.4), s=0.2):
        self.aabb = torch.tensor([lo, hi], dtype=torch.float32)
        self.centre = np.asarray(centre, dtype=np.float64)
        self.s = s
        self.calls: list[int] = []

    def numpy_density(self, x: np.ndarray) -> np.ndarray:
        r2 = ((x - self.centre) ** 2).sum(-1)
        return 80.0 * np.exp(-r2 / (2 * self.s**2))

    @staticmethod
    def numpy_color(x: np.ndarray) -> np.ndarray:
        return 0.5 + 0.5 * np.sin(np.array([3.0, 5.0, 7.0]) * x + np.array([0.0, 1.0, 2.0]))

    def density(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3) -> (N,)
        self.calls.append(x.shape[0])
        c = torch.as_tensor(self.centre, dtype=x.dtype)
        return 80.0 * torch.exp(-((x - c) ** 2).sum(-1) / (2 * self.s**2))

    def color(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:  # (N, 3), (N, 3) -> (N, 3)
        freq = torch.tensor([3.0, 5.0, 7.0], dtype=x.dtype)
        phase = torch.tensor([0.0, 1.0, 2.0], dtype=x.dtype)
        return 0.5 + 0.5 * torch.sin(freq * x + phase)


class ViewDependentField(SphereField):
    """Colour = (max(dz, 0), max(dx, 0), 0.5 max(dy, 0) + 0.25 (1 + sin x0)): depends on d."""

    def color(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [
                d[:, 2].clamp_min(0),
                d[:, 0].clamp_min(0),
                0.5 * d[:, 1].clamp_min(0) + 0.25 * (1 + torch.sin(x[:, 0])),
            ],
            dim=-1,
        )


def independent_grid(field: SphereField, lo, hi, resolution: int):
    """Ground truth by the contract: grid_points + numpy formulas, alpha with delta = voxel."""
    shape, voxel, hi = grid_shape_for_box(np.asarray(lo), np.asarray(hi), resolution)
    pts = grid_points(np.asarray(lo, dtype=np.float64), voxel, shape).astype(
        np.float64
    )  # (X, Y, Z, 3)
    alpha = -np.expm1(-field.numpy_density(pts) * voxel)
    rgb = np.moveaxis(field.numpy_color(pts), -1, 0)
    return np.concatenate([rgb, alpha[None]], 0), shape, voxel, hi


def mask_empty_space(rgba: np.ndarray, below: float) -> np.ndarray:
    """The contract of ``empty_below``: every channel 0 where alpha < ``below``."""
    return np.where(rgba[3] < below, 0.0, rgba)


# The exactness tests below check the sampler, so they keep every value (no masking).
KEEP_ALL = {"empty_below": 0.0}


# ------------------------------------------------------------ exactness
@pytest.mark.parametrize(
    "lo, hi, resolution",
    [
        ((-1.0, -0.5, 0.0), (1.0, 0.5, 0.8), 33),  # 2 : 1 : 0.8
        ((0.0, 0.0, 0.0), (0.6, 1.5, 0.9), 48),  # y longest
        ((-0.3, -0.3, -0.3), (0.7, 0.7, 0.7), 17),  # cube
        ((0.0, -1.0, 0.1), (0.25, 1.0, 1.3), 40),  # thin in x
    ],
)
@pytest.mark.parametrize("empty_below", [0.0, 0.01])
def test_extraction_matches_independent_sampling(lo, hi, resolution, empty_below):
    field = SphereField(lo, hi, centre=np.add(lo, hi) / 2)
    grid = extract_grid(field, resolution, directions="fixed", empty_below=empty_below)
    expected, shape, voxel, hi_adj = independent_grid(field, lo, hi, resolution)
    expected = mask_empty_space(expected, empty_below)
    assert grid.shape == shape and max(shape) == resolution
    np.testing.assert_allclose(grid.bbox_min, lo)
    np.testing.assert_allclose(grid.bbox_max, hi_adj)
    assert grid.voxel_size == pytest.approx(voxel) and grid.delta == pytest.approx(voxel)
    # float32 evaluation against float64 ground truth.
    np.testing.assert_allclose(grid.rgba[3], expected[3], atol=2e-6)
    np.testing.assert_allclose(grid.rgba[:3], expected[:3], atol=2e-6)
    assert grid.alpha.max() > 0.5  # the blob is inside: the test is not vacuous


# The room's colour is view-independent, so one direction gives the generator's colour;
# its field costs ~10 us per point and call, so one direction keeps these tests quick.
ONE_DIRECTION = {"directions": "fibonacci", "n_directions": 1, **KEEP_ALL}


def test_extraction_reproduces_synthetic_ground_truth(tmp_path):
    synthetic = pytest.importorskip("pipeline.synthetic")
    scene = synthetic.generate_scene(
        tmp_path / "room", seed=3, n_views=1, image_size=4, grid_resolution=24
    )
    gt = RadianceGrid.load_npz(scene / "ground_truth" / "grid.npz")
    aabb = np.asarray(json.loads((scene / "transforms.json").read_text())["aabb"])
    # The room's float64 aabb is the scene box (as a run's transforms.json aabb is); the
    # field's own aabb is float32, which moves samples by ~1e-7: enough to flip
    # nearest-part ties in free space.
    grid = extract_grid(synthetic.make_room(3), 24, **ONE_DIRECTION)
    masked = extract_grid(synthetic.make_room(3), 24, **{**ONE_DIRECTION, "empty_below": 0.01})
    assert grid.shape == gt.shape and max(grid.shape) == 24
    np.testing.assert_array_equal(grid.bbox_min, gt.bbox_min)
    np.testing.assert_allclose(grid.bbox_max, gt.bbox_max, rtol=1e-12)
    assert grid.delta == pytest.approx(gt.delta, rel=1e-12)
    # The ground truth is stored as float16: half an ulp below 1 is 2.44e-4.
    np.testing.assert_allclose(grid.rgba, gt.rgba, rtol=0, atol=2.5e-4)
    # Free space (alpha < 0.01) is all zeros; away from the threshold the rest is the GT.
    clear = np.abs(gt.alpha - 0.01) > 1e-3
    expected = mask_empty_space(gt.rgba.astype(np.float64), 0.01)
    np.testing.assert_allclose(masked.rgba[:, clear], expected[:, clear], rtol=0, atol=2.5e-4)
    assert not masked.rgba[:, gt.alpha < 0.009].any() and (gt.alpha < 0.009).any()
    assert masked.meta["empty_space"]["zero_fraction"] == pytest.approx((masked.alpha == 0).mean())
    field_box = extract_grid(synthetic.make_room(3).field, 8, **ONE_DIRECTION)
    np.testing.assert_allclose(field_box.bbox_min, aabb[0], rtol=1e-6)
    assert gt.alpha.max() > 0.5 and gt.alpha.min() < 0.01  # walls and free space: not vacuous


@pytest.mark.parametrize("resolution, aspect", [(20, (1.0, 1.0, 1.0)), (28, (2.0, 1.0, 0.6))])
def test_extraction_of_room_field_matches_grid_points(resolution, aspect):
    synthetic = pytest.importorskip("pipeline.synthetic")
    field = synthetic.make_room(1).field
    lo, hi = (field.aabb[0].double().numpy(), field.aabb[1].double().numpy())
    hi = lo + (hi - lo) * np.asarray(aspect) / max(aspect)
    box = {"bbox_min": tuple(lo), "bbox_max": tuple(hi)}
    grid = extract_grid(field, resolution, **box, **ONE_DIRECTION)
    shape, voxel, _ = grid_shape_for_box(lo, hi, resolution)
    assert grid.shape == shape
    pts = torch.from_numpy(grid_points(lo, voxel, shape).reshape(-1, 3))  # (N, 3)
    up = torch.tensor([[0.0, 0.0, 1.0]]).expand(len(pts), 3)
    with torch.no_grad():
        sigma = field.density(pts).double().numpy()
        rgb = field.color(pts, up).double().numpy()
    np.testing.assert_allclose(grid.alpha.reshape(-1), -np.expm1(-sigma * voxel), atol=1e-6)
    np.testing.assert_allclose(grid.rgb.reshape(3, -1), rgb.T, atol=1e-6)


# ------------------------------------------------------------ chunking
def test_chunking_does_not_change_results_and_bounds_batch():
    field = SphereField()
    one = extract_grid(field, 11, directions="fibonacci", n_directions=3, chunk_points=10**6)
    field.calls.clear()
    tiny = extract_grid(field, 11, directions="fibonacci", n_directions=3, chunk_points=7)
    # Chunks are whole z-rows (here 5 samples long): one row per call.
    assert tiny.shape[2] == 5 and set(field.calls) == {5}
    assert sum(field.calls) == math.prod(tiny.shape)
    field.calls.clear()
    rows = extract_grid(field, 11, directions="fibonacci", n_directions=3, chunk_points=23)
    assert max(field.calls) == 20 and sum(field.calls) == math.prod(tiny.shape)
    np.testing.assert_allclose(rows.rgba, one.rgba, rtol=0, atol=1e-7)
    np.testing.assert_allclose(tiny.rgba, one.rgba, rtol=0, atol=1e-7)


# ------------------------------------------------------------ directions
def test_fixed_direction_average_equals_hand_computation():
    field = ViewDependentField()
    grid = extract_grid(field, 9, directions="fixed", **KEEP_ALL)
    # Over NeRF-RPN's 18 directions (pitch -45/0/45, yaws 0..300 step 60):
    # mean max(dz,0) = sin45 / 3; mean max(dx,0) = (2/6) * mean cos(pitch);
    # mean max(dy,0) = (2 sin60 / 6) * mean cos(pitch).
    mean_cos_pitch = (2 * math.cos(math.pi / 4) + 1) / 3
    r = math.sin(math.pi / 4) / 3
    g = (2 / 6) * mean_cos_pitch
    b_dir = 0.5 * (2 * math.sin(math.pi / 3) / 6) * mean_cos_pitch
    x0 = grid.points()[..., 0].astype(np.float64)
    np.testing.assert_allclose(grid.rgba[0], r, atol=1e-6)
    np.testing.assert_allclose(grid.rgba[1], g, atol=1e-6)
    np.testing.assert_allclose(grid.rgba[2], b_dir + 0.25 * (1 + np.sin(x0)), atol=1e-6)
    assert grid.meta["colour_directions"]["name"] == "rpn18"
    assert grid.meta["colour_directions"]["count"] == 18


def test_camera_directions_average_towards_each_sample():
    field = ViewDependentField()
    origins = np.array([[-3.0, 0.2, 0.5], [2.0, 2.0, 3.0], [0.1, -4.0, 0.3]], dtype=np.float32)
    grid = extract_grid(field, 9, camera_origins=origins, max_cameras=None, **KEEP_ALL)
    pts = grid.points().astype(np.float64)  # (X, Y, Z, 3)
    d = pts[None] - origins[:, None, None, None].astype(np.float64)  # (C, X, Y, Z, 3)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    expect = np.stack(
        [
            np.maximum(d[..., 2], 0).mean(0),
            np.maximum(d[..., 0], 0).mean(0),
            (0.5 * np.maximum(d[..., 1], 0) + 0.25 * (1 + np.sin(pts[..., 0]))).mean(0),
        ]
    )
    np.testing.assert_allclose(grid.rgb, expect, atol=1e-6)
    assert grid.meta["colour_directions"] == {
        "kind": "cameras",
        "count": 3,
        "camera_indices": [0, 1, 2],
    }


def test_camera_subset_and_fallback_recorded():
    origins = np.random.default_rng(0).normal(size=(10, 3)) * 5
    grid = extract_grid(SphereField(), 5, camera_origins=origins, max_cameras=4)
    assert grid.meta["colour_directions"]["camera_indices"] == [0, 2, 5, 7]
    assert select_cameras(10, 4, "random", seed=1) == sorted(
        select_cameras(10, 4, "random", seed=1)
    )
    assert len(set(select_cameras(10, 4, "random", seed=1))) == 4
    no_cams = extract_grid(SphereField(), 5)  # a bare field has no cameras: fixed set, recorded
    assert no_cams.meta["colour_directions"]["kind"] == "fixed"


def test_direction_sets_are_unit_and_rpn_matches_definition():
    rpn = rpn_fixed_directions()
    assert rpn.shape == (18, 3)
    np.testing.assert_allclose(np.linalg.norm(rpn, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(
        sorted(set(np.round(rpn[:, 2], 6))), [-math.sqrt(0.5), 0, math.sqrt(0.5)], atol=1e-6
    )
    fib = fibonacci_directions(50)
    np.testing.assert_allclose(np.linalg.norm(fib, axis=1), 1, atol=1e-6)
    assert np.abs(fib.mean(0)).max() < 0.05  # spread over the sphere


# ------------------------------------------------------------ boxes, delta, metadata
def test_occupied_box_hugs_the_density_with_margin():
    centre = np.array([0.5, -0.5, 0.0])
    field = SphereField(lo=(-2, -2, -2), hi=(2, 2, 2), centre=centre, s=0.1)
    grid = extract_grid(field, 32, box="occupied", margin=0.1, **ONE_DIRECTION)
    tight = extract_grid(field, 32, box="occupied", margin=0.0, **ONE_DIRECTION)
    # Opacity at the fine voxel (4/31) reaches 0.01 at radius r: 80 exp(-r^2/0.02) 4/31 = -log 0.99.
    r = math.sqrt(2 * 0.01 * math.log(80 * (4 / 31) / -math.log(0.99)))
    coarse, fine = 4 / 63, 4 / 31
    # Contains the occupied ball; loose by at most a coarse voxel (+ one unseen) and the margin.
    assert np.all(grid.bbox_min <= centre - r)
    assert np.all(grid.bbox_max >= centre + r - fine / 2)
    assert np.all(grid.bbox_min >= centre - r - coarse - 0.2 * (r + coarse))
    np.testing.assert_allclose((grid.bbox_min + grid.bbox_max) / 2, centre, atol=coarse + fine)
    extent, tight_extent = (g.bbox_max - g.bbox_min for g in (grid, tight))
    np.testing.assert_allclose(extent, 1.2 * tight_extent, atol=fine)
    assert grid.meta["box"]["kind"] == "occupied" and max(grid.shape) == 32


def test_user_box_and_delta_override():
    field = SphereField()
    grid = extract_grid(field, 12, bbox_min=(0.0, -0.2, 0.2), bbox_max=(0.4, 0.2, 0.6), delta=0.05)
    pts = grid.points().astype(np.float64)
    np.testing.assert_allclose(grid.alpha, -np.expm1(-field.numpy_density(pts) * 0.05), atol=2e-6)
    assert grid.delta == 0.05 and grid.meta["box"] == {"kind": "user"}
    np.testing.assert_allclose(grid.bbox_min, [0.0, -0.2, 0.2])


def test_metadata_and_config_hash():
    grid = extract_grid(SphereField(), 6, directions="fixed")
    meta = grid.metadata()
    for key in ("source", "nerf", "config_hash", "schema_version", "colour_directions", "delta"):
        assert key in meta
    base = ExtractConfig(resolution=6, directions="fixed")
    assert meta["config_hash"] == config_hash(base)
    assert config_hash(base) != config_hash(ExtractConfig(resolution=7, directions="fixed"))
    assert config_hash(base, {"steps": 1}) != config_hash(base, {"steps": 2})
    assert config_hash(base) == config_hash(
        ExtractConfig(resolution=6, directions="fixed", device="cpu")
    )


def test_sample_field_alpha_only_leaves_colour_zero():
    out = sample_field(SphereField(), np.zeros(3), 0.1, (3, 4, 5), delta=0.1, dirs=None)
    assert out.shape == (4, 3, 4, 5) and not out[:3].any() and out[3].max() > 0


# ------------------------------------------------------------ runs and scene folders
def fake_run(scene_dir="scene_x"):
    return SimpleNamespace(
        field=ViewDependentField(),
        camera_origins=np.array([[0.0, 0.0, 5.0]], dtype=np.float32),
        scene_aabb=np.array([[-0.5, -0.5, 0.0], [0.5, 0.5, 0.5]]),
        metrics={"psnr_holdout": 31.5, "steps": 200, "backend": "torch", "seconds": 3.0},
        config={"steps": 200, "backend": "torch"},
        scene_dir=scene_dir,
    )


def test_run_folder_uses_its_cameras_box_and_metrics(tmp_path, monkeypatch):
    import nerf_training

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"")
    loaded = []
    monkeypatch.setattr(
        nerf_training, "load_run", lambda p: loaded.append(Path(p)) or fake_run(), raising=False
    )
    grid = extract_grid(run_dir, 8)
    assert loaded == [run_dir]
    np.testing.assert_allclose(grid.bbox_min, [-0.5, -0.5, 0.0])
    assert grid.meta["nerf"] == {"backend": "torch", "steps": 200, "psnr_holdout": 31.5}
    assert grid.meta["colour_directions"]["kind"] == "cameras"
    # One camera straight above: d has dz < 0 everywhere below it, so red is 0.
    assert grid.rgba[0].max() == 0.0 and grid.rgba[1].max() > 0


def test_scene_folder_trains_beside_then_extracts(tmp_path, monkeypatch):
    import nerf_training

    scene = tmp_path / "room_7"
    scene.mkdir()
    (scene / "transforms.json").write_text("{}")
    trained = []

    def train(scene_dir, run_dir, config=None):
        trained.append((Path(scene_dir), Path(run_dir), config))
        Path(run_dir).mkdir(parents=True)
        (Path(run_dir) / "checkpoint.pt").write_bytes(b"")
        return {}

    monkeypatch.setattr(nerf_training, "train_nerf", train, raising=False)
    monkeypatch.setattr(nerf_training, "load_run", lambda p: fake_run(str(scene)), raising=False)
    grid = extract_grid(scene, 6, trainer_config="cfg")
    assert trained == [(scene, tmp_path / "room_7_nerf", "cfg")]
    assert grid.meta["source"] == str(scene)
    extract_grid(scene, 6)  # the checkpoint is there now: reused, not retrained
    assert len(trained) == 1

    # Without a trainer config, a time budget (not the trainer's 20000 steps: an hour on
    # a laptop CPU) bounds the training a sampling call starts.
    from pipeline.extract import SCENE_NERF_BUDGET_S

    other = tmp_path / "room_8"
    shutil.copytree(scene, other, ignore=shutil.ignore_patterns("*_nerf"))
    extract_grid(other, 6)
    (_, run_dir, config) = trained[-1]
    assert run_dir == tmp_path / "room_8_nerf"
    assert config.time_budget_s == SCENE_NERF_BUDGET_S == 300.0


# ------------------------------------------------------------ bad input
def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        extract_grid(tmp_path / "no_such_run")


def test_run_without_checkpoint_is_a_clear_error(tmp_path):
    run = tmp_path / "half_run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"half_run.*checkpoint\.pt"):
        extract_grid(run)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="transforms.json"):
        extract_grid(empty)


def test_bad_sources_and_options_are_refused():
    with pytest.raises(ValueError, match="RadianceField"):
        extract_grid(object())
    with pytest.raises(ValueError, match="unknown option"):
        extract_grid(SphereField(), 8, colour="mean")
    with pytest.raises(ValueError, match="directions"):
        ExtractConfig(directions="up")
    with pytest.raises(ValueError, match="bbox_min and bbox_max"):
        ExtractConfig(bbox_min=(0, 0, 0))
    with pytest.raises(ValueError, match="max > min"):
        ExtractConfig(bbox_min=(0, 0, 0), bbox_max=(1, 0, 1))
    with pytest.raises(ValueError, match="empty_below"):
        ExtractConfig(empty_below=1.0)
    with pytest.raises(ValueError, match=r"camera origins"):
        extract_grid(SphereField(), 5, camera_origins=np.zeros((0, 3)))


# ------------------------------------------------------------ CLI
def test_cli_extract_to_npz_and_store(tmp_path, monkeypatch, capsys):
    import nerf_training
    from grid_store import GridStore
    from nerfmae.cli import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"")
    monkeypatch.setattr(nerf_training, "load_run", lambda p: fake_run(), raising=False)
    out = tmp_path / "grid.npz"
    assert (
        main(
            ["extract", str(run_dir), "--out", str(out), "--resolution", "10", "--max-cameras", "0"]
        )
        == 0
    )
    grid = RadianceGrid.load_npz(out)
    assert max(grid.shape) == 10 and grid.meta["nerf"]["psnr_holdout"] == 31.5
    assert grid.meta["extract_config"]["max_cameras"] is None
    store = str(tmp_path / "s.zarr")
    assert (
        main(
            [
                "extract",
                str(run_dir),
                "--store",
                store,
                "--scene-id",
                "r1",
                "--resolution",
                "8",
                "--directions",
                "fixed",
            ]
        )
        == 0
    )
    stored = GridStore(store, mode="r").read_grid("r1")
    assert stored.shape == (8, 8, 5) and stored.meta["colour_directions"]["name"] == "rpn18"
    printed = capsys.readouterr().out
    assert "grid 8x8x5, voxel " in printed and "NeRF held-out PSNR 31.50 dB" in printed
    assert re.search(r"occupied \(alpha > 0\.5\) \d+\.\d\d% of voxels", printed)
    # Bad input exits cleanly (2) and writes nothing.
    assert main(["extract", str(run_dir), "--store", store, "--resolution", "8"]) == 2
    assert main(["extract", str(run_dir), "--store", store, "--scene-id", "../x"]) == 2
    assert main(["extract", str(tmp_path / "missing"), "--out", str(tmp_path / "m.npz")]) == 2
    assert not (tmp_path / "m.npz").exists()
    assert GridStore(store, mode="r").list_scenes() == ["r1"]


def test_geometry_fast_path_equals_generic_path():
    # NGPField encodes each point once and runs only its colour head per direction;
    # the result must equal calling density()/color() per direction.
    from nerf_training.field import FieldConfig, NGPField
    from pipeline.field import GeometryRadianceField, RadianceField

    torch.manual_seed(0)
    field = NGPField(FieldConfig(), torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    generic = SimpleNamespace(aabb=field.aabb, density=field.density, color=field.color)
    assert isinstance(field, GeometryRadianceField)
    assert isinstance(generic, RadianceField) and not isinstance(generic, GeometryRadianceField)
    dirs = FixedDirections(fibonacci_directions(5))
    kw = dict(
        bbox_min=np.array([-0.9, -0.8, -0.7]),
        voxel_size=0.15,
        shape=(9, 8, 7),
        delta=0.15,
        dirs=dirs,
        chunk_points=100,
        progress=False,
    )
    np.testing.assert_allclose(sample_field(field, **kw), sample_field(generic, **kw), atol=1e-6)
