"""Per-scene hash-grid NeRF training (tiny-cuda-nn on a GPU, pure PyTorch elsewhere)."""

from nerf_training.field import FieldConfig, NGPField, cpu_field_config
from nerf_training.hash_encoding import HashEncodingConfig
from nerf_training.occupancy import OccupancyGrid, OccupancyGridConfig
from nerf_training.run import TrainedRun, load_run, train_nerf
from nerf_training.trainer import NerfTrainer, TrainerConfig

__all__ = [
    "FieldConfig",
    "HashEncodingConfig",
    "NGPField",
    "NerfTrainer",
    "OccupancyGrid",
    "OccupancyGridConfig",
    "TrainedRun",
    "TrainerConfig",
    "cpu_field_config",
    "load_run",
    "train_nerf",
]
