"""GridStore: many scenes' radiance grids in one Zarr v3 store (DESIGN contract 2).

Layout::

    <url>/zarr.json                     attrs {"format": "nerf-mae-grids", "schema_version": 1}
    <url>/scenes/<scene_id>/zarr.json   attrs: grid metadata, then "complete": true (written last)
    <url>/scenes/<scene_id>/rgba        (4, X, Y, Z) float16, chunks (4, 32, 32, 32), zstd
                                        (Blosc zstd level 5 with byte shuffle, see BLOSC_ZSTD)
    <url>/scenes/<scene_id>/semantic    optional (X, Y, Z) uint8
    <url>/scenes/<scene_id>/boxes       optional (N, 7) float32, with box_labels (N,) int64

Crash safety without renames: object stores (S3) cannot rename a prefix, so a scene is
written in place and made visible by one final metadata write. A rerun first rewrites the
scene's ``zarr.json`` without ``complete`` (one atomic put: a rename on local disks, a
PUT on S3), then deletes the old scene, then writes arrays, then the attrs with
``complete: true``. A writer killed at any point therefore leaves either the previous
complete scene or an invisible partial one, never a visible half-written scene. Readers
only ever trust the ``complete`` flag. Writers of *different* scenes touch disjoint keys
(the root and ``scenes`` groups are created with identical content, and zarr creates
missing parents with put-if-absent), so they may run at once; two writers of the *same*
scene id at once are not supported (the last one to finish wins, possibly mixed).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
import zarr.errors
from zarr.abc.store import Store
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from grid_store.grid import SCHEMA_VERSION, GridValidationError, RadianceGrid

CREATE_WAIT_S = 2.0
"""How long an opener waits for another writer to finish creating a new store."""

log = logging.getLogger(__name__)

STORE_FORMAT = "nerf-mae-grids"
SCENES_GROUP = "scenes"
CHUNK_EDGE = 32
# zstd inside Blosc with byte shuffle: shuffling puts the float16 high bytes (sign,
# exponent) together, which zstd then squeezes. Measured on synthetic 160^3 rooms
# (benchmarks/bench_store.py): plain zstd-3 0.43 of raw float16, Blosc-zstd-5+shuffle
# 0.34, and 4x faster to decode. Level 7+ saves ~2% more for 4x the write time.
ZSTD_LEVEL = 5


def _compressor() -> zarr.codecs.BloscCodec:
    return zarr.codecs.BloscCodec(cname="zstd", clevel=ZSTD_LEVEL, shuffle="shuffle")


SCENE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Attributes the store derives from the grid arrays / owns; extra_attrs may not set them.
_RESERVED_ATTRS = frozenset(
    {"bbox_min", "bbox_max", "voxel_size", "delta", "resolution", "complete"}
)


class StoreFormatError(ValueError):
    """The URL holds something that is not a grid store this code can read."""


class InvalidSceneIdError(ValueError):
    """A scene id that could escape its folder or is not portable across backends."""


class SceneNotFoundError(KeyError, ValueError):
    """No complete scene of that id in the store (absent, or a writer never finished it).

    A ``KeyError`` to code that looks scenes up, and a ``ValueError`` because the id is
    usually a user's input: command lines report it as bad input, without a traceback."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


def validate_scene_id(scene_id: str) -> str:
    """Return ``scene_id`` if it matches ``[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`` and has no ``..``."""
    if not isinstance(scene_id, str):
        raise InvalidSceneIdError(f"scene_id must be a string, got {type(scene_id).__name__}")
    if not scene_id:
        raise InvalidSceneIdError("scene_id is empty")
    if len(scene_id) > 128:
        raise InvalidSceneIdError(f"scene_id is {len(scene_id)} characters long (at most 128)")
    if "/" in scene_id or "\\" in scene_id:
        raise InvalidSceneIdError(f"scene_id {scene_id!r} contains a path separator")
    if ".." in scene_id:
        raise InvalidSceneIdError(f"scene_id {scene_id!r} contains '..'")
    if scene_id == "zarr.json":
        raise InvalidSceneIdError("scene_id 'zarr.json' is the name of the store's metadata file")
    if not SCENE_ID_PATTERN.fullmatch(scene_id):
        raise InvalidSceneIdError(
            f"scene_id {scene_id!r} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}"
        )
    return scene_id


def _is_scene_id(name: str) -> bool:
    try:
        validate_scene_id(name)
    except InvalidSceneIdError:
        return False
    return True


async def _collect(items: AsyncIterator[str]) -> list[str]:
    return [item async for item in items]


