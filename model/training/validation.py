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

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from model.training.task import Task


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


@torch.no_grad()
def validation_pass(
    task: Task,
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    picture: Path | None = None,
    title: str = "",
) -> tuple[Any, LossMeans]:
    """One pass of ``task``'s validation over ``batches`` with the bare ``model`` in eval
    mode (restored after): its metric and loss means, not yet merged over ranks; the first
    grid drawn to ``picture`` when given."""
    was_training = model.training
    model.eval()
    task.begin_validation()
    metric, losses = task.metric(), LossMeans()
    try:
        for i, batch in enumerate(batches):
            prediction = task.predict(model, batch, device, amp_dtype)
            metric.update(batch, prediction)
            losses.update(prediction.get("losses", {}), len(batch["scene_id"]))
            if i == 0 and picture is not None:
                task.draw(picture, batch, prediction, f"{title} scene {batch['scene_id'][0]}")
    finally:
        model.train(was_training)
    return metric, losses
