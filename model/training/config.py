"""What every training run shares (pretraining and each downstream task): its config fields,
the split of a store's scenes into training and validation, and the batch a small store
can fill.

A task's config subclasses :class:`TrainingConfig`, sets ``task`` (the registry key of
:data:`model.tasks.TASKS`), adds its own fields and names the ones that decide its
trajectory (a resumed run must agree on them) in ``trajectory_fields``. Every field is a
command-line flag (:mod:`model.training.cli`), its docstring the flag's help.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

logger = logging.getLogger(__name__)


@dataclass
class TrainingConfig:
    """The fields of every run; saved resolved as ``RUN/config.json``."""

    task: ClassVar[str] = ""
    """The task these runs train (the key of :data:`model.tasks.TASKS`)."""
    cli_aliases: ClassVar[dict[str, tuple[str, ...]]] = {
        "store_url": ("--store",), "out_dir": ("--out",), "grad_accum_steps": ("--grad-accum",),
    }  # fmt: skip
    """Extra command-line spellings of fields (the first is the one shown)."""
    cli_shortcuts: ClassVar[dict[str, Any]] = {}
    """Flags that set one key of a dict field (:class:`model.training.cli.Shortcut`)."""
    trajectory_fields: ClassVar[tuple[str, ...]] = (
        "store_url", "preset", "resolution", "model_overrides", "scenes", "alpha_step", "epochs",
        "batch_size",
        "grad_accum_steps", "lr", "weight_decay", "pct_start", "clip_grad_norm", "val_fraction",
        "val_scenes", "crop", "augment", "seed",
    )  # fmt: skip
    """Fields that decide the training trajectory: a resumed run must agree on all of them."""

    store_url: str
    """Grid store to train from (local path, ``memory://``, ``s3://``)."""
    out_dir: str
    """Run folder (local path): checkpoints, TensorBoard events, pictures, metrics."""
    preset: str = "swin_s"
    """Model preset of the registry (``tiny`` for tests and CPU, ``swin_t``, ``swin_s`` = paper)."""
    resolution: int | None = None
    """Cube edge ``S`` grids are padded (or cropped) to, and the model's input size
    (``None``: the preset's, 160 for ``swin_s``, 32 for ``tiny``)."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """Overrides of the preset's ``MAEConfig`` fields (e.g. ``{"mask_ratio": 0.5}``)."""
    scenes: list[str] | None = None
    """Use only these scenes of the store (``None``: every complete scene)."""
    epochs: int = 2000
    """Passes over the training scenes; with the step count per epoch this fixes the schedule."""
    batch_size: int = 32
    """Global batch per optimiser step, over all ranks and accumulation steps."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimiser step on each rank."""
    lr: float = 1e-4
    """Peak learning rate of the one-cycle schedule (AdamW)."""
    weight_decay: float = 1e-3
    """AdamW decoupled weight decay, applied to every parameter as in the reference."""
    pct_start: float = 0.3
    """Fraction of the schedule spent ramping the learning rate up (OneCycleLR)."""
    clip_grad_norm: float = 0.1
    """Global gradient-norm clip before each optimiser step."""
    val_fraction: float = 0.05
    """Fraction of scenes held out for validation (rounded up, at least one when > 0)."""
    val_scenes: list[str] | None = None
    """Explicit validation scenes (overrides ``val_fraction``); the rest train."""
    alpha_step: float | None = None
    """Re-express every grid's opacity for a sampling step of this length in the grid's world
    units, ``alpha' = 1 - (1 - alpha) ** (alpha_step / delta)`` with the grid's recorded
    ``delta`` (``None``: as stored; fine-tuning then takes the pretraining checkpoint's, 0.01
    for NeRF-MAE's published weights, which saw instant-ngp's alpha for a 0.01 step)."""
    crop: Literal["pad", "random"] = "random"
    """How training grids larger than ``S`` are cut to ``S``: ``random`` (a cube at a random
    offset each epoch) or ``pad`` (always the cube at index 0). Grids that fit are padded
    alike by both."""
    augment: bool = True
    """Reference pretraining augmentation: random 90-degree z-rotation and x/y flips."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0: load in the training process)."""
    log_every: int = 10
    """Optimiser steps between logged figures (TensorBoard, train_log.jsonl, progress bar)."""
    eval_every: int | None = None
    """Optimiser steps between validations (and pictures); also at the end. ``None``: about
    five validations per run, every ``ceil(steps / 5)`` steps of the steps this run trains
    (to ``max_steps`` or the schedule's end), but at least every 1000 steps, so that a short
    run still draws a validation curve and several pictures."""
    checkpoint_every: int = 1000
    """Optimiser steps between checkpoints; also at the end."""
    keep_checkpoints: int = 3
    """Newest ``step_XXXXXX.pt`` files to keep (0 keeps all); ``latest.pt`` is always kept."""
    max_steps: int | None = None
    """Stop after this many optimiser steps in total without changing the schedule
    (smoke runs, time-sliced jobs); ``None`` runs the whole schedule."""
    seed: int = 0
    """Seed of initialisation, data order, augmentation and masks."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``; under torchrun each rank drives
    ``cuda:LOCAL_RANK``."""
    amp: Literal["auto", "bf16", "off"] = "auto"
    """Mixed precision: ``auto`` (bf16 autocast on CUDA, off on CPU), ``bf16``, ``off``."""
    resume: bool = False
    """Continue from ``RUN/checkpoints/latest.pt`` when it exists (else start fresh)."""
    check_memory: bool = True
    """Estimate the run's peak memory before allocating anything and refuse a run that
    cannot fit (``--no-check-memory`` runs it anyway)."""
    memory_limit_gb: float | None = None
    """Memory the run may use, in GiB (``None``: the machine's or its cgroup's limit, or the
    GPU's memory)."""

    def fail(self, name: str, why: str) -> typing.NoReturn:
        raise ValueError(f"{type(self).__name__}.{name}: {why}, got {getattr(self, name)!r}")

    def __post_init__(self) -> None:
        fail = self.fail
        if self.resolution is not None and self.resolution < 1:
            fail("resolution", "must be >= 1 or None")
        for name in ("epochs", "batch_size", "grad_accum_steps", "log_every",
                     "checkpoint_every"):  # fmt: skip
            if int(getattr(self, name)) < 1:
                fail(name, "must be >= 1")
        if self.eval_every is not None and self.eval_every < 1:
            fail("eval_every", "must be >= 1 or None")
        if self.num_workers < 0:
            fail("num_workers", "must be >= 0")
        if self.keep_checkpoints < 0:
            fail("keep_checkpoints", "must be >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            fail("max_steps", "must be >= 1 or None")
        if not 0.0 <= self.val_fraction < 1.0:
            fail("val_fraction", "must be in [0, 1)")
        if not 0.0 < self.pct_start < 1.0:
            fail("pct_start", "must be in (0, 1)")
        for name in ("lr", "clip_grad_norm"):
            if not getattr(self, name) > 0:
                fail(name, "must be > 0")
        if not self.weight_decay >= 0:
            fail("weight_decay", "must be >= 0")
        if self.memory_limit_gb is not None and not self.memory_limit_gb > 0:
            fail("memory_limit_gb", "must be > 0 or None")
        if self.alpha_step is not None and not self.alpha_step > 0:
            fail("alpha_step", "must be > 0 or None")
        for name in ("amp", "crop"):
            choices = typing.get_args(typing.get_type_hints(TrainingConfig)[name])
            if getattr(self, name) not in choices:
                fail(name, f"must be one of {choices}")
        if not self.store_url:
            fail("store_url", "must name a grid store")
        if not self.out_dir:
            fail("out_dir", "must name a run folder")

    def as_json(self) -> dict[str, Any]:
        """The fields as JSON values, and the task (what ``config.json`` and checkpoints
        hold)."""
        return json_ready({"task": self.task, **dataclasses.asdict(self)})


def json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def check_resumable(saved: dict[str, Any], config: TrainingConfig, path: Any) -> None:
    """Refuse to resume ``path`` (a checkpoint saved with ``saved``) with another trajectory."""
    current = config.as_json()
    for name in config.trajectory_fields:
        if saved.get(name) != current[name]:
            raise ValueError(
                f"{path}: config.{name}: checkpoint has {saved.get(name)!r}, this run asks "
                f"{current[name]!r}; resume needs the same value (or a new --out)"
            )


# ----------------------------------------------------------------------------- data split
def rank_by_hash(scene_ids: Sequence[str], seed: int) -> list[str]:
    """``scene_ids`` ordered by ``sha256(seed:scene_id)``: an order that depends on neither
    listing order nor machine (used for validation splits and label subsets)."""

    def rank(scene: str) -> str:
        return hashlib.sha256(f"{seed}:{scene}".encode()).hexdigest()

    return sorted(scene_ids, key=rank)


def split_scenes(
    scene_ids: Sequence[str],
    val_fraction: float,
    val_scenes: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Disjoint ``(train, val)`` scene lists, both sorted.

    Without an explicit list the validation scenes are those first in
    :func:`rank_by_hash`: a scene keeps its side as long as the store's membership does
    not push it over the cut.
    """
    ids = sorted(set(scene_ids))
    if val_scenes is not None:
        unknown = sorted(set(val_scenes) - set(ids))
        if unknown:
            raise ValueError(f"val_scenes: {unknown} are not scenes of the store")
        val = sorted(set(val_scenes))
    elif val_fraction > 0 and len(ids) > 1:
        n_val = min(len(ids) - 1, max(1, math.ceil(val_fraction * len(ids))))
        val = sorted(rank_by_hash(ids, seed)[:n_val])
    else:
        val = []
    held_out = set(val)
    train = [s for s in ids if s not in held_out]
    if not train:
        raise ValueError("val_scenes: every scene is held out for validation, none left to train")
    return train, val


C = TypeVar("C", bound=TrainingConfig)


def fit_batch_to_scenes(config: C, train_scenes: int, world_size: int) -> C:
    """``config`` with ``batch_size`` lowered, with a warning, to the largest global batch
    that one epoch over ``train_scenes`` can fill (each rank gets ``train_scenes //
    world_size`` of them, in whole micro-batches of every accumulation step).

    The paper's batch of 32 is the default, and a store a user starts with (the demo's, a
    tutorial's) holds a handful of scenes: a batch larger than the training set cannot make
    a single step. The capped value is what the run records and resumes with.
    """
    accum = config.grad_accum_steps
    largest = (train_scenes // world_size // accum) * world_size * accum
    if config.batch_size <= largest:
        return config
    if largest < 1:
        raise ValueError(
            f"batch_size: {train_scenes} training scene(s) cannot fill one micro-batch on each "
            f"of {world_size} rank(s) x {accum} accumulation step(s)"
        )
    logger.warning(
        "batch_size %d exceeds the %d training scene(s): using %d (%d rank(s) x %d "
        "accumulation step(s)); the learning rate is unchanged",
        config.batch_size, train_scenes, largest, world_size, accum,
    )  # fmt: skip
    return dataclasses.replace(config, batch_size=largest)
