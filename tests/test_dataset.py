"""GridDataset (PyTorch) and the Dask views: values, padding, crops, augmentation, laziness."""

from __future__ import annotations

import itertools
import pickle
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from zarr.storage import LocalStore, WrapperStore

from grid_store import GridStore, RadianceGrid
from grid_store.boxes import (
    augment_boxes,
    box_corners,
    points_in_boxes,
    voxel_to_world,
    world_to_voxel,
)
from grid_store.dataset import GridDataset, collate_grids, read_window_into, stored_axis_flips
from grid_store.lazy import occupancy_fractions, scene_arrays


def coordinate_grid(shape, semantic=False) -> RadianceGrid:
    """Channels 0-2 encode the x, y, z index (i / 128, exact in float16); alpha is a pattern."""
    X, Y, Z = shape
    i, j, k = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij")
    alpha = ((i + 2 * j + 3 * k) % 7 == 0).astype(np.float32)
    rgba = np.stack([i / 128, j / 128, k / 128, alpha]).astype(np.float32)  # (4, X, Y, Z)
    return RadianceGrid(
        rgba=rgba,
        bbox_min=[0, 0, 0],
        bbox_max=(np.array(shape) - 1) * 0.1,
        voxel_size=0.1,
        delta=0.1,
        semantic=((i + j + k) % 5).astype(np.uint8) if semantic else None,
    )


@pytest.fixture
def store_url(tmp_path):
    url = str(tmp_path / "grids.zarr")
    store = GridStore(url)
    store.write_grid("small", coordinate_grid((40, 33, 20), semantic=True))
    store.write_grid("big", coordinate_grid((96, 70, 64)))
    return url


def test_pad_mode_returns_grid_then_zeros_with_valid_mask(store_url):
    ds = GridDataset(store_url, scene_ids=["small"], size=48)
    sample = ds[0]
    rgba, valid = sample["rgba"], sample["valid"]
    assert sample["scene_id"] == "small"
    assert rgba.shape == (4, 48, 48, 48) and rgba.dtype == torch.float32
    assert valid.shape == (48, 48, 48) and valid.dtype == torch.bool
    expected = coordinate_grid((40, 33, 20)).rgba.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(rgba[:, :40, :33, :20].numpy(), expected)
    assert valid[:40, :33, :20].all() and valid.sum() == 40 * 33 * 20
    assert rgba[:, ~valid].abs().max() == 0  # padding is exact zeros
    semantic = sample["semantic"]
    assert semantic.dtype == torch.uint8 and semantic.shape == (48, 48, 48)
    assert (
        semantic[:40, :33, :20].numpy().tolist()
        == coordinate_grid((40, 33, 20), True).semantic.tolist()
    )
    assert semantic[~valid].max() == 0


def test_pad_mode_crops_oversized_axes_from_zero(store_url):
    sample = GridDataset(store_url, scene_ids=["big"], size=64)[0]
    expected = coordinate_grid((96, 70, 64)).rgba[:, :64, :64, :64].astype(np.float16)
    np.testing.assert_array_equal(sample["rgba"].numpy(), expected.astype(np.float32))
    assert sample["valid"].all()
    assert "semantic" not in sample


def window_origin(rgba: torch.Tensor) -> tuple[int, int, int]:
    """Where a coordinate-grid crop starts: its first voxel's encoded (i, j, k)."""
    return tuple(int(round(float(rgba[c, 0, 0, 0]) * 128)) for c in range(3))


def test_random_crop_is_a_true_window_deterministic_per_seed_and_epoch(store_url):
    ds = GridDataset(store_url, scene_ids=["big"] * 8, size=32, crop="random", seed=3)
    grid = coordinate_grid((96, 70, 64)).rgba.astype(np.float16).astype(np.float32)
    origins = set()
    for index in range(len(ds)):
        rgba = ds[index]["rgba"]
        x, y, z = window_origin(rgba)
        origins.add((x, y, z))
        np.testing.assert_array_equal(rgba.numpy(), grid[:, x : x + 32, y : y + 32, z : z + 32])
    assert len(origins) > 4  # different windows for different indices
    again = GridDataset(store_url, scene_ids=["big"] * 8, size=32, crop="random", seed=3)
    assert torch.equal(again[5]["rgba"], ds[5]["rgba"])
    ds.set_epoch(1)
    assert [window_origin(ds[i]["rgba"]) for i in range(8)] != [
        window_origin(again[i]["rgba"]) for i in range(8)
    ]


