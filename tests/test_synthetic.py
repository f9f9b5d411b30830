"""Synthetic scenes: determinism, images vs the field, ground truth vs geometry, the CLI."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grid_store.grid import RadianceGrid, grid_points
from nerfmae.cli import main as nerfmae_main
from pipeline.field import RadianceField
from pipeline.synthetic import (
    CLASS_ID,
    FURNITURE_CLASSES,
    SEMANTIC_CLASSES,
    CameraLoop,
    CameraPathConfig,
    camera_path,
    generate_scene,
    make_room,
    sample_ground_truth,
)
from pipeline.synthetic.render import RenderConfig

SEED = 3
SMALL = dict(n_views=8, image_size=24, grid_resolution=48)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The generator is many small tensor ops: on a shared 2-core machine a second intra-op
    thread mostly spins waiting (measured 40x slower under load), so use one here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scene(tmp_path_factory, one_torch_thread) -> Path:
    return generate_scene(tmp_path_factory.mktemp("synth") / "scene", seed=SEED, **SMALL)


@pytest.fixture(scope="module")
def room():
    return make_room(SEED)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".npz"
    }


def _box_sdf(x: np.ndarray, centre: np.ndarray, half: np.ndarray, yaw: float) -> np.ndarray:
    """Textbook signed distance of points ``(N, 3)`` to one yawed box, in float64."""
    c, s = math.cos(yaw), math.sin(yaw)
    d = x - centre
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
    q = np.abs(local) - half
    return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)


def _union_sdf(room, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union sdf ``(N,)``, nearest part ``(N,)`` and whether it is clearly nearest (no near tie)."""
    parts = room.parts
    all_sdf = np.stack(
        [_box_sdf(x, parts.centre[p], parts.half[p], parts.yaw[p]) for p in range(len(parts))], 1
    )
    two = np.partition(all_sdf, 1, axis=1)[:, :2]
    return all_sdf.min(1), all_sdf.argmin(1), two[:, 1] - two[:, 0] > 1e-4


