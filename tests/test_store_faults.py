"""Faults: a writer killed mid-write, stores of another format or a newer schema, bad ids.

The killed writer is a real subprocess running ``GridStore.write_grid`` on a local
store whose chunk writes are slowed down (a zarr ``WrapperStore`` sleeping on each
chunk key), so the SIGKILL lands while chunk files are appearing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from grid_store import GridStore, InvalidSceneIdError, StoreFormatError, validate_scene_id
from grid_store.grid import RadianceGrid

REPO_ROOT = Path(__file__).resolve().parents[1]

# Writes make_grid(seed, shape) as scene_id; each chunk write sleeps `delay` seconds.
WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from zarr.storage import LocalStore, WrapperStore
    from grid_store import GridStore, RadianceGrid

    url, scene_id = sys.argv[1], sys.argv[2]
    seed, edge, delay = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])

    class SlowChunkStore(WrapperStore):
        async def set(self, key, value):
            if "/c/" in key:
                time.sleep(delay)
            await self._store.set(key, value)

    rng = np.random.default_rng(seed)
    shape = (4, edge, edge, edge)
    grid = RadianceGrid(rgba=rng.random(shape, dtype=np.float32), bbox_min=[0, 0, 0],
                        bbox_max=[(edge - 1) * 0.1] * 3, voxel_size=0.1, delta=0.1)
    store = GridStore.from_zarr_store(SlowChunkStore(LocalStore(url)), url=url)
    store.write_grid(scene_id, grid)
    """
)


def grid_like_writer(seed: int, edge: int) -> RadianceGrid:
    rng = np.random.default_rng(seed)
    return RadianceGrid(
        rgba=rng.random((4, edge, edge, edge), dtype=np.float32),
        bbox_min=[0, 0, 0],
        bbox_max=[(edge - 1) * 0.1] * 3,
        voxel_size=0.1,
        delta=0.1,
    )


def start_writer(url: str, scene_id: str, seed: int, edge: int, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, url, scene_id, str(seed), str(edge), str(delay)],
        env=env,
        stderr=subprocess.PIPE,
    )