def test_rotation_and_flips_hand_derived():
    volume = torch.zeros((1, 4, 5, 6))  # (C, X, Y, Z)
    volume[0, 1, 2, 3] = 1
    where = lambda v: tuple(int(a[0]) for a in torch.nonzero(v[0], as_tuple=True))  # noqa: E731
    # 90 degrees about z, NeRF-MAE's transpose(x, y) then flip(x): (i, j, k) -> (Y-1-j, i, k)
    rotated = GridDataset._augmented(volume, rotate=True, flip_x=False, flip_y=False)
    assert rotated.shape == (1, 5, 4, 6) and where(rotated) == (5 - 1 - 2, 1, 3)
    np.testing.assert_array_equal(
        rotated, np.rot90(volume.numpy(), 1, axes=(1, 2))
    )  # same rotation
    assert where(GridDataset._augmented(volume, False, True, False)) == (4 - 1 - 1, 2, 3)
    assert where(GridDataset._augmented(volume, False, False, True)) == (1, 5 - 1 - 2, 3)
    # rotate -> (2, 1, 3) in (5, 4, 6); flip x -> (5-1-2, 1, 3); flip y -> (2, 4-1-1, 3)
    assert where(GridDataset._augmented(volume, True, True, True)) == (2, 2, 3)


def test_augmentation_is_consistent_across_rgba_valid_and_semantic(store_url):
    ds = GridDataset(store_url, scene_ids=["small"] * 16, size=40, augment=True, seed=1)
    grid = coordinate_grid((40, 33, 20), semantic=True)
    seen = set()
    for index in range(len(ds)):
        sample = ds[index]
        rgba, valid, semantic = (
            sample["rgba"].numpy(),
            sample["valid"].numpy(),
            sample["semantic"].numpy(),
        )
        # Every augmented voxel still carries its own coordinates: recover the map from them.
        ijk = np.rint(rgba[:3] * 128).astype(int)  # (3, S, S, S)
        extent = tuple(int(n) for n in np.array(np.nonzero(valid)).max(axis=1) + 1)
        assert sorted(extent[:2]) == [33, 40] and extent[2] == 20 and valid.sum() == 40 * 33 * 20
        real = (slice(None), slice(0, extent[0]), slice(0, extent[1]), slice(0, extent[2]))
        i, j, k = ijk[real]
        np.testing.assert_array_equal(rgba[3][real[1:]], grid.rgba[3][i, j, k])
        np.testing.assert_array_equal(semantic[real[1:]], grid.semantic[i, j, k])
        assert (k == np.arange(20)).all()  # z is never touched
        seen.add((extent[0] == 33, bool(i[0, 0, 0] != 0), bool(j[0, 0, 0] != 0)))
    assert len(seen) >= 6  # rotation and both flips all occur


@pytest.mark.parametrize("rotate", [False, True])
def test_chunkwise_reader_agrees_with_zarr_slicing_and_augmented(store_url, rotate):
    array = GridStore(store_url, mode="r").rgba_array("big")  # (4, 96, 70, 64), 3x3x2 chunks
    window = (slice(17, 81), slice(5, 70), slice(31, 33))
    expected_volume = torch.from_numpy(array[(slice(None), *window)])  # zarr's own decoding
    for flip_x in (False, True):
        for flip_y in (False, True):
            expected = GridDataset._augmented(expected_volume, rotate, flip_x, flip_y).float()
            out = torch.full((4, *expected.shape[1:]), -1.0)
            flips = stored_axis_flips(rotate, flip_x, flip_y)
            read_window_into(array, window, flips, out.transpose(1, 2) if rotate else out)
            assert torch.equal(out, expected), (flip_x, flip_y)