def open_zarr_store(
    url: str | os.PathLike, *, read_only: bool, storage_options: dict | None = None
) -> Store:
    """The zarr store behind a URL: ``LocalStore`` for paths, ``FsspecStore`` otherwise.

    ``memory://`` goes through fsspec's process-wide memory filesystem (not
    ``zarr.storage.MemoryStore``) so two ``GridStore("memory://x")`` share their data, as
    two handles on the same S3 bucket or folder do.
    """
    url = os.fspath(url)
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" not in url:
        if storage_options:
            raise ValueError(f"{url}: storage_options only apply to fsspec URLs (s3://, memory://)")
        path = Path(url).expanduser()
        if read_only and not path.exists():
            raise FileNotFoundError(f"{url}: no grid store at this path")
        return LocalStore(path, read_only=read_only)
    options = dict(storage_options or {})
    if url.startswith(("s3://", "s3a://")):
        # Other processes add scenes: a cached bucket listing would hide them.
        options.setdefault("use_listings_cache", False)
    return FsspecStore.from_url(url, storage_options=options, read_only=read_only)


def _chunks_for(shape: tuple[int, ...]) -> tuple[int, ...]:
    # (4, 32, 32, 32) clipped so a small grid is one chunk, not a mostly-empty one.
    return (shape[0], *(min(CHUNK_EDGE, s) for s in shape[1:]))


