"""The registry of training tasks: name -> the task class, imported on first use.

Each task is one module with one :class:`~model.training.task.Task` subclass and one config
class (its ``config_class``, a :class:`~model.training.config.TrainingConfig`):

====================  ============================================  =====================
name                  task                                          config
====================  ============================================  =====================
``pretrain``          :class:`model.tasks.pretrain.MAETask`          ``PretrainConfig``
``semantics``         :class:`model.tasks.semantics.SemanticsTask`   ``SemanticsConfig``
``superres``          :class:`model.tasks.superres.SuperResolutionTask`  ``SuperresConfig``
``detect``            :class:`model.tasks.detect.DetectionTask`      ``DetectConfig``
====================  ============================================  =====================

Adding a task: write its module (the task, its config with ``task = "<name>"``, its
metric and picture), add one line to :data:`TASKS`. The command lines
(``nerfmae pretrain|finetune``, ``python -m model.pretrain|finetune``), the flows' reports
and the contract tests (``tests/test_task_contract.py``) pick it up from here.

Importing this module imports neither torch nor any task.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.training.config import TrainingConfig
    from model.training.task import Task

TASKS: dict[str, str] = {
    "pretrain": "model.tasks.pretrain:MAETask",
    "semantics": "model.tasks.semantics:SemanticsTask",
    "superres": "model.tasks.superres:SuperResolutionTask",
    "detect": "model.tasks.detect:DetectionTask",
}
"""Task name -> ``module:class``."""

PRETRAINING = "pretrain"
FINETUNE_TASKS = tuple(name for name in TASKS if name != PRETRAINING)
"""The downstream tasks (``nerfmae finetune TASK``)."""


def task_class(name: str) -> type[Task]:
    """The task class registered as ``name`` (its module is imported now)."""
    if name not in TASKS:
        raise ValueError(f"task: unknown task {name!r}; known: {', '.join(TASKS)}")
    module, _, attribute = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def config_class(name: str) -> type[TrainingConfig]:
    """The config class of the task registered as ``name``."""
    return task_class(name).config_class


def make_config(name: str, **fields: Any) -> TrainingConfig:
    """``config_class(name)(**fields)``: a run's config from its task name and fields."""
    return config_class(name)(**fields)


def train(config: TrainingConfig) -> dict[str, Any]:
    """Run ``config``'s task on this process's rank (under ``torchrun`` every rank calls
    this; rank 0 writes the run folder); returns the summary (also ``RUN/metrics.json``)."""
    from model.training.trainer import run_task

    task = task_class(config.task)
    if not isinstance(config, task.config_class):
        raise ValueError(f"task: a {type(config).__name__} is not a {task.name!r} config "
                         f"({task.config_class.__name__})")  # fmt: skip
    return run_task(config, task)


def finetune(config: TrainingConfig) -> dict[str, Any]:
    """:func:`train` for a downstream task's config (pretraining configs are refused)."""
    if config.task not in FINETUNE_TASKS:
        raise ValueError(f"task: {config.task!r} is not a fine-tuning task "
                         f"({', '.join(FINETUNE_TASKS)})")  # fmt: skip
    return train(config)


__all__ = ["FINETUNE_TASKS", "TASKS", "config_class", "finetune", "make_config", "task_class",
           "train"]  # fmt: skip
