"""One training engine for every task (pretraining and each downstream task).

The :class:`Trainer` owns what every run needs: the split of the store's scenes, the
memory check, the resumable distributed sampler and the loaders, AdamW with a one-cycle
schedule, gradient accumulation and clipping, bf16 autocast on CUDA, DDP under
``torchrun``, checkpoints with exact resume, the validation loop, TensorBoard events,
``train_log.jsonl`` and ``metrics.json`` (:mod:`model.training.run_folder`). A
:class:`~model.training.task.Task` supplies what differs. The trainer never imports a task.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grid_store import GridStore
from model.training.checkpointing import (
    BEST,
    DataPosition,
    apply_checkpoint,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    make_checkpoint,
    restore_rng_state,
    save_best_checkpoint,
    save_checkpoint,
)
from model.training.config import (
    TrainingConfig,
    check_resumable,
    fit_batch_to_scenes,
    json_ready,
    split_scenes,
)
from model.training.distributed import (
    DistributedContext,
    ResumableDistributedSampler,
    init_distributed,
    per_rank_micro_batch,
    shutdown_distributed,
    unwrap,
    wrap_ddp,
)
from model.training.loaders import train_loader, validation_loader
from model.training.memory import check_training_memory
from model.training.run_folder import RunFolder
from model.training.steps import (
    accumulate_task_gradients,
    autocast,
    optimizer_step,
    resolve_amp_dtype,
)
from model.training.task import Batch, Task, report_value
from model.training.validation import LossMeans, validation_pass

logger = logging.getLogger(__name__)

VALIDATIONS_PER_RUN = 5
"""How many times a run validates when ``eval_every`` is None (at most every
:data:`MAX_EVAL_EVERY` steps)."""
MAX_EVAL_EVERY = 1000


def validation_interval(eval_every: int | None, steps: int) -> int:
    """Optimiser steps between validations of a run that trains ``steps`` steps: the
    config's ``eval_every``, or when it is None ``ceil(steps / VALIDATIONS_PER_RUN)`` capped
    at :data:`MAX_EVAL_EVERY`."""
    if eval_every is not None:
        return eval_every
    return max(1, min(MAX_EVAL_EVERY, math.ceil(steps / VALIDATIONS_PER_RUN)))


class Trainer:
    """State of one run on one rank; :meth:`run` trains and returns the summary."""

    def __init__(self, config: TrainingConfig, task: Task, ctx: DistributedContext) -> None:
        self.config = config
        self.task = task
        self.ctx = ctx
        self.folder = RunFolder(config.out_dir)
        if not config.resume and latest_checkpoint(self.folder.checkpoints) is not None:
            raise ValueError(
                f"{self.folder.checkpoints}: out_dir: holds a run's checkpoints; pass resume "
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
        self.memory = check_training_memory(task, config, self.micro_batch, ctx.device,
                                            self.amp_dtype)  # fmt: skip
        self.sampler = ResumableDistributedSampler(self.train_set, ctx, seed=config.seed)
        self.steps_per_epoch = len(self.sampler) // (self.micro_batch * config.grad_accum_steps)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.stop_step = min(self.total_steps, config.max_steps or self.total_steps)
        self.eval_every = validation_interval(config.eval_every, self.stop_step)
        self.train_loader = train_loader(self.train_set, self.sampler, self.micro_batch,
                                         config.num_workers, ctx.device, config.seed)  # fmt: skip
        self.val_loader = None
        if val_set is not None:
            self.val_loader = validation_loader(val_set, ctx, self.micro_batch,
                                                config.num_workers, config.seed)  # fmt: skip

        bare = task.build_model()
        self.model_config = task.model_config()
        self.parameters = sum(p.numel() for p in bare.parameters())
        bare.to(ctx.device).train()
        self.model = wrap_ddp(bare, ctx)
        groups = [(name, params, scale) for name, params, scale in task.parameter_groups(bare)
                  if params]  # fmt: skip
        self.lr_scales = {name: scale for name, _, scale in groups}
        self.optimizer = torch.optim.AdamW(
            [{"params": params, "lr": config.lr * scale, "name": name}
             for name, params, scale in groups],
            lr=config.lr, weight_decay=config.weight_decay,
        )  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=[config.lr * scale for _, _, scale in groups],
            total_steps=self.total_steps, pct_start=config.pct_start,
        )  # fmt: skip
        # Per-rank streams: different masks and stochastic-depth draws on each rank.
        torch.manual_seed(config.seed + 1 + ctx.rank)
        self.generators = task.step_generators()
        self.shared_generators = {name: self.generators[name] for name in task.shared_per_step}
        self.position = DataPosition(step=0, epoch=0, step_in_epoch=0)
        self.resumed_from: Path | None = None
        self.last_picture: Path | None = None
        self.best: dict[str, Any] = {}
        if config.resume:
            self._resume()

    # ------------------------------------------------------------------ checkpoints
    def _resume(self) -> None:
        path = latest_checkpoint(self.folder.checkpoints)
        if path is None:
            logger.info("resume: no checkpoint in %s, starting fresh", self.folder.checkpoints)
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
        best = self.folder.checkpoints / BEST
        if self.task.selection_key and best.is_file():
            self.best = load_checkpoint(best)["metrics"].get("best", {})
        logger.info("resumed from %s at step %d (epoch %d)", path, self.position.step,
                    self.position.epoch)  # fmt: skip

    def _checkpoint(self, metrics: dict[str, Any]) -> dict[str, Any] | None:
        """This rank's part of a checkpoint (a collective); the checkpoint on rank 0."""
        rng = self.ctx.all_gather_objects(capture_rng_state(self.generators))
        if not self.ctx.is_main:
            return None
        checkpoint = make_checkpoint(
            unwrap(self.model), self.optimizer, self.scheduler, self.position, rng,
            task=self.task.name, config=self.config.as_json(), model_config=self.model_config,
            metrics=json_ready({**metrics, "steps_per_epoch": self.steps_per_epoch}),
        )  # fmt: skip
        # the resolved split travels with the weights: a checkpoint is scored on the scenes
        # its run held out unless told otherwise (`nerfmae evaluate`)
        checkpoint["split"] = {"train_scenes": list(self.train_scenes),
                               "val_scenes": list(self.val_scenes)}  # fmt: skip
        return checkpoint

    def _save(self, metrics: dict[str, Any]) -> Path | None:
        checkpoint = self._checkpoint(metrics)
        if checkpoint is None:
            return None
        return save_checkpoint(checkpoint, self.folder.checkpoints, self.config.keep_checkpoints)

    def _keep_if_best(self, val: dict[str, Any]) -> None:
        """``checkpoints/best.pt`` when the task's selection figure beats every earlier
        validation of the run (the same decision on every rank: figures are merged)."""
        key = self.task.selection_key
        value = val.get(key) if key else None
        if value is None or (self.best and value <= self.best["value"]):
            return
        self.best = {"key": key, "value": value, "step": self.position.step}
        checkpoint = self._checkpoint({f"val_{k}": val.get(k) for k in self.task.val_keys}
                                      | {"best": self.best})  # fmt: skip
        if checkpoint is not None:
            save_best_checkpoint(checkpoint, self.folder.checkpoints)

    def _config_payload(self) -> dict[str, Any]:
        return {
            "task": self.task.name,
            "config": self.config.as_json(),
            "model_config": self.model_config,
            "resolved": {
                "device": str(self.ctx.device), "world_size": self.ctx.world_size,
                "amp_dtype": str(self.amp_dtype) if self.amp_dtype else "fp32",
                "micro_batch_per_rank": self.micro_batch, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps, "eval_every": self.eval_every,
                "parameters": self.parameters,
                "train_scenes": self.train_scenes, "val_scenes": self.val_scenes,
                "memory": self.memory.as_dict() if self.memory else None,
                **json_ready(self.task.run_info()),
            },
        }  # fmt: skip

    # ------------------------------------------------------------------ train loop
    def batches(self) -> Iterator[list[Batch]]:
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
    def validate(self) -> dict[str, Any]:
        """The one validation loop: the task predicts each batch of this rank's share, its
        metric accumulates them, ranks merge their metric states, rank 0 draws the first
        grid. Returns the task's figures (the same on every rank)."""
        step, ctx, task = self.position.step, self.ctx, self.task
        picture = self.folder.picture_path(task.picture_dir, step) if ctx.is_main else None
        metric, losses = validation_pass(task, unwrap(self.model), self.val_loader, ctx.device,
                                         self.amp_dtype, picture, f"step {step}")  # fmt: skip
        if picture is not None:
            self.last_picture = picture
        # a collective: every rank; validation shards are disjoint, so no scene counts twice
        states = ctx.all_gather_objects((metric.state_dict(), losses.state_dict()))
        merged, merged_losses = task.metric(), LossMeans()
        for metric_state, loss_state in states:
            merged.merge(metric_state)
            merged_losses.merge(loss_state)
        result = {**merged.compute(), **merged_losses.compute()}
        if ctx.is_main:
            self.folder.log_validation(result, step, picture, task.picture_dir)
            scalars = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}
            logger.info("step %d validation: %s", step, scalars)
        return result

    def _begin_step(self) -> dict[str, float]:
        """The task's schedule for the coming step; DDP is wrapped again when it changed
        which parameters train (DDP fixes its gradient buckets at construction)."""
        bare = unwrap(self.model)
        if not self.ctx.is_distributed:
            return self.task.begin_step(bare, self.position.step, self.total_steps)
        before = [p.requires_grad for p in bare.parameters()]
        scheduled = self.task.begin_step(bare, self.position.step, self.total_steps)
        if before != [p.requires_grad for p in bare.parameters()]:
            self.model = wrap_ddp(bare, self.ctx)
        return scheduled

    def _losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        return self.task.losses(model, batch, self.ctx.device)

    def run(self) -> dict[str, Any]:
        ctx, config, task = self.ctx, self.config, self.task
        if ctx.is_main:
            self.folder.open(self.position.step, resumed=self.resumed_from is not None)
            self.folder.write_config(self._config_payload())
        logger.info(
            "%s: %s (%d params) on %d train / %d val scenes, %d steps/epoch x %d epochs, "
            "stopping at step %d, %s x %d rank(s), amp %s", task.name, config.preset,
            self.parameters, len(self.train_scenes), len(self.val_scenes), self.steps_per_epoch,
            config.epochs, self.stop_step, ctx.device, ctx.world_size, self.amp_dtype or "fp32",
        )  # fmt: skip
        if self.val_loader is not None:
            logger.info("validating (and drawing) every %d steps and at step %d (eval_every %s)",
                        self.eval_every, self.stop_step, config.eval_every)  # fmt: skip
        val: dict[str, Any] = {k: None for k in task.val_keys}
        last_train: dict[str, float] = {}
        evaluated_at = checkpoint_path = None
        window = torch.zeros(len(task.loss_terms), device=ctx.device)
        window_steps, window_seconds = 0, 0.0
        train_seconds, train_steps = 0.0, 0
        started = time.perf_counter()
        from tqdm.auto import tqdm

        progress = tqdm(total=self.stop_step, initial=self.position.step, desc=task.name,
                        unit="step", disable=not ctx.is_main, dynamic_ncols=True)  # fmt: skip
        batches = self.batches()
        while self.position.step < self.stop_step:
            tic = time.perf_counter()
            scheduled = self._begin_step()
            terms = accumulate_task_gradients(
                self.model, next(batches), self._losses, task.loss_terms, ctx.device,
                self.amp_dtype, self.shared_generators,
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
                    "step": step, "epoch": step / self.steps_per_epoch, **last_train,
                    **scheduled, "lr": lr,
                    "grad_norm": float(grad_norm),
                    "grids_per_s": window_steps * config.batch_size / max(window_seconds, 1e-9),
                }  # fmt: skip
                if ctx.is_main:
                    self.folder.log_step(record)
                    progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}",
                                         grids_s=f"{record['grids_per_s']:.2f}")  # fmt: skip
                window.zero_()
                window_steps, window_seconds = 0, 0.0
            else:
                window_seconds += time.perf_counter() - tic
            progress.update(1)
            if self.val_loader is not None and (step % self.eval_every == 0 or is_last):
                val = self.validate()
                evaluated_at = step
                self._keep_if_best(val)
            if step % config.checkpoint_every == 0 or is_last:
                checkpoint_path = self._save({f"val_{k}": val.get(k) for k in task.val_keys})
        batches.close()
        progress.close()
        if self.val_loader is not None and evaluated_at != self.position.step:
            val = self.validate()  # nothing ran (already at the end): still report
        checkpoint_path = checkpoint_path or latest_checkpoint(self.folder.checkpoints)
        summary = self._summary(val, last_train, train_steps, train_seconds,
                                time.perf_counter() - started, checkpoint_path)  # fmt: skip
        if ctx.is_main:
            self.folder.close()
            self.folder.write_metrics(summary)
            # the figures, not the summary: its transfer report lists every tensor by name
            logger.info("%s done at step %d: %s; train loss %s; summary in %s", task.name,
                        self.position.step, task.headline(summary),
                        report_value(summary.get("train_loss")),
                        self.folder.metrics_path)  # fmt: skip
        ctx.barrier()
        return summary

    def _best_summary(self) -> dict[str, Any]:
        if not self.task.selection_key:
            return {}
        best = self.best
        return {
            "best_step": best.get("step"),
            f"best_val_{self.task.selection_key}": best.get("value"),
            "best_checkpoint": str(self.folder.checkpoints / BEST) if best else None,
        }

    def _summary(self, val, last_train, train_steps, train_seconds, seconds, checkpoint_path):
        config, task, folder = self.config, self.task, self.folder
        return {
            "task": task.name,
            "steps": self.position.step,
            "total_steps": self.total_steps,
            "epoch": self.position.step / self.steps_per_epoch,
            **{f"train_{term}": last_train.get(term) for term in task.loss_terms},
            **{f"val_{name}": value for name, value in val.items()},
            "grids_per_s": train_steps * config.batch_size / train_seconds if train_steps else None,
            "seconds": seconds,
            "parameters": self.parameters,
            "preset": config.preset,
            "device": str(self.ctx.device),
            "world_size": self.ctx.world_size,
            "amp": str(self.amp_dtype) if self.amp_dtype else "fp32",
            "train_scenes": len(self.train_scenes),
            "val_scenes": len(self.val_scenes),
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "run_dir": str(folder.root),
            "checkpoint": str(checkpoint_path) if checkpoint_path else None,
            **self._best_summary(),
            "tensorboard_dir": str(folder.tensorboard_dir),
            f"{task.picture_dir}_png": str(self.last_picture) if self.last_picture else None,
            "config_path": str(folder.config_path),
            "metrics_path": str(folder.metrics_path),
            **json_ready(task.run_info()),
        }


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


__all__ = ["Trainer", "autocast", "run_task"]
