"""What a kind of training run plugs into the :class:`~model.training.trainer.Trainer`.

A :class:`Task` supplies what differs between pretraining and each downstream task: its
config class, datasets, network, the batch -> loss terms step, and for validation a
prediction per batch, a metric that accumulates them and a picture of the first one. The
trainer owns the rest, the validation loop included (mmengine's runner/hook split,
detectron2's ``engine`` vs ``modeling``): it never imports a task, tasks are found through
:data:`model.tasks.TASKS`.

Batches reach a task as :func:`grid_store.dataset.collate_grids` makes them (zero-copy
from the loader's workers): ``rgba`` ``(B, 4, S, S, S)`` float32, ``valid`` ``(B, S, S, S)``
bool, ``scene_id`` list, and what the task's datasets add (``semantic`` ``(B, S, S, S)``
uint8, ``target`` ``(B, 4, S', S', S')``, ``boxes`` / ``box_labels`` lists). Tasks pick and
convert keys on the device; they never copy a batch on the host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from model.training.config import TrainingConfig

Batch = dict[str, Any]


def report_value(value: Any) -> str:
    """A figure as a report shows it (4 significant digits for floats)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class ValidationMetric(Protocol):
    """Accumulates a task's validation predictions; merged over ranks through its state."""

    def update(self, batch: Batch, prediction: Any) -> None:
        """Add one batch and what :meth:`Task.predict` returned for it."""

    def state_dict(self) -> dict[str, Any]:
        """Picklable sums (gathered from every rank)."""

    def merge(self, state: dict[str, Any]) -> None:
        """Add another rank's :meth:`state_dict`."""

    def compute(self) -> dict[str, Any]:
        """The validation figures (JSON values; numbers are logged to TensorBoard)."""


