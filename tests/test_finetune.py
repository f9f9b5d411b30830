"""Fine-tuning on the shared engine: pretrained vs scratch initialisation, exact resume,
label subsets, the command line, super-resolution, and stores that cannot serve a task.

Everything runs the real ``tiny`` preset at 32^3 on synthetic rooms' ground-truth grids
(with their labels), after the same empty-space rule extracted grids follow.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from grid_store import GridStore, RadianceGrid
from model.checkpoints.transfer import load_pretrained
from model.tasks import finetune, make_config
from model.tasks.base import labelled_subset
from model.tasks.pretrain import PretrainConfig, pretrain
from model.tasks.semantics import SemanticsTask, weighted_cross_entropy
from model.training.checkpointing import load_checkpoint
from model.training.distributed import DistributedContext
from nerfmae.cli import main as cli_main
from pipeline.synthetic.ground_truth import sample_ground_truth
from pipeline.synthetic.room import make_room

ROOMS = [f"room{i}" for i in range(4)]
CPU = DistributedContext(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("finetune")
    low, high = GridStore(str(root / "low.zarr")), GridStore(str(root / "high.zarr"))
    for i, scene in enumerate(ROOMS):
        room = make_room(i)
        low.write_grid(scene, sample_ground_truth(room, 32).with_empty_space(0.01))
        if i < 3:
            high.write_grid(scene, sample_ground_truth(room, 48).with_empty_space(0.01))
    return {"low": low.url, "high": high.url, "root": str(root)}


@pytest.fixture(scope="module")
def pretrained(stores, tmp_path_factory) -> str:
    run = tmp_path_factory.mktemp("pretrain") / "run"
    summary = pretrain(PretrainConfig(
        store_url=stores["low"], out_dir=str(run), preset="tiny", resolution=32, epochs=1,
        batch_size=3, num_workers=0, val_scenes=["room3"], augment=False,
    ))  # fmt: skip
    return summary["checkpoint"]


def _config(stores, out, task="semantics", **changes):
    base = dict(
        store_url=stores["low"], out_dir=str(out), preset="tiny", resolution=32, epochs=2,
        batch_size=1, num_workers=0, val_scenes=["room3"], log_every=1, eval_every=100,
        checkpoint_every=2, keep_checkpoints=1, train_scenes=["room0", "room1"],
    )  # fmt: skip
    return make_config(task, **{**base, **changes})


def _log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_pretrained_and_scratch_networks_differ_only_in_the_loaded_tensors(
    stores, pretrained, tmp_path
):
    def initial(config) -> tuple[dict, SemanticsTask]:
        task = SemanticsTask(config, CPU)
        task.check_scenes(ROOMS)
        torch.manual_seed(config.seed)  # what the trainer does before building the model
        return task.build_model().state_dict(), task

    warm, task = initial(_config(stores, tmp_path / "a", pretrained=pretrained))
    cold, _ = initial(_config(stores, tmp_path / "b", scratch=True))
    source = load_checkpoint(pretrained)["model"]
    assert task.transfer["loaded"] > 100 and "mask_token" in task.transfer["dropped"]
    fresh = set(task.transfer["fresh"])
    assert {"head.weight", "head.bias", "pos_embed"} <= fresh
    assert all(n.startswith(("encoder1.", "decoder1.", "head.", "pos_embed")) for n in fresh)
    for name, tensor in warm.items():
        if name in fresh:
            assert torch.equal(tensor, cold[name]), name  # same seed, same fresh weights
        else:
            old = "decoder." + name if name.startswith("decoder") else name
            assert torch.equal(tensor, source[old]), name
            if tensor.ndim >= 2:  # randomly initialised: a scratch draw cannot match
                assert not torch.equal(tensor, cold[name]), name


def test_semantic_run_reports_scores_weights_and_pictures(stores, pretrained, tmp_path):
    run = tmp_path / "run"
    summary = finetune(_config(stores, run, pretrained=pretrained))
    assert summary["task"] == "semantics" and summary["init"] == "pretrained"
    assert summary["steps"] == summary["total_steps"] == 4 and summary["labelled_scenes"] == 2
    for key in ("train_loss", "val_loss", "val_miou", "val_macc", "val_allacc"):
        assert math.isfinite(summary[key]), key
    assert 0 <= summary["val_miou"] <= 1 and summary["val_per_class_iou"]
    assert set(summary["val_per_class_iou"]) <= set(summary["class_names"][1:])
    assert summary["class_names"][0] == "none" and summary["num_classes"] == 11
    weights = summary["class_weights"]
    assert weights[0] == 0 and max(weights) <= 1 / math.log(1.02) + 1e-3
    assert (run / "labels" / "step_000004.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((run / "config.json").read_text())
    assert saved["task"] == "semantics" and saved["resolved"]["class_weights"] == weights
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["task"] == "semantics"
    with pytest.raises(ValueError, match="fine-tuning checkpoint"):
        load_pretrained(_network(stores, tmp_path), run / "checkpoints" / "latest.pt")


def _network(stores, tmp_path):
    task = SemanticsTask(_config(stores, tmp_path / "n", scratch=True), CPU)
    task.check_scenes(ROOMS)
    return task.make_network()


def test_fine_tuning_resumes_bit_for_bit(stores, pretrained, tmp_path):
    straight = tmp_path / "straight"
    finetune(_config(stores, straight, pretrained=pretrained, augment=True))
    run = tmp_path / "resumed"
    assert finetune(_config(stores, run, pretrained=pretrained, augment=True, max_steps=1))[
        "steps"
    ] == 1
    resumed = finetune(_config(stores, run, pretrained=pretrained, augment=True, resume=True))
    assert resumed["resumed_from"].endswith("latest.pt") and resumed["steps"] == 4
    keys = ("step", "loss", "lr", "grad_norm")
    assert [{k: r[k] for k in keys} for r in _log(run)] == [
        {k: r[k] for k in keys} for r in _log(straight)
    ]
    a = load_checkpoint(straight / "checkpoints" / "latest.pt")["model"]
    b = load_checkpoint(run / "checkpoints" / "latest.pt")["model"]
    assert all(torch.equal(a[n], b[n]) for n in a)
    with pytest.raises(ValueError, match=r"config\.label_fraction"):
        finetune(_config(stores, run, pretrained=pretrained, augment=True, resume=True,
                         label_fraction=0.5))  # fmt: skip


def test_label_subsets_are_nested_and_the_same_for_every_seed():
    scenes = [f"s{i:02d}" for i in range(20)]
    quarter, half = labelled_subset(scenes, None, 0.25), labelled_subset(scenes, None, 0.5)
    assert len(quarter) == 5 and len(half) == 10 and set(quarter) < set(half)
    assert labelled_subset(list(reversed(scenes)), None, 0.25) == quarter
    assert labelled_subset(scenes, ["s03", "s01"], 1.0) == ["s01", "s03"]
    assert labelled_subset(scenes, None, 0.01) and len(labelled_subset(scenes, None, 0.01)) == 1
    with pytest.raises(ValueError, match="train_scenes"):
        labelled_subset(scenes, ["nope"], 1.0)


def test_weighted_cross_entropy_ignores_void_and_weighs_classes():
    logits = torch.zeros(1, 3, 3, 1, 1)
    logits[0, 1, 0] = math.log(3.0)  # voxel 0: p(class 1) = 3/5
    target = torch.tensor([1, 2, 0]).reshape(1, 3, 1, 1)  # voxel 2 is void
    weights = torch.tensor([0.0, 1.0, 3.0])
    expected = (1.0 * -math.log(3 / 5) + 3.0 * -math.log(1 / 3)) / 4.0
    assert weighted_cross_entropy(logits, target, weights).item() == pytest.approx(expected)
    empty = weighted_cross_entropy(logits.requires_grad_(), torch.zeros_like(target), weights)
    assert empty.item() == 0 and empty.requires_grad


def test_config_needs_exactly_one_initialisation(stores, pretrained, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        _config(stores, tmp_path, pretrained=pretrained, scratch=True)
    with pytest.raises(ValueError, match="exactly one"):
        _config(stores, tmp_path)
    with pytest.raises(ValueError, match="target_store_url"):
        _config(stores, tmp_path, scratch=True, task="superres")


def _bare_store(tmp_path) -> str:
    """A store of one unlabelled scene ("plain"), without boxes."""
    bare = str(tmp_path / "bare.zarr")
    rgba = np.zeros((4, 8, 8, 8), np.float32)
    GridStore(bare).write_grid("plain", RadianceGrid(rgba=rgba, bbox_min=np.zeros(3),
                               bbox_max=np.full(3, 0.7), voxel_size=0.1, delta=0.1))  # fmt: skip
    return bare


def test_cli_finetune_semantics_and_a_store_without_labels(stores, pretrained, tmp_path, capsys):
    run = tmp_path / "cli"
    code = cli_main(["finetune", "semantics", "--store", stores["low"], "--out", str(run),
                     "--pretrained", pretrained, "--preset", "tiny", "--resolution", "32",
                     "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
                     "--val-scenes", "room3", "--label-fraction", "0.5"])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["labelled_scenes"] == 2 and math.isfinite(printed["val_miou"])

    bare = _bare_store(tmp_path)
    code = cli_main(["finetune", "semantics", "--store", bare, "--out", str(tmp_path / "no"),
                     "--scratch", "--preset", "tiny"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "['plain']" in err and "no semantic labels" in err
    assert not (tmp_path / "no").exists()  # failed before writing anything

    refused = {  # flag -> what the error says instead of a traceback
        ("--num-classes", "5"): f"{stores['low']}: scene 'room0' has labels 0..7, outside the "
                                "5 classes of num_classes (--num-classes",
        ("--val-scenes", "nope"): "--val-scenes: ['nope'] are not scenes of the store",
        ("--epochs", "0"): "--epochs: must be >= 1, got 0",
    }  # fmt: skip
    for flag, said in refused.items():
        code = cli_main(["finetune", "semantics", "--store", stores["low"], "--out",
                         str(tmp_path / "no"), "--scratch", "--preset", "tiny", *flag])  # fmt: skip
        assert code == 2 and said in capsys.readouterr().err, flag
    assert not (tmp_path / "no").exists()


def test_super_resolution_from_a_finer_store(stores, pretrained, tmp_path):
    config = _config(stores, tmp_path / "sr", task="superres", target_store_url=stores["high"],
                     pretrained=pretrained, scenes=ROOMS[:3], val_scenes=["room2"],
                     train_scenes=None, epochs=1)  # fmt: skip
    summary = finetune(config)
    assert summary["scale"] == pytest.approx(47 / 31, abs=1e-3) and summary["target_size"] == 48
    assert math.isfinite(summary["val_psnr"]) and summary["val_mse"] > 0
    assert summary["superres_png"].endswith(".png")
    with pytest.raises(ValueError, match=r"\['room3'\].*no target grid"):
        finetune(_config(stores, tmp_path / "sr2", task="superres", scratch=True,
                         target_store_url=stores["high"]))  # fmt: skip


def test_a_frozen_probe_trains_only_the_new_parts(stores, pretrained, tmp_path):
    run = tmp_path / "probe"
    summary = finetune(_config(stores, run, pretrained=pretrained, freeze_pretrained=True,
                               epochs=1))  # fmt: skip
    assert summary["steps"] == 2
    source = load_checkpoint(pretrained)["model"]
    tuned = load_checkpoint(run / "checkpoints" / "latest.pt")["model"]
    for name, tensor in tuned.items():
        if name.startswith(("encoder.", "decoder4.", "decoder3.", "decoder2.")):
            old = "decoder." + name if name.startswith("decoder") else name
            assert torch.equal(tensor, source[old]), name
    task = SemanticsTask(_config(stores, tmp_path / "init", pretrained=pretrained), CPU)
    task.check_scenes(ROOMS)
    torch.manual_seed(0)  # the run's seed, set before the trainer builds the model
    initial = task.build_model().state_dict()
    for name in ("head.weight", "decoder1.up.weight", "encoder1.conv1.weight"):
        assert not torch.equal(tuned[name], initial[name]), name  # the new parts did train


def test_detection_from_a_pretrained_encoder_then_detect_evaluate_and_export(
    stores, pretrained, tmp_path, capsys
):
    run = tmp_path / "detect"
    code = cli_main(["finetune", "detect", "--store", stores["low"], "--out", str(run),
                     "--pretrained", pretrained, "--preset", "tiny", "--resolution", "32",
                     "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
                     "--val-scenes", "room3", "--fpn-channels", "16", "--augment"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == "detect" and summary["init"] == "pretrained"
    assert 0 <= summary["val_ap50"] <= 1 and 0 <= summary["val_recall50@300"] <= 1
    assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["val_loss"])
    # only the encoder carries over: the FPN and the head start fresh (NeRF-RPN's rule)
    fresh = summary["transfer"]["fresh"]
    assert any(n.startswith("fpn.") for n in fresh) and any(n.startswith("head.") for n in fresh)
    assert not any(n.startswith("encoder.") for n in fresh)
    assert summary["boxes_png"] and (run / "boxes").is_dir()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert "val/boxes" in events.Tags()["images"]  # the validation picture, in TensorBoard
    checkpoint = run / "checkpoints" / "latest.pt"

    def strict(constant):
        raise AssertionError(f"config.json holds {constant}, which is not JSON")

    saved = json.loads((run / "config.json").read_text(), parse_constant=strict)
    # the reference's ranges by default (scale_size_ranges off); the last one unbounded
    ranges = saved["resolved"]["detector"]["size_ranges"]
    assert ranges[-1] == [64, 1e6]

    boxes_json, picture = tmp_path / "boxes.json", tmp_path / "boxes.png"
    assert cli_main(["detect", "--store", stores["low"], "--scene-id", "room3", "--checkpoint",
                     str(checkpoint), "--out", str(boxes_json), "--picture", str(picture)]) == 0
    saved = json.loads(boxes_json.read_text())
    assert saved["scene_id"] == "room3" and saved["units"] == "world"
    assert picture.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert cli_main(["evaluate", "--store", stores["low"], "--checkpoint", str(checkpoint),
                     "--scene-ids", "room3"]) == 0  # fmt: skip
    scores = json.loads(capsys.readouterr().out)
    assert scores["num_scenes"] == 1 and scores["num_gt"] > 0 and 0 <= scores["ap25"] <= 1
    for argv in (["detect", "--scene-id", "nope", "--out", str(tmp_path / "nope.json")],
                 ["evaluate", "--scene-ids", "room3", "nope"]):  # fmt: skip
        assert cli_main([*argv, "--store", stores["low"], "--checkpoint", str(checkpoint)]) == 2
        assert (f"{stores['low']}: no complete scene 'nope' (the store has 4 scenes: room0, "
                "room1, room2, room3)") in capsys.readouterr().err  # fmt: skip
    assert cli_main(["export-3d", "--store", stores["low"], "--scene-id", "room3", "--out",
                     str(tmp_path / "ply"), "--boxes", str(boxes_json)]) == 0  # fmt: skip
    assert (tmp_path / "ply" / "room3_pred_boxes.ply").is_file()

    with pytest.raises(ValueError, match="'detect' fine-tuning checkpoint"):
        load_pretrained(_network(stores, tmp_path), checkpoint)
    assert cli_main(["detect", "--store", stores["low"], "--scene-id", "room3", "--checkpoint",
                     pretrained, "--out", str(tmp_path / "x.json")]) == 2  # fmt: skip
    assert "'pretrain' checkpoint" in capsys.readouterr().err
    per_class = finetune(_config(stores, tmp_path / "classes", task="detect", scratch=True,
                                 num_classes=11, epochs=1,
                                 detector_overrides={"channels": 16}))  # fmt: skip
    assert per_class["class_names"][0] == "none" and len(per_class["class_names"]) == 11
    assert set(per_class["val_per_class_ap50"]) == set(per_class["class_names"])
    code = cli_main(["finetune", "detect", "--store", _bare_store(tmp_path), "--out",
                     str(tmp_path / "no"), "--scratch", "--preset", "tiny"])  # fmt: skip
    assert code == 2 and "have no boxes" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_carried_weights_stay_frozen_through_the_warm_up_then_train_at_their_lower_rate(
    stores, pretrained, tmp_path
):
    run = tmp_path / "protocol"
    summary = finetune(_config(stores, run, pretrained=pretrained, carried_lr_scale=0.1,
                               frozen_warmup=0.5, checkpoint_every=1, keep_checkpoints=0,
                               eval_every=2))  # fmt: skip
    assert summary["steps"] == 4  # 2 rooms, batch 1, 2 epochs: frozen for steps 1-2
    source = load_checkpoint(pretrained)["model"]
    steps = [load_checkpoint(run / "checkpoints" / f"step_{s:06d}.pt") for s in (1, 2, 3)]
    encoder = [n for n in steps[0]["model"] if n.startswith("encoder.")]
    assert encoder and all(torch.equal(steps[1]["model"][n], source[n]) for n in encoder)
    assert any(not torch.equal(steps[2]["model"][n], source[n]) for n in encoder)
    assert not torch.equal(steps[0]["model"]["head.weight"], steps[1]["model"]["head.weight"])
    new, carried = steps[2]["optimizer"]["param_groups"]
    assert carried["max_lr"] == pytest.approx(0.1 * new["max_lr"])
    assert len(carried["params"]) == sum(1 for n in source if n.startswith(("encoder.",
                                         "decoder.decoder4", "decoder.decoder3",
                                         "decoder.decoder2")) and n in source)  # fmt: skip
    assert [r["carried_frozen"] for r in _log(run)] == [1.0, 1.0, 0.0, 0.0]


def test_the_best_checkpoint_scores_the_same_when_evaluated_again(stores, pretrained, tmp_path):
    from model.tasks.evaluation import evaluate_checkpoint

    run = tmp_path / "best"
    summary = finetune(_config(stores, run, pretrained=pretrained, eval_every=1))
    best = load_checkpoint(summary["best_checkpoint"])
    assert best["metrics"]["best"]["step"] == summary["best_step"]
    assert summary["best_val_miou"] >= summary["val_miou"]
    again = evaluate_checkpoint(summary["best_checkpoint"], ["room3"])
    assert again["miou"] == pytest.approx(summary["best_val_miou"], abs=1e-6)
    latest = evaluate_checkpoint(run / "checkpoints" / "latest.pt", ["room3"])
    assert latest["miou"] == pytest.approx(summary["val_miou"], abs=1e-6)
    # scene by scene (for a bootstrap over scenes): the states add up to the batched figures
    both = evaluate_checkpoint(run / "checkpoints" / "latest.pt", ["room2", "room3"])
    apart = evaluate_checkpoint(run / "checkpoints" / "latest.pt", ["room2", "room3"],
                                per_scene=True)  # fmt: skip
    assert set(apart["scene_states"]) == {"room2", "room3"}
    assert apart["miou"] == pytest.approx(both["miou"], abs=1e-9)
    assert not torch.equal(*(s["confusion"] for s in apart["scene_states"].values()))


def test_size_ranges_scale_to_the_input_grid_only_when_asked():
    from model.networks.detector import DetectorConfig
    from model.tasks.detect import DetectConfig

    base = dict(store_url="s", out_dir="o", scratch=True)
    assert DetectConfig(**base).detector_config(64).size_ranges == DetectorConfig().size_ranges
    scaled = DetectConfig(**base, scale_size_ranges=True).detector_config(64).size_ranges
    expected = [-1, 6.4, 6.4, 12.8, 12.8, 25.6, 25.6, 1e6]  # 64/160 of the reference's
    assert [bound for pair in scaled for bound in pair] == pytest.approx(expected)


def test_carried_stages_loads_the_embedding_and_first_stages_only(stores, pretrained, tmp_path):
    from model.checkpoints.transfer import CARRIED_PREFIXES, first_stages

    assert first_stages(CARRIED_PREFIXES, None) == CARRIED_PREFIXES
    assert first_stages({"encoder.": "encoder."}, 2) == {
        "encoder.patch_embed.": "encoder.patch_embed.",
        "encoder.patch_norm.": "encoder.patch_norm.",
        "encoder.stages.0.": "encoder.stages.0.", "encoder.stages.1.": "encoder.stages.1.",
    }  # fmt: skip
    with pytest.raises(ValueError, match="carried_stages"):
        _config(stores, tmp_path / "bad", scratch=True, carried_stages=5)

    def initial(**init) -> tuple[dict, SemanticsTask]:
        task = SemanticsTask(_config(stores, tmp_path / "c", carried_stages=1, **init), CPU)
        task.check_scenes(ROOMS)
        torch.manual_seed(0)
        return task.build_model().state_dict(), task

    warm, task = initial(pretrained=pretrained)
    cold, scratch_task = initial(scratch=True)
    source = load_checkpoint(pretrained)["model"]
    carried = ("encoder.patch_embed.", "encoder.patch_norm.", "encoder.stages.0.")
    loaded = [n for n in warm if not torch.equal(warm[n], cold[n])]
    assert loaded and all(n.startswith(carried) for n in loaded)
    assert all(torch.equal(warm[n], source[n]) for n in warm if n.startswith(carried))
    assert task.transfer["loaded"] == sum(1 for n in source if n.startswith(carried))
    assert any(n.startswith("encoder.stages.3.") for n in task.transfer["fresh"])
    assert "decoder4.up.weight" in warm and not any(n.startswith("decoder") for n in loaded)
    names = [n for n, _ in scratch_task.carried_parameters(scratch_task.make_network())]
    assert names and all(n.startswith(carried) for n in names)


def test_carried_share_starts_between_the_scratch_and_the_pretrained_weights(
    stores, pretrained, tmp_path
):
    def initial(**init) -> tuple[dict, SemanticsTask]:
        task = SemanticsTask(_config(stores, tmp_path / "s", **init), CPU)
        task.check_scenes(ROOMS)
        torch.manual_seed(0)
        return task.build_model().state_dict(), task

    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="carried_share"):
            _config(stores, tmp_path / "bad", pretrained=pretrained, carried_share=bad)
    warm, _ = initial(pretrained=pretrained)
    cold, _ = initial(scratch=True)
    mixed, task = initial(pretrained=pretrained, carried_share=0.25)
    assert task.transfer["carried_share"] == 0.25
    moved = [n for n in warm if not torch.equal(warm[n], cold[n])]
    assert len(moved) > 50
    for name in moved:  # exactly a quarter of the way from the scratch run's start
        expected = 0.25 * warm[name] + 0.75 * cold[name]
        torch.testing.assert_close(mixed[name], expected, rtol=1e-6, atol=1e-6)
    assert all(torch.equal(mixed[n], cold[n]) for n in warm if n not in moved)


def test_share_with_initialisation_on_hand_made_tensors():
    from model.checkpoints.transfer import share_with_initialisation

    net = torch.nn.Linear(2, 1)
    net.register_buffer("count", torch.tensor([3]))
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[4.0, 8.0]]))
        net.bias.fill_(2.0)
    initial = {"weight": torch.tensor([[0.0, 4.0]]), "bias": torch.tensor([6.0]),
               "count": torch.tensor([0])}  # fmt: skip
    share_with_initialisation(net, initial, ["weight", "count"], 0.75)
    assert net.weight.tolist() == [[3.0, 7.0]]  # 0.75 * loaded + 0.25 * initial
    assert net.bias.item() == 2.0 and net.count.item() == 3  # not named; integer
    with pytest.raises(ValueError, match="initial value"):
        share_with_initialisation(net, {}, ["bias"], 0.5)
    with pytest.raises(ValueError, match="share"):
        share_with_initialisation(net, initial, ["bias"], 1.5)


def test_encoder_path_semantics_reads_every_label_through_the_encoder(stores, pretrained,
                                                                      tmp_path):  # fmt: skip
    from model import load_model
    from model.networks.skip_net import EncoderPathNet
    from model.tasks.evaluation import evaluate_checkpoint

    run = tmp_path / "encoder_path"
    summary = finetune(_config(stores, run, pretrained=pretrained, network="encoder_path",
                               epochs=1, eval_every=1))  # fmt: skip
    fresh = summary["transfer"]["fresh"]
    assert {"head.weight", "pos_embed"} <= set(fresh)
    assert all(n.startswith(("decoder1.", "head.", "pos_embed")) for n in fresh)
    assert summary["transfer"]["loaded"] == sum(
        1 for n in load_checkpoint(pretrained)["model"]
        if n.startswith(("encoder.", "decoder.decoder4.", "decoder.decoder3.",
                         "decoder.decoder2."))
    )  # fmt: skip
    model = load_model(summary["best_checkpoint"])
    assert isinstance(model, EncoderPathNet) and not hasattr(model, "encoder1")
    again = evaluate_checkpoint(summary["best_checkpoint"], ["room3"])
    assert again["miou"] == pytest.approx(summary["best_val_miou"], abs=1e-6)
    # no path around the encoder: with its stages' outputs fixed, the input changes nothing
    grids = torch.rand(2, 4, 32, 32, 32)
    fixed = model.encode(model.embed_tokens(grids[:1]))
    model.encode = lambda tokens: fixed
    with torch.no_grad():
        assert torch.equal(model(grids[:1]), model(grids[1:]))
    with pytest.raises(ValueError, match="network"):
        _config(stores, tmp_path / "bad", scratch=True, network="unet")
