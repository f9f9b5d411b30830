"""The NeRF-MAE pretraining engine: one script for one CPU, one GPU or many (``torchrun``).

Schedule (facts section 5, ``run_swin_mae3d.py``): AdamW (lr 1e-4, weight decay 1e-3 on
every parameter), ``OneCycleLR`` over ``epochs x steps_per_epoch`` optimiser steps
(pct_start 0.3, cosine, beta1 cycled 0.95 -> 0.85 -> 0.95), gradient clipping at norm
0.1, a global batch of 32 split over ranks (and over accumulation steps). Unlike the
reference (fp32), CUDA runs use bf16 autocast.

Run folder::

    RUN/config.json          the resolved config (and model config, split, schedule)
    RUN/checkpoints/         step_XXXXXX.pt, latest.pt (exact resume, see checkpointing)
    RUN/tb/                  TensorBoard events: loss terms, lr, grids/s, val PSNR / alpha MSE
    RUN/recon/step_XXXXXX.png reconstruction pictures of a validation grid
    RUN/train_log.jsonl      one line per logged step (the same figures as TensorBoard)
    RUN/metrics.json         the final summary

Masks: the model draws its block mask from a generator the engine owns and checkpoints
(one per rank). All micro-batches of one optimiser step reuse the same mask, as the
reference uses one mask for the whole batch, so accumulating ``k`` micro-batches is the
same update as one batch ``k`` times larger, up to the loss being a ratio per micro-batch
(exact when the micro-batches have equal opaque and masked voxel counts). With the
model's ``mask_per_sample`` the i-th grid of every micro-batch shares a mask.
Validation uses a fixed-seed generator, so every evaluation scores the same masks.

Command line: ``python -m model.engine --store URL --out RUN [--field value ...]`` (every
:class:`PretrainConfig` field is a flag), also under ``torchrun --nproc_per_node=N``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
import typing
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from grid_store import GridStore
from grid_store.dataset import CROP_MODES, GridDataset
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
from model.metrics import ReconstructionMetrics
from model.visualize import save_reconstruction

logger = logging.getLogger(__name__)

AMP_MODES = ("auto", "bf16", "off")
LOSS_TERMS = ("loss", "loss_rgb", "loss_alpha")

# Fields that decide the training trajectory: a resumed run must agree on all of them.
_TRAJECTORY_FIELDS = (
    "store_url", "preset", "resolution", "model_overrides", "scenes", "epochs", "batch_size",
    "grad_accum_steps", "lr", "weight_decay", "pct_start", "clip_grad_norm", "val_fraction",
    "val_scenes", "crop", "augment", "seed",
)  # fmt: skip


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs; saved resolved as ``RUN/config.json``."""

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
    crop: str = "pad"
    """How oversized training grids are cut to ``S``: ``pad`` (from index 0) or ``random``."""
    augment: bool = True
    """Reference pretraining augmentation: random 90-degree z-rotation and x/y flips."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0: load in the training process)."""
    log_every: int = 10
    """Optimiser steps between logged figures (TensorBoard, train_log.jsonl, progress bar)."""
    eval_every: int = 1000
    """Optimiser steps between validations (and reconstruction pictures); also at the end."""
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
    amp: str = "auto"
    """Mixed precision: ``auto`` (bf16 autocast on CUDA, off on CPU), ``bf16``, ``off``."""
    resume: bool = False
    """Continue from ``RUN/checkpoints/latest.pt`` when it exists (else start fresh)."""

    def __post_init__(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"PretrainConfig.{name}: {why}, got {getattr(self, name)!r}")

        if self.resolution is not None and self.resolution < 1:
            fail("resolution", "must be >= 1 or None")
        for name in ("epochs", "batch_size", "grad_accum_steps", "log_every",
                     "eval_every", "checkpoint_every"):  # fmt: skip
            if int(getattr(self, name)) < 1:
                fail(name, "must be >= 1")
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
        if self.lr <= 0 or self.weight_decay < 0 or self.clip_grad_norm <= 0:
            fail("lr", "lr and clip_grad_norm must be > 0 and weight_decay >= 0")
        if self.amp not in AMP_MODES:
            fail("amp", f"must be one of {AMP_MODES}")
        if self.crop not in CROP_MODES:
            fail("crop", f"must be one of {CROP_MODES}")
        if not self.store_url:
            fail("store_url", "must name a grid store")
        if not self.out_dir:
            fail("out_dir", "must name a run folder")