class Task(ABC):
    """One kind of training run (see the module doc).

    Built from its config and the rank's ``DistributedContext``; ``__init__`` validates the
    model config before any data is read.
    """

    name: ClassVar[str]
    """Recorded in config.json, checkpoints and summaries (the registry's key)."""
    config_class: ClassVar[type[TrainingConfig]]
    """The config dataclass of this task's runs (its command line is generated from it)."""
    description: ClassVar[str] = ""
    """One line for ``--help``."""
    loss_terms: ClassVar[tuple[str, ...]] = ("loss",)
    """Keys of :meth:`losses`, ``loss`` (the one minimised) first; logged as ``train/<term>``."""
    val_keys: ClassVar[tuple[str, ...]] = ("loss",)
    """Headline keys of the validation figures, reported as ``val_<key>`` (``None`` until
    scored)."""
    picture_dir: ClassVar[str] = "pictures"
    """Folder of the run the validation pictures go to; the summary's ``<dir>_png``."""

    def check_scenes(self, scene_ids: Sequence[str]) -> None:  # noqa: B027 (optional hook)
        """Fail at once, naming what is missing, when the scenes cannot serve this task."""

    @abstractmethod
    def datasets(
        self, train_scenes: list[str], val_scenes: list[str]
    ) -> tuple[Dataset, Dataset | None]:
        """The training set (whose ``set_epoch`` selects the augmentations) and the
        validation set (``None`` without validation scenes); their batches must come through
        ``collate_grids`` without a copy (``GridDataset`` and its pairings do)."""

    @abstractmethod
    def make_network(self) -> nn.Module:
        """The network, randomly initialised (also built on the ``meta`` device to size a
        run's memory, so it must not read data)."""

    def build_model(self) -> nn.Module:
        """The network the run starts from (called after the run's global seed is set)."""
        return self.make_network()

    def freeze(self, model: nn.Module) -> None:  # noqa: B027 (optional hook)
        """Turn off gradients of what the run keeps fixed (also applied to the memory probe)."""

    def parameter_groups(self, model: nn.Module) -> list[tuple[str, list[nn.Parameter], float]]:
        """``(name, parameters, learning-rate scale)`` per optimiser group, the full-rate
        group first (its rate is the one logged). By default one group."""
        return [("all", list(model.parameters()), 1.0)]

    def begin_step(self, model: nn.Module, step: int, total_steps: int) -> dict[str, float]:
        """Called before optimiser step ``step`` (0-based) of ``total_steps``, on the bare
        model: where a schedule moves (a loss weight, weights unfrozen after a warm-up).
        Returns figures to log with the step."""
        return {}

    selection_key: ClassVar[str | None] = None
    """Validation figure (higher is better) that picks the run's best checkpoint
    (``checkpoints/best.pt``); ``None``: the run keeps no best checkpoint."""

    @abstractmethod
    def model_config(self) -> dict[str, Any]:
        """The model's config as JSON values (config.json, checkpoints)."""

    shared_per_step: ClassVar[tuple[str, ...]] = ()
    """Names of :meth:`step_generators` that restart for every micro-batch of an optimiser
    step, so that all of them draw the same (the MAE's one mask per step); the others run
    on (:mod:`model.training.steps`)."""

    def step_generators(self) -> dict[str, torch.Generator]:
        """Generators the steps draw from (on this rank), checkpointed with the run."""
        return {}

    @abstractmethod
    def losses(
        self, model: nn.Module, batch: Batch, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """One micro-batch forward through ``model`` (maybe DDP-wrapped), scalar terms by
        :attr:`loss_terms`. Runs under the run's autocast."""

    def memory_probe(self, model: nn.Module, batch: Batch) -> Any:
        """What one training micro-batch keeps for the backward pass, run on ``meta``
        tensors (``batch`` as :meth:`probe_batch` makes it): by default :meth:`losses`."""
        return self.losses(model, batch, torch.device("meta"))

    def probe_batch(self, micro_batch: int, device: torch.device) -> Batch:
        """A batch of the training shapes (values unset) for :meth:`memory_probe`."""
        s = self.input_size
        return {
            "rgba": torch.zeros((micro_batch, 4, s, s, s), device=device),
            "valid": torch.ones((micro_batch, s, s, s), dtype=torch.bool, device=device),
        }

    @property
    @abstractmethod
    def input_size(self) -> int:
        """The cube edge ``S`` of the network's input."""

    def variant(self, *, preset: str | None = None, resolution: int | None = None) -> Task | None:
        """This task for another architecture (to suggest settings that fit in memory), or
        ``None`` when it has no such variant."""
        return None

    def smaller_resolutions(self) -> list[int]:
        """Input sizes below the current one the network accepts, largest first."""
        return []

    def other_presets(self) -> list[str]:
        """Registered architectures other than the current one."""
        return []

    def extra_sample_bytes(self) -> int:
        """Bytes a training sample holds beyond ``rgba`` and ``valid`` (labels, targets)."""
        return 0

    def begin_validation(self) -> None:  # noqa: B027 (optional hook)
        """Called before every validation pass (e.g. to restart a fixed-seed generator, so
        that every pass scores the same random draws)."""

    @abstractmethod
    def predict(
        self,
        model: nn.Module,
        batch: Batch,
        device: torch.device,
        amp_dtype: torch.dtype | None,
    ) -> dict[str, Any]:
        """Validation forward of one batch (no grad, the bare model in eval mode; autocast
        the network with ``amp_dtype``): what :meth:`metric` and :meth:`draw` read. Its
        ``"losses"`` (scalar terms of the batch) are averaged over the validation grids by
        the trainer and reported beside the metric's figures."""

    @abstractmethod
    def metric(self) -> ValidationMetric:
        """A fresh accumulator of validation figures."""

    @abstractmethod
    def draw(self, path: Path, batch: Batch, prediction: Any, title: str) -> Path:
        """The picture of the batch's first grid (rank 0, first validation batch)."""

    def run_info(self) -> dict[str, Any]:
        """What the task resolved (class weights, transfer report...) for config.json and
        the summary."""
        return {}

    @classmethod
    def report_rows(cls, summary: dict[str, Any]) -> list[tuple[str, Any]]:
        """Rows ``(name, value)`` of the run's figures in its report (Prefect artifact)."""
        rows = [("train loss", summary.get("train_loss")), ("val loss", summary.get("val_loss"))]
        return rows + [(f"val {k}", summary.get(f"val_{k}")) for k in cls.val_keys if k != "loss"]

    @classmethod
    def scene_row(cls, summary: dict[str, Any]) -> tuple[str, Any]:
        """The report's row of scene counts."""
        return ("scenes (train / val)", f"{summary.get('train_scenes')} / "
                                        f"{summary.get('val_scenes')}")  # fmt: skip

    @classmethod
    def report_tables(cls, summary: dict[str, Any]) -> list[tuple[str, list[str], list[list]]]:
        """Extra report tables ``(title, header, rows)`` (per-class figures...)."""
        return []

    @classmethod
    def headline(cls, summary: dict[str, Any]) -> str:
        """The run's result in a few words (flow logs)."""
        first = cls.val_keys[0]
        return f"val {first} {summary.get(f'val_{first}')}"
