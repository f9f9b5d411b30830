"""One training engine for every task: pretraining, semantic labelling, super-resolution.

The :class:`Trainer` owns what every run needs: the split of the store's scenes, the
resumable distributed sampler and loaders, AdamW with a one-cycle schedule, gradient
accumulation and clipping, bf16 autocast on CUDA, DDP under ``torchrun``, checkpoints with
exact resume, TensorBoard events, ``train_log.jsonl`` and ``metrics.json``. A :class:`Task`
supplies what differs: its datasets, the model, the batch -> losses step, the validation
metrics and pictures, and the random generators its steps draw from.

Run folder::

    RUN/config.json          the resolved config (and model config, split, schedule)
    RUN/checkpoints/         step_XXXXXX.pt, latest.pt (exact resume, see checkpointing)
    RUN/tb/                  TensorBoard events: loss terms, lr, grids/s, validation figures
    RUN/<task.picture_dir>/  step_XXXXXX.png pictures of a validation grid
    RUN/train_log.jsonl      one line per logged step (the same figures as TensorBoard)
    RUN/metrics.json         the final summary

Randomness: every micro-batch of one optimiser step restarts the task's step generators
from the same state (the MAE's one mask per step), so accumulating ``k`` micro-batches is
the update of one batch ``k`` times larger; the generators end where one forward pass
would leave them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from grid_store import GridStore
from model.checkpointing import (
    DataPosition,
    apply_checkpoint,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    make_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from model.distributed import (
    DistributedContext,
    ResumableDistributedSampler,
    init_distributed,
    no_gradient_sync,
    per_rank_micro_batch,
    shutdown_distributed,
    unwrap,
    wrap_ddp,
)
from model.training_config import TrainingConfig, check_resumable, fit_batch_to_scenes, json_ready
from model.training_config import split_scenes as split_scenes

logger = logging.getLogger(__name__)

Batch = dict[str, Any]
LossFn = Callable[[nn.Module, Batch], dict[str, torch.Tensor]]


class Task(ABC):
    """What one kind of training run supplies to the :class:`Trainer`.

    A task is built from its config and the rank's :class:`DistributedContext`; its
    ``__init__`` validates the model config before any data is read.
    """

    name: ClassVar[str]
    """Recorded in config.json and checkpoints (``pretrain``, ``semantics``, ``superres``)."""
    loss_terms: ClassVar[tuple[str, ...]] = ("loss",)
    """Keys of :meth:`losses`, ``loss`` (the one minimised) first; logged as ``train/<term>``."""
    val_keys: ClassVar[tuple[str, ...]] = ("loss",)
    """Headline keys of :meth:`evaluate`, reported as ``val_<key>`` (``None`` until scored)."""
    picture_dir: ClassVar[str] = "pictures"
    """Folder of the run the validation pictures go to; the summary's ``<dir>_png``."""

    resolution: int
    """The model's input cube edge ``S``."""

    def check_scenes(self, scene_ids: Sequence[str]) -> None:  # noqa: B027 (optional hook)
        """Fail at once, naming what is missing, when the scenes cannot serve this task."""

    @abstractmethod
    def datasets(
        self, train_scenes: list[str], val_scenes: list[str]
    ) -> tuple[Dataset, Dataset | None]:
        """The training set (whose ``set_epoch`` selects the augmentations) and the
        validation set (``None`` without validation scenes)."""

    @abstractmethod
    def collate(self, samples: list[Batch]) -> Batch:
        """Samples -> one batch of what :meth:`losses` and :meth:`evaluate` read."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The network, initialised (called after the run's global seed is set)."""

    @abstractmethod
    def model_config(self) -> dict[str, Any]:
        """The model's config as JSON values (config.json, checkpoints)."""

    def step_generators(self) -> dict[str, torch.Generator]:
        """Generators the steps draw from, restarted per micro-batch and checkpointed."""
        return {}

    @abstractmethod
    def losses(
        self, model: nn.Module, batch: Batch, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """One micro-batch forward through ``model`` (maybe DDP-wrapped), scalar terms by
        :attr:`loss_terms`. Runs under the run's autocast."""

    @abstractmethod
    def evaluate(
        self,
        model: nn.Module,
        loader: DataLoader,
        ctx: DistributedContext,
        amp_dtype: torch.dtype | None,
        picture_path: Path | None,
        title: str,
    ) -> dict[str, Any]:
        """Validation over this rank's share, reduced over ranks (``model`` is bare, in
        eval mode). Rank 0 draws a picture to ``picture_path``. Numbers are logged."""

    def run_info(self) -> dict[str, Any]:
        """What the task resolved (class weights, transfer report...) for config.json and
        the summary."""
        return {}


# ------------------------------------------------------------------------- one step
def resolve_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or ``None`` for full fp32."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def accumulate_task_gradients(
    model: nn.Module,
    micro_batches: Sequence[Batch],
    losses: LossFn,
    loss_terms: Sequence[str],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    step_generators: dict[str, torch.Generator] | None = None,
) -> torch.Tensor:
    """Forward and backward over the micro-batches of one optimiser step.

    Every micro-batch restarts ``step_generators`` from the same state (see the module
    doc). Gradients are the mean over micro-batches (DDP all-reduces only after the last).

    Returns:
        ``(len(loss_terms),)`` detached means of the terms over the micro-batches.
    """
    n = len(micro_batches)
    generators = step_generators or {}
    start = {name: g.get_state() for name, g in generators.items()}
    terms = torch.zeros(len(loss_terms), device=device)
    for i, batch in enumerate(micro_batches):
        for name, g in generators.items():
            g.set_state(start[name])
        with no_gradient_sync(model, last_micro_batch=i == n - 1):
            with autocast(device, amp_dtype):
                out = losses(model, batch)
            (out["loss"] / n).backward()
        terms += torch.stack([out[t].detach().float() for t in loss_terms]) / n
    return terms


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    clip_grad_norm: float,
) -> tuple[torch.Tensor, float]:
    """Clip, step the optimiser and the (per-step) schedule; returns ``(grad norm, lr used)``."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    lr = float(optimizer.param_groups[0]["lr"])
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.detach(), lr


# --------------------------------------------------------------------------- the run
def _read_png(path: Path) -> np.ndarray:
    """A PNG as ``(H, W, 3)`` uint8, for TensorBoard's image tab."""
    from matplotlib.image import imread

    image = imread(path)[..., :3]
    return (image * 255).round().astype(np.uint8) if image.dtype != np.uint8 else image


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


