"""Dask views of a grid store: every scene as a lazy array, statistics over a cluster.

Each scene's rgba is ``da.from_zarr`` of its zarr array, so one Dask block is one
``(4, 32, 32, 32)`` chunk: a reduction over many scenes runs chunk by chunk on whatever
scheduler is active (threads, or a ``distributed.Client`` once one is created), and
only the blocks a computation needs are ever read.
"""

from __future__ import annotations

import os

import dask
import dask.array as da

from grid_store.store import GridStore


def scene_arrays(
    url: str | os.PathLike, storage_options: dict | None = None
) -> dict[str, da.Array]:
    """``{scene_id: (4, X, Y, Z) float16 dask array}`` for every complete scene, sorted by id."""
    store = GridStore(url, mode="r", storage_options=storage_options)
    return {scene_id: store.rgba_dask(scene_id) for scene_id in store.list_scenes()}


def occupancy_fraction(rgba: da.Array, alpha_threshold: float = 0.01) -> da.Array:
    """Lazy fraction of voxels with alpha above the threshold; ``rgba`` is ``(4, X, Y, Z)``."""
    return (rgba[3] > alpha_threshold).mean()


def occupancy_fractions(
    url: str | os.PathLike,
    alpha_threshold: float = 0.01,
    storage_options: dict | None = None,
    client=None,
) -> dict[str, float]:
    """Occupancy fraction of every scene, computed in one graph.

    With ``client`` (a ``distributed.Client``) the graph runs on that cluster; without,
    on Dask's default scheduler (which is the client's, if one is active).
    """
    arrays = scene_arrays(url, storage_options=storage_options)
    lazy = {sid: occupancy_fraction(rgba, alpha_threshold) for sid, rgba in arrays.items()}
    if client is not None:
        values = client.compute(list(lazy.values()), sync=True)
    else:
        values = dask.compute(*lazy.values())
    return {sid: float(v) for sid, v in zip(lazy, values, strict=True)}
