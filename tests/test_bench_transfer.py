"""The transfer benchmark's own arithmetic and plumbing (benchmarks/bench_transfer.py,
transfer_runs.py, transfer_stats.py, pack_pretraining.py): the paired gain and its bootstrap
on hand-made room states, and a pretraining run packed on one machine and reused on
another."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_transfer")


@pytest.fixture(scope="module")
def runs():
    return load_benchmark("transfer_runs")


@pytest.fixture(scope="module")
def stats():
    return load_benchmark("transfer_stats")


def semantic_state(right: int, wrong: int) -> dict:
    """A room's semantic state: ``right`` voxels of class 1 labelled 1, ``wrong`` labelled 2,
    and 10 voxels of class 2 labelled 2."""
    confusion = torch.zeros(3, 3, dtype=torch.int64)
    confusion[1, 1], confusion[1, 2], confusion[2, 2] = right, wrong, 10
    return {"confusion": confusion}


def test_the_paired_gain_is_the_mean_difference_of_pooled_scores(stats):
    rooms = [f"room{i}" for i in range(6)]
    warm = {r: semantic_state(10, 0) for r in rooms}  # every voxel right: mIoU 1
    cold = {r: semantic_state(5, 5) for r in rooms}  # pooled: IoU 5/10 and 10/15
    gain = stats.paired_gain("semantics", [(warm, cold)], rooms, draws=50, seed=0)
    assert gain["gain"] == pytest.approx(1 - (0.5 + 10 / 15) / 2)
    # every room alike: each resample pools to the same scores, the interval is a point
    assert gain["ci95_low"] == pytest.approx(gain["gain"])
    assert gain["ci95_high"] == pytest.approx(gain["gain"]) and gain["pairs"] == 1
    same = stats.paired_gain("semantics", [(cold, cold)], rooms, draws=20, seed=0)
    assert same["gain"] == 0 and same["ci95_low"] == 0 and same["ci95_high"] == 0


def test_the_validation_gap_follows_the_best_checkpoint_so_far(stats):
    # pair A: pretrained leads early (0.4 vs 0.1), scratch overtakes at step 30 and the
    # pretrained run's dip at step 20 does not count (its best so far stays 0.4)
    warm_a = [(10, 0.4), (20, 0.2), (30, 0.45), (40, 0.5)]
    cold_a = [(10, 0.1), (20, 0.3), (30, 0.6), (40, 0.7)]
    # pair B: validated at step 5 too (not shared by pair A), an even race
    warm_b = [(5, 0.0), (10, 0.2), (20, 0.2), (30, 0.2), (40, 0.2)]
    cold_b = [(5, 0.0), (10, 0.2), (20, 0.2), (30, 0.2), (40, 0.3)]
    gap = stats.validation_gap([(warm_a, cold_a), (warm_b, cold_b)])
    assert gap["steps"] == [10, 20, 30, 40] and gap["pairs"] == 2
    assert gap["gain"] == pytest.approx([0.15, 0.05, -0.075, -0.15])
    assert gap["min"] == pytest.approx([0.0, 0.0, -0.15, -0.2])
    assert gap["max"] == pytest.approx([0.3, 0.1, 0.0, -0.1])
    assert gap["lead_until"] == 20
    # a lead that lasts to the end, or a race never led, has no step where the lead ended
    assert stats.validation_gap([(cold_a, warm_a)])["lead_until"] is None
    assert stats.validation_gap([(cold_b, cold_b)])["lead_until"] is None


def test_the_bootstrap_interval_spans_rooms_that_disagree(stats):
    rooms = [f"room{i}" for i in range(8)]
    # pretraining helps on half the rooms and hurts as much on the others
    warm = {r: semantic_state(10, 0) if i % 2 else semantic_state(0, 10)
            for i, r in enumerate(rooms)}  # fmt: skip
    cold = {r: semantic_state(5, 5) for r in rooms}
    gain = stats.paired_gain("semantics", [(warm, cold)], rooms, draws=400, seed=1)
    assert gain["ci95_low"] < gain["gain"] < gain["ci95_high"]
    assert gain["ci95_low"] < 0 < gain["ci95_high"]


def test_pairs_that_disagree_widen_only_the_interval_over_pairs(stats):
    rooms = [f"room{i}" for i in range(6)]
    right = {r: semantic_state(10, 0) for r in rooms}  # mIoU 1 in every room
    wrong = {r: semantic_state(0, 10) for r in rooms}  # IoU 0 and 10/20: mIoU 1/4
    # one fine-tuning seed gains 3/4, the other loses 3/4, alike in every room
    gain = stats.paired_gain("semantics", [(right, wrong), (wrong, right)], rooms, draws=300,
                             seed=2)  # fmt: skip
    assert gain["pair_gains"] == pytest.approx([0.75, -0.75]) and gain["gain"] == 0
    assert gain["ci95_low"] == pytest.approx(0) and gain["ci95_high"] == pytest.approx(0)
    assert gain["ci95_pairs_low"] == pytest.approx(-0.75)
    assert gain["ci95_pairs_high"] == pytest.approx(0.75)


def test_a_pretraining_run_packed_elsewhere_is_reused_with_its_own_checkpoint(
    bench, runs, tmp_path
):
    import dataclasses

    from model import build_mae, get_config
    from model.training.checkpointing import DataPosition, make_checkpoint, save_checkpoint

    run = tmp_path / "gpu" / "pretrain_independent_d0_structure_first_gpu_s0"
    config = get_config("tiny")
    model = build_mae(config)
    optimiser = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda _: 1.0)
    optimiser.step()  # optimiser state worth leaving behind
    for step in (10, 20, 30):
        checkpoint = make_checkpoint(model, optimiser, scheduler, DataPosition(step, 0, step),
                                     [], {}, dataclasses.asdict(config), task="pretrain")
        save_checkpoint(checkpoint, run / "checkpoints")
    remote = str(run / "checkpoints" / "step_000030.pt")
    (run / "metrics.json").write_text(json.dumps({"steps": 30, "checkpoint": remote}))
    scenes = ["room010000", "room010001", "room010002"]
    (run / "config.json").write_text(json.dumps({"config": {
        "scenes": scenes, "max_steps": 30, "batch_size": 4, "lr": 1e-3,
        "objective": "structure_first", "shuffle_targets": False}}))  # fmt: skip

    packed = load_benchmark("pack_pretraining").pack_run(run, tmp_path / "out", 2**30)
    here = tmp_path / "work"
    with tarfile.open(packed) as tar:
        names = tar.getnames()
        tar.extractall(here, filter="data")
    folder = here / run.name
    assert sorted(names) == sorted(f"{run.name}/{n}" for n in (
        "metrics.json", "config.json", "checkpoints/step_000030.pt",
        "checkpoints/step_000020.pt"))  # fmt: skip
    last = torch.load(folder / "checkpoints" / "step_000030.pt", weights_only=False)
    middle = torch.load(folder / "checkpoints" / "step_000020.pt", weights_only=False)
    assert "optimizer" not in last and "rng" not in last and last["position"]["step"] == 30
    for name, tensor in model.state_dict().items():
        assert torch.equal(last["model"][name], tensor)
        assert middle["model"][name].dtype == torch.float16
    # a bench run on this machine takes the run as done, with the checkpoint beside it
    args = bench.build_parser().parse_args(["--pretrain-steps", "30"])
    metrics = runs.run_pretraining(args, "", scenes, "structure_first", 0, folder)
    assert metrics["checkpoint"] == str(folder / "checkpoints" / "step_000030.pt")
    with pytest.raises(SystemExit, match="objective='structure_first'"):  # not the run asked
        runs.run_pretraining(args, "", scenes, "paper", 0, folder)


def test_a_finished_run_of_other_settings_is_refused_by_name(runs, tmp_path):
    run = tmp_path / "detect_independent_d0_b2_s0_scratch"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"max_steps": 200, "lr": 1e-3}}))
    runs.check_reuse(run, {"max_steps": 200, "lr": 1e-3, "not_recorded": 1})
    with pytest.raises(SystemExit, match="max_steps=200, this invocation asks 500.*--finetune-tag"):
        runs.check_reuse(run, {"max_steps": 500, "lr": 1e-3})
    # a setting younger than the run: its absence means the default, and only the default
    runs.check_reuse(run, {"carried_stages": None, "network": "skip", "carried_share": 1.0})
    with pytest.raises(SystemExit, match="carried_stages=None, this invocation asks 1"):
        runs.check_reuse(run, {"carried_stages": 1})
    with pytest.raises(SystemExit, match="carried_share=1.0, this invocation asks 0.5"):
        runs.check_reuse(run, {"carried_share": 0.5})


def test_from_step_picks_the_kept_checkpoint_or_names_the_kept_ones(runs, tmp_path):
    kept = tmp_path / "pretrain_run" / "checkpoints"
    kept.mkdir(parents=True)
    for step in (200, 400):
        (kept / f"step_{step:06d}.pt").write_bytes(b"")
    assert runs.checkpoint_at(tmp_path / "pretrain_run", 400) == str(kept / "step_000400.pt")
    with pytest.raises(SystemExit, match=r"--from-step 300.*step_000200.pt', 'step_000400.pt"):
        runs.checkpoint_at(tmp_path / "pretrain_run", 300)


def test_tempering_scales_the_attention_logits_by_the_square_and_nothing_else():
    from model.networks.swin3d import WindowAttention3D

    temper = load_benchmark("temper_attention")
    torch.manual_seed(0)
    attention = WindowAttention3D(dim=8, num_heads=2, window=2, shift=0)
    x = torch.randn(1, 2, 2, 2, 8)
    state = {f"block.attn.{k}": v.clone() for k, v in attention.state_dict().items()}
    names = temper.temper_queries_and_keys(state, 0.5)
    assert sorted(names) == ["block.attn.qkv.bias", "block.attn.qkv.weight"]
    tempered = WindowAttention3D(dim=8, num_heads=2, window=2, shift=0)
    tempered.load_state_dict({k.removeprefix("block.attn."): v for k, v in state.items()})

    def logits(module) -> torch.Tensor:  # (heads, N, N) of the one window, without the bias
        q, k, _ = module.qkv(x.reshape(8, 8)).reshape(8, 3, 2, 4).permute(1, 2, 0, 3)
        return q @ k.transpose(-1, -2)

    torch.testing.assert_close(logits(tempered), 0.25 * logits(attention))
    values = slice(16, 24)  # the value rows: untouched
    assert torch.equal(tempered.qkv.weight[values], attention.qkv.weight[values])
    assert torch.equal(tempered.proj.weight, attention.proj.weight)


def test_a_tabulation_of_nothing_finished_starts_no_run_and_says_so(bench, tmp_path):
    work = tmp_path / "work"
    argv = ["--work", str(work), "--arms", "independent", "--resolution", "32",
            "--pretrain-rooms", "2", "--pool-rooms", "2", "--val-rooms", "1", "--test-rooms", "1",
            "--budgets", "2", "--seeds", "0", "--pretrain-seeds", "0", "--finished-only",
            "--out", str(tmp_path / "t.json")]  # fmt: skip
    nothing = "no finished pair of opacity_only_normalised_decorrelated"
    with pytest.raises(SystemExit, match=nothing):
        bench.main(argv)
    assert not list(work.glob("pretrain_*")) and not list(work.glob("detect_*"))


def test_settings_other_than_the_benchmarks_mark_the_run_names(bench):
    parse = bench.build_parser().parse_args
    assert bench.name_parts(parse([])) == ("", "", "")
    head, protocol, start = bench.name_parts(parse(
        ["--pretrain-tag", "r1024", "--finetune-tag", "f500", "--freeze-encoder",
         "--carried-share", "0.5", "--from-step", "200", "--labelled-rooms", "first"]))  # fmt: skip
    assert (head, protocol, start) == ("_r1024", "_f500_frozen_labelsfirst", "_share0.5_at200")


def test_each_fine_tuning_seed_labels_its_own_window_of_the_pool(runs):
    pool = [f"room{i}" for i in range(5)]
    assert [runs.labelled_rooms(pool, 1, s, "by_seed") for s in range(3)] == [
        ["room0"], ["room1"], ["room2"]]
    # windows of two: disjoint while the pool lasts, then wrapping round it
    assert runs.labelled_rooms(pool, 2, 1, "by_seed") == ["room2", "room3"]
    assert runs.labelled_rooms(pool, 2, 2, "by_seed") == ["room4", "room0"]
    # seed 0 reads what every seed read before: the pool's first rooms
    assert all(runs.labelled_rooms(pool, b, 0, "by_seed") == pool[:b] for b in (1, 2, 5))
    assert {tuple(runs.labelled_rooms(pool, 2, s, "first")) for s in range(4)} == {
        ("room0", "room1")}