# ----------------------------------------------------------------------------- data split
def split_scenes(
    scene_ids: Sequence[str],
    val_fraction: float,
    val_scenes: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Disjoint ``(train, val)`` scene lists, both sorted.

    Without an explicit list the validation scenes are those with the smallest
    ``sha256(seed:scene_id)``: the split depends on neither listing order nor machine,
    and a scene keeps its side as long as the store's membership does not push it over
    the cut.
    """
    ids = sorted(set(scene_ids))
    if val_scenes is not None:
        unknown = sorted(set(val_scenes) - set(ids))
        if unknown:
            raise ValueError(f"val_scenes: {unknown} are not scenes of the store")
        val = sorted(set(val_scenes))
    elif val_fraction > 0 and len(ids) > 1:
        n_val = min(len(ids) - 1, max(1, math.ceil(val_fraction * len(ids))))

        def rank(scene: str) -> str:
            return hashlib.sha256(f"{seed}:{scene}".encode()).hexdigest()

        val = sorted(sorted(ids, key=rank)[:n_val])
    else:
        val = []
    held_out = set(val)
    train = [s for s in ids if s not in held_out]
    if not train:
        raise ValueError("val_scenes: every scene is held out for validation, none left to train")
    return train, val


def fit_batch_to_scenes(
    config: PretrainConfig, train_scenes: int, world_size: int
) -> PretrainConfig:
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


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch only what pretraining reads (some scenes also carry ``semantic``)."""
    return {
        "rgba": torch.stack([s["rgba"] for s in samples]),  # (B, 4, S, S, S)
        "valid": torch.stack([s["valid"] for s in samples]),  # (B, S, S, S)
        "scene_id": [s["scene_id"] for s in samples],
    }


# ------------------------------------------------------------------------- one step
def resolve_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or ``None`` for full fp32."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def accumulate_gradients(
    model: nn.Module,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    mask_generator: torch.Generator | None,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Forward and backward over the micro-batches of one optimiser step.

    Every micro-batch restarts ``mask_generator`` from the same state, so all see one
    mask; the generator ends where a single forward pass would leave it. Gradients are
    the mean over micro-batches (DDP all-reduces only after the last one).

    Returns:
        ``(3,)`` detached mean of ``(loss, loss_rgb, loss_alpha)`` over the micro-batches.
    """
    n = len(micro_batches)
    start_state = mask_generator.get_state() if mask_generator is not None else None
    terms = torch.zeros(3, device=device)
    for i, batch in enumerate(micro_batches):
        if mask_generator is not None:
            mask_generator.set_state(start_state)
        rgba = batch["rgba"].to(device, non_blocking=True)  # (b, 4, S, S, S)
        valid = batch["valid"].to(device, non_blocking=True)  # (b, S, S, S)
        with no_gradient_sync(model, last_micro_batch=i == n - 1):
            with _autocast(device, amp_dtype):
                out = model(rgba, valid, generator=mask_generator)
            (out.loss / n).backward()
        terms += torch.stack([out.loss, out.loss_rgb, out.loss_alpha]).detach().float() / n
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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    ctx: DistributedContext,
    seed: int,
    amp_dtype: torch.dtype | None = None,
    recon_path: Path | None = None,
    title: str = "",
) -> dict[str, float | None]:
    """Validation over this rank's share of ``loader``, reduced over ranks.

    Masks come from a generator seeded with ``seed`` afresh, so every call scores the
    same masks. Rank 0 draws the first grid's reconstruction to ``recon_path``.
    Returns ``{"psnr", "alpha_mse", "loss"}`` (means over grids; ``None`` if nothing scored).
    """
    bare = unwrap(model)
    was_training = bare.training
    bare.eval()
    generator = torch.Generator(device=ctx.device).manual_seed(seed)
    metrics = ReconstructionMetrics()
    for i, batch in enumerate(loader):
        rgba = batch["rgba"].to(ctx.device)  # (B, 4, S, S, S)
        valid = batch["valid"].to(ctx.device)  # (B, S, S, S)
        with _autocast(ctx.device, amp_dtype):
            out = bare(rgba, valid, generator=generator)
        pred = out.pred.float()  # (B, 4, S, S, S)
        metrics.update(pred, rgba, out.mask, valid, loss=out.loss)
        if i == 0 and recon_path is not None and ctx.is_main:
            label = f"{title} scene {batch['scene_id'][0]}".strip()
            save_reconstruction(recon_path, rgba[0], valid[0], pred[0], out.mask[0], title=label)
    bare.train(was_training)
    total = ctx.all_reduce_sum(metrics.as_tensor(ctx.device))
    return ReconstructionMetrics.from_tensor(total).summary()


# --------------------------------------------------------------------------- the run
def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _check_resumable(saved: dict[str, Any], config: PretrainConfig, path: Path) -> None:
    current = _json_ready(dataclasses.asdict(config))
    for name in _TRAJECTORY_FIELDS:
        if saved.get(name) != current[name]:
            raise ValueError(
                f"{path}: config.{name}: checkpoint has {saved.get(name)!r}, this run asks "
                f"{current[name]!r}; resume needs the same value (or a new --out)"
            )


class _Pretraining:
    """State of one pretraining run on one rank; :meth:`run` trains and returns the summary."""

    def __init__(self, config: PretrainConfig, ctx: DistributedContext) -> None:
        from model import build_mae, get_config

        self.config = config
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

        overrides = dict(config.model_overrides)
        if config.resolution is not None:
            overrides["resolution"] = config.resolution
        model_config = get_config(config.preset, **overrides)  # validates before any data work
        self.resolution = model_config.resolution

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
        self.train_scenes, self.val_scenes = split_scenes(
            scene_ids, config.val_fraction, config.val_scenes, config.seed
        )
        if not self.val_scenes and config.val_fraction > 0 and config.val_scenes is None:
            logger.warning(
                "no validation scene: %d scene(s) in the store, all of them train; the run "
                "reports no validation loss or PSNR and draws no reconstruction pictures",
                len(scene_ids),
            )
        self.config = config = fit_batch_to_scenes(config, len(self.train_scenes), ctx.world_size)
        self.micro_batch = per_rank_micro_batch(
            config.batch_size, ctx.world_size, config.grad_accum_steps
        )
        self.train_set = GridDataset(
            config.store_url, self.train_scenes, size=self.resolution, crop=config.crop,
            augment=config.augment, seed=config.seed,
        )  # fmt: skip
        self.sampler = ResumableDistributedSampler(self.train_set, ctx, seed=config.seed)
        self.steps_per_epoch = len(self.sampler) // (self.micro_batch * config.grad_accum_steps)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.stop_step = min(self.total_steps, config.max_steps or self.total_steps)
        loader_options: dict[str, Any] = {
            "batch_size": self.micro_batch,
            "num_workers": config.num_workers,
            "pin_memory": ctx.device.type == "cuda",
            "collate_fn": _collate,
        }
        # Private generators: creating an iterator must not draw from the global RNG.
        self.train_loader = DataLoader(
            self.train_set, sampler=self.sampler, drop_last=True,
            generator=torch.Generator().manual_seed(config.seed), **loader_options,
        )  # fmt: skip
        self.val_loader: DataLoader | None = None
        if self.val_scenes:
            val_set = GridDataset(config.store_url, self.val_scenes, size=self.resolution)
            shard = Subset(val_set, range(ctx.rank, len(val_set), ctx.world_size))
            self.val_loader = DataLoader(
                shard, generator=torch.Generator().manual_seed(config.seed), **loader_options
            )

        bare = build_mae(model_config)
        self.model_config = _json_ready(dataclasses.asdict(bare.config))
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
        self.mask_generator = torch.Generator(device=ctx.device).manual_seed(
            config.seed * 1_000_003 + ctx.rank
        )
        self.position = DataPosition(step=0, epoch=0, step_in_epoch=0)
        self.resumed_from: Path | None = None
        if config.resume:
            self._resume()

    # ------------------------------------------------------------------ checkpoints
    def _generators(self) -> dict[str, torch.Generator]:
        return {"mask": self.mask_generator}

    def _resume(self) -> None:
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            logger.info("resume: no checkpoint in %s, starting fresh", self.checkpoint_dir)
            return
        checkpoint = load_checkpoint(path)
        _check_resumable(checkpoint["config"], self.config, path)
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
            restore_rng_state(rng[self.ctx.rank], self._generators())
        else:
            # A different world size already changes the data split; keep the run valid.
            logger.warning("resume: %d rank RNG states saved, %d ranks now: reseeding",
                           len(rng), self.ctx.world_size)  # fmt: skip
            torch.manual_seed(self.config.seed + self.position.step * 1009 + self.ctx.rank)
            self.mask_generator.manual_seed(self.config.seed + self.position.step + self.ctx.rank)
        self.resumed_from = path
        logger.info("resumed from %s at step %d (epoch %d)", path, self.position.step,
                    self.position.epoch)  # fmt: skip

    def _save(self, metrics: dict[str, Any]) -> Path | None:
        rng = self.ctx.all_gather_objects(capture_rng_state(self._generators()))
        if not self.ctx.is_main:
            return None
        checkpoint = make_checkpoint(
            unwrap(self.model), self.optimizer, self.scheduler, self.position, rng,
            config=_json_ready(dataclasses.asdict(self.config)), model_config=self.model_config,
            metrics={**metrics, "steps_per_epoch": self.steps_per_epoch},
        )  # fmt: skip
        return save_checkpoint(checkpoint, self.checkpoint_dir, self.config.keep_checkpoints)

    # --------------------------------------------------------------------- outputs
    def _write_config(self) -> Path:
        path = self.run_dir / "config.json"
        _write_json(path, {
            "config": dataclasses.asdict(self.config),
            "model_config": self.model_config,
            "resolved": {
                "device": str(self.ctx.device), "world_size": self.ctx.world_size,
                "amp_dtype": str(self.amp_dtype) if self.amp_dtype else "fp32",
                "micro_batch_per_rank": self.micro_batch, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps, "parameters": self.parameters,
                "train_scenes": self.train_scenes, "val_scenes": self.val_scenes,
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
    def _batches(self) -> Iterator[list[dict[str, Any]]]:
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

    def _evaluate(self, writer) -> dict[str, float | None]:
        step = self.position.step
        recon = self.run_dir / "recon" / f"step_{step:06d}.png"
        result = evaluate(self.model, self.val_loader, self.ctx, self.config.seed + 7919,
                          self.amp_dtype, recon_path=recon, title=f"step {step}")  # fmt: skip
        if self.ctx.is_main:
            for name, value in result.items():
                if value is not None:
                    writer.add_scalar(f"val/{name}", value, step)
            logger.info("step %d validation: %s", step, result)
            self.last_recon = recon
        return result

    def run(self) -> dict[str, Any]:
        ctx, config = self.ctx, self.config
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
            "pretraining %s (%d params) on %d train / %d val scenes, %d steps/epoch x %d "
            "epochs, stopping at step %d, %s x %d rank(s), amp %s", config.preset,
            self.parameters, len(self.train_scenes), len(self.val_scenes), self.steps_per_epoch,
            config.epochs, self.stop_step, ctx.device, ctx.world_size, self.amp_dtype or "fp32",
        )  # fmt: skip
        self.last_recon: Path | None = None
        val: dict[str, float | None] = {"psnr": None, "alpha_mse": None, "loss": None}
        last_train: dict[str, float] = {}
        evaluated_at = checkpoint_path = None
        window = torch.zeros(3, device=ctx.device)
        window_steps, window_seconds = 0, 0.0
        train_seconds, train_steps = 0.0, 0
        started = time.perf_counter()
        progress = tqdm(total=self.stop_step, initial=self.position.step, desc="pretrain",
                        unit="step", disable=not ctx.is_main, dynamic_ncols=True)  # fmt: skip
        batches = self._batches()
        while self.position.step < self.stop_step:
            tic = time.perf_counter()
            micro_batches = next(batches)
            terms = accumulate_gradients(
                self.model, micro_batches, self.mask_generator, ctx.device, self.amp_dtype
            )
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
                last_train = dict(zip(LOSS_TERMS, mean_terms, strict=True))
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
            "steps": self.position.step,
            "total_steps": self.total_steps,
            "epoch": self.position.step / self.steps_per_epoch,
            "train_loss": last_train.get("loss"),
            "train_loss_rgb": last_train.get("loss_rgb"),
            "train_loss_alpha": last_train.get("loss_alpha"),
            "val_psnr": val["psnr"],
            "val_alpha_mse": val["alpha_mse"],
            "val_loss": val["loss"],
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
            "recon_png": str(self.last_recon) if self.last_recon else None,
            "config_path": str(self.run_dir / "config.json"),
            "metrics_path": str(self.run_dir / "metrics.json"),
        }
        if ctx.is_main:
            writer.close()
            log_file.close()
            _write_json(self.run_dir / "metrics.json", summary)
            logger.info("pretraining done: %s", json.dumps(summary))
        ctx.barrier()
        return summary


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Pretrain the MAE on the store's grids; returns the summary (also ``RUN/metrics.json``).

    Under ``torchrun`` every rank calls this; rank 0 writes the run folder.
    """
    ctx = init_distributed(config.device)
    try:
        if not ctx.is_main:
            logging.getLogger("model").setLevel(logging.WARNING)
        return _Pretraining(config, ctx).run()
    finally:
        shutdown_distributed(ctx)


# ---------------------------------------------------------------------- entry point
def _flag_type(annotation: Any) -> tuple[Any, bool]:
    """``(scalar type, is_list)`` of a config field's annotation (``X | None`` -> ``X``)."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        return dict, False
    if origin is list:
        return typing.get_args(annotation)[0], True
    inner = [a for a in typing.get_args(annotation) if a is not type(None)]
    if inner:
        return _flag_type(inner[0])
    return annotation, False


_FLAG_NAMES = {"store_url": "--store", "out_dir": "--out"}


def build_arg_parser() -> argparse.ArgumentParser:
    """One flag per :class:`PretrainConfig` field (``--store``/``--out`` name the first two)."""
    parser = argparse.ArgumentParser(
        prog="python -m model.engine",
        description="NeRF-MAE pretraining (single process, or one rank under torchrun). "
        "Each flag sets the PretrainConfig field of that name (see its docstring).",
    )
    hints = typing.get_type_hints(PretrainConfig)
    for f in dataclasses.fields(PretrainConfig):
        flag = _FLAG_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        kind, is_list = _flag_type(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if f.default is dataclasses.MISSING else f.default
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default)  # fmt: skip
        elif kind is dict:
            parser.add_argument(flag, dest=f.name, type=json.loads, default={},
                                help="JSON object")  # fmt: skip
        else:
            parser.add_argument(flag, dest=f.name, type=kind, nargs="+" if is_list else None,
                                required=required, default=default)  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
    )
    summary = pretrain(PretrainConfig(**vars(args)))
    if rank == 0:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
