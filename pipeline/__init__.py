"""Grid extraction, synthetic scenes with ground truth, grid-format interop."""

from grid_store.grid import GridValidationError, RadianceGrid
from pipeline.extract import ExtractConfig, extract_grid
from pipeline.field import RadianceField
from pipeline.interop import export_rpn_npz, import_rpn_npz

__all__ = [
    "ExtractConfig",
    "GridValidationError",
    "RadianceField",
    "RadianceGrid",
    "export_rpn_npz",
    "extract_grid",
    "import_rpn_npz",
]
