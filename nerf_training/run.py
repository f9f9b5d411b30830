"""NeRF run folders (DESIGN contract 4): train one scene into a folder, load it back.

```
RUN/config.json     the resolved TrainerConfig, field config, scene folder, backend
RUN/checkpoint.pt   {state_dict, occupancy, optimizer, step, config, ...}; weights_only-safe
RUN/metrics.json    psnr_holdout, ssim_holdout, steps, seconds, backend, ...
RUN/renders/*.png   held-out views rendered by the final model
```
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from nerf_training.field import FieldConfig, NGPField
from nerf_training.hash_encoding import HashEncodingConfig
from nerf_training.scene import load_scene
from nerf_training.trainer import NerfTrainer, TrainerConfig
from nerfmae_common.files import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
RENDERS_DIR = "renders"
CHECKPOINT_EVERY_S = 120.0
"""Training seconds between periodic checkpoints (for resume after a crash)."""


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def save_checkpoint(path: Path, trainer: NerfTrainer, scene_dir: Path) -> None:
    payload = trainer.state_dict()
    payload["scene_dir"] = str(scene_dir)
    atomic_write(path, lambda f: torch.save(payload, f))


def train_nerf(
    scene_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    config: TrainerConfig | None = None,
    resume: bool = False,
) -> dict:
    """Train a NeRF on ``scene_dir`` into ``run_dir``; returns the metrics written.

    The scene is read and validated before anything is written to ``run_dir``. With
    ``resume``, training continues from ``run_dir/checkpoint.pt`` (its step, optimiser state
    and spent time) towards the same stopping rules.
    """
    config = config or TrainerConfig()
    scene_dir, run_dir = Path(scene_dir), Path(run_dir)
    scene = load_scene(scene_dir, downscale=config.downscale)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    if resume and not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path}: no checkpoint to resume from")

    trainer = NerfTrainer(scene, config)
    if resume:
        trainer.load_state_dict(
            torch.load(checkpoint_path, map_location=trainer.device, weights_only=True)
        )
        logger.info("resumed %s at step %d (%.1f s)", run_dir, trainer.step, trainer.elapsed_s)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        run_dir / CONFIG_FILE,
        {
            "trainer": config.to_dict(),
            "field": asdict(trainer.field_config),
            "backend": trainer.field_config.backend,
            "scene_dir": str(scene_dir.resolve()),
            "device": str(trainer.device),
        },
    )
    last_save = [trainer.elapsed_s]

    def checkpoint_periodically(t: NerfTrainer) -> None:
        if t.elapsed_s - last_save[0] >= CHECKPOINT_EVERY_S:
            save_checkpoint(checkpoint_path, t, scene_dir.resolve())
            last_save[0] = t.elapsed_s

    wall_start = time.perf_counter()
    trainer.train(on_step=checkpoint_periodically)
    save_checkpoint(checkpoint_path, trainer, scene_dir.resolve())
    eval_start = time.perf_counter()
    metrics = trainer.evaluate(render_dir=run_dir / RENDERS_DIR)
    metrics.update(
        {
            "steps": trainer.step,
            "seconds": trainer.elapsed_s,
            "eval_seconds": time.perf_counter() - eval_start,
            "wall_seconds": time.perf_counter() - wall_start,
            "backend": trainer.field_config.backend,
            "device": str(trainer.device),
            "divergences": trainer.divergences,
            "occupied_fraction": trainer.grid.occupied_fraction(),
            "scene_dir": str(scene_dir.resolve()),
        }
    )
    write_json(run_dir / METRICS_FILE, metrics)
    logger.info(
        "trained %s: %.2f dB held-out in %d steps", run_dir, metrics["psnr_holdout"], trainer.step
    )
    return metrics


@dataclass
class TrainedRun:
    """A finished run folder, loaded for sampling (grid extraction)."""

    field: NGPField
    """The trained field in eval mode (implements ``pipeline.field.RadianceField``)."""
    camera_origins: np.ndarray
    """``(C, 3)`` float32 world positions of the training cameras."""
    scene_aabb: np.ndarray
    """``(2, 3)`` float32 scene box the field lives in."""
    metrics: dict
    config: dict
    scene_dir: Path
    run_dir: Path


def _field_config_from_dict(data: dict) -> FieldConfig:
    return FieldConfig(**{**data, "encoding": HashEncodingConfig(**data["encoding"])})


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedRun:
    """Load ``RUN/checkpoint.pt`` (+ config and metrics) into an eval-mode field on ``device``.

    A field trained with tcnn loads into the torch backend off CUDA: both share the
    parameter layout.
    """
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path}: run folder has no checkpoint")
    device = torch.device(device)
    ckpt = torch.load(checkpoint_path, map_location=device, weights_only=True)
    field_config = _field_config_from_dict(ckpt["field_config"])
    if device.type != "cuda":
        field_config.backend = "torch"
    field = NGPField(field_config, ckpt["scene_aabb"]).to(device)
    field.load_state_dict(ckpt["state_dict"])
    field.eval()
    for p in field.parameters():
        p.requires_grad_(False)
    metrics_path = run_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    config_path = run_dir / CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return TrainedRun(
        field=field,
        camera_origins=ckpt["camera_origins"].cpu().numpy().astype(np.float32),
        scene_aabb=ckpt["scene_aabb"].cpu().numpy().astype(np.float32),
        metrics=metrics,
        config=config,
        scene_dir=Path(ckpt.get("scene_dir", config.get("scene_dir", ""))),
        run_dir=run_dir,
    )