def test_other_encodings_fall_back_to_zarr_and_agree(store_url, tmp_path):
    import zarr

    grid = coordinate_grid((40, 33, 20))
    other = tmp_path / "other.zarr"
    GridStore(other)
    group = zarr.open_group(other, path="scenes/zstd", mode="a")
    group.create_array(
        "rgba",
        data=grid.rgba.astype(np.float16),
        chunks=(4, 16, 16, 16),
        compressors=zarr.codecs.ZstdCodec(),
    )
    group.attrs.put({**grid.metadata(), "complete": True})
    for augment in (False, True):
        fast = GridDataset(store_url, ["small"] * 4, size=40, augment=augment, seed=2)
        generic = GridDataset(other, ["zstd"] * 4, size=40, augment=augment, seed=2)
        for a, b in zip(fast.__getitems__(range(4)), generic.__getitems__(range(4)), strict=True):
            assert torch.equal(a["rgba"], b["rgba"]) and torch.equal(a["valid"], b["valid"])


def test_batches_come_without_a_collate_copy(store_url):
    ds = GridDataset(store_url, scene_ids=["big", "big", "big"], size=32, crop="random", seed=5)
    samples = ds.__getitems__([0, 1, 2])
    batch = collate_grids(samples)
    assert batch["rgba"].shape == (3, 4, 32, 32, 32) and batch["scene_id"] == ["big"] * 3
    assert batch["rgba"].data_ptr() == samples[0]["rgba"].data_ptr()  # the same memory
    for b in range(3):
        assert torch.equal(batch["rgba"][b], ds[b]["rgba"])
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_grids)
    (from_workers,) = list(loader)
    assert torch.equal(from_workers["rgba"], batch["rgba"])
    assert torch.equal(from_workers["valid"], batch["valid"])


class CountingStore(WrapperStore):
    """Records every key read, to prove which chunks a sample touched."""

    def __init__(self, store):
        super().__init__(store)
        self.keys: list[str] = []

    def _with_store(self, store):
        clone = type(self)(store)
        clone.keys = self.keys  # zarr makes read-only copies; they share the log
        return clone

    async def get(self, key, prototype, byte_range=None):
        self.keys.append(key)
        return await self._store.get(key, prototype, byte_range)


def chunk_keys(keys: list[str], scene: str) -> set[tuple[int, ...]]:
    pattern = re.compile(rf"scenes/{scene}/rgba/c/(\d+)/(\d+)/(\d+)/(\d+)$")
    return {tuple(int(g) for g in m.groups()) for m in map(pattern.match, keys) if m}


