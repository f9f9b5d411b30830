"""GridDataset (PyTorch) and the Dask views: values, padding, crops, augmentation, laziness."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from zarr.storage import LocalStore, WrapperStore

from grid_store import GridStore, RadianceGrid
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
