"""Validation accumulators the trainer composes with each task's own metric.

- :class:`LossMeans`: the loss terms a task's prediction carries (``prediction["losses"]``),
  averaged over validation grids (a batch weighs by its size, so a short last batch does
  not count as a full one), reported as ``val_<term>``.
- :class:`BatchMetric`: a metric accumulator of :mod:`model.metrics` (``state_dict`` /
  ``merge`` / ``compute``) fed one batch at a time by a function of the task's, which is
  what a task's :meth:`~model.training.task.Task.metric` returns.

Both merge over ranks through their states (gathered by the trainer), so the figures are
those of the whole validation set, not of rank 0's share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class LossMeans:
    """Sums of ``term x batch size`` and the grid count; :meth:`compute` gives the means."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.grids = 0

    def update(self, losses: dict[str, torch.Tensor], grids: int) -> None:
        for term, value in losses.items():
            self.sums[term] = self.sums.get(term, 0.0) + float(value) * grids
        self.grids += grids

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "grids": self.grids}

    def merge(self, state: dict[str, Any]) -> None:
        for term, value in state["sums"].items():
            self.sums[term] = self.sums.get(term, 0.0) + value
        self.grids += state["grids"]

    def compute(self) -> dict[str, float | None]:
        return {term: total / self.grids if self.grids else None
                for term, total in self.sums.items()}  # fmt: skip


class BatchMetric:
    """A metric accumulator fed by ``feed(accumulator, batch, prediction)`` per batch."""

    def __init__(self, accumulator: Any, feed: Callable[[Any, dict, Any], None]) -> None:
        self.accumulator = accumulator
        self.feed = feed

    def update(self, batch: dict[str, Any], prediction: Any) -> None:
        self.feed(self.accumulator, batch, prediction)

    def state_dict(self) -> dict[str, Any]:
        return self.accumulator.state_dict()

    def merge(self, state: dict[str, Any]) -> None:
        self.accumulator.merge(state)

    def compute(self) -> dict[str, Any]:
        return self.accumulator.compute()