def test_crop_reads_only_the_chunks_it_touches(store_url, monkeypatch):
    counting = CountingStore(LocalStore(store_url, read_only=True))
    monkeypatch.setattr(
        GridDataset, "_open_store", lambda self: GridStore.from_zarr_store(counting)
    )
    ds = GridDataset(store_url, scene_ids=["big"] * 6, size=32, crop="random", seed=0)
    all_chunks = {(0, a, b, c) for a in range(3) for b in range(3) for c in range(2)}
    for index in range(len(ds)):
        counting.keys.clear()
        x, y, z = window_origin(ds[index]["rgba"])
        touched = {
            (0, a, b, c)
            for a in range(x // 32, (x + 31) // 32 + 1)
            for b in range(y // 32, (y + 31) // 32 + 1)
            for c in range(z // 32, (z + 31) // 32 + 1)
        }
        assert chunk_keys(counting.keys, "big") == touched < all_chunks


def test_dask_slice_reads_only_its_chunks(store_url):
    counting = CountingStore(LocalStore(store_url, read_only=True))
    lazy = GridStore.from_zarr_store(counting).rgba_dask("big")
    counting.keys.clear()
    lazy[:, 40:50, :10, 33:].compute()
    assert chunk_keys(counting.keys, "big") == {(0, 1, 0, 1)}


def test_dataloader_with_workers_matches_in_process_and_pickles(store_url):
    ds = GridDataset(
        store_url,
        scene_ids=["small", "big", "small", "big"],
        size=32,
        crop="random",
        augment=True,
        seed=7,
    )
    direct = [ds[i] for i in range(len(ds))]  # also opens the store in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._store is None and torch.equal(clone[1]["rgba"], direct[1]["rgba"])
    without_semantic = GridDataset(
        store_url, scene_ids=["big", "big"], size=32, crop="random", augment=True, seed=7
    )
    loader = DataLoader(without_semantic, batch_size=2, num_workers=2)
    (batch,) = list(loader)
    assert batch["rgba"].shape == (2, 4, 32, 32, 32) and batch["valid"].shape == (2, 32, 32, 32)
    for b in range(2):
        assert torch.equal(batch["rgba"][b], without_semantic[b]["rgba"])


def test_bad_arguments_are_refused(store_url):
    with pytest.raises(ValueError, match="crop"):
        GridDataset(store_url, crop="centre")
    with pytest.raises(ValueError, match="scene_id"):
        GridDataset(store_url, scene_ids=["../small"])
    assert GridDataset(store_url).scene_ids == ["big", "small"]
    with pytest.raises(KeyError, match="ghost"):
        GridDataset(store_url, scene_ids=["ghost"])[0]


# ------------------------------------------------------------------ boxes
BOXED_SHAPE = (12, 10, 8)  # distinct sizes per axis, so a transpose that should not be shows
BOX_ORIGIN, BOX_VOXEL = np.array([1.0, -2.0, 0.5]), 0.25
VOXEL_BOXES = np.array(  # voxel coordinates of the stored grid, (cx, cy, cz, w, l, h, yaw)
    [
        [2.5, 2.0, 2.5, 3.0, 2.0, 3.0, 0.0],  # faces on voxel edges: voxels [1,4)x[1,3)x[1,4)
        [8.1, 6.2, 4.1, 3.3, 2.2, 2.6, 0.3],
        [4.3, 7.4, 5.7, 2.8, 1.9, 1.7, -1.1],
        [10.2, 2.3, 6.0, 2.1, 3.1, 1.6, 2.0],
    ],
    dtype=np.float32,
)
BOX_LABELS = np.array([10, 11, 12, 13], dtype=np.int64)
ALL_AUGMENTATIONS = list(itertools.product([False, True], repeat=3))  # (rotate, flip_x, flip_y)


def voxel_centres(shape) -> np.ndarray:
    """``(X*Y*Z, 3)`` voxel coordinates of the samples, ``i + 0.5``, in C order."""
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    return idx.reshape(-1, 3) + 0.5


def surface_margin(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(N, P)``: how far each point is from being on the fence of each box, in voxels.

    ``|max over the box's axes of (|local offset| - half extent)|``: zero on the surface,
    so a small value means float rounding could flip the point in or out.
    """
    d = points[None] - boxes[:, None, :3].astype(np.float64)  # (N, P, 3)
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    local = np.stack([d[..., 0] * c + d[..., 1] * s, -d[..., 0] * s + d[..., 1] * c, d[..., 2]])
    half = boxes[:, 3:6].astype(np.float64).T[:, :, None] / 2  # (3, N, 1)
    return np.abs((np.abs(local) - half).max(0))


def boxed_grid(voxel_boxes=VOXEL_BOXES, labels=BOX_LABELS) -> RadianceGrid:
    """A coordinate grid whose opaque voxels are those inside the boxes, plus a few outside."""
    inside = points_in_boxes(voxel_centres(BOXED_SHAPE), VOXEL_BOXES).reshape(-1, *BOXED_SHAPE)
    grid = coordinate_grid(BOXED_SHAPE)
    rgba = np.array(grid.rgba)
    rgba[3] = inside.any(0)
    rgba[3, 0, 9, 7] = rgba[3, 11, 0, 0] = 1  # opaque, in no box
    return RadianceGrid(
        rgba=rgba,
        bbox_min=BOX_ORIGIN,
        bbox_max=BOX_ORIGIN + (np.array(BOXED_SHAPE) - 1) * BOX_VOXEL,
        voxel_size=BOX_VOXEL,
        delta=0.1,
        boxes=voxel_to_world(voxel_boxes, BOX_ORIGIN, BOX_VOXEL),
        box_labels=labels,
    )


def stored_enclosures(window=None) -> dict[int, set[tuple[int, int, int]]]:
    """label -> the (i, j, k) of the opaque stored voxels inside that box (within ``window``)."""
    points = voxel_centres(BOXED_SHAPE)
    opaque = boxed_grid().rgba[3].reshape(-1) > 0.5
    inside = points_in_boxes(points, VOXEL_BOXES) & opaque
    if window is not None:
        lo, hi = np.array([w.start for w in window]), np.array([w.stop for w in window])
        inside &= ((points >= lo) & (points < hi)).all(1)
    ijk = (points - 0.5).astype(int)
    return {
        int(lab): {tuple(v) for v in ijk[row]} for lab, row in zip(BOX_LABELS, inside, strict=True)
    }


def sample_enclosures(sample) -> dict[int, set[tuple[int, int, int]]]:
    """label -> the stored (i, j, k) of the sample's opaque voxels inside its box."""
    rgba, valid = sample["rgba"].numpy(), sample["valid"].numpy()
    points = voxel_centres(valid.shape)
    opaque = (rgba[3] > 0.5).reshape(-1) & valid.reshape(-1)
    ijk = np.rint(rgba[:3] * 128).astype(int).reshape(3, -1).T
    inside = points_in_boxes(points, sample["boxes"].numpy()) & opaque
    labels = sample["box_labels"].tolist()
    return {lab: {tuple(v) for v in ijk[row]} for lab, row in zip(labels, inside, strict=True)}


def test_the_box_fixture_is_unambiguous():
    points = voxel_centres(BOXED_SHAPE)
    assert surface_margin(points, VOXEL_BOXES).min() > 0.01  # no centre near a box face
    sets = stored_enclosures()
    assert all(len(v) >= 4 for v in sets.values())
    assert sum(len(v) for v in sets.values()) == len(set().union(*sets.values()))  # disjoint
    assert stored_enclosures()[10] == set(itertools.product(range(1, 4), range(1, 3), range(1, 4)))


@pytest.fixture
def boxed_store_url(tmp_path):
    url = str(tmp_path / "boxed.zarr")
    store = GridStore(url)
    store.write_grid("boxed", boxed_grid())
    store.write_grid("one", boxed_grid(VOXEL_BOXES[:1], BOX_LABELS[:1]))
    store.write_grid("no-boxes", boxed_grid(np.zeros((0, 7)), np.zeros(0, dtype=np.int64)))
    store.write_grid("plain", coordinate_grid(BOXED_SHAPE))
    return url


def test_boxes_come_in_voxel_coordinates_of_the_sample(boxed_store_url):
    sample = GridDataset(boxed_store_url, ["boxed"], size=16)[0]
    boxes, labels = sample["boxes"], sample["box_labels"]
    assert boxes.dtype == torch.float32 and boxes.shape == (4, 7)
    assert labels.dtype == torch.int64 and labels.tolist() == BOX_LABELS.tolist()
    np.testing.assert_allclose(boxes.numpy(), VOXEL_BOXES, atol=1e-5)
    stored = GridStore(boxed_store_url, mode="r").read_grid("boxed").boxes
    np.testing.assert_allclose(boxes.numpy(), world_to_voxel(stored, BOX_ORIGIN, BOX_VOXEL))
    assert sample_enclosures(sample) == stored_enclosures()
    plain = GridDataset(boxed_store_url, ["plain"], size=16)[0]
    assert "boxes" not in plain and "box_labels" not in plain
    empty = GridDataset(boxed_store_url, ["no-boxes"], size=16)[0]
    assert empty["boxes"].shape == (0, 7) and empty["box_labels"].shape == (0,)
    assert empty["boxes"].dtype == torch.float32 and empty["box_labels"].dtype == torch.int64


@pytest.mark.parametrize("rotate, flip_x, flip_y", ALL_AUGMENTATIONS)
def test_augmented_boxes_enclose_the_same_voxels(
    boxed_store_url, monkeypatch, rotate, flip_x, flip_y
):
    monkeypatch.setattr(GridDataset, "_augmentation", lambda self, rng: (rotate, flip_x, flip_y))
    sample = GridDataset(boxed_store_url, ["boxed"], size=14, augment=True)[0]
    # the grid really was augmented as asked: its voxels come from where the transform says
    X, Y, Z = BOXED_SHAPE
    ids = np.arange(X * Y * Z).reshape(BOXED_SHAPE)
    moved = numpy_augmented(ids, rotate, flip_x, flip_y)
    ijk = np.rint(sample["rgba"][:3].numpy() * 128).astype(int)[
        :, : moved.shape[0], : moved.shape[1], :Z
    ]
    np.testing.assert_array_equal(np.ravel_multi_index(tuple(ijk), BOXED_SHAPE), moved)
    assert sample["box_labels"].tolist() == BOX_LABELS.tolist()
    assert sample_enclosures(sample) == stored_enclosures()
    expected = augment_boxes(VOXEL_BOXES, (X, Y), rotate, flip_x, flip_y)
    np.testing.assert_allclose(sample["boxes"].numpy(), expected, atol=1e-5)
    assert (np.abs(sample["boxes"][:, 6].numpy()) <= np.pi + 1e-6).all()


def test_random_crops_shift_boxes_and_drop_those_centred_outside(boxed_store_url):
    size, n = 6, 24
    plain = GridDataset(boxed_store_url, ["boxed"] * n, size=size, crop="random", seed=4)
    augmented = GridDataset(
        boxed_store_url, ["boxed"] * n, size=size, crop="random", augment=True, seed=4
    )
    kept_counts = set()
    for index in range(n):
        for ds in (plain, augmented):
            sample = ds[index]
            ijk = np.rint(sample["rgba"][:3].numpy() * 128).astype(int)
            start = ijk.reshape(3, -1).min(1)  # the window's stored origin
            window = tuple(slice(int(a), int(a) + size) for a in start)
            centres = VOXEL_BOXES[:, :3]
            inside = ((centres >= start) & (centres < start + size)).all(1)
            assert sample["box_labels"].tolist() == BOX_LABELS[inside].tolist()
            expected = stored_enclosures(window)
            assert sample_enclosures(sample) == {lab: expected[lab] for lab in BOX_LABELS[inside]}
            if ds is plain:
                shifted = VOXEL_BOXES[inside].copy()
                shifted[:, :3] -= start
                np.testing.assert_allclose(sample["boxes"].numpy(), shifted, atol=1e-5)
            kept_counts.add(int(inside.sum()))
    assert 0 < max(kept_counts) < len(VOXEL_BOXES)  # crops kept some boxes and dropped others


def test_collate_lists_variable_length_boxes(boxed_store_url):
    ds = GridDataset(boxed_store_url, ["boxed", "one", "no-boxes", "plain"], size=16)
    batch = collate_grids(ds.__getitems__([0, 1, 2]))
    assert batch["rgba"].shape == (3, 4, 16, 16, 16) and batch["valid"].shape == (3, 16, 16, 16)
    assert isinstance(batch["boxes"], list) and isinstance(batch["box_labels"], list)
    assert [tuple(b.shape) for b in batch["boxes"]] == [(4, 7), (1, 7), (0, 7)]
    assert [b.tolist() for b in batch["box_labels"]] == [BOX_LABELS.tolist(), [10], []]
    mixed = collate_grids([ds[0], ds[3]])  # a scene without boxes gets None
    assert mixed["boxes"][1] is None and mixed["box_labels"][1] is None
    assert torch.equal(mixed["boxes"][0], ds[0]["boxes"])
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_grids)
    first = next(iter(loader))
    assert [len(b) for b in first["boxes"]] == [4, 1] and first["scene_id"] == ["boxed", "one"]


def test_boxes_are_read_once_per_scene(boxed_store_url, monkeypatch):
    counting = CountingStore(LocalStore(boxed_store_url, read_only=True))
    monkeypatch.setattr(
        GridDataset, "_open_store", lambda self: GridStore.from_zarr_store(counting)
    )
    ds = GridDataset(boxed_store_url, ["boxed"] * 3, size=16, augment=True)
    counting.keys.clear()
    for index in range(3):
        assert len(ds[index]["boxes"]) == 4
    box_chunks = [k for k in counting.keys if re.match(r"scenes/boxed/box(es|_labels)/c/", k)]
    assert sorted(box_chunks) == ["scenes/boxed/box_labels/c/0", "scenes/boxed/boxes/c/0/0"]


def numpy_augmented(volume: np.ndarray, rotate: bool, flip_x: bool, flip_y: bool) -> np.ndarray:
    """GridDataset._augmented on an ``(X, Y, Z)`` array: transpose(x, y), flip x, then flips."""
    if rotate:
        volume = volume.transpose(1, 0, 2)[::-1]
    if flip_x:
        volume = volume[::-1]
    if flip_y:
        volume = volume[:, ::-1]
    return volume


def augmented_points(points: np.ndarray, extent, rotate, flip_x, flip_y) -> np.ndarray:
    """Voxel-coordinate points under the same map (continuous: ``x -> X - x`` for a flip)."""
    (X, Y), p = extent, np.array(points, dtype=np.float64)
    if rotate:
        p[..., 0], p[..., 1] = Y - p[..., 1], p[..., 0].copy()
        X, Y = Y, X
    if flip_x:
        p[..., 0] = X - p[..., 0]
    if flip_y:
        p[..., 1] = Y - p[..., 1]
    return p


@pytest.mark.parametrize("rotate, flip_x, flip_y", ALL_AUGMENTATIONS)
def test_augment_boxes_moves_boxes_with_the_voxels(rotate, flip_x, flip_y):
    shape = BOXED_SHAPE
    ids = np.arange(np.prod(shape)).reshape(shape)  # every voxel's own id
    moved_ids = numpy_augmented(ids, rotate, flip_x, flip_y)
    as_torch = GridDataset._augmented(torch.from_numpy(ids)[None], rotate, flip_x, flip_y)[0]
    np.testing.assert_array_equal(moved_ids, as_torch.numpy())  # the dataset's own transform
    boxes = np.concatenate([VOXEL_BOXES, [[6.0, 5.0, 4.0, 4.6, 2.4, 3.1, 0.3]]]).astype(np.float32)
    moved = augment_boxes(boxes, shape[:2], rotate, flip_x, flip_y)
    assert moved.dtype == np.float32 and moved.shape == boxes.shape
    assert (moved[:, 6] >= -np.pi).all() and (moved[:, 6] < np.pi).all()
    np.testing.assert_allclose(moved[:, 3:6], boxes[:, 3:6])  # extents stay with the box
    before = points_in_boxes(voxel_centres(shape), boxes)  # (N, P) in C order of `ids`
    after = points_in_boxes(voxel_centres(moved_ids.shape), moved)
    assert surface_margin(voxel_centres(shape), boxes).min() > 0.01
    for b in range(len(boxes)):
        assert before[b].sum() > 0
        assert set(ids.reshape(-1)[before[b]]) == set(moved_ids.reshape(-1)[after[b]]), b
    # the corners: the augmented box's corners are the original's corners, moved
    expected = augmented_points(box_corners(boxes), shape[:2], rotate, flip_x, flip_y)
    got = box_corners(moved)
    for e, g in zip(expected, got, strict=True):
        d = np.linalg.norm(e[:, None] - g[None], axis=-1)  # (8, 8)
        assert d.min(0).max() < 1e-4 and d.min(1).max() < 1e-4


# ------------------------------------------------------------------ Dask views
def test_scene_arrays_are_lazy_views_of_every_scene(store_url):
    arrays = scene_arrays(store_url)
    assert sorted(arrays) == ["big", "small"]
    assert arrays["big"].shape == (4, 96, 70, 64) and arrays["big"].dtype == np.float16
    assert arrays["big"].numblocks == (1, 3, 3, 2)


@pytest.mark.slow
def test_occupancy_on_a_distributed_cluster_matches_numpy(store_url):
    distributed = pytest.importorskip("distributed")
    expected = {
        sid: float((coordinate_grid(shape).rgba[3] > 0.01).mean())
        for sid, shape in (("small", (40, 33, 20)), ("big", (96, 70, 64)))
    }
    cluster = distributed.LocalCluster(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as client:
        on_cluster = occupancy_fractions(store_url, client=client)
    assert on_cluster == pytest.approx(expected, abs=1e-12)
    assert occupancy_fractions(store_url) == pytest.approx(expected, abs=1e-12)  # threads
