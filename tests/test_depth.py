"""Depth maps: reading (nerfstudio's convention) and its bad inputs, the depth losses on
hand-derived values, the synthetic generator's depth against the room's geometry, and an
RGB-D room whose grid looks like the room after a short training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerf_training.depth import downscale_depth, ray_distance, read_depth_map
from nerf_training.depth_loss import depth_losses
from nerf_training.rendering import RaySamples
from nerf_training.scene import SceneLoadError, load_scene
from pipeline.synthetic import DepthConfig, generate_scene

# The small RGB-D room's training: 150 steps took 17 s here and gave IoU 0.65 and haze 17 %
# (the same room from its colours alone: IoU 0.00, haze 96 %).
STEPS = 150
IOU_FLOOR = 0.5
HAZE_CEILING = 0.3


@pytest.fixture(scope="module")
def rgbd_scene(tmp_path_factory) -> Path:
    """A tiny synthetic room with exact depth maps (16-bit millimetre PNGs)."""
    root = tmp_path_factory.mktemp("rgbd")
    return generate_scene(root / "room", seed=3, n_views=6, image_size=16, grid_resolution=24)


def copy_scene(scene: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(scene, to)
    return to


def edit_transforms(scene: Path, edit) -> None:
    path = scene / "transforms.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


# ---------------------------------------------------------------- reading
def test_png_millimetres_and_npy_metres_read_as_scene_units(tmp_path):
    mm = np.array([[0, 1000, 2500], [65535, 7, 1]], dtype=np.uint16)
    Image.fromarray(mm).save(tmp_path / "d.png")
    depth = read_depth_map(tmp_path / "d.png", 1e-3, (3, 2), "frame 0")
    np.testing.assert_allclose(depth, mm * 1e-3, rtol=1e-6)
    assert depth.dtype == np.float32
    np.testing.assert_allclose(read_depth_map(tmp_path / "d.png", 0.5, (3, 2), "f"), mm * 0.5)
    np.save(tmp_path / "d.npy", np.array([[0.0, 1.5, 2.0], [3.0, 0.25, 0.0]], np.float32))
    assert read_depth_map(tmp_path / "d.npy", 1e-3, (3, 2), "f")[1, 1] == 0.25  # no scaling


def test_synthetic_scene_reads_with_depth_and_downscales(rgbd_scene):
    scene = load_scene(rgbd_scene)
    # Every pixel measured: cameras keep 0.3 m from every surface, so z-depth is at least
    # 0.3 m times the cosine of a corner ray's angle to the axis (0.64 at an 80-degree fov).
    assert scene.depths.shape == (6, 16, 16) and float(scene.depths.min()) > 0.3 * 0.64
    half = load_scene(rgbd_scene, downscale=2)
    expected = scene.depths.numpy()[0].reshape(8, 2, 8, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(half.depths[0].numpy(), expected, rtol=1e-5)


def test_downscale_averages_only_measured_pixels():
    depth = np.array([[1.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(downscale_depth(depth, 2), [[2.0, 0.0]])


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda m: m["frames"][2].update(depth_file_path="depth/nope.png"), "depth file not found"),
        (lambda m: m["frames"][1].pop("depth_file_path"), "frames[1]"),
        (lambda m: m.update(depth_unit_scale_factor=-1), "'depth_unit_scale_factor' must be"),
        (lambda m: m["frames"][0].update(depth_file_path=7), "'depth_file_path' is not"),
    ],
)
def test_bad_depth_fields_name_the_file_and_field(rgbd_scene, tmp_path, edit, fragment):
    scene = copy_scene(rgbd_scene, tmp_path / "s")
    edit_transforms(scene, edit)
    with pytest.raises(SceneLoadError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_scene(scene)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (np.full((16, 16), np.nan, np.float32), "NaN"),
        (np.full((16, 16), -1.0, np.float32), "negative"),
        (np.ones((8, 16), np.float32), r"shape \(8, 16\)"),
        (np.ones((16, 16), np.int32), "floats"),
    ],
)
def test_bad_depth_values_name_the_file(rgbd_scene, tmp_path, values, fragment):
    scene = copy_scene(rgbd_scene, tmp_path / "s")
    np.save(scene / "depth" / "bad.npy", values)
    edit_transforms(scene, lambda m: m["frames"][4].update(depth_file_path="depth/bad.npy"))
    with pytest.raises(SceneLoadError, match=fragment) as raised:
        load_scene(scene)
    assert "bad.npy" in str(raised.value)


def test_z_depth_becomes_distance_along_each_ray():
    c2w = torch.eye(4)[None].expand(2, 4, 4)  # looking down -z
    angle = math.radians(60)
    dirs = torch.tensor([[0.0, 0.0, -1.0], [math.sin(angle), 0.0, -math.cos(angle)]])
    t = ray_distance(torch.tensor([2.0, 2.0]), dirs, c2w)
    torch.testing.assert_close(t, torch.tensor([2.0, 4.0]))  # 2 / cos(60 deg)


# ---------------------------------------------------------------- losses
def test_depth_losses_on_a_hand_made_batch():
    # Ray 0: bins [0,1], [1,2], [2,3], weights 0.2, 0.5, 0.3, measured at 2.5, margin 0.25:
    # expected depth 0.2*0.5 + 0.5*1.5 + 0.3*2.5 = 1.6, error 0.9; midpoints 0.5 and 1.5 lie
    # in front of 2.25: free-space weight 0.7. Ray 1 has no measurement and counts nowhere.
    samples = RaySamples(
        t_starts=torch.tensor([0.0, 1.0, 2.0, 0.0]),
        t_ends=torch.tensor([1.0, 2.0, 3.0, 1.0]),
        ray_indices=torch.tensor([0, 0, 0, 1]),
    )
    weights = torch.tensor([0.2, 0.5, 0.3, 0.9], requires_grad=True)
    rendered = torch.tensor([1.6, 0.45])
    terms = depth_losses(weights, samples, rendered, torch.tensor([2.5, 0.0]), 0.25, scale=2.0)
    torch.testing.assert_close(terms.expected_depth, torch.tensor(0.45))  # 0.9 / scale 2
    torch.testing.assert_close(terms.free_space, torch.tensor(0.7))
    terms.free_space.backward()
    torch.testing.assert_close(weights.grad, torch.tensor([1.0, 1.0, 0.0, 0.0]))


# ---------------------------------------------------------------- synthetic depth
def test_synthetic_depth_is_the_distance_to_the_first_surface(tmp_path):
    """Each pixel-centre ray's written z-depth against an independent slab test of the
    room's boxes: the surface the ray hits first."""
    from pipeline.synthetic import make_room
    from pipeline.synthetic.cameras import Intrinsics, pixel_rays
    from pipeline.synthetic.render import RenderConfig

    scene = generate_scene(
        tmp_path / "room", seed=5, n_views=3, image_size=12, grid_resolution=16,
        render_config=RenderConfig(supersampling=1),
    )  # fmt: skip
    meta = json.loads((scene / "transforms.json").read_text())
    assert meta["depth_unit_scale_factor"] == 1e-3
    field = make_room(5).field
    c2w = torch.tensor([f["transform_matrix"] for f in meta["frames"]], dtype=torch.float32)
    intrinsics = Intrinsics(meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"], 12, 12)
    origins, dirs = pixel_rays(c2w, intrinsics)  # (V, H, W, 3)
    t_in, t_out, _, _ = field.box_intervals(origins.reshape(-1, 3), dirs.reshape(-1, 3))
    hit = torch.where(t_out > t_in.clamp(min=0), t_in.clamp(min=0), torch.inf).amin(1)
    forward = -c2w[:, None, None, :3, 2]
    z_surface = hit.reshape(origins.shape[:-1]) * (dirs * forward).sum(-1)  # (V, H, W)
    written = np.stack(
        [np.asarray(Image.open(scene / f["depth_file_path"]), np.float64) * 1e-3 for f in
         meta["frames"]]
    )  # fmt: skip
    # The density ramps up over ramp_width in front of each box (along its normal, so
    # longer along an oblique ray): the expected depth sits a little in front of the
    # surface, never behind it (beyond the millimetre rounding).
    in_front = z_surface.numpy() - written
    w = field.ramp_width
    assert in_front.min() > -1.5e-3, in_front.min()
    assert np.median(in_front) < w and np.percentile(in_front, 95) < 3 * w


def test_sensor_like_depth_has_noise_and_holes(tmp_path):
    exact = generate_scene(tmp_path / "a", seed=1, n_views=2, image_size=16, grid_resolution=16)
    noisy = generate_scene(
        tmp_path / "b", seed=1, n_views=2, image_size=16, grid_resolution=16,
        depth_config=DepthConfig(noise=0.02, holes=0.25),
    )  # fmt: skip
    a = np.asarray(Image.open(exact / "depth" / "frame_0000.png"), np.float64)
    b = np.asarray(Image.open(noisy / "depth" / "frame_0000.png"), np.float64)
    holes = b == 0
    assert 0.1 < holes.mean() < 0.45 and not (a == 0).any()
    relative = np.abs(b[~holes] / a[~holes] - 1)
    assert 0.005 < relative.mean() < 0.04
    rgb_only = generate_scene(
        tmp_path / "c", seed=1, n_views=2, image_size=16, grid_resolution=16,
        depth_config=DepthConfig(write=False),
    )  # fmt: skip
    assert not (rgb_only / "depth").exists() and load_scene(rgb_only).depths is None


# ---------------------------------------------------------------- training
def test_depth_supervision_is_on_with_depth_maps_and_can_be_turned_off(rgbd_scene):
    from nerf_training import NerfTrainer, TrainerConfig

    scene = load_scene(rgbd_scene)
    config = TrainerConfig(device="cpu", progress=False, seed=0)
    *_, ray_depth = NerfTrainer(scene, config)._sample_batch(64)
    assert ray_depth.shape == (64,) and bool((ray_depth > 0).all())
    off = NerfTrainer(scene, TrainerConfig(device="cpu", progress=False, use_depth=False))
    assert off.depths is None and off._sample_batch(64)[-1] is None


@pytest.mark.slow
def test_an_rgbd_room_grid_looks_like_the_room_after_seconds(tmp_path):
    """A real, small version of benchmarks/bench_grid_fidelity.py: a 32x32 RGB-D capture,
    a short training, the extracted grid against the room's exact ground truth."""
    from grid_store import RadianceGrid
    from nerf_training import TrainerConfig, train_nerf
    from pipeline.extract import extract_grid
    from pipeline.fidelity import grid_fidelity

    scene = generate_scene(tmp_path / "room", seed=0, n_views=24, image_size=32,
                           grid_resolution=64)  # fmt: skip
    config = TrainerConfig(max_steps=STEPS, device="cpu", progress=False, check_every=0,
                           target_samples=1 << 14, seed=0)  # fmt: skip
    metrics = train_nerf(scene, tmp_path / "run", config)
    assert metrics["depth_abs_rel_holdout"] < 0.15 and metrics["depth_rmse_holdout"] > 0
    truth = RadianceGrid.load_npz(scene / "ground_truth" / "grid.npz")
    scores = grid_fidelity(extract_grid(tmp_path / "run", 48), truth)
    assert scores["iou"] > IOU_FLOOR and scores["haze"] < HAZE_CEILING, scores
