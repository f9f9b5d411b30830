"""The grid contract, the Zarr grid store and lazy (Dask / PyTorch) loading."""

from grid_store.grid import (
    SCHEMA_VERSION,
    GridValidationError,
    RadianceGrid,
    alpha_from_density,
    grid_points,
    grid_shape_for_box,
)

__all__ = [
    "SCHEMA_VERSION",
    "GridValidationError",
    "RadianceGrid",
    "alpha_from_density",
    "grid_points",
    "grid_shape_for_box",
]
