"""What fine-tuning keeps (benchmarks/bench_kept.py): on stand-in runs whose answer is known (a
"fine-tuned" encoder that is its MAE nudged, a "scratch" one that is another network), the
kept similarity is the high one, the weight change is the nudge, and runs that do not pair
are refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from benchmark_scripts import load_benchmark

from grid_store import GridStore
from model.networks.detector import Detector, DetectorConfig
from model.networks.presets import build_mae, get_config
from model.probing import checkpoint_source
from model.training.checkpointing import DataPosition, make_checkpoint, save_checkpoint
from pipeline.synthetic.ground_truth import sample_ground_truth
from pipeline.synthetic.room import make_room

SIZE = 32
NUDGE = 0.02


def save(network, task: str, model_config: dict, directory: Path) -> Path:
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    checkpoint = make_checkpoint(network, optimizer, scheduler, DataPosition(1, 0, 1), [], {},
                                 model_config, task=task)  # fmt: skip
    return save_checkpoint(checkpoint, directory)


def detector_run(folder: Path, seed: int, encoder_state: dict | None, mae_path: Path | None,
                 config, detector: DetectorConfig) -> Path:  # fmt: skip
    """A fine-tuning run folder: config.json and checkpoints/best.pt of a detector whose encoder
    is ``encoder_state`` nudged (None: a fresh network)."""
    torch.manual_seed(100 + seed)
    network = Detector(config, detector)
    if encoder_state is not None:
        with torch.no_grad():
            # each element moved by NUDGE of itself, up or down at random: every tensor,
            # hence every part, changes by exactly NUDGE of its norm
            nudged = {k: v + NUDGE * v * torch.randint(0, 2, v.shape).mul(2).sub(1)
                      if v.is_floating_point() else v
                      for k, v in encoder_state.items()}  # fmt: skip
        network.encoder.load_state_dict(nudged)
    model_config = {**dataclasses.asdict(config), "detector": dataclasses.asdict(detector)}
    step = save(network, "detect", model_config, folder / "checkpoints")
    (folder / "checkpoints" / "best.pt").write_bytes(step.read_bytes())
    (folder / "config.json").write_text(json.dumps({"config": {
        "seed": seed, "pretrained": str(mae_path) if mae_path else None, "carried_share": 1.0}}))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kept")
    store = GridStore(str(root / "rooms.zarr"))
    for i in range(4):
        store.write_grid(f"room{i}", sample_ground_truth(make_room(i), SIZE).with_empty_space(0.01))
    split = {"pool": [], "test": [f"room{i}" for i in range(4)]}
    (root / "split.json").write_text(json.dumps(split))
    config = get_config("tiny", resolution=SIZE)
    torch.manual_seed(0)
    mae = build_mae(config)
    mae_path = save(mae, "pretrain", dataclasses.asdict(config), root / "mae" / "checkpoints")
    detector = DetectorConfig(channels=16)
    state = mae.encoder.state_dict()
    return {
        "root": root, "store": store.url, "mae": mae,
        "scratch": [detector_run(root / f"scratch{s}", s, None, None, config, detector)
                    for s in (0, 1)],
        "pretrained": [detector_run(root / f"pre{s}", s, state, mae_path, config, detector)
                       for s in (0, 1)],
    }  # fmt: skip


def test_a_detectors_source_reads_its_encoder_stages_not_its_fpn(runs):
    source = checkpoint_source(runs["pretrained"][0] / "checkpoints" / "best.pt")
    maps = source.maps(torch.rand(1, 4, SIZE, SIZE, SIZE), torch.ones(1, SIZE, SIZE, SIZE))
    assert [m.shape[1] for m in maps] == list(source.network.encoder.dims)  # not 16 FPN channels


def test_kept_is_high_for_a_nudged_encoder_and_the_change_is_the_nudge(runs, tmp_path, capsys):
    bench = load_benchmark("bench_kept")
    out = tmp_path / "kept.json"
    argv = ["--store", runs["store"], "--split", str(runs["root"] / "split.json"),
            "--scratch", *map(str, runs["scratch"]), "--pretrained", *map(str, runs["pretrained"]),
            "--resolution", str(SIZE), "--out", str(out), "--plot", str(tmp_path / "kept.png")]
    assert bench.main(argv) == 0
    results = json.loads(out.read_text())
    rows = {r["kind"]: r for r in results["comparisons"]}
    assert set(rows) == {"kept", "reached from scratch", "pretrained vs scratch detector",
                         "scratch vs scratch", "pretrained vs pretrained", "random vs random"}
    kept, scratch = rows["kept"]["cka"]["mean"], rows["reached from scratch"]["cka"]["mean"]
    assert all(k > 0.97 for k in kept)  # a 2 % nudge of every weight leaves the features
    # a fresh network resembles it less (stage 4 holds one cell a room here: every pair of
    # networks agrees on 4 cells, so it is left out)
    assert all(k > s + 0.1 for k, s in zip(kept[:3], scratch[:3], strict=True))
    # two nudges of one MAE are alike too; two fresh networks are not
    assert all(p > 0.95 for p in rows["pretrained vs pretrained"]["cka"]["mean"])
    assert len(rows["scratch vs scratch"]["pairs"]) == 1  # two seeds: one pair, not twice
    change = results["weight_change"][0]["change"]
    assert set(change) == {"patch", "stage 1", "stage 2", "stage 3", "stage 4"}
    assert change == pytest.approx(dict.fromkeys(change, NUDGE), rel=1e-4)
    assert (tmp_path / "kept.png").stat().st_size > 0
    assert "kept" in capsys.readouterr().out


def test_runs_that_do_not_pair_are_refused(runs, tmp_path):
    bench = load_benchmark("bench_kept")
    base = ["--store", runs["store"], "--split", str(runs["root"] / "split.json"),
            "--resolution", str(SIZE), "--out", str(tmp_path / "k.json")]
    swapped = [*base, "--scratch", *map(str, runs["scratch"]),
               "--pretrained", *map(str, runs["pretrained"][::-1])]  # fmt: skip
    with pytest.raises(SystemExit):
        bench.main(swapped)
    backwards = [*base, "--scratch", str(runs["pretrained"][0]),
                 "--pretrained", str(runs["scratch"][0])]  # fmt: skip
    with pytest.raises(SystemExit):
        bench.main(backwards)