class Trainer:
    """State of one run on one rank; :meth:`run` trains and returns the summary."""

    def __init__(self, config: TrainingConfig, task: Task, ctx: DistributedContext) -> None:
        self.config = config
        self.task = task
        self.ctx = ctx
        self.run_dir = Path(config.out_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        if not config.resume and latest_checkpoint(self.checkpoint_dir) is not None:
            raise ValueError(
                f"{self.checkpoint_dir}: out_dir: holds a run's checkpoints; pass resume "
                "(--resume) to continue it, or choose a new run folder"
            )
        self.amp_dtype = resolve_amp_dtype(config.amp, ctx.device)
        if ctx.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True  # one input shape (S^3): tune convs once

        random.seed(config.seed)
        np.random.seed(config.seed)  # noqa: NPY002 (the global RNG third-party code draws from)
        torch.manual_seed(config.seed)  # the same initial weights on every rank

        stored = GridStore(config.store_url, mode="r").list_scenes()
        scene_ids = stored if config.scenes is None else config.scenes
        unknown = sorted(set(scene_ids) - set(stored))
        if unknown:
            raise ValueError(f"{config.store_url}: scenes: {unknown[:5]} are not complete scenes")
        if not scene_ids:
            raise ValueError(f"{config.store_url}: store_url: the store holds no complete scene")
        task.check_scenes(scene_ids)
        self.train_scenes, self.val_scenes = split_scenes(
            scene_ids, config.val_fraction, config.val_scenes, config.seed
        )
        if not self.val_scenes and config.val_fraction > 0 and config.val_scenes is None:
            logger.warning(
                "no validation scene: %d scene(s) in the store, all of them train; the run "
                "reports no validation figures and draws no pictures", len(scene_ids),
            )  # fmt: skip
        self.train_set, val_set = task.datasets(self.train_scenes, self.val_scenes)
        self.train_scenes = list(getattr(self.train_set, "scene_ids", self.train_scenes))
        self.config = config = fit_batch_to_scenes(config, len(self.train_set), ctx.world_size)
        self.micro_batch = per_rank_micro_batch(
            config.batch_size, ctx.world_size, config.grad_accum_steps
        )
        self.sampler = ResumableDistributedSampler(self.train_set, ctx, seed=config.seed)
        self.steps_per_epoch = len(self.sampler) // (self.micro_batch * config.grad_accum_steps)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.stop_step = min(self.total_steps, config.max_steps or self.total_steps)
        loader_options: dict[str, Any] = {
            "batch_size": self.micro_batch,
            "num_workers": config.num_workers,
            "pin_memory": ctx.device.type == "cuda",
            "collate_fn": task.collate,
        }
        # Private generators: creating an iterator must not draw from the global RNG.
        self.train_loader = DataLoader(
            self.train_set, sampler=self.sampler, drop_last=True,
            generator=torch.Generator().manual_seed(config.seed), **loader_options,
        )  # fmt: skip
        self.val_loader: DataLoader | None = None
        if val_set is not None:
            shard = Subset(val_set, range(ctx.rank, len(val_set), ctx.world_size))
            self.val_loader = DataLoader(
                shard, generator=torch.Generator().manual_seed(config.seed), **loader_options
            )

        bare = task.build_model()
        self.model_config = task.model_config()
        self.parameters = sum(p.numel() for p in bare.parameters())
        bare.to(ctx.device).train()
        self.model = wrap_ddp(bare, ctx)
        self.optimizer = torch.optim.AdamW(
            bare.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=config.lr, total_steps=self.total_steps,
            pct_start=config.pct_start,
        )  # fmt: skip
        # Per-rank streams: different masks and stochastic-depth draws on each rank.
        torch.manual_seed(config.seed + 1 + ctx.rank)
        self.generators = task.step_generators()
        self.position = DataPosition(step=0, epoch=0, step_in_epoch=0)
        self.resumed_from: Path | None = None
        if config.resume:
            self._resume()

    # ------------------------------------------------------------------ checkpoints
    def _resume(self) -> None:
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            logger.info("resume: no checkpoint in %s, starting fresh", self.checkpoint_dir)
            return
        checkpoint = load_checkpoint(path)
        saved_task = checkpoint.get("task", "pretrain")
        if saved_task != self.task.name:
            raise ValueError(
                f"{path}: task: the checkpoint is of a {saved_task!r} run, this run is "
                f"{self.task.name!r}"
            )
        check_resumable(checkpoint["config"], self.config, path)
        saved_spe = checkpoint["metrics"].get("steps_per_epoch")
        if saved_spe != self.steps_per_epoch:
            raise ValueError(
                f"{path}: metrics.steps_per_epoch: checkpoint has {saved_spe}, this run has "
                f"{self.steps_per_epoch} (the training scenes or their split over ranks changed)"
            )
        self.position = apply_checkpoint(
            checkpoint, unwrap(self.model), self.optimizer, self.scheduler
        )
        rng = checkpoint["rng"]
        if len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank], self.generators)
        else:
            # A different world size already changes the data split; keep the run valid.
            logger.warning("resume: %d rank RNG states saved, %d ranks now: reseeding",
                           len(rng), self.ctx.world_size)  # fmt: skip
            step, rank = self.position.step, self.ctx.rank
            torch.manual_seed(self.config.seed + step * 1009 + rank)
            for i, generator in enumerate(self.generators.values()):
                generator.manual_seed(self.config.seed + step + rank + 7 * i)
        self.resumed_from = path
        logger.info("resumed from %s at step %d (epoch %d)", path, self.position.step,
                    self.position.epoch)  # fmt: skip

    def _save(self, metrics: dict[str, Any]) -> Path | None:
        rng = self.ctx.all_gather_objects(capture_rng_state(self.generators))
        if not self.ctx.is_main:
            return None
        checkpoint = make_checkpoint(
            unwrap(self.model), self.optimizer, self.scheduler, self.position, rng,
            config=self.config.as_json(), model_config=self.model_config,
            metrics=json_ready({**metrics, "steps_per_epoch": self.steps_per_epoch}),
        )  # fmt: skip
        checkpoint["task"] = self.task.name
        return save_checkpoint(checkpoint, self.checkpoint_dir, self.config.keep_checkpoints)

    # --------------------------------------------------------------------- outputs
    def _write_config(self) -> Path:
        path = self.run_dir / "config.json"
        write_json(path, {
            "task": self.task.name,
            "config": self.config.as_json(),
            "model_config": self.model_config,
            "resolved": {
                "device": str(self.ctx.device), "world_size": self.ctx.world_size,
                "amp_dtype": str(self.amp_dtype) if self.amp_dtype else "fp32",
                "micro_batch_per_rank": self.micro_batch, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps, "parameters": self.parameters,
                "train_scenes": self.train_scenes, "val_scenes": self.val_scenes,
                **json_ready(self.task.run_info()),
            },
        })  # fmt: skip
        return path

    def _open_train_log(self):
        """``train_log.jsonl`` for appending; on resume, lines past the checkpoint are dropped."""
        path = self.run_dir / "train_log.jsonl"
        if path.exists():
            if self.resumed_from is None:
                path.unlink()
            else:
                kept = [line for line in path.read_text().splitlines()
                        if line and json.loads(line)["step"] <= self.position.step]  # fmt: skip
                path.write_text("".join(line + "\n" for line in kept))
        return path.open("a")

    # ------------------------------------------------------------------ train loop
    def _batches(self) -> Iterator[list[Batch]]:
        """The micro-batches of each optimiser step from the current position on."""
        accum = self.config.grad_accum_steps
        epoch, start = self.position.epoch, self.position.step_in_epoch
        while True:
            self.sampler.set_position(epoch, start * self.micro_batch * accum)
            self.train_set.set_epoch(epoch)
            batches = iter(self.train_loader)
            for _ in range(start, self.steps_per_epoch):
                yield [next(batches) for _ in range(accum)]
            epoch, start = epoch + 1, 0

    def _position_after(self, step: int) -> DataPosition:
        return DataPosition(step, step // self.steps_per_epoch, step % self.steps_per_epoch)

    @torch.no_grad()
    def _evaluate(self, writer) -> dict[str, Any]:
        step = self.position.step
        picture = self.run_dir / self.task.picture_dir / f"step_{step:06d}.png"
        bare = unwrap(self.model)
        was_training = bare.training
        bare.eval()
        result = self.task.evaluate(bare, self.val_loader, self.ctx, self.amp_dtype,
                                    picture, f"step {step}")  # fmt: skip
        bare.train(was_training)
        if self.ctx.is_main:
            for name, value in result.items():
                if isinstance(value, (int, float)):
                    writer.add_scalar(f"val/{name}", value, step)
            scalars = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}
            logger.info("step %d validation: %s", step, scalars)
            if picture.is_file():
                self.last_picture = picture
                writer.add_image(f"val/{self.task.picture_dir}", _read_png(picture), step,
                                 dataformats="HWC")  # fmt: skip
        return result

    def _losses(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        return self.task.losses(model, batch, self.ctx.device)

    def run(self) -> dict[str, Any]:
        ctx, config, task = self.ctx, self.config, self.task
        writer = None
        log_file = None
        if ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
            purge = self.position.step + 1 if self.resumed_from else None
            writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
            log_file = self._open_train_log()
        logger.info(
            "%s: %s (%d params) on %d train / %d val scenes, %d steps/epoch x %d epochs, "
            "stopping at step %d, %s x %d rank(s), amp %s", task.name, config.preset,
            self.parameters, len(self.train_scenes), len(self.val_scenes), self.steps_per_epoch,
            config.epochs, self.stop_step, ctx.device, ctx.world_size, self.amp_dtype or "fp32",
        )  # fmt: skip
        self.last_picture: Path | None = None
        val: dict[str, Any] = {k: None for k in task.val_keys}
        last_train: dict[str, float] = {}
        evaluated_at = checkpoint_path = None
        window = torch.zeros(len(task.loss_terms), device=ctx.device)
        window_steps, window_seconds = 0, 0.0
        train_seconds, train_steps = 0.0, 0
        started = time.perf_counter()
        progress = tqdm(total=self.stop_step, initial=self.position.step, desc=task.name,
                        unit="step", disable=not ctx.is_main, dynamic_ncols=True)  # fmt: skip
        batches = self._batches()
        while self.position.step < self.stop_step:
            tic = time.perf_counter()
            terms = accumulate_task_gradients(
                self.model, next(batches), self._losses, task.loss_terms, ctx.device,
                self.amp_dtype, self.generators,
            )  # fmt: skip
            grad_norm, lr = optimizer_step(
                self.model, self.optimizer, self.scheduler, config.clip_grad_norm
            )
            self.position = self._position_after(self.position.step + 1)
            step = self.position.step
            window += terms
            window_steps += 1
            is_last = step == self.stop_step
            if step % config.log_every == 0 or is_last:
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                window_seconds += time.perf_counter() - tic
                train_seconds += window_seconds
                train_steps += window_steps
                mean_terms = (ctx.all_reduce_mean(window) / window_steps).tolist()
                last_train = dict(zip(task.loss_terms, mean_terms, strict=True))
                record = {
                    "step": step, "epoch": step / self.steps_per_epoch, **last_train, "lr": lr,
                    "grad_norm": float(grad_norm),
                    "grids_per_s": window_steps * config.batch_size / max(window_seconds, 1e-9),
                }  # fmt: skip
                if ctx.is_main:
                    for name, value in record.items():
                        if name != "step":
                            writer.add_scalar(f"train/{name}", value, step)
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}",
                                         grids_s=f"{record['grids_per_s']:.2f}")  # fmt: skip
                window.zero_()
                window_steps, window_seconds = 0, 0.0
            else:
                window_seconds += time.perf_counter() - tic
            progress.update(1)
            if self.val_loader is not None and (step % config.eval_every == 0 or is_last):
                val = self._evaluate(writer)
                evaluated_at = step
            if step % config.checkpoint_every == 0 or is_last:
                checkpoint_path = self._save({f"val_{k}": v for k, v in val.items()})
        batches.close()
        progress.close()
        if self.val_loader is not None and evaluated_at != self.position.step:
            val = self._evaluate(writer)  # nothing ran (already at the end): still report
        checkpoint_path = checkpoint_path or latest_checkpoint(self.checkpoint_dir)
        summary: dict[str, Any] = {
            "task": task.name,
            "steps": self.position.step,
            "total_steps": self.total_steps,
            "epoch": self.position.step / self.steps_per_epoch,
            **{f"train_{term}": last_train.get(term) for term in task.loss_terms},
            **{f"val_{name}": value for name, value in val.items()},
            "grids_per_s": train_steps * config.batch_size / train_seconds if train_steps else None,
            "seconds": time.perf_counter() - started,
            "parameters": self.parameters,
            "preset": config.preset,
            "device": str(ctx.device),
            "world_size": ctx.world_size,
            "amp": str(self.amp_dtype) if self.amp_dtype else "fp32",
            "train_scenes": len(self.train_scenes),
            "val_scenes": len(self.val_scenes),
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "run_dir": str(self.run_dir),
            "checkpoint": str(checkpoint_path) if checkpoint_path else None,
            "tensorboard_dir": str(self.run_dir / "tb"),
            f"{task.picture_dir}_png": str(self.last_picture) if self.last_picture else None,
            "config_path": str(self.run_dir / "config.json"),
            "metrics_path": str(self.run_dir / "metrics.json"),
            **json_ready(task.run_info()),
        }
        if ctx.is_main:
            writer.close()
            log_file.close()
            write_json(self.run_dir / "metrics.json", summary)
            logger.info("%s done: %s", task.name, json.dumps(summary, default=str))
        ctx.barrier()
        return summary


def run_task(
    config: TrainingConfig, make_task: Callable[[TrainingConfig, DistributedContext], Task]
) -> dict[str, Any]:
    """Train ``make_task(config, ctx)`` on this process's rank; returns the summary.

    Under ``torchrun`` every rank calls this; rank 0 writes the run folder.
    """
    ctx = init_distributed(config.device)
    try:
        if not ctx.is_main:
            logging.getLogger("model").setLevel(logging.WARNING)
        return Trainer(config, make_task(config, ctx), ctx).run()
    finally:
        shutdown_distributed(ctx)
