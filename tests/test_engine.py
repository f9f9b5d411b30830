"""The pretraining engine: run folder, exact resume, split, accumulation, metrics, DDP, CLI.

Everything runs the real ``tiny`` model at 32^3 on real ``GridDataset``s over a small
local grid store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from grid_store import GridStore, RadianceGrid
from model import build_mae
from model.metrics.reconstruction import ReconstructionMetrics, color_psnr, masked_alpha_mse
from model.pictures.reconstruction import composite_along_z
from model.tasks.pretrain import PretrainConfig, accumulate_gradients, pretrain
from model.training.checkpointing import capture_rng_state, load_checkpoint, restore_rng_state
from model.training.config import fit_batch_to_scenes, split_scenes
from model.training.distributed import DistributedContext, ResumableDistributedSampler
from model.training.run_folder import RunFolder
from model.training.trainer import validation_interval
from nerfmae.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(32, 28, 24), (24, 32, 30), (32, 32, 20)]
LOGGED = ("loss", "loss_rgb", "loss_alpha", "lr", "grad_norm")


def _grid(shape: tuple[int, int, int], seed: int) -> RadianceGrid:
    """A ball of opacity with noisy colour: something for the tiny model to reconstruct."""
    rng = np.random.default_rng(seed)
    rgba = np.zeros((4, *shape), np.float32)
    rgba[:3] = rng.random((3, *shape))
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    rgba[3] = np.clip(1.2 - 1.5 * np.sqrt(x**2 + y**2 + z**2), 0, 1)
    vs = 0.1
    return RadianceGrid(rgba=rgba, bbox_min=np.zeros(3), bbox_max=(np.array(shape) - 1) * vs,
                        voxel_size=vs, delta=vs)  # fmt: skip


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("engine") / "grids.zarr")
    store = GridStore(url)
    for i, shape in enumerate(SHAPES):
        store.write_grid(f"scene{i}", _grid(shape, i))
    return url


def _config(store_url: str, out: Path, **changes) -> PretrainConfig:
    base = dict(
        store_url=store_url, out_dir=str(out), preset="tiny", resolution=32, epochs=2,
        batch_size=1, val_fraction=0.25, num_workers=0, log_every=1, eval_every=3,
        checkpoint_every=2, keep_checkpoints=1, augment=True,
    )  # fmt: skip
    return PretrainConfig(**{**base, **changes})


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight_run(store_url, tmp_path_factory) -> tuple[Path, dict]:
    """4 optimiser steps (2 epochs of 2 training scenes) without interruption."""
    run = tmp_path_factory.mktemp("straight") / "run"
    return run, pretrain(_config(store_url, run))


def test_run_folder_has_checkpoints_events_pictures_and_finite_metrics(straight_run):
    run, summary = straight_run
    assert summary["steps"] == summary["total_steps"] == 4
    assert (summary["train_scenes"], summary["val_scenes"]) == (2, 1)
    for key in ("train_loss", "train_loss_rgb", "train_loss_alpha", "val_psnr",
                "val_alpha_mse", "val_loss", "grids_per_s"):  # fmt: skip
        assert math.isfinite(summary[key]), key
    assert json.loads((run / "metrics.json").read_text()) == summary
    config = json.loads((run / "config.json").read_text())
    assert config["model_config"]["resolution"] == 32
    assert config["resolved"]["steps_per_epoch"] == 2

    ckpts = run / "checkpoints"
    # Saved at steps 2 and 4 (also the end); keep_checkpoints=1 removed step 2.
    assert sorted(p.name for p in ckpts.glob("*.pt")) == ["latest.pt", "step_000004.pt"]
    checkpoint = torch.load(ckpts / "latest.pt", weights_only=True)
    assert checkpoint["position"] == {"step": 4, "epoch": 2, "step_in_epoch": 0}
    assert checkpoint["config"]["preset"] == "tiny" and isinstance(checkpoint["model_config"], dict)
    assert not list(ckpts.glob(".*tmp*"))

    assert list((run / "tb").glob("events.out.tfevents.*"))
    pngs = sorted((run / "recon").glob("*.png"))
    assert [p.name for p in pngs] == ["step_000003.png", "step_000004.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["step"] for r in _log(run)] == [1, 2, 3, 4]


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(straight_run, store_url, tmp_path):
    straight, _ = straight_run
    run = tmp_path / "run"
    first = pretrain(_config(store_url, run, max_steps=1))  # stops mid-epoch 0
    assert first["steps"] == 1
    resumed = pretrain(_config(store_url, run, resume=True))  # crosses into epoch 1
    assert resumed["resumed_from"].endswith("latest.pt") and resumed["steps"] == 4

    expected = [{k: r[k] for k in ("step", *LOGGED)} for r in _log(straight)]
    assert [{k: r[k] for k in ("step", *LOGGED)} for r in _log(run)] == expected
    a = load_checkpoint(straight / "checkpoints" / "latest.pt")
    b = load_checkpoint(run / "checkpoints" / "latest.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert resumed["val_psnr"] == straight_run[1]["val_psnr"]


def test_resume_refuses_a_different_schedule_and_a_fresh_run_never_overwrites(
    straight_run, store_url
):
    straight, _ = straight_run
    with pytest.raises(ValueError, match="resume"):
        pretrain(_config(store_url, straight))
    with pytest.raises(ValueError, match=r"config\.epochs"):
        pretrain(_config(store_url, straight, epochs=3, resume=True))


def test_validation_split_is_by_scene_deterministic_and_disjoint():
    scenes = [f"s{i:03d}" for i in range(40)]
    train, val = split_scenes(scenes, 0.1, seed=0)
    assert len(val) == 4 and not set(train) & set(val) and sorted(train + val) == scenes
    assert split_scenes(list(reversed(scenes)), 0.1, seed=0) == (train, val)  # order-free
    assert split_scenes(scenes, 0.1, seed=1)[1] != val  # the seed picks the split
    assert len(split_scenes(scenes[:3], 0.01)[1]) == 1  # rounded up to one scene
    assert split_scenes(scenes[:5], 0.0) == (scenes[:5], [])
    assert split_scenes(scenes[:5], 0.5, val_scenes=["s004"]) == (scenes[:4], ["s004"])
    with pytest.raises(ValueError, match="val_scenes"):
        split_scenes(scenes[:5], 0.0, val_scenes=["nope"])


def test_sampler_resumes_mid_epoch_and_splits_ranks():
    data = list(range(10))
    ranks = [DistributedContext(r, 2, r, torch.device("cpu")) for r in (0, 1)]
    samplers = [ResumableDistributedSampler(data, ctx, seed=3) for ctx in ranks]
    for s in samplers:
        s.set_position(epoch=1)
    full = [list(s) for s in samplers]
    assert not set(full[0]) & set(full[1]) and sorted(full[0] + full[1]) == data
    samplers[0].set_position(epoch=1, start=2)
    assert list(samplers[0]) == full[0][2:] and len(samplers[0]) == 3
    samplers[0].set_position(epoch=2)
    assert list(samplers[0]) != full[0]  # a new order each epoch


def test_two_micro_batches_give_the_gradient_of_one_batch_of_two():
    # float64: in float32 the tiny decoder's small InstanceNorm levels amplify summation-order
    # noise to ~1% of some gradients, which would hide a real accumulation error.
    torch.manual_seed(0)
    model = build_mae("tiny", resolution=32).double()
    rgba = torch.rand(2, 4, 32, 32, 32, dtype=torch.float64)
    rgba[1, 3] = rgba[0, 3]  # equal alpha and extent: per-batch loss means then agree exactly
    valid = torch.zeros(2, 32, 32, 32, dtype=torch.bool)
    valid[:, :28, :30, :24] = True
    rgba = rgba * valid[:, None]

    def gradients(micro_batches):
        model.zero_grad()
        gen = torch.Generator().manual_seed(5)
        accumulate_gradients(model, micro_batches, gen, torch.device("cpu"))
        return [p.grad.clone() for p in model.parameters() if p.grad is not None], gen.get_state()

    whole, state_whole = gradients([{"rgba": rgba, "valid": valid}])
    split, state_split = gradients(
        [{"rgba": rgba[i : i + 1], "valid": valid[i : i + 1]} for i in range(2)]
    )
    assert torch.equal(state_whole, state_split)  # one mask draw per optimiser step either way
    assert len(whole) == len(split) > 0
    for g1, g2 in zip(whole, split, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-7, atol=1e-10)


def test_metrics_match_hand_computed_values():
    # Two voxels: the first opaque (alpha 0.5), the second empty (alpha 0) and badly predicted.
    target = torch.tensor([[0.2, 0.9], [0.4, 0.1], [0.6, 0.5], [0.5, 0.0]]).reshape(1, 4, 2, 1, 1)
    pred_rgb = target[:, :3].clone()
    pred_rgb[0, :, 0, 0, 0] += torch.tensor([0.1, -0.2, 0.3])
    pred_rgb[0, :, 1, 0, 0] = 5.0  # ignored: ground-truth alpha 0
    expected_mse = (0.01 + 0.04 + 0.09) / 3
    torch.testing.assert_close(color_psnr(pred_rgb, target),
                               torch.tensor([-10 * math.log10(expected_mse)]))  # fmt: skip

    logits = torch.tensor([0.0, math.log(3.0)]).reshape(1, 2, 1, 1)  # sigmoid: 0.5, 0.75
    mask = torch.tensor([False, True]).reshape(1, 2, 1, 1)
    valid = torch.ones(1, 2, 1, 1, dtype=torch.bool)
    alpha = target[:, 3]
    torch.testing.assert_close(masked_alpha_mse(logits, alpha, mask, valid),
                               torch.tensor([0.75**2]))  # fmt: skip
    both = torch.ones_like(mask)
    torch.testing.assert_close(masked_alpha_mse(logits, alpha, both, valid),
                               torch.tensor([(0.0 + 0.75**2) / 2]))  # fmt: skip
    # Masked voxels in the padding do not count; nothing left to score gives NaN.
    assert torch.isnan(masked_alpha_mse(logits, alpha, mask, ~mask)).all()
    assert torch.isnan(color_psnr(pred_rgb, torch.zeros_like(target))).all()

    metrics = ReconstructionMetrics()
    pred = torch.cat([pred_rgb, logits[:, None]], dim=1)
    metrics.update(pred, target, mask, valid, loss=torch.tensor(1.5))
    metrics.update(pred, torch.zeros_like(target), mask, valid)  # no opaque voxel: PSNR skipped
    summary = metrics.compute()
    assert summary["psnr"] == pytest.approx(-10 * math.log10(expected_mse), rel=1e-6)
    assert summary["alpha_mse"] == pytest.approx((0.75**2 + 0.75**2) / 2)
    assert summary["loss"] == pytest.approx(1.5)


def test_top_down_composite_is_front_to_back_over_black():
    rgba = np.zeros((4, 1, 1, 2), np.float32)
    rgba[:3, 0, 0, 1] = [1.0, 0.0, 0.0]  # top voxel (high z): red, alpha 0.5
    rgba[:3, 0, 0, 0] = [0.0, 1.0, 0.0]  # below: green, alpha 0.5
    rgba[3] = 0.5
    color, opacity = composite_along_z(rgba)
    np.testing.assert_allclose(color[0, 0], [0.5, 0.25, 0.0])
    np.testing.assert_allclose(opacity[0, 0], 0.75)


def test_rng_state_round_trip():
    gen = torch.Generator().manual_seed(1)
    state = capture_rng_state({"mask": gen})
    draw_numpy = np.random.rand  # noqa: NPY002 (the legacy global RNG is what is saved)
    before = (random.random(), draw_numpy(), torch.rand(2), torch.rand(2, generator=gen))
    restore_rng_state(state, {"mask": gen})
    after = (random.random(), draw_numpy(), torch.rand(2), torch.rand(2, generator=gen))
    assert before[:2] == after[:2]
    assert torch.equal(before[2], after[2]) and torch.equal(before[3], after[3])


def test_cli_pretrain_prints_the_summary(store_url, tmp_path, capsys):
    run = tmp_path / "cli_run"
    code = cli_main(["pretrain", "--store", store_url, "--out", str(run), "--preset", "tiny",
                     "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
                     "--max-steps", "1", "--no-augment"])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 1 and printed["preset"] == "tiny"
    assert math.isfinite(printed["val_psnr"]) and (run / "metrics.json").is_file()
    bad = cli_main(["pretrain", "--store", str(tmp_path / "missing"), "--out", str(run) + "2",
                    "--preset", "tiny"])  # fmt: skip
    assert bad == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_torchrun(store_url, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--standalone", "-m", "model.pretrain", "--store", store_url, "--out", str(run),
           "--preset", "tiny", "--epochs", "2", "--batch-size", "2", "--num-workers", "0",
           "--val-fraction", "0.25", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "metrics.json").read_text())
    # 2 training scenes over 2 ranks, global batch 2: one step per epoch.
    assert summary["world_size"] == 2 and summary["steps"] == summary["total_steps"] == 2
    assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["val_psnr"])
    checkpoint = load_checkpoint(run / "checkpoints" / "latest.pt")
    rng = checkpoint["rng"]
    assert len(rng) == 2  # each rank's own streams, so a resume is exact per rank
    assert not torch.equal(rng[0]["generators"]["mask"], rng[1]["generators"]["mask"])


def test_fit_batch_to_scenes_caps_to_what_one_epoch_can_fill(caplog):
    def fitted(batch, scenes, world, accum=1):
        config = PretrainConfig(store_url="s", out_dir="o", batch_size=batch,
                                grad_accum_steps=accum)  # fmt: skip
        return fit_batch_to_scenes(config, scenes, world).batch_size

    assert fitted(32, 3, 1) == 3
    assert fitted(32, 5, 2) == 4  # 2 scenes per rank, the fifth is dropped
    assert fitted(32, 7, 2, accum=2) == 4  # 3 per rank: one micro-batch of 1 per step
    assert fitted(8, 20, 1) == 8  # fits: unchanged
    assert "batch_size 32 exceeds the 3 training scene(s): using 3" in caplog.text
    with pytest.raises(ValueError, match="1 training scene.*2 rank"):
        fitted(4, 1, 2)


def test_default_batch_runs_on_a_small_store_and_records_the_cap(store_url, tmp_path, caplog):
    # The paper's batch of 32 on the 3 scenes of this store (1 held out): 2 per step.
    config = _config(store_url, tmp_path / "run", batch_size=32, epochs=1, augment=False)
    with caplog.at_level(logging.WARNING, logger="model"):
        summary = pretrain(config)
    assert summary["steps"] == 1 and summary["train_scenes"] == 2
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["batch_size"] == 2
    assert "batch_size 32 exceeds the 2 training scene(s)" in caplog.text
    assert "no validation scene" not in caplog.text


def test_a_store_of_one_grid_trains_and_warns_there_is_no_validation(tmp_path, caplog):
    url = str(tmp_path / "one.zarr")
    GridStore(url).write_grid("only", _grid(SHAPES[0], 0))
    with caplog.at_level(logging.WARNING, logger="model"):
        summary = pretrain(_config(url, tmp_path / "run", batch_size=32, epochs=1))
    assert summary["steps"] == 1 and summary["val_psnr"] is None and summary["recon_png"] is None
    assert "no validation scene: 1 scene(s) in the store" in caplog.text


@pytest.mark.parametrize(
    ("eval_every", "steps", "expected"),
    [
        (None, 2, 1),
        (None, 30, 6),
        (None, 31, 7),
        (None, 10**6, 1000),
        (7, 30, 7),
        (10**9, 3, 10**9),
    ],
)
def test_validation_interval_is_about_five_per_run_unless_set(eval_every, steps, expected):
    assert validation_interval(eval_every, steps) == expected


def test_a_short_run_without_eval_every_validates_and_draws_at_every_step(store_url, tmp_path):
    run = tmp_path / "run"
    pretrain(_config(store_url, run, eval_every=None, epochs=1))  # 2 steps
    assert sorted(p.name for p in (run / "recon").glob("*.png")) == [
        "step_000001.png",
        "step_000002.png",
    ]
    assert json.loads((run / "config.json").read_text())["resolved"]["eval_every"] == 1


def test_validation_writes_per_class_figures_as_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = RunFolder(tmp_path / "run")
    folder.open(0, resumed=False)
    result = {"ap50": 0.5, "num_gt": 3, "per_class_ap50": {"chair": 0.25, "table": None}}
    folder.log_validation(result, 2, None, "boxes")
    folder.close()
    events = EventAccumulator(str(folder.tensorboard_dir))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["val/ap50", "val/num_gt",
                                                "val_per_class_ap50/chair"]  # fmt: skip
    (chair,) = events.Scalars("val_per_class_ap50/chair")
    assert (chair.step, chair.value) == (2, 0.25)
