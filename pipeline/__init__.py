"""Grid extraction, synthetic scenes with ground truth, grid-format interop."""

from grid_store.grid import GridValidationError, RadianceGrid
from pipeline.field import RadianceField

__all__ = ["GridValidationError", "RadianceField", "RadianceGrid"]
