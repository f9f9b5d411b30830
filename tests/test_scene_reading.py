"""Scene reading: both json formats, cameras and rays, downscaling, splits, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerf_training.cameras import Cameras
from nerf_training.scene import SceneLoadError, load_scene

W, H = 8, 6


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def rgb_image(seed: int, w: int = W, h: int = H) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def pose(translation=(0.0, 0.0, 0.0), yaw: float = 0.0) -> list[list[float]]:
    """Camera-to-world: rotation about z by ``yaw``, then ``translation``."""
    c, s = math.cos(yaw), math.sin(yaw)
    m = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64)
    m[:3, 3] = translation
    return m.tolist()


def write_nerfstudio(root: Path, n: int = 3, size=(W, H), poses=None, **meta) -> Path:
    """A transforms.json scene of ``n`` RGB frames (the synthetic generator's format);
    ``meta`` overrides/extends the global fields."""
    if poses is None:
        poses = [pose((0.1 * i, 0.0, 2.0), yaw=0.3 * i) for i in range(n)]
    frames = []
    for i in range(n):
        write_png(root / "images" / f"frame_{i:04d}.png", rgb_image(i, *size))
        frames.append(
            {
                "file_path": f"images/frame_{i:04d}.png",
                "transform_matrix": np.asarray(poses[i]).tolist(),
            }
        )
    data = {
        "camera_model": "OPENCV",
        "fl_x": 10.0,
        "fl_y": 12.0,
        "cx": 4.0,
        "cy": 3.0,
        "w": size[0],
        "h": size[1],
        "aabb": [[-1, -1, -1], [1, 1, 1]],
        "frames": frames,
    }
    data.update(meta)
    (root / "transforms.json").write_text(json.dumps(data))
    return root


def write_blender(root: Path, splits: dict[str, int], angle: float = 0.7) -> Path:
    """Blender-format scene: RGBA frames, ``file_path`` without extension."""
    seed = 0
    for split, n in splits.items():
        frames = []
        for i in range(n):
            rgba = np.concatenate([rgb_image(seed), np.full((H, W, 1), 128, np.uint8)], axis=-1)
            write_png(root / split / f"r_{i}.png", rgba)
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": pose((0, 0, 4))})
            seed += 1
        doc = {"camera_angle_x": angle, "frames": frames}
        (root / f"transforms_{split}.json").write_text(json.dumps(doc))
    return root


def edit_json(root: Path, edit, name: str = "transforms.json") -> None:
    path = root / name
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- formats


def test_nerfstudio_scene_reads_intrinsics_poses_and_images(tmp_path):
    root = write_nerfstudio(tmp_path / "s", n=3)
    scene = load_scene(root)
    assert scene.images.shape == (3, H, W, 3) and scene.images.dtype == torch.uint8
    assert torch.equal(scene.images[1], torch.from_numpy(rgb_image(1)))
    assert not scene.has_alpha and scene.source_format == "transforms"
    cams = scene.cameras
    assert (cams.width, cams.height) == (W, H)
    assert cams.fx.tolist() == [10.0] * 3 and cams.fy.tolist() == [12.0] * 3
    assert cams.cx.tolist() == [4.0] * 3 and cams.cy.tolist() == [3.0] * 3
    assert torch.allclose(scene.camera_origins(), torch.tensor([[0.1 * i, 0, 2] for i in range(3)]))
    assert torch.equal(scene.aabb, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    assert scene.frame_names == [f"images/frame_{i:04d}.png" for i in range(3)]


def test_per_frame_intrinsics_override_global_ones(tmp_path):
    root = write_nerfstudio(tmp_path / "s", n=2)
    edit_json(root, lambda d: d["frames"][1].update(fl_x=20.0, cx=3.5))
    cams = load_scene(root).cameras
    assert cams.fx.tolist() == [10.0, 20.0] and cams.cx.tolist() == [4.0, 3.5]


def test_blender_scene_keeps_alpha_and_uses_camera_angle(tmp_path):
    root = write_blender(tmp_path / "b", {"train": 3})
    scene = load_scene(root)
    assert scene.images.shape == (3, H, W, 4) and scene.has_alpha
    assert (scene.images[..., 3] == 128).all()
    fx = 0.5 * W / math.tan(0.5 * 0.7)
    assert torch.allclose(scene.cameras.fx, torch.full((3,), fx))
    assert torch.allclose(scene.cameras.fy, torch.full((3,), fx))
    assert scene.cameras.cx.tolist() == [W / 2] * 3 and scene.cameras.cy.tolist() == [H / 2] * 3
    assert torch.equal(scene.aabb, torch.tensor([[-1.5] * 3, [1.5] * 3]))
    assert "Blender default" in scene.aabb_source
    assert scene.frame_names == ["train/r_0", "train/r_1", "train/r_2"]


def test_blender_holds_out_test_split_in_preference_to_val(tmp_path):
    root = write_blender(tmp_path / "b", {"train": 4, "val": 2, "test": 3})
    scene = load_scene(root)
    assert scene.train_idx.tolist() == [0, 1, 2, 3]
    assert scene.holdout_idx.tolist() == [4, 5, 6]
    assert [scene.frame_names[i] for i in scene.holdout_idx] == [f"test/r_{i}" for i in range(3)]


def test_background_composites_rgba_to_rgb(tmp_path):
    root = write_blender(tmp_path / "b", {"train": 1})
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[:, :3] = [200, 100, 0, 255]  # opaque orange
    rgba[:, 3:6] = [200, 100, 0, 0]  # fully transparent
    rgba[:, 6:] = [0, 0, 0, 51]  # black at alpha 0.2
    write_png(root / "train" / "r_0.png", rgba)
    scene = load_scene(root, background=(1.0, 1.0, 1.0))
    assert scene.images.shape == (1, H, W, 3) and not scene.has_alpha
    row = scene.images[0, 0]
    assert row[0].tolist() == [200, 100, 0]
    assert row[3].tolist() == [255, 255, 255]
    assert row[6].tolist() == [204, 204, 204]  # 0.8 * 255 of white shows through


# ---------------------------------------------------------------- rays


def identity_cameras(fx=10.0, fy=12.0, cx=4.0, cy=3.0, distortion=(0.0, 0.0, 0.0, 0.0)):
    return Cameras(
        c2w=torch.eye(4).unsqueeze(0),
        fx=torch.tensor([fx]),
        fy=torch.tensor([fy]),
        cx=torch.tensor([cx]),
        cy=torch.tensor([cy]),
        width=W,
        height=H,
        distortion=torch.tensor([distortion]),
    )


def test_identity_camera_rays_match_hand_derived_directions():
    cams = identity_cameras()
    px = torch.tensor([4.0, 0.5, 7.5])
    py = torch.tensor([3.0, 0.5, 5.5])
    origins, dirs = cams.generate_rays(torch.zeros(3, dtype=torch.long), px, py)
    assert torch.equal(origins, torch.zeros(3, 3))
    assert torch.allclose(dirs[0], torch.tensor([0.0, 0.0, -1.0]))
    # OpenGL flips y: the top-left pixel looks left (-x) and up (+y).
    top_left = torch.tensor([(0.5 - 4) / 10, -(0.5 - 3) / 12, -1.0])
    bottom_right = torch.tensor([(7.5 - 4) / 10, -(5.5 - 3) / 12, -1.0])
    assert torch.allclose(dirs[1], top_left / top_left.norm(), atol=1e-6)
    assert torch.allclose(dirs[2], bottom_right / bottom_right.norm(), atol=1e-6)


def test_posed_camera_rays_rotate_and_translate(tmp_path):
    root = write_nerfstudio(tmp_path / "s", n=2)  # frame 1: yaw 0.3 about z, at (0.1, 0, 2)
    cams = load_scene(root).cameras
    origins, dirs = cams.generate_rays(torch.tensor([1]), torch.tensor([0.5]), torch.tensor([0.5]))
    local = torch.tensor([(0.5 - 4) / 10, -(0.5 - 3) / 12, -1.0])
    c, s = math.cos(0.3), math.sin(0.3)
    rot = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    assert torch.allclose(origins[0], torch.tensor([0.1, 0.0, 2.0]))
    assert torch.allclose(dirs[0], rot @ local / local.norm(), atol=1e-6)


def test_image_rays_cover_every_pixel_centre_row_major():
    cams = identity_cameras()
    _, dirs = cams.image_rays(0)
    assert dirs.shape == (H * W, 3)
    # (row 0, col 1) is pixel centre (1.5, 0.5)
    expected = torch.tensor([(1.5 - 4) / 10, -(0.5 - 3) / 12, -1.0])
    assert torch.allclose(dirs[1], expected / expected.norm(), atol=1e-6)


def opencv_project(d: torch.Tensor, fx, fy, cx, cy, k1, k2, p1, p2):
    """Independent forward OpenCV model: OpenGL camera-frame direction -> pixel."""
    x, y = d[:, 0] / -d[:, 2], -d[:, 1] / -d[:, 2]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return fx * xd + cx, fy * yd + cy


def test_distorted_rays_project_back_onto_their_pixels():
    coeffs = (-0.2, 0.05, 0.01, -0.02)
    cams = identity_cameras(fx=6.0, fy=6.5, cx=4.2, cy=2.9, distortion=coeffs)
    ys, xs = torch.meshgrid(torch.linspace(0, H, 7), torch.linspace(0, W, 9), indexing="ij")
    px, py = xs.reshape(-1), ys.reshape(-1)  # includes the image corners
    idx = torch.zeros_like(px, dtype=torch.long)
    _, dirs = cams.generate_rays(idx, px, py)
    u, v = opencv_project(dirs, 6.0, 6.5, 4.2, 2.9, *coeffs)
    assert torch.allclose(u, px, atol=1e-4) and torch.allclose(v, py, atol=1e-4)
    # The lens matters: pinhole rays through the corners differ.
    _, pinhole = identity_cameras(fx=6.0, fy=6.5, cx=4.2, cy=2.9).generate_rays(idx, px, py)
    assert (dirs - pinhole).norm(dim=-1).max() > 0.05


def test_distortion_coefficients_are_read(tmp_path):
    root = write_nerfstudio(tmp_path / "s", n=2, k1=-0.1, k2=0.02, p1=0.001, p2=-0.002)
    dist = load_scene(root).cameras.distortion
    assert torch.allclose(dist, torch.tensor([[-0.1, 0.02, 0.001, -0.002]] * 2))


# ---------------------------------------------------------------- downscaling


def test_downscale_averages_blocks_and_scales_intrinsics(tmp_path):
    root = write_nerfstudio(tmp_path / "s", n=1)
    scene = load_scene(root, downscale=2)
    full = rgb_image(0).astype(np.float64)
    expected = np.rint(full.reshape(3, 2, 4, 2, 3).mean(axis=(1, 3)))
    assert scene.images.shape == (1, 3, 4, 3)
    assert np.array_equal(scene.images[0].numpy(), expected.astype(np.uint8))
    cams = scene.cameras
    assert (cams.width, cams.height) == (4, 3)
    assert [cams.fx[0], cams.fy[0], cams.cx[0], cams.cy[0]] == [5.0, 6.0, 2.0, 1.5]


def test_downscale_drops_partial_blocks_keeping_pixel_geometry(tmp_path):
    root = write_nerfstudio(tmp_path / "s", n=1)
    scene = load_scene(root, downscale=4)  # 8x6 -> 2x1: rows 4, 5 are dropped
    expected = np.rint(rgb_image(0)[:4, :4].astype(np.float64).mean(axis=(0, 1)))
    assert scene.images.shape == (1, 1, 2, 3)
    assert scene.images[0, 0, 0].tolist() == expected.astype(np.uint8).tolist()
    # u -> u / 4 stays exact, so the principal point keeps its place in the optics.
    assert [scene.cameras.cx[0], scene.cameras.cy[0]] == [1.0, 0.75]


def test_downscale_weights_rgba_colour_by_alpha(tmp_path):
    root = write_blender(tmp_path / "b", {"train": 1})
    rgba = np.zeros((H, W, 4), np.uint8)  # transparent black ...
    rgba[0, 0] = [255, 0, 0, 255]  # ... but one opaque red pixel in the first 2x2 block
    write_png(root / "train" / "r_0.png", rgba)
    scene = load_scene(root, downscale=2)
    assert scene.images[0, 0, 0].tolist() == [255, 0, 0, 64]  # red, alpha 255 / 4


# ---------------------------------------------------------------- splits and boxes


def test_every_eighth_view_is_held_out_without_split_info(tmp_path):
    root = write_nerfstudio(tmp_path / "s", n=17)
    scene = load_scene(root)
    assert scene.holdout_idx.tolist() == [0, 8, 16]
    assert scene.train_idx.tolist() == [i for i in range(17) if i not in (0, 8, 16)]
    assert scene.train_idx.dtype == torch.int64


def test_nerfstudio_split_lists_are_honoured(tmp_path):
    root = write_nerfstudio(tmp_path / "s", n=4)
    edit_json(root, lambda d: d.update(test_filenames=["./images/frame_0002.png"]))
    scene = load_scene(root)
    assert scene.holdout_idx.tolist() == [2] and scene.train_idx.tolist() == [0, 1, 3]


def test_instant_ngp_box_maps_aabb_scale_back_to_world_units(tmp_path):
    root = write_nerfstudio(tmp_path / "s", n=1)
    # ngp cube 0.5 +- 2/2 = [-0.5, 1.5]; world = (ngp - 0.5) / 0.5 = [-2, 2].
    edit_json(root, lambda d: (d.pop("aabb"), d.update(aabb_scale=2, scale=0.5)))
    assert torch.allclose(load_scene(root).aabb, torch.tensor([[-2.0] * 3, [2.0] * 3]))
    edit_json(root, lambda d: d.update(scale=1.0, offset=[0.5, 0.0, 1.5]))
    expected = torch.tensor([[-1.0, -0.5, -2.0], [1.0, 1.5, 0.0]])
    assert torch.allclose(load_scene(root).aabb, expected)


# ---------------------------------------------------------------- bad input


def _set_matrix(value):
    return lambda d: d["frames"][1].update(transform_matrix=value)


BAD_JSON_EDITS = {
    "matrix_3x4": (_set_matrix(pose()[:3]), "transform_matrix", "4x4"),
    "matrix_scaled": (
        _set_matrix((np.diag([2.0, 2.0, 2.0, 1.0])).tolist()),
        "transform_matrix",
        "rigid",
    ),
    "matrix_reflection": (
        _set_matrix(np.diag([1.0, 1.0, -1.0, 1.0]).tolist()),
        "transform_matrix",
        "determinant",
    ),
    "matrix_last_row": (
        _set_matrix([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0.5, 0, 0, 1]]),
        "transform_matrix",
        "last row",
    ),
    "pose_nan": (
        _set_matrix([[float("nan"), 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
        "transform_matrix",
        "NaN",
    ),
    "focal_inf": (lambda d: d["frames"][1].update(fl_x=float("inf")), "fl_x", "Inf"),
    "cx_nan": (lambda d: d.update(cx=float("nan")), "cx", "NaN"),
    "no_focal": (lambda d: (d.pop("fl_x"), d.pop("fl_y")), "fl_x", "focal"),
    "fisheye": (lambda d: d.update(camera_model="OPENCV_FISHEYE"), "camera_model", "FISHEYE"),
    "equirect": (lambda d: d.update(camera_model="EQUIRECTANGULAR"), "camera_model", "EQUI"),
    "empty_frames": (lambda d: d.update(frames=[]), "frames", "empty"),
    "declared_width": (lambda d: d.update(w=9), "'w'", "8x6"),
    "missing_image": (
        lambda d: d["frames"][1].update(file_path="images/nope.png"),
        "file_path",
        "not found",
    ),
    "bad_aabb": (lambda d: d.update(aabb=[[1, 1, 1], [0, 0, 0]]), "aabb", "min < max"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON_EDITS))
def test_bad_json_field_names_file_and_field(tmp_path, case):
    edit, field, detail = BAD_JSON_EDITS[case]
    root = write_nerfstudio(tmp_path / "s", n=3)
    edit_json(root, edit)
    with pytest.raises(SceneLoadError) as err:
        load_scene(root)
    message = str(err.value)
    assert "transforms.json" in message and field in message and detail in message
    if case.startswith(("matrix", "pose", "focal")):
        assert "frames[1]" in message


def test_missing_folder_and_missing_json(tmp_path):
    with pytest.raises(SceneLoadError, match="does not exist"):
        load_scene(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneLoadError, match="no transforms.json"):
        load_scene(tmp_path / "empty")


def test_malformed_json_names_file_and_line(tmp_path):
    root = write_nerfstudio(tmp_path / "s", n=1)
    (root / "transforms.json").write_text('{\n  "frames": [,]\n}')
    with pytest.raises(SceneLoadError, match=r"transforms.json: malformed JSON at line 2"):
        load_scene(root)


def test_unreadable_image_names_the_image_and_frame(tmp_path):
    root = write_nerfstudio(tmp_path / "s", n=3)
    (root / "images" / "frame_0001.png").write_bytes(b"not a png at all")
    with pytest.raises(SceneLoadError) as err:
        load_scene(root)
    assert "frame_0001.png: cannot read image" in str(err.value)
    assert "frames[1]" in str(err.value)


def test_truncated_image_fails_at_decode_naming_the_image(tmp_path):
    root = write_nerfstudio(tmp_path / "s", n=2)
    path = root / "images" / "frame_0001.png"
    path.write_bytes(path.read_bytes()[:100])  # header intact, pixel data cut short
    with pytest.raises(SceneLoadError, match=r"frame_0001.png: cannot decode image"):
        load_scene(root)


def test_mismatched_image_sizes_name_both_images(tmp_path):
    root = write_nerfstudio(tmp_path / "s", n=3)
    edit_json(root, lambda d: (d.pop("w"), d.pop("h")))
    write_png(root / "images" / "frame_0002.png", rgb_image(2, w=10, h=6))
    with pytest.raises(SceneLoadError) as err:
        load_scene(root)
    message = str(err.value)
    assert "frame_0002.png: image is 10x6" in message and "frame_0000.png is 8x6" in message


def test_blender_bad_test_split_names_its_own_file(tmp_path):
    root = write_blender(tmp_path / "b", {"train": 2, "test": 2})
    edit_json(root, lambda d: d.update(frames=[]), name="transforms_test.json")
    with pytest.raises(SceneLoadError, match=r"transforms_test.json: field 'frames' is empty"):
        load_scene(root)


def test_bad_load_arguments(tmp_path):
    root = write_nerfstudio(tmp_path / "s", n=1)
    with pytest.raises(SceneLoadError, match="downscale"):
        load_scene(root, downscale=0)
    with pytest.raises(SceneLoadError, match="downscale 7 is larger"):
        load_scene(root, downscale=7)
    with pytest.raises(SceneLoadError, match="background"):
        load_scene(root, background=(2.0, 0.0, 0.0))


def test_scene_load_error_is_a_value_error():
    assert issubclass(SceneLoadError, ValueError)


# ---------------------------------------------------------------- real data


@pytest.mark.real_data
def test_lego_200_loads_with_every_eighth_view_held_out(lego_dir):
    scene = load_scene(lego_dir)
    assert scene.images.shape == (100, 200, 200, 4) and scene.has_alpha
    assert len(scene.holdout_idx) == 13 and len(scene.train_idx) == 87
    assert scene.holdout_idx[:3].tolist() == [0, 8, 16]
    angle = json.loads((lego_dir / "transforms_train.json").read_text())["camera_angle_x"]
    assert torch.allclose(scene.cameras.fx, torch.tensor(0.5 * 200 / math.tan(0.5 * angle)))
    # Every Blender lego camera looks at the origin: the centre ray passes through it.
    idx = torch.arange(100)
    origins, dirs = scene.cameras.generate_rays(
        idx, torch.full((100,), 100.0), torch.full((100,), 100.0)
    )
    closest = origins - (origins * dirs).sum(-1, keepdim=True) * dirs  # (100, 3)
    assert closest.norm(dim=-1).max() < 1e-3


# ---------------------------------------------------------------- synthetic generator


def test_rays_agree_with_the_synthetic_generators_cameras(tmp_path):
    """Scenes the generator writes (OPENCV, fl_x.., aabb, images/frame_*.png) load with the
    same rays the generator rendered them with: two implementations that must agree."""
    synth = pytest.importorskip("pipeline.synthetic.cameras")
    intrinsics = synth.Intrinsics.from_fov(W, 70.0)
    poses = np.stack(
        [synth.look_to(np.array([0.5 * i, -1.0, 1.5]), yaw=0.4 * i, pitch=-0.2) for i in range(3)]
    )  # (3, 4, 4)
    root = write_nerfstudio(
        tmp_path / "synth",
        n=3,
        size=(W, W),
        poses=poses,
        fl_x=intrinsics.fl_x,
        fl_y=intrinsics.fl_y,
        cx=intrinsics.cx,
        cy=intrinsics.cy,
    )
    cams = load_scene(root).cameras
    want_origins, want_dirs = synth.pixel_rays(torch.from_numpy(poses), intrinsics)  # (3, H, W, 3)
    for i in range(3):
        origins, dirs = cams.image_rays(i)
        assert torch.allclose(origins, want_origins[i].reshape(-1, 3), atol=1e-6)
        assert torch.allclose(dirs, want_dirs[i].reshape(-1, 3), atol=1e-5)


def test_a_generated_synthetic_scene_loads(tmp_path):
    synthetic = pytest.importorskip("pipeline.synthetic")
    root = synthetic.generate_scene(
        tmp_path / "room", seed=0, n_views=9, image_size=8, grid_resolution=8
    )
    scene = load_scene(root)
    meta = json.loads((root / "transforms.json").read_text())
    assert scene.images.shape == (9, 8, 8, 3) and not scene.has_alpha
    assert torch.allclose(scene.aabb, torch.tensor(meta["aabb"], dtype=torch.float32))
    assert scene.holdout_idx.tolist() == [0, 8]
    assert torch.allclose(scene.cameras.fx, torch.tensor(meta["fl_x"], dtype=torch.float32))
    frame = np.asarray(Image.open(root / "images" / "frame_0003.png"))
    assert np.array_equal(scene.images[3].numpy(), frame)
