"""The memory check: what a step keeps for backward, counted on ``meta`` tensors (hand-derived
on a small network), the estimate's exact parts, and a run that cannot fit refused before
anything is allocated or written, with the settings that would fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grid_store import GridStore, RadianceGrid
from model.tasks.pretrain import MAETask, PretrainConfig, pretrain
from model.training.distributed import DistributedContext
from model.training.memory import (
    GIB,
    PREFETCH_FACTOR,
    RunDoesNotFit,
    estimate_training_memory,
    saved_activation_bytes,
)
from nerfmae.cli import main as cli_main

CPU = DistributedContext(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("memory") / "grids.zarr")
    store = GridStore(url)
    rng = np.random.default_rng(0)
    for i in range(3):
        rgba = rng.random((4, 24, 20, 16)).astype(np.float32)
        grid = RadianceGrid(rgba=rgba, bbox_min=np.zeros(3), bbox_max=np.array([2.3, 1.9, 1.5]),
                            voxel_size=0.1, delta=0.1)  # fmt: skip
        store.write_grid(f"s{i}", grid)
    return url


def test_saved_bytes_count_each_storage_once_without_weights_or_input():
    with torch.device("meta"):
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        x = torch.zeros(3, 4)
        saved = saved_activation_bytes(net, lambda: net(x).sum(), [x])
    # Linear 1 keeps x (the input) and its weight (a parameter): neither counts. ReLU keeps
    # its (3, 8) float32 output, which Linear 2 keeps again as its input: 96 bytes, once.
    assert saved == {torch.float32: 3 * 8 * 4}


def _config(store_url, out, **changes) -> PretrainConfig:
    fields = dict(store_url=store_url, out_dir=str(out), preset="tiny", resolution=32, epochs=1,
                  batch_size=2, num_workers=0, val_scenes=["s2"], log_every=1)  # fmt: skip
    return PretrainConfig(**{**fields, **changes})


def test_exact_parts_of_the_estimate(store_url, tmp_path):
    task = MAETask(_config(store_url, tmp_path), CPU)
    model = task.make_network()
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    one, two = (estimate_training_memory(task, b, 2, torch.device("cpu"), None) for b in (1, 2))
    assert one.parameters == 4 * params and one.optimizer == 12 * trainable
    assert trainable < params  # the frozen sin-cos table has no gradient or moments
    sample = 4 * 4 * 32**3 + 32**3  # rgba float32 and valid bool
    assert one.batches == sample * (1 + PREFETCH_FACTOR * 2)
    assert two.saved_activations == pytest.approx(2 * one.saved_activations, rel=0.05)
    half = estimate_training_memory(task, 2, 2, torch.device("cpu"), torch.bfloat16)
    assert half.saved_activations < two.saved_activations


def test_the_probe_leaves_the_run_unchanged(store_url, tmp_path):
    checked = pretrain(_config(store_url, tmp_path / "a", max_steps=2))
    unchecked = pretrain(_config(store_url, tmp_path / "b", max_steps=2, check_memory=False))
    logs = []
    for run in ("a", "b"):
        lines = (tmp_path / run / "train_log.jsonl").read_text().splitlines()
        logs.append([{k: json.loads(line)[k] for k in ("loss", "grad_norm")} for line in lines])
    assert logs[0] == logs[1]
    assert checked["val_psnr"] == unchecked["val_psnr"]
    resolved = json.loads((tmp_path / "a" / "config.json").read_text())["resolved"]
    assert resolved["memory"]["total"] > resolved["memory"]["runtime"] > 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["resolved"]["memory"] is None


def test_a_run_that_cannot_fit_is_refused_with_settings_that_fit(store_url, tmp_path, capsys):
    out = tmp_path / "big"
    config = _config(store_url, out, preset="swin_s", resolution=None, memory_limit_gb=6.0)
    with pytest.raises(RunDoesNotFit) as refused:
        pretrain(config)
    message = str(refused.value)
    assert "'swin_s' at 160^3 with micro-batch 2" in message and "6.0 GiB" in message
    assert "--preset tiny" in message and "--resolution" in message
    assert "--no-check-memory" in message
    assert not out.exists()  # refused before anything was written

    # as a user meets it: the CLI's defaults (swin_s at 160^3), one line, exit 2
    code = cli_main(["pretrain", "--store", store_url, "--out", str(out), "--memory-limit-gb",
                     "6"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--preset tiny" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert estimate_training_memory(MAETask(config, CPU), 2, 0, torch.device("cpu"),
                                    None).total > 6 * GIB  # fmt: skip