def kill_after_first_chunks(proc: subprocess.Popen, chunk_dir: Path, timeout: float = 30.0) -> int:
    """SIGKILL the writer as soon as it has written a chunk file; returns chunks on disk."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        written = [p for p in chunk_dir.rglob("*") if p.is_file()] if chunk_dir.exists() else []
        if written:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            return len(written)
        if proc.poll() is not None:
            raise AssertionError(
                f"writer exited before writing a chunk: {proc.stderr.read().decode()}"
            )
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("writer wrote no chunk in time")


@pytest.fixture
def store_url(tmp_path) -> str:
    return str(tmp_path / "grids.zarr")


@pytest.mark.slow
def test_killed_writer_leaves_others_intact_and_partial_invisible(store_url):
    store = GridStore(store_url)
    keep = grid_like_writer(seed=1, edge=20)
    store.write_grid("keep", keep)

    # 64^3 -> 8 chunks at 0.5 s each: the kill lands long before the last one.
    proc = start_writer(store_url, "victim", seed=2, edge=64, delay=0.5)
    n_chunks = kill_after_first_chunks(proc, Path(store_url) / "scenes" / "victim" / "rgba" / "c")
    assert proc.returncode == -signal.SIGKILL and 1 <= n_chunks < 8

    reader = GridStore(store_url, mode="r")
    assert reader.list_scenes() == ["keep"]
    assert not reader.has_scene("victim")
    with pytest.raises(KeyError, match="victim"):
        reader.read_grid("victim")
    np.testing.assert_array_equal(reader.read_grid("keep").rgba, keep.rgba.astype(np.float16))

    victim = grid_like_writer(seed=2, edge=64)
    store.write_grid("victim", victim)  # the rerun completes it
    reader = GridStore(store_url, mode="r")
    assert reader.list_scenes() == ["keep", "victim"]
    np.testing.assert_array_equal(reader.read_grid("victim").rgba, victim.rgba.astype(np.float16))


@pytest.mark.slow
def test_writer_killed_while_replacing_a_scene_never_shows_a_mix(store_url):
    store = GridStore(store_url)
    store.write_grid("s", grid_like_writer(seed=3, edge=64))
    proc = start_writer(store_url, "s", seed=4, edge=64, delay=0.5)
    # The old chunk files are deleted before the new ones appear; wait for new ones.
    chunk_dir = Path(store_url) / "scenes" / "s" / "rgba" / "c"
    deadline = time.monotonic() + 30
    while chunk_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    kill_after_first_chunks(proc, chunk_dir)
    # The old version was hidden before its data was touched: now the scene is simply absent.
    assert GridStore(store_url, mode="r").list_scenes() == []
    new = grid_like_writer(seed=4, edge=64)
    store.write_grid("s", new)
    np.testing.assert_array_equal(store.read_grid("s").rgba, new.rgba.astype(np.float16))


@pytest.mark.slow
def test_writer_processes_of_different_scenes_run_at_once(store_url):
    procs = [start_writer(store_url, f"p{i}", seed=i, edge=40, delay=0.01) for i in range(2)]
    for proc in procs:
        assert proc.wait(60) == 0, proc.stderr.read().decode()
    reader = GridStore(store_url, mode="r")
    assert reader.list_scenes() == ["p0", "p1"]
    for i in range(2):
        expected = grid_like_writer(seed=i, edge=40).rgba.astype(np.float16)
        np.testing.assert_array_equal(reader.read_grid(f"p{i}").rgba, expected)


# ---------------------------------------------------------------- wrong formats
def test_other_zarr_group_is_refused_naming_the_attribute(tmp_path):
    zarr.open_group(tmp_path / "other.zarr", mode="w").attrs.put({"format": "something-else"})
    for mode in ("r", "a"):
        with pytest.raises(StoreFormatError, match=r"other\.zarr.*'format'.*something-else"):
            GridStore(tmp_path / "other.zarr", mode=mode)


def test_newer_schema_version_is_refused(tmp_path):
    url = tmp_path / "new.zarr"
    GridStore(url)
    root = zarr.open_group(url, mode="r+")
    root.attrs.put({"format": "nerf-mae-grids", "schema_version": 99})
    with pytest.raises(StoreFormatError, match=r"new\.zarr.*schema_version.*99.*upgrade"):
        GridStore(url, mode="r")


def test_newer_scene_schema_version_is_refused_on_read(tmp_path):
    store = GridStore(tmp_path / "s.zarr")
    store.write_grid("s", grid_like_writer(0, 8))
    group = zarr.open_group(tmp_path / "s.zarr", path="scenes/s", mode="r+")
    group.attrs.put({**group.attrs, "schema_version": 7})
    with pytest.raises(StoreFormatError, match="scene 's'.*schema_version.*7"):
        store.read_grid("s")


def test_zarr_v2_group_and_bare_array_are_refused(tmp_path):
    zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    with pytest.raises(StoreFormatError, match="Zarr v2"):
        GridStore(tmp_path / "v2.zarr")
    zarr.create_array(tmp_path / "arr.zarr", shape=(4,), dtype="f4")
    with pytest.raises(StoreFormatError, match="single Zarr array"):
        GridStore(tmp_path / "arr.zarr", mode="r")


def test_opening_waits_for_a_writer_that_is_creating_the_store(tmp_path):
    """Another writer has begun creating the store (half a zarr.json on disk) and finishes
    0.3 s later: opening waits for it instead of calling the store unreadable or foreign
    (two processes creating one store at once failed 3 runs in 40 before)."""
    import threading

    url = tmp_path / "new.zarr"
    url.mkdir()
    (url / "zarr.json").write_text('{"zarr_format": 3, "node_')
    finished = GridStore(tmp_path / "done.zarr")  # what the other writer is writing

    def finish() -> None:
        time.sleep(0.3)
        (url / "zarr.json").write_bytes((tmp_path / "done.zarr" / "zarr.json").read_bytes())

    threading.Thread(target=finish).start()
    store = GridStore(url, mode="a")
    assert store.list_scenes() == finished.list_scenes() == []


def test_unrelated_folder_is_not_turned_into_a_store(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(StoreFormatError, match="not empty"):
        GridStore(tmp_path / "photos")
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["cat.jpg"]


def test_missing_store_read_only_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        GridStore(tmp_path / "nothing.zarr", mode="r")


def test_corrupt_scene_metadata_is_invisible_not_fatal(tmp_path):
    store = GridStore(tmp_path / "s.zarr")
    store.write_grid("ok", grid_like_writer(0, 8))
    store.write_grid("torn", grid_like_writer(1, 8))
    (tmp_path / "s.zarr" / "scenes" / "torn" / "zarr.json").write_text('{"zarr_format": 3, "node')
    assert store.list_scenes() == ["ok"]
    store.write_grid("torn", grid_like_writer(1, 8))  # a rerun repairs it
    assert store.list_scenes() == ["ok", "torn"]
    meta = json.loads((tmp_path / "s.zarr" / "scenes" / "torn" / "zarr.json").read_text())
    assert meta["attributes"]["complete"] is True


# ------------------------------------------------------------------ scene ids
@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        "../x",
        "a/../b",
        "a/b",
        "a\\b",
        "/abs",
        ".hidden",
        "-dash",
        "_u",
        "a b",
        "é",
        "x" * 129,
        "a..b",
        "zarr.json",
    ],
)
def test_invalid_scene_ids(bad):
    with pytest.raises(InvalidSceneIdError):
        validate_scene_id(bad)


@pytest.mark.parametrize("good", ["a", "0", "scene_0001", "Room-3.v2", "x" * 128])
def test_valid_scene_ids(good):
    assert validate_scene_id(good) == good


def test_invalid_id_is_a_value_error_and_nothing_is_written(tmp_path):
    store = GridStore(tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="separator"):
        store.write_grid("../../etc", grid_like_writer(0, 8))
    assert sorted(p.name for p in (tmp_path / "s.zarr" / "scenes").iterdir()) == ["zarr.json"]
    assert not (tmp_path / "etc").exists()
