"""The grid contract, the Zarr grid store and lazy (Dask / PyTorch) loading.

``GridDataset`` lives in ``grid_store.dataset`` (the only module importing torch) and
the Dask helpers in ``grid_store.lazy``; neither is imported here, so using the store
does not pull in torch.
"""

from grid_store.grid import (
    SCHEMA_VERSION,
    GridValidationError,
    RadianceGrid,
    alpha_from_density,
    grid_points,
    grid_shape_for_box,
)
from grid_store.store import (
    GridStore,
    InvalidSceneIdError,
    SceneNotFoundError,
    StoreFormatError,
    validate_scene_id,
)

__all__ = [
    "SCHEMA_VERSION",
    "GridStore",
    "GridValidationError",
    "InvalidSceneIdError",
    "RadianceGrid",
    "SceneNotFoundError",
    "StoreFormatError",
    "alpha_from_density",
    "grid_points",
    "grid_shape_for_box",
    "validate_scene_id",
]
