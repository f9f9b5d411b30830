"""Synthetic rooms whose labels need shape: class-independent materials, thick thin parts."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

from grid_store.grid import grid_points
from nerfmae.cli import build_parser
from nerfmae.cli import main as nerfmae_main
from nerfmae.commands.synth import room_config
from pipeline.synthetic import (
    CLASS_ID,
    FURNITURE_CLASSES,
    SEMANTIC_CLASSES,
    RoomConfig,
    make_room,
    sample_ground_truth,
)
from pipeline.synthetic.furniture import FURNITURE_MATERIALS, MATERIALS
from pipeline.synthetic.room import TEXTURE_POLICIES, _rectangles_overlap

ROOMS = range(60)
THICK = 0.12  # ~1.25 voxels of a 64^3 grid of a room up to 6 m


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _local(points: np.ndarray, centre: np.ndarray, yaw: float) -> np.ndarray:
    """World points ``(N, 3)`` in the frame of a box centred at ``centre``, yawed by ``yaw``."""
    c, s = math.cos(yaw), math.sin(yaw)
    d = points - centre
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)


def _corners(centre: np.ndarray, half: np.ndarray, yaw: float) -> np.ndarray:
    """The 8 world corners of a yawed box."""
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    local = signs * half
    c, s = math.cos(yaw), math.sin(yaw)
    xy = local[:, :2] @ np.array([[c, -s], [s, c]]).T
    return np.concatenate([xy, local[:, 2:]], axis=1) + centre


# ------------------------------------------------------------------- defaults
def test_explicit_defaults_give_the_same_rooms_and_hash():
    for seed in (0, 3, 11):
        a = make_room(seed)
        b = make_room(seed, RoomConfig(texture_policy="by_class", min_part_size=0.0))
        for name in ("centre", "half", "yaw", "label", "instance", "texture_offset", "texture"):
            assert np.array_equal(getattr(a.parts, name), getattr(b.parts, name)), name
        assert np.array_equal(a.boxes, b.boxes) and a.materials == b.materials
    # stored default grids keep their config_hash: the new options are left out at defaults
    record = asdict(RoomConfig())
    del record["texture_policy"], record["min_part_size"]
    assert RoomConfig().provenance() == record
    room = make_room(3)
    hashes = {
        sample_ground_truth(make_room(3, cfg), 8).meta["config_hash"]
        for cfg in (None, RoomConfig(texture_policy="independent"), RoomConfig(min_part_size=THICK))
    }
    assert len(hashes) == 3
    assert sample_ground_truth(room, 8).meta["config_hash"] in hashes


def test_config_is_validated():
    with pytest.raises(ValueError, match="texture_policy"):
        RoomConfig(texture_policy="random")
    for bad in (-0.01, math.nan, math.inf):
        with pytest.raises(ValueError, match="min_part_size"):
            RoomConfig(min_part_size=bad)


# ------------------------------------------------------------ texture policy
def _material_units(policy: str) -> list[tuple[int, str, np.ndarray]]:
    """``(class id, material, base RGB)`` of each distinct texture of each furniture object.

    Parts that share a texture are one draw, so counting them once keeps the units
    independent (a bookshelf's eight wooden boards are one choice, not eight)."""
    units = []
    for seed in ROOMS:
        room = make_room(seed, RoomConfig(texture_policy=policy))
        parts, seen = room.parts, set()
        for i in range(len(parts)):
            key = (int(parts.instance[i]), parts.texture[i].tobytes())
            if parts.instance[i] >= 0 and key not in seen:
                seen.add(key)
                units.append((int(parts.label[i]), room.materials[i], parts.texture[i][:3]))
    return units


def _independence_p_value(units) -> float:
    """Pearson's chi-square test of class x material; p by the Wilson-Hilferty approximation."""
    table = np.zeros((len(FURNITURE_CLASSES), len(FURNITURE_MATERIALS)))
    for label, material, _ in units:
        table[
            FURNITURE_CLASSES.index(SEMANTIC_CLASSES[label]), FURNITURE_MATERIALS.index(material)
        ] += 1
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    # Cochran's rule for the chi-square approximation
    assert expected.min() >= 1 and np.mean(expected >= 5) >= 0.8, "too few objects"
    chi2 = ((table - expected) ** 2 / expected).sum()
    df = (table.shape[0] - 1) * (table.shape[1] - 1)
    z = ((chi2 / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def _largest_colour_z(units) -> float:
    """Largest |z| of a class's mean base colour against all objects' (per channel)."""
    labels = np.array([u[0] for u in units])
    base = np.array([u[2] for u in units])
    mean, sd = base.mean(0), base.std(0)
    return max(
        float(np.max(np.abs(base[labels == c].mean(0) - mean) / (sd / math.sqrt(n))))
        for c in np.unique(labels)
        if (n := int((labels == c).sum()))
    )


def test_by_class_materials_give_the_class_away():
    units = _material_units("by_class")
    beds = {m for label, m, _ in units if label == CLASS_ID["bed"]}
    assert beds == {"wood", "linen"}
    assert _independence_p_value(units) < 1e-20
    assert _largest_colour_z(units) > 6


def test_independent_materials_say_nothing_about_the_class():
    units = _material_units("independent")
    assert _independence_p_value(units) > 0.01
    assert _largest_colour_z(units) < 3.5
    floors = set()
    for seed in range(10):
        room = make_room(seed, RoomConfig(texture_policy="independent"))
        same = make_room(seed)
        # only the appearance changes: the same seed gives the same geometry
        assert np.array_equal(room.parts.centre, same.parts.centre)
        assert np.array_equal(room.boxes, same.boxes)
        walls = room.parts.label == CLASS_ID["wall"]
        assert len(np.unique(room.parts.texture[walls], axis=0)) == 1, "walls share one texture"
        assert set(room.materials) <= set(MATERIALS)
        floors.add(room.materials[int(np.flatnonzero(room.parts.label == CLASS_ID["floor"])[0])])
        # parts that shared a material still share a texture within an object
        for inst in np.unique(room.parts.instance[room.parts.instance >= 0]):
            rows = np.flatnonzero(room.parts.instance == inst)
            n_same = len(np.unique(same.parts.texture[rows], axis=0))
            assert len(np.unique(room.parts.texture[rows], axis=0)) == n_same
    assert len(floors) >= 4, "floors are drawn from all materials"


# ------------------------------------------------------------- min part size
def test_thin_parts_are_thickened_and_boxes_still_enclose_them():
    for seed in range(20):
        room = make_room(seed, RoomConfig(min_part_size=THICK))
        parts = room.parts
        furniture = parts.instance >= 0
        assert np.all(2 * parts.half[furniture] >= THICK - 1e-12)
        bottoms = parts.centre[furniture, 2] - parts.half[furniture, 2]
        assert bottoms.min() == pytest.approx(0.0, abs=1e-9), "furniture stands on the floor"
        assert np.all(bottoms >= -1e-9), "nothing is pushed through the floor"
        for index, box in enumerate(room.boxes.astype(np.float64)):
            inside = []
            for p in np.flatnonzero(parts.instance == index):
                corners = _corners(parts.centre[p], parts.half[p], parts.yaw[p])
                inside.append(np.abs(_local(corners, box[:3], box[6])) <= box[3:6] / 2 + 1e-5)
            assert np.all(inside), f"seed {seed}: box {index} does not hold its parts"
        quads = [_corners(b[:3], b[3:6] / 2, b[6])[::2, :2][[0, 2, 3, 1]] for b in room.boxes]
        for i in range(len(quads)):
            assert np.all(np.abs(quads[i]) <= (room.interior[1, :2] + 1e-6)), "through a wall"
            for j in range(i):
                assert not _rectangles_overlap(quads[i], quads[j]), f"seed {seed}: {i} on {j}"


def _parts_without_voxels(room, resolution: int = 64) -> list[str]:
    """Classes of the furniture parts that hold no ground-truth sample of their class."""
    grid = sample_ground_truth(room, resolution)
    points = grid_points(grid.bbox_min, grid.voxel_size, grid.semantic.shape)
    points = points.reshape(-1, 3).astype(np.float64)
    semantic = grid.semantic.reshape(-1)
    parts, missing = room.parts, []
    for p in np.flatnonzero(parts.instance >= 0):
        inside = np.all(np.abs(_local(points, parts.centre[p], parts.yaw[p])) < parts.half[p], 1)
        if not np.any(semantic[inside] == parts.label[p]):
            missing.append(SEMANTIC_CLASSES[parts.label[p]])
    return missing


def test_thick_parts_survive_a_64_grid():
    thin_classes = {CLASS_ID[c] for c in ("table", "chair", "lamp", "bookshelf")}
    for cfg in (RoomConfig(), RoomConfig(min_part_size=THICK)):
        assert thin_classes <= set(make_room(5, cfg).box_labels.tolist())
    # as built, legs, the lamp's pole and shelf boards fall between the samples
    assert {"table", "chair", "lamp"} <= set(_parts_without_voxels(make_room(5)))
    assert _parts_without_voxels(make_room(5, RoomConfig(min_part_size=THICK))) == []


# ----------------------------------------------------------------------- CLI
def test_cli_flags_reach_the_room_config(monkeypatch, tmp_path):
    parse = build_parser().parse_args
    assert room_config(parse(["synth", "out"])) == RoomConfig()
    args = parse(["synth", "out", "--texture-policy", "independent", "--min-part-size", "0.12"])
    assert room_config(args) == RoomConfig(texture_policy="independent", min_part_size=0.12)
    with pytest.raises(SystemExit):
        parse(["synth", "out", "--texture-policy", "random"])
    for policy in TEXTURE_POLICIES:
        assert parse(["synth", "out", "--texture-policy", policy]).texture_policy == policy

    seen = []

    def fake_generate_scene(out_dir, **kwargs):
        seen.append(kwargs["room_config"])
        return out_dir

    monkeypatch.setattr("pipeline.synthetic.generate_scene", fake_generate_scene)
    argv = ["synth", str(tmp_path), "--scenes", "2", "--texture-policy", "independent"]
    assert nerfmae_main([*argv, "--min-part-size", "0.1"]) == 0
    assert seen == [RoomConfig(texture_policy="independent", min_part_size=0.1)] * 2
    assert nerfmae_main(["synth", str(tmp_path), "--min-part-size", "-1"]) == 2
