"""One contract over every registered task (as zarr's store tests and timm's model tests run
one suite over every backend and model): on the ``tiny`` preset each task of
``model.tasks.TASKS`` takes steps with accumulation and augmentation, logs the loss terms
it declares, reports the validation keys it declares, resumes bit for bit, starts from a
pretraining checkpoint, and its batches reach it through ``collate_grids`` without a copy.

A task added to the registry is tested here without a line more, once its store needs are
in ``STORE_FOR``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from grid_store import GridStore
from model.tasks import FINETUNE_TASKS, TASKS, make_config, task_class, train
from model.training.checkpointing import load_checkpoint
from model.training.distributed import DistributedContext
from model.training.trainer import Trainer
from pipeline.synthetic.ground_truth import sample_ground_truth
from pipeline.synthetic.room import make_room

ROOMS = ["room0", "room1", "room2"]
CPU = DistributedContext(0, 1, 0, torch.device("cpu"))
EXTRA = {
    "pretrain": {},
    "semantics": {},
    "superres": {"target_store_url": "high"},
    "detect": {"detector_overrides": {"channels": 16}},
}
"""Task-specific fields (``"high"`` stands for the finer store)."""


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    """Three rooms at 32^3 with labels and boxes, and the same rooms at 48^3."""
    root = tmp_path_factory.mktemp("contract")
    low, high = GridStore(str(root / "low.zarr")), GridStore(str(root / "high.zarr"))
    for i, scene in enumerate(ROOMS):
        room = make_room(i)
        low.write_grid(scene, sample_ground_truth(room, 32).with_empty_space(0.01))
        high.write_grid(scene, sample_ground_truth(room, 48).with_empty_space(0.01))
    return {"low": low.url, "high": high.url}


@pytest.fixture(scope="module")
def pretrained(stores, tmp_path_factory) -> str:
    run = tmp_path_factory.mktemp("mae") / "run"
    return train(_config("pretrain", stores, run, epochs=1))["checkpoint"]


def _config(task: str, stores, out: Path, **changes):
    fields = dict(
        store_url=stores["low"], out_dir=str(out), preset="tiny", resolution=32, epochs=3,
        batch_size=2, grad_accum_steps=2, num_workers=0, val_scenes=["room2"], log_every=1,
        eval_every=2, checkpoint_every=1, keep_checkpoints=1, augment=True, seed=3,
    )  # fmt: skip
    extra = {k: stores["high"] if v == "high" else v for k, v in EXTRA[task].items()}
    if task in FINETUNE_TASKS and "pretrained" not in changes:
        extra["scratch"] = True
    return make_config(task, **{**fields, **extra, **changes})


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_every_registered_task_is_in_this_contract():
    assert set(EXTRA) == set(TASKS)
    for name in TASKS:
        task = task_class(name)
        assert task.name == name and task.config_class.task == name
        assert task.loss_terms[0] == "loss" and task.description


@pytest.mark.parametrize("name", list(TASKS))
def test_task_trains_reports_its_keys_and_resumes_bit_for_bit(name, stores, tmp_path):
    task = task_class(name)
    straight = tmp_path / "straight"
    summary = train(_config(name, stores, straight))
    # 2 training scenes, batch 2 as 2 micro-batches of 1: one step per epoch
    assert summary["task"] == name and summary["steps"] == summary["total_steps"] == 3
    for term in task.loss_terms:
        assert math.isfinite(summary[f"train_{term}"]), term
    for key in task.val_keys:
        assert f"val_{key}" in summary, key
    assert math.isfinite(summary["val_loss"])
    assert summary[f"{task.picture_dir}_png"].endswith("step_000003.png")
    logged = _log(straight)
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert all(set(task.loss_terms) <= set(r) for r in logged)
    checkpoint = load_checkpoint(straight / "checkpoints" / "latest.pt")
    assert checkpoint["task"] == name and checkpoint["config"]["task"] == name

    run = tmp_path / "resumed"
    assert train(_config(name, stores, run, max_steps=1))["steps"] == 1
    resumed = train(_config(name, stores, run, resume=True))
    assert resumed["resumed_from"].endswith("latest.pt") and resumed["steps"] == 3
    keys = ("step", *task.loss_terms, "lr", "grad_norm")
    assert [{k: r[k] for k in keys} for r in _log(run)] == [{k: r[k] for k in keys}
                                                            for r in logged]  # fmt: skip
    a = load_checkpoint(straight / "checkpoints" / "latest.pt")
    b = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][n], b["model"][n]) for n in a["model"]), name
    assert a["rng"][0]["generators"].keys() == b["rng"][0]["generators"].keys()


@pytest.mark.parametrize("name", FINETUNE_TASKS)
def test_fine_tuning_task_starts_from_a_pretraining_checkpoint(name, stores, pretrained, tmp_path):
    summary = train(_config(name, stores, tmp_path / "run", pretrained=pretrained, epochs=1))
    assert summary["init"] == "pretrained" and summary["transfer"]["loaded"] > 0
    assert any(n.startswith("encoder.") for n in load_checkpoint(pretrained)["model"])
    fresh = summary["transfer"]["fresh"]
    assert not any(n.startswith("encoder.") for n in fresh)  # the whole encoder carried over


@pytest.mark.parametrize("name", list(TASKS))
def test_batches_reach_the_task_through_collate_grids_without_a_copy(
    name, stores, tmp_path, monkeypatch
):
    import grid_store.dataset

    allocated = set()
    original = grid_store.dataset._zeros

    def recording(*args, **kwargs):
        tensor = original(*args, **kwargs)
        allocated.add(tensor.data_ptr())
        return tensor

    monkeypatch.setattr(grid_store.dataset, "_zeros", recording)
    config = _config(name, stores, tmp_path / "run")
    trainer = Trainer(config, task_class(name)(config, CPU), CPU)
    batch = next(iter(trainer.train_loader))
    grids = [k for k in ("rgba", "valid", "target") if k in batch]
    assert batch["rgba"].shape == (1, 4, 32, 32, 32) and len(grids) == 2 + (name == "superres")
    for key in grids:  # the very tensors the dataset laid the batch out in
        assert batch[key].data_ptr() in allocated, key