class GridStore:
    """Read and write ``RadianceGrid`` scenes in a Zarr v3 store at any fsspec URL.

    Args:
        url: a local path, ``memory://name``, ``s3://bucket/prefix`` (any fsspec URL).
        mode: ``"r"`` read-only (the store must exist), ``"a"`` read/write, creating the
            store if nothing is there.
        storage_options: passed to fsspec (e.g. ``{"endpoint_url": ..., "key": ...}``).
    """

    def __init__(
        self, url: str | os.PathLike, mode: str = "a", storage_options: dict | None = None
    ):
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        self.url = os.fspath(url)
        self.mode = mode
        self.storage_options = dict(storage_options or {})
        self._store = open_zarr_store(
            self.url, read_only=mode == "r", storage_options=self.storage_options
        )
        self._root = self._open_root()
        self._scenes = self._root.require_group(SCENES_GROUP) if mode == "a" else None

    @classmethod
    def from_zarr_store(cls, store: Store, url: str = "<zarr store>") -> GridStore:
        """A GridStore over an already-open zarr store (tests wrap stores to count reads)."""
        self = cls.__new__(cls)
        self.url, self.storage_options = url, {}
        self.mode = "r" if store.read_only else "a"
        self._store = store
        self._root = self._open_root()
        self._scenes = self._root.require_group(SCENES_GROUP) if self.mode == "a" else None
        return self

    def __repr__(self) -> str:
        return f"GridStore({self.url!r}, mode={self.mode!r})"

    # ------------------------------------------------------------------ opening
    def _open_root(self) -> zarr.Group:
        # Two writers may open a new store at once: while one writes zarr.json the other
        # sees a folder that is not empty and has no (or half a) zarr.json. Wait for it a
        # moment before calling the folder foreign or the file unreadable.
        deadline = time.monotonic() + CREATE_WAIT_S
        while True:
            try:
                root = zarr.open_group(
                    self._store, mode="r" if self.mode == "r" else "r+", zarr_format=None
                )
                break
            except (zarr.errors.GroupNotFoundError, FileNotFoundError):
                if self.mode == "r":
                    raise FileNotFoundError(
                        f"{self.url}: no grid store here (no zarr.json)"
                    ) from None
                if sync(self._store.is_empty("")):
                    return self._create_root()
                if time.monotonic() > deadline:
                    raise StoreFormatError(
                        f"{self.url}: not empty and has no zarr.json; refusing to create a "
                        "grid store here"
                    ) from None
            except zarr.errors.ContainsArrayError as exc:
                raise StoreFormatError(
                    f"{self.url}: holds a single Zarr array, not a grid store"
                ) from exc
            except (json.JSONDecodeError, ValueError, TypeError) as exc:
                if time.monotonic() > deadline:
                    raise StoreFormatError(f"{self.url}: unreadable zarr.json ({exc})") from exc
            time.sleep(0.05)
        if root.metadata.zarr_format != 3:
            raise StoreFormatError(
                f"{self.url}: a Zarr v{root.metadata.zarr_format} group; grid stores are Zarr v3"
            )
        attrs = dict(root.attrs)
        if attrs.get("format") != STORE_FORMAT:
            raise StoreFormatError(
                f"{self.url}: zarr.json attribute 'format' is {attrs.get('format')!r}, "
                f"expected {STORE_FORMAT!r} (not a NeRF-MAE grid store)"
            )
        version = attrs.get("schema_version")
        if not isinstance(version, int) or version < 1:
            raise StoreFormatError(
                f"{self.url}: zarr.json attribute 'schema_version' is {version!r}"
            )
        if version > SCHEMA_VERSION:
            raise StoreFormatError(
                f"{self.url}: zarr.json attribute 'schema_version' is {version}, newer than the "
                f"{SCHEMA_VERSION} this code reads; upgrade nerf-mae to read this store"
            )
        return root

    def _create_root(self) -> zarr.Group:
        root = zarr.open_group(self._store, mode="a", zarr_format=3)
        # Identical content from every writer, so racing creators agree.
        root.attrs.put({"format": STORE_FORMAT, "schema_version": SCHEMA_VERSION})
        return root

    def _writable_scenes(self) -> zarr.Group:
        if self._scenes is None:
            raise PermissionError(f"{self.url}: opened read-only (mode='r')")
        return self._scenes

    def _scene_path(self, scene_id: str) -> str:
        return f"{SCENES_GROUP}/{validate_scene_id(scene_id)}"

    # ------------------------------------------------------------------ reading
    def _complete_group(self, scene_id: str) -> zarr.Group | None:
        """The scene's group if it is complete, else None (absent, partial or unreadable)."""
        try:
            group = zarr.open_group(
                self._store, path=self._scene_path(scene_id), mode="r", zarr_format=3
            )
        except (zarr.errors.GroupNotFoundError, zarr.errors.ContainsArrayError, FileNotFoundError):
            return None
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            if isinstance(exc, InvalidSceneIdError):
                raise
            log.warning(
                "%s: scene %s has unreadable metadata, ignored (%s)", self.url, scene_id, exc
            )
            return None
        return group if group.attrs.get("complete") is True else None

    def _require_scene(self, scene_id: str) -> zarr.Group:
        group = self._complete_group(scene_id)
        if group is None:
            raise SceneNotFoundError(
                f"{self.url}: no complete scene {scene_id!r} ({self._scenes_named()})"
            )
        version = group.attrs.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise StoreFormatError(
                f"{self.url}: scene {scene_id!r} attribute 'schema_version' is {version}, newer "
                f"than the {SCHEMA_VERSION} this code reads"
            )
        return group

    def list_scenes(self) -> list[str]:
        """Ids of the complete scenes, sorted. Partial (crashed) scenes are not listed."""
        # Raw listing, not Group.group_keys(): that parses every child and one torn
        # zarr.json from a killed writer would break the whole listing.
        names = sync(_collect(self._store.list_dir(f"{SCENES_GROUP}/")))
        return sorted(
            n for n in set(names) if _is_scene_id(n) and self._complete_group(n) is not None
        )

    def _scenes_named(self, shown: int = 5) -> str:
        """The first few scene ids, for an error about one that is not there."""
        scenes = self.list_scenes()
        if not scenes:
            return "the store has no complete scenes"
        more = ", ..." if len(scenes) > shown else ""
        return f"the store has {len(scenes)} scenes: {', '.join(scenes[:shown])}{more}"

    def has_scene(self, scene_id: str, config_hash: str | None = None) -> bool:
        """True if the scene is complete (and was written with ``config_hash``, when given)."""
        group = self._complete_group(scene_id)
        if group is None:
            return False
        return config_hash is None or group.attrs.get("config_hash") == config_hash

    def scene_attrs(self, scene_id: str) -> dict[str, Any]:
        """The scene's attributes (grid metadata, extra attrs, ``complete``)."""
        return dict(self._require_scene(scene_id).attrs)

    def scene_zarr_arrays(self, scene_id: str) -> dict[str, zarr.Array]:
        """The complete scene's zarr arrays by name (``rgba``, and ``semantic``... if stored)."""
        return dict(self._require_scene(scene_id).arrays())

    def rgba_array(self, scene_id: str) -> zarr.Array:
        """The scene's ``(4, X, Y, Z)`` float16 zarr array (lazy: slicing reads only its chunks)."""
        array = self._require_scene(scene_id)["rgba"]
        assert isinstance(array, zarr.Array)
        return array

    def rgba_dask(self, scene_id: str):
        """The scene's rgba as a lazy ``(4, X, Y, Z)`` float16 Dask array, one block per chunk."""
        import dask.array as da

        return da.from_zarr(self.rgba_array(scene_id))

    def read_grid(self, scene_id: str) -> RadianceGrid:
        """Load a complete scene into memory (rgba stays float16, as stored)."""
        group = self._require_scene(scene_id)
        attrs = dict(group.attrs)
        members = set(group.array_keys())
        try:
            return RadianceGrid(
                rgba=group["rgba"][...],
                bbox_min=attrs["bbox_min"],
                bbox_max=attrs["bbox_max"],
                voxel_size=attrs["voxel_size"],
                delta=attrs["delta"],
                semantic=group["semantic"][...] if "semantic" in members else None,
                boxes=group["boxes"][...] if "boxes" in members else None,
                box_labels=group["box_labels"][...] if "box_labels" in members else None,
                meta={k: v for k, v in attrs.items() if k not in _RESERVED_ATTRS},
            )
        except KeyError as exc:
            raise StoreFormatError(f"{self.url}: scene {scene_id!r} lacks {exc}") from exc
        except GridValidationError as exc:
            raise GridValidationError(f"{self.url}: scene {scene_id!r}: {exc}") from exc

    # ------------------------------------------------------------------ writing
    def write_grid(
        self, scene_id: str, grid: RadianceGrid, *, extra_attrs: Mapping[str, Any] | None = None
    ) -> None:
        """Write (or replace) one scene; it becomes visible only when fully written."""
        scenes = self._writable_scenes()
        attrs = self._attrs_to_write(scene_id, grid, extra_attrs)
        rgba = np.asarray(grid.rgba)  # (4, X, Y, Z)
        if rgba.ndim != 4 or rgba.shape[0] != 4 or rgba.dtype.kind != "f":
            raise GridValidationError(
                f"scene {scene_id!r}: rgba must be (4, X, Y, Z) floats, "
                f"got {rgba.shape} {rgba.dtype}"
            )
        rgba = rgba.astype(np.float16, copy=False)
        if not np.isfinite(rgba).all():
            raise GridValidationError(f"scene {scene_id!r}: rgba has NaN/Inf (after float16 cast)")

        self._invalidate(scene_id)
        group = scenes.create_group(scene_id, overwrite=True)
        zstd = _compressor()
        group.create_array(
            "rgba",
            data=rgba,
            chunks=_chunks_for(rgba.shape),
            compressors=zstd,
            fill_value=0.0,
            dimension_names=("channel", "x", "y", "z"),
        )
        if grid.semantic is not None:
            group.create_array(
                "semantic",
                data=grid.semantic,
                chunks=_chunks_for((1, *grid.shape))[1:],
                compressors=zstd,
                fill_value=0,
                dimension_names=("x", "y", "z"),
            )
        if grid.boxes is not None:
            group.create_array("boxes", data=grid.boxes, compressors=zstd, fill_value=0.0)
            group.create_array("box_labels", data=grid.box_labels, compressors=zstd, fill_value=0)
        # The one write that makes the scene visible: everything above is already stored.
        group.attrs.put({**attrs, "complete": True})
        log.info("%s: wrote scene %s %s", self.url, scene_id, grid.shape)

    def _attrs_to_write(
        self, scene_id: str, grid: RadianceGrid, extra_attrs: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """Everything that can be wrong is checked here, before the store is touched."""
        validate_scene_id(scene_id)
        if not isinstance(grid, RadianceGrid):
            raise TypeError(
                f"scene {scene_id!r}: expected a RadianceGrid, got {type(grid).__name__}"
            )
        attrs = grid.metadata()
        if attrs["schema_version"] > SCHEMA_VERSION:
            raise GridValidationError(
                f"scene {scene_id!r}: grid schema_version {attrs['schema_version']} is newer "
                f"than this store's {SCHEMA_VERSION}"
            )
        extra = dict(extra_attrs or {})
        clash = sorted(_RESERVED_ATTRS & extra.keys())
        if clash:
            raise ValueError(
                f"scene {scene_id!r}: extra_attrs may not set {clash} (derived from the grid)"
            )
        attrs.update(extra)
        try:
            return json.loads(json.dumps(attrs, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"scene {scene_id!r}: attributes are not JSON-serialisable ({exc})"
            ) from exc

    def _invalidate(self, scene_id: str) -> None:
        """Hide an existing scene (one atomic metadata write) before its arrays are touched."""
        try:
            group = zarr.open_group(
                self._store, path=self._scene_path(scene_id), mode="r+", zarr_format=3
            )
        except (zarr.errors.GroupNotFoundError, zarr.errors.ContainsArrayError, FileNotFoundError):
            return
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            if isinstance(exc, InvalidSceneIdError):
                raise
            return  # unreadable metadata is already invisible; delete_dir removes it
        if "complete" in group.attrs:
            group.attrs.put({"complete": False})

    def delete(self, scene_id: str) -> None:
        """Remove a scene (complete or partial); hidden first, so readers never see it half-gone."""
        self._writable_scenes()
        self._invalidate(scene_id)
        sync(self._store.delete_dir(self._scene_path(scene_id)))
        log.info("%s: deleted scene %s", self.url, scene_id)