# ---------------------------------------------------------------- determinism
def test_same_seed_gives_byte_identical_scene(scene, tmp_path):
    again = generate_scene(tmp_path / "again", seed=SEED, **SMALL)
    assert _files(scene) == _files(again)
    a = RadianceGrid.load_npz(scene / "ground_truth" / "grid.npz")
    b = RadianceGrid.load_npz(again / "ground_truth" / "grid.npz")
    for name in ("rgba", "semantic", "boxes", "box_labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_different_seed_gives_a_different_scene(scene, tmp_path):
    other = generate_scene(tmp_path / "other", seed=SEED + 1, **SMALL)
    a, b = _files(scene), _files(other)
    assert a.keys() == b.keys()
    assert a["images/frame_0000.png"] != b["images/frame_0000.png"]
    assert a["transforms.json"] != b["transforms.json"]


# ------------------------------------------------------------ transforms.json
def test_transforms_json_is_well_formed(scene, room):
    meta = json.loads((scene / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV"
    assert (meta["w"], meta["h"]) == (24, 24) and (meta["cx"], meta["cy"]) == (12.0, 12.0)
    fov = 2 * math.degrees(math.atan(0.5 * meta["w"] / meta["fl_x"]))
    assert 60 <= fov <= 90 and meta["fl_x"] == meta["fl_y"]
    np.testing.assert_allclose(meta["aabb"], room.aabb)
    assert len(meta["frames"]) == 8
    for i, frame in enumerate(meta["frames"]):
        assert frame["file_path"] == f"images/frame_{i:04d}.png"
        image = np.asarray(Image.open(scene / frame["file_path"]))
        assert image.shape == (24, 24, 3) and image.dtype == np.uint8
        m = np.asarray(frame["transform_matrix"])
        assert m.shape == (4, 4)
        np.testing.assert_allclose(m[3], [0, 0, 0, 1])
        np.testing.assert_allclose(m[:3, :3].T @ m[:3, :3], np.eye(3), atol=1e-9)
        assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0)
        # inside the room, clear of everything, camera x axis level (no roll)
        assert np.all(m[:3, 3] > room.interior[0]) and np.all(m[:3, 3] < room.interior[1])
        assert room.clearance_at(m[None, :3, 3])[0] >= 0.3
        assert abs(m[2, 0]) < 1e-9
    grid = RadianceGrid.load_npz(scene / "ground_truth" / "grid.npz")
    np.testing.assert_allclose(grid.bbox_min, meta["aabb"][0])
    np.testing.assert_allclose(grid.bbox_max, meta["aabb"][1], atol=grid.voxel_size / 2)
    assert (scene / "contact_sheet.png").is_file()


def test_camera_path_walks_a_loop_at_each_of_two_heights():
    """Both loops are walked once, one after the other, so a held-out split by stride sees
    both heights; every camera stays clear of the furniture, including in cramped rooms
    (seeds with a bed or wardrobe across the low loop)."""
    for seed in (SEED, 2, 3, 11):
        room = make_room(seed)
        poses, _ = camera_path(room, 48, 32, seed)
        z = poses[:, 2, 3]
        assert z[:24].mean() - z[24:].mean() > 0.3  # the high loop first, then the low
        assert (room.clearance_at(poses[:, :3, 3]) >= 0.3).all()
        held_out = z[::8]
        assert held_out.max() - held_out.min() > 0.3
        # each loop goes once around the room's centre: its azimuths cover the circle
        xy = poses[24:, :2, 3] - room.interior.mean(0)[:2]
        azimuth = np.sort(np.arctan2(xy[:, 1], xy[:, 0]))
        assert np.diff(np.r_[azimuth, azimuth[0] + 2 * np.pi]).max() < np.pi / 2
    one_loop = CameraPathConfig(loops=(CameraLoop(height=1.5, pitch_range_deg=(-20.0, -10.0)),))
    z = camera_path(make_room(SEED), 12, 32, SEED, one_loop)[0][:, 2, 3]
    assert np.ptp(z) < 0.6
    with pytest.raises(ValueError, match="loops"):
        CameraPathConfig(loops=())


# --------------------------------------------------------- images vs the field
def _dense_render(
    field, origin: np.ndarray, direction: np.ndarray, far: float, n: int
) -> np.ndarray:
    """Straightforward quadrature: ``n`` uniform bins on ``[0, far]``, every part evaluated."""
    edges = np.linspace(0.0, far, n + 1)
    t = 0.5 * (edges[1:] + edges[:-1])
    x = torch.as_tensor(origin + t[:, None] * direction, dtype=torch.float32)
    sigma = field.density(x).double().numpy()
    colour = field.color(x, torch.as_tensor(direction).float().expand_as(x)).double().numpy()
    depth = sigma * np.diff(edges)
    weights = np.exp(-(np.cumsum(depth) - depth)) * -np.expm1(-depth)
    assert weights.sum() == pytest.approx(1.0, abs=1e-4)  # closed room: every ray ends opaque
    return weights @ colour


def test_images_match_a_dense_rendering_of_the_same_field(scene, room):
    meta = json.loads((scene / "transforms.json").read_text())
    far = float(np.linalg.norm(room.aabb[1] - room.aabb[0]))
    rng = np.random.default_rng(0)
    for frame in meta["frames"][:4]:
        image = np.asarray(Image.open(scene / frame["file_path"])).astype(np.float64) / 255
        c2w = np.asarray(frame["transform_matrix"])
        n = RenderConfig().supersampling
        for u, v in rng.integers(0, 24, size=(3, 2)):
            # A pixel is the mean of n x n rays at sub-pixel points (i + 0.5) / n. OpenGL
            # camera: looks down -z, y up, image rows go down.
            expected = 0.0
            for i, j in itertools.product(range(n), repeat=2):
                cam = np.array(
                    [
                        (u + (i + 0.5) / n - meta["cx"]) / meta["fl_x"],
                        -(v + (j + 0.5) / n - meta["cy"]) / meta["fl_y"],
                        -1.0,
                    ]
                )
                direction = c2w[:3, :3] @ cam
                direction /= np.linalg.norm(direction)
                ray = _dense_render(room.field, c2w[:3, 3], direction, far, n=1 << 12)
                expected = expected + ray / n**2
            # 0.5 / 255 is the 8-bit rounding; the renderer itself is within ~0.1 / 255
            np.testing.assert_allclose(
                image[v, u],
                expected,
                atol=0.75 / 255,
                err_msg=f"{frame['file_path']} pixel ({u}, {v})",
            )


# ------------------------------------------------------------- ground truth
def test_ground_truth_grid_holds_the_field_at_known_points(scene, room):
    grid = RadianceGrid.load_npz(scene / "ground_truth" / "grid.npz")
    assert grid.rgba.dtype == np.float16 and grid.delta == grid.voxel_size
    assert grid.meta["source"] == "synthetic" and grid.meta["seed"] == SEED
    assert grid.meta["semantic_classes"] == list(SEMANTIC_CLASSES)
    assert grid.meta["colour_directions"] == "view-independent"
    points = grid.points().reshape(-1, 3).astype(np.float64)
    sdf, nearest, clear = _union_sdf(room, points)
    alpha, label = grid.alpha.reshape(-1), grid.semantic.reshape(-1)
    w = room.field.ramp_width
    free, solid = sdf > w + 1e-5, sdf < -w - 1e-5
    assert free.sum() > 0.5 * len(sdf) and solid.sum() > 0
    assert np.all(alpha[free] == 0) and np.all(label[free] == 0)
    assert np.all(alpha[solid] > 0.999)
    np.testing.assert_array_equal(label[solid & clear], room.parts.label[nearest[solid & clear]])
    # in the ramp: alpha = 1 - exp(-sigma delta), sigma = sigma_max smoothstep((w - sdf) / 2w)
    ramp = ~free & ~solid
    u = np.clip((w - sdf[ramp]) / (2 * w), 0, 1)
    expected = -np.expm1(-room.field.sigma_max * u * u * (3 - 2 * u) * grid.delta)
    np.testing.assert_allclose(alpha[ramp], expected, atol=5e-3)
    # inside each object: that object's colour
    inside_object = solid & clear & (room.parts.instance[nearest] >= 0)
    assert inside_object.any()
    x = torch.as_tensor(points[inside_object], dtype=torch.float32)
    own = room.field.colour_of(x, torch.as_tensor(nearest[inside_object]))
    np.testing.assert_allclose(grid.rgb.reshape(3, -1)[:, inside_object].T, own.numpy(), atol=2e-3)


def test_tile_culled_grid_equals_brute_force_field_evaluation(room):
    grid = sample_ground_truth(room, resolution=40)
    x = torch.as_tensor(grid_points(grid.bbox_min, grid.voxel_size, grid.shape).reshape(-1, 3))
    alpha = -np.expm1(-room.field.density(x).double().numpy() * grid.delta)
    np.testing.assert_allclose(grid.alpha.reshape(-1), alpha, atol=1e-6)
    rgb = room.field.color(x, torch.zeros_like(x)).numpy()
    np.testing.assert_allclose(grid.rgb.reshape(3, -1).T, rgb, atol=1e-6)
    np.testing.assert_array_equal(grid.semantic.reshape(-1), room.semantic_at(x.numpy()))


def _inside_box(points: np.ndarray, box: np.ndarray, eps: float) -> np.ndarray:
    cx, cy, cz, w, l, h, yaw = box
    return _box_sdf(points, np.array([cx, cy, cz]), np.array([w, l, h]) / 2, yaw) <= eps


def test_boxes_and_semantic_labels_agree(scene, room):
    grid = RadianceGrid.load_npz(scene / "ground_truth" / "grid.npz")
    np.testing.assert_allclose(grid.boxes, room.boxes)
    points = grid.points().reshape(-1, 3).astype(np.float64)
    label = grid.semantic.reshape(-1)
    for name in FURNITURE_CLASSES:
        c = CLASS_ID[name]
        labelled = points[label == c]
        boxes = grid.boxes[grid.box_labels == c]
        if len(labelled):
            covered = np.any([_inside_box(labelled, b, 1e-4) for b in boxes], axis=0)
            assert covered.all(), f"{name}: voxels labelled {c} outside every {name} box"
    rng = np.random.default_rng(0)
    for box, c in zip(grid.boxes, grid.box_labels, strict=True):
        cx, cy, cz, w, l, h, yaw = box.astype(np.float64)
        local = rng.uniform(-0.5, 0.5, (4000, 3)) * [w, l, h]
        rot = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
        world = np.concatenate([local[:, :2] @ rot.T + [cx, cy], local[:, 2:] + cz], 1)
        assert np.any(room.semantic_at(world) == c), f"box of {SEMANTIC_CLASSES[c]} holds no {c}"
        # the box is tight: its faces touch the object
        assert cz - h / 2 == pytest.approx(0.0, abs=1e-6), "furniture stands on the floor"


# -------------------------------------------------------------------- rooms
def test_rooms_are_varied_closed_and_uncluttered():
    seen = set()
    for seed in range(12):
        room = make_room(seed)
        assert isinstance(room.field, RadianceField)
        size = room.interior[1] - room.interior[0]
        assert 3 <= size[0] <= 6 and 3 <= size[1] <= 6 and 2.5 <= size[2] <= 3
        assert 1 <= len(room.boxes) <= 8
        seen.update(SEMANTIC_CLASSES[c] for c in room.box_labels)
        corners = []
        for cx, cy, _, w, l, _, yaw in room.boxes.astype(np.float64):
            rot = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
            quad = np.array([[-w, -l], [w, -l], [w, l], [-w, l]]) / 2 @ rot.T + [cx, cy]
            assert np.all(np.abs(quad) <= size[:2] / 2 + 1e-9), (
                f"seed {seed}: object through a wall"
            )
            corners.append(quad)
        # no object's footprint corner lies inside another's footprint
        for i, a in enumerate(corners):
            for j in range(len(corners)):
                if i != j:
                    box = np.concatenate(
                        [room.boxes[j, :2], [1.0], room.boxes[j, 3:5], [1.0], room.boxes[j, 6:]]
                    )
                    pts = np.concatenate([a, np.ones((4, 1))], 1)
                    assert not _inside_box(pts, box, -1e-3).any(), f"seed {seed}: {i} overlaps {j}"
    assert set(FURNITURE_CLASSES) <= seen and len(FURNITURE_CLASSES) >= 6


def test_field_is_view_independent_and_in_range(room):
    x = torch.as_tensor(
        np.random.default_rng(1).uniform(room.aabb[0], room.aabb[1], (2000, 3)), dtype=torch.float32
    )
    d1 = torch.nn.functional.normalize(
        torch.randn(2000, 3, generator=torch.Generator().manual_seed(0)), dim=1
    )
    c1, c2 = room.field.color(x, d1), room.field.color(x, -d1)
    assert torch.equal(c1, c2) and c1.min() >= 0 and c1.max() <= 1
    sigma = room.field.density(x)
    assert sigma.shape == (2000,) and sigma.min() >= 0


# ---------------------------------------------------------------------- CLI
def test_cli_writes_scenes_with_contact_sheets(tmp_path, capsys):
    code = nerfmae_main(
        [
            "synth",
            str(tmp_path / "out"),
            "--scenes",
            "2",
            "--image-size",
            "16",
            "--views",
            "3",
            "--seed",
            "7",
            "--grid-resolution",
            "32",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "seed 7" in lines[0] and "seed 8" in lines[1]
    for i in range(2):
        folder = tmp_path / "out" / f"scene_{i:04d}"
        assert (folder / "contact_sheet.png").is_file()
        assert len(list((folder / "images").glob("*.png"))) == 3
        assert RadianceGrid.load_npz(folder / "ground_truth" / "grid.npz").meta["seed"] == 7 + i


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path, capsys):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a synthetic scene folder"):
        generate_scene(precious, seed=0, n_views=2, image_size=8, grid_resolution=8)
    assert (precious / "notes.txt").read_text() == "keep me"
    assert nerfmae_main(["synth", str(tmp_path), "--scenes", "0"]) == 2
    assert "--scenes" in capsys.readouterr().err
