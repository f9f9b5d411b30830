"""NeRF-MAE: the 3D Swin Transformer MAE, downstream heads and the training engine."""

from model.mae import MAEConfig, MAEOutput, NeRFMAE
from model.presets import PRESETS, build_mae, get_config, list_presets
from model.swin3d import SwinTransformer3D

__all__ = [
    "PRESETS",
    "MAEConfig",
    "MAEOutput",
    "NeRFMAE",
    "SwinTransformer3D",
    "build_mae",
    "get_config",
    "list_presets",
]
