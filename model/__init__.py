"""NeRF-MAE models and their training.

- :mod:`model.networks`: pure ``nn.Module`` s (encoder, MAE, skip network, detector, presets).
- :mod:`model.training`: the one task-agnostic engine (trainer, config, checkpoints,
  distributed, memory check, generated command lines); it never imports a task.
- :mod:`model.tasks`: the registry of tasks (pretrain, semantics, superres, detect) plugged
  into the engine, one module and one config class each.
- :mod:`model.metrics`, :mod:`model.pictures`: validation figures and pictures of each task.
- :mod:`model.detection`: oriented-box machinery (geometry, targets, losses, inference).
- :mod:`model.checkpoints`: every checkpoint format the project reads (NeRF-MAE's published
  files included), :func:`load_model`, transfer into fine-tuning networks, export.
- :mod:`model.inference`: trained networks applied to a store's scenes.
- ``python -m model.pretrain`` / ``python -m model.finetune``: the command-line entries.

The names below load on first use, so ``import model.tasks`` (the registry) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "MAEConfig": "model.networks.mae",
    "MAEOutput": "model.networks.mae",
    "NeRFMAE": "model.networks.mae",
    "SwinTransformer3D": "model.networks.swin3d",
    "PRESETS": "model.networks.presets",
    "build_mae": "model.networks.presets",
    "get_config": "model.networks.presets",
    "list_presets": "model.networks.presets",
    "load_model": "model.checkpoints.loading",
    "read_checkpoint": "model.checkpoints.reading",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
