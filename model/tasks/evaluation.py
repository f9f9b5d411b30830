"""Score a run's checkpoint on scenes of one's choosing, with the task's own validation.

A fine-tuning run picks its best checkpoint on its validation scenes; a benchmark then
scores that checkpoint once on test scenes it never saw. :func:`evaluate_checkpoint` is
that second step: the checkpoint's task, rebuilt from the run's recorded config with the
test scenes as its validation set, runs :func:`model.training.validation.validation_pass`
over them, so the figures are computed exactly as the run's validation computed its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.tasks import make_config, task_class
from model.training.checkpointing import load_checkpoint
from model.training.distributed import DistributedContext
from model.training.loaders import validation_loader
from model.training.validation import LossMeans, validation_pass
from nerfmae_common.devices import resolve_device


def evaluate_checkpoint(
    path: str | Path,
    scenes: Sequence[str],
    *,
    store_url: str | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    picture: Path | None = None,
    per_scene: bool = False,
) -> dict[str, Any]:
    """The validation figures of run checkpoint ``path`` on ``scenes`` (of ``store_url``,
    default the run's store), with their count under ``"scenes"``. ``per_scene``: also each
    scene's metric state under ``"scene_states"`` (scene id -> the task metric's
    ``state_dict`` of that scene alone), to resample scenes (a bootstrap) without running the
    network again."""
    checkpoint = load_checkpoint(path)
    name, recorded = checkpoint["task"], dict(checkpoint["config"])
    config_class = task_class(name).config_class
    known = {f.name for f in dataclasses.fields(config_class)}
    changes = {
        "scenes": list(scenes), "val_scenes": list(scenes), "train_scenes": None,
        "label_fraction": 1.0, "pretrained": None, "scratch": True, "num_workers": 0,
        "device": device, "resume": False, "check_memory": False,
        # the grids as the network saw them in training (the pretraining's convention)
        "alpha_step": checkpoint["model_config"].get("alpha_step"),
    }  # fmt: skip
    if store_url is not None:
        changes["store_url"] = store_url
    fields = {k: v for k, v in {**recorded, **changes}.items() if k in known}
    config = make_config(name, **fields)
    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, device=resolve_device(device))
    task = task_class(name)(config, ctx)
    task.check_scenes(list(scenes))
    _, val = task.datasets(list(scenes), list(scenes))
    model = task.make_network()
    model.load_state_dict(checkpoint["model"])
    model.to(ctx.device)
    step = checkpoint["position"]["step"]
    loader = validation_loader(val, ctx, 1 if per_scene else batch_size, 0, config.seed)
    if not per_scene:
        metric, losses = validation_pass(task, model, loader, ctx.device, None, picture,
                                         f"{Path(path).name} step {step}")  # fmt: skip
        return {**metric.compute(), **losses.compute(), "scenes": len(scenes), "step": step}
    metric, losses, states = task.metric(), LossMeans(), {}
    for i, batch in enumerate(loader):
        one, one_losses = validation_pass(task, model, [batch], ctx.device, None,
                                          picture if i == 0 else None, f"step {step}")  # fmt: skip
        states[batch["scene_id"][0]] = one.state_dict()
        metric.merge(one.state_dict())
        losses.merge(one_losses.state_dict())
    return {**metric.compute(), **losses.compute(), "scenes": len(scenes), "step": step,
            "scene_states": states}  # fmt: skip
