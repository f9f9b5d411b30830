"""The one task-agnostic training engine: what every run shares, whatever its task.

- :mod:`~model.training.task`: the :class:`Task` interface a task implements.
- :mod:`~model.training.trainer`: the :class:`Trainer` (loop, validation, resume, logs).
- :mod:`~model.training.config`: :class:`TrainingConfig`, the scene split, batch fitting.
- :mod:`~model.training.steps`: autocast, gradient accumulation, the optimiser step.
- :mod:`~model.training.loaders`, :mod:`~model.training.validation`,
  :mod:`~model.training.run_folder`, :mod:`~model.training.checkpointing`,
  :mod:`~model.training.distributed`, :mod:`~model.training.memory`,
  :mod:`~model.training.cli` (command lines generated from config classes).

Nothing here imports a task (:mod:`model.tasks` does the reverse).
"""
