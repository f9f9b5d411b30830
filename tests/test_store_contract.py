"""The grid store contract (DESIGN contract 2), one class run unchanged on every backend.

Backends: a local folder, ``memory://`` and S3 (a real moto S3 server on loopback,
reached through s3fs like any S3 endpoint).
"""

from __future__ import annotations

import json
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr

from grid_store import (
    SCHEMA_VERSION,
    GridStore,
    GridValidationError,
    InvalidSceneIdError,
    RadianceGrid,
)
from grid_store.store import STORE_FORMAT

S3_BUCKET = "grids"


def make_grid(shape=(4, 40, 33, 20), seed=0, labels=True, **meta) -> RadianceGrid:
    rng = np.random.default_rng(seed)
    voxel = 0.05
    extent = (np.array(shape[1:]) - 1) * voxel
    extra = {}
    if labels:
        extra = dict(
            semantic=rng.integers(0, 7, shape[1:]).astype(np.uint8),
            boxes=np.array([[0.5, 0.6, 0.4, 0.2, 0.3, 0.4, 0.1]], np.float32),
            box_labels=np.array([5]),
        )
    return RadianceGrid(
        rgba=rng.random(shape, dtype=np.float32),
        bbox_min=[-1.0, 0.0, 0.5],
        bbox_max=np.array([-1.0, 0.0, 0.5]) + extent,
        voxel_size=voxel,
        delta=voxel,
        meta={"source": "unit-test", "config_hash": "cfg1", **meta},
        **extra,
    )


@pytest.fixture(scope="session")
def s3_endpoint():
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).create_bucket(Bucket=S3_BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request, tmp_path):
    """``(url, storage_options)`` of a fresh, empty location on one backend."""
    name = uuid.uuid4().hex[:10]
    if request.param == "local":
        return str(tmp_path / "grids.zarr"), None
    if request.param == "memory":
        return f"memory://grids-{name}", None
    endpoint = request.getfixturevalue("s3_endpoint")
    options = {
        "endpoint_url": endpoint,
        "key": "test",
        "secret": "test",
        "client_kwargs": {"region_name": "us-east-1"},
    }
    return f"s3://{S3_BUCKET}/{name}", options


