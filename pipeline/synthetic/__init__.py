"""Synthetic indoor scenes with exact ground truth (issue 2, item 6).

A seed gives a procedural room (:func:`make_room`): floor, walls, ceiling and
furniture of several classes, defined as an analytic radiance field (contract 3).
:func:`generate_scene` renders posed images of that same field and writes them with
the exact ground-truth grid, semantic labels and oriented boxes as a scene folder
(contract 4); ``nerfmae synth`` runs it for many seeds.
"""

from pipeline.synthetic.analytic_field import BoxParts, BoxUnionField, FieldConfig
from pipeline.synthetic.cameras import (
    CameraLoop,
    CameraPathConfig,
    Intrinsics,
    camera_path,
    pixel_rays,
)
from pipeline.synthetic.furniture import CLASS_ID, FURNITURE_CLASSES, SEMANTIC_CLASSES
from pipeline.synthetic.ground_truth import GroundTruthConfig, sample_ground_truth
from pipeline.synthetic.render import RenderConfig, render_rays, render_views
from pipeline.synthetic.room import RoomConfig, SyntheticRoom, make_room
from pipeline.synthetic.writer import DepthConfig, generate_scene

__all__ = [
    "DepthConfig",
    "CLASS_ID",
    "FURNITURE_CLASSES",
    "SEMANTIC_CLASSES",
    "BoxParts",
    "BoxUnionField",
    "CameraLoop",
    "CameraPathConfig",
    "FieldConfig",
    "GroundTruthConfig",
    "Intrinsics",
    "RenderConfig",
    "RoomConfig",
    "SyntheticRoom",
    "camera_path",
    "generate_scene",
    "make_room",
    "pixel_rays",
    "render_rays",
    "render_views",
    "sample_ground_truth",
]