class TestStoreContract:
    """What every backend must do; nothing here knows which backend it runs on."""

    @pytest.fixture
    def store(self, backend) -> GridStore:
        url, options = backend
        return GridStore(url, storage_options=options)

    def reopen(self, store: GridStore, mode: str = "r") -> GridStore:
        return GridStore(store.url, mode=mode, storage_options=store.storage_options)

    def test_new_store_is_empty_and_tagged(self, store):
        assert store.list_scenes() == []
        root = zarr.open_group(store._store, mode="r")
        assert dict(root.attrs) == {"format": STORE_FORMAT, "schema_version": SCHEMA_VERSION}

    def test_round_trip_keeps_arrays_labels_and_metadata(self, store):
        grid = make_grid()
        store.write_grid("room_0", grid, extra_attrs={"split": "train"})
        back = self.reopen(store).read_grid("room_0")
        assert back.rgba.dtype == np.float16
        np.testing.assert_array_equal(back.rgba, grid.rgba.astype(np.float16))
        np.testing.assert_allclose(back.bbox_min, grid.bbox_min)
        np.testing.assert_allclose(back.bbox_max, grid.bbox_max)
        assert (back.voxel_size, back.delta) == (grid.voxel_size, grid.delta)
        np.testing.assert_array_equal(back.semantic, grid.semantic)
        np.testing.assert_array_equal(back.boxes, grid.boxes)
        np.testing.assert_array_equal(back.box_labels, grid.box_labels)
        assert back.meta["source"] == "unit-test" and back.meta["split"] == "train"
        attrs = store.scene_attrs("room_0")
        assert attrs["complete"] is True and attrs["resolution"] == [40, 33, 20]

    def test_rgba_is_float16_zstd_in_contract_chunks(self, store):
        store.write_grid("big", make_grid((4, 70, 33, 20), labels=False))
        array = store.rgba_array("big")
        assert array.dtype == np.float16 and array.shape == (4, 70, 33, 20)
        assert array.chunks == (4, 32, 32, 20)  # (4, 32, 32, 32) clipped to the grid
        (codec,) = array.compressors
        assert type(codec).__name__ == "BloscCodec" and codec.cname.value == "zstd"
        assert codec.shuffle.value == "shuffle"

    def test_grid_without_labels_round_trips_without_them(self, store):
        store.write_grid("plain", make_grid(labels=False))
        back = store.read_grid("plain")
        assert back.semantic is None and back.boxes is None and back.box_labels is None

    def test_rerun_replaces_scene_entirely(self, store):
        store.write_grid("s", make_grid(seed=1), extra_attrs={"old": 1})
        new = make_grid(shape=(4, 20, 21, 22), seed=2, labels=False)
        store.write_grid("s", new)
        back = store.read_grid("s")
        np.testing.assert_array_equal(back.rgba, new.rgba.astype(np.float16))
        assert back.semantic is None and "old" not in back.meta
        assert store.list_scenes() == ["s"]

    def test_list_is_sorted_and_shows_complete_scenes_only(self, store):
        for sid in ("b", "a10", "a2"):
            store.write_grid(sid, make_grid(labels=False))
        # A writer that died after its arrays, before the final attrs.
        partial = zarr.open_group(store._store, path="scenes/partial", mode="a")
        partial.create_array("rgba", shape=(4, 8, 8, 8), dtype="float16")
        assert self.reopen(store).list_scenes() == ["a10", "a2", "b"]
        assert not store.has_scene("partial")
        with pytest.raises(KeyError, match="partial"):
            store.read_grid("partial")

    def test_has_scene_checks_config_hash(self, store):
        store.write_grid("s", make_grid(labels=False))
        assert store.has_scene("s") and store.has_scene("s", config_hash="cfg1")
        assert not store.has_scene("s", config_hash="other")
        assert not store.has_scene("missing")

    def test_delete_removes_scene_and_its_data(self, store):
        store.write_grid("keep", make_grid(labels=False))
        store.write_grid("gone", make_grid(labels=False))
        store.delete("gone")
        assert self.reopen(store).list_scenes() == ["keep"]
        with pytest.raises(KeyError, match="gone"):
            store.read_grid("gone")
        assert "gone" not in zarr.open_group(store._store, path="scenes", mode="r").group_keys()

    def test_missing_scene_error_names_store_and_scene(self, store):
        with pytest.raises(KeyError) as info:
            store.scene_attrs("nope")
        said = f"{store.url}: no complete scene 'nope' (the store has no complete scenes)"
        assert str(info.value) == said
        for scene in ("a", "b"):
            store.write_grid(scene, make_grid(labels=False))
        # also a ValueError: command lines report an unknown scene as bad input
        with pytest.raises(ValueError, match=r"'nope' \(the store has 2 scenes: a, b\)$"):
            store.read_grid("nope")

    def test_reopened_store_accepts_writes(self, store):
        store.write_grid("first", make_grid(labels=False))
        second = self.reopen(store, "a")
        second.write_grid("second", make_grid(labels=False))
        second.delete("first")
        assert self.reopen(store).list_scenes() == ["second"]

    def test_read_only_handle_refuses_writes(self, store):
        store.write_grid("s", make_grid(labels=False))
        reader = self.reopen(store, "r")
        with pytest.raises(PermissionError):
            reader.write_grid("t", make_grid(labels=False))
        with pytest.raises(PermissionError):
            reader.delete("s")
        assert store.list_scenes() == ["s"]

    @pytest.mark.parametrize("bad_id", ["", "../escape", "a/b", "..", ".", ".hidden", "x" * 129])
    def test_invalid_scene_id_refused_before_writing(self, store, bad_id):
        with pytest.raises(InvalidSceneIdError):
            store.write_grid(bad_id, make_grid(labels=False))
        with pytest.raises(InvalidSceneIdError):
            store.has_scene(bad_id)
        assert list(zarr.open_group(store._store, path="scenes", mode="r").group_keys()) == []

    def test_bad_grid_refused_before_anything_is_written(self, store):
        with pytest.raises(TypeError, match="RadianceGrid"):
            store.write_grid("s", make_grid().rgba)
        with pytest.raises(ValueError, match="JSON"):
            store.write_grid("s", make_grid(), extra_attrs={"x": object()})
        with pytest.raises(ValueError, match="bbox_min"):
            store.write_grid("s", make_grid(), extra_attrs={"bbox_min": [0, 0, 0]})
        corrupted = make_grid(labels=False)  # a grid whose array was swapped after validation
        nan = np.array(corrupted.rgba)
        nan[3, 1, 2, 3] = np.nan
        object.__setattr__(corrupted, "rgba", nan)
        with pytest.raises(GridValidationError, match="rgba"):
            store.write_grid("s", corrupted)
        assert list(zarr.open_group(store._store, path="scenes", mode="r").group_keys()) == []

    def test_dask_view_is_lazy_and_matches(self, store):
        grid = make_grid((4, 70, 40, 20), labels=False)
        store.write_grid("s", grid)
        lazy = store.rgba_dask("s")
        assert lazy.shape == (4, 70, 40, 20) and lazy.dtype == np.float16
        assert lazy.chunks[1] == (32, 32, 6)
        np.testing.assert_array_equal(
            lazy[:, 30:40].compute(), grid.rgba[:, 30:40].astype(np.float16)
        )

    def test_concurrent_writers_of_different_scenes(self, store):
        grids = {f"w{i}": make_grid(seed=i, labels=False) for i in range(4)}
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda item: store.write_grid(*item), grids.items()))
        reader = self.reopen(store)
        assert reader.list_scenes() == sorted(grids)
        for sid, grid in grids.items():
            np.testing.assert_array_equal(reader.read_grid(sid).rgba, grid.rgba.astype(np.float16))

    def test_scene_zarr_json_is_plain_contract_layout(self, store):
        store.write_grid("s", make_grid(labels=False))
        raw = zarr.core.sync.sync(
            store._store.get("scenes/s/zarr.json", zarr.core.buffer.default_buffer_prototype())
        )
        attrs = json.loads(raw.to_bytes())["attributes"]
        assert attrs["complete"] is True and attrs["schema_version"] == SCHEMA_VERSION
        assert {"bbox_min", "bbox_max", "voxel_size", "delta", "resolution"} <= attrs.keys()
