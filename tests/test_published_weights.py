"""NeRF-MAE's published checkpoints, read exactly: files laid out as ``nerf_mae_pretrained.pt``
and ``front3d_obb_finetuned.pt`` are made from the reference fixture (the reference's own
state dicts and what its code computed from them, ../shared/reference/fixtures/README.md),
loaded by ``model.load_model`` and run through our networks, whose outputs must be the
reference's (1e-4 relative); then every place that takes a checkpoint takes them, and ours
export to the same layouts."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model import build_mae, load_model, read_checkpoint
from model.checkpoints.export import checkpoint_info, export_reference, tensor_layout
from model.checkpoints.reading import REFERENCE_DETECTOR, REFERENCE_MAE
from model.checkpoints.reference import REFERENCE_ALPHA_STEP
from model.checkpoints.transfer import load_pretrained
from model.networks.detector import Detector, DetectorConfig
from model.networks.presets import get_config
from model.networks.skip_net import build_semantic_net
from model.training.checkpointing import DataPosition, make_checkpoint, save_checkpoint
from nerfmae.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "reference" / "fixtures" / "nerfmae_reference_fixture.pt"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def fixture() -> dict:
    if not FIXTURE.is_file():
        pytest.skip(f"reference fixture not available at {FIXTURE}")
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def published(fixture, tmp_path_factory) -> dict[str, Path]:
    """The fixture written out in both published file layouts."""
    root = tmp_path_factory.mktemp("published")
    mae, detector = root / "nerf_mae_pretrained.pt", root / "front3d_obb_finetuned.pt"
    args = {"masking_prob": 0.75, "resolution": 32, "dataset_name": "nerfmae"}
    torch.save({"epoch": 1200, "state_dict": fixture["mae_state_dict"], "train_args": args}, mae)
    torch.save({"epoch": 400, "backbone_state_dict": fixture["backbone_state_dict"],
                "fcos_state_dict": fixture["fcos_state_dict"],
                "train_args": {**args, "pre_nms_thresh": 0.0}}, detector)  # fmt: skip
    return {"mae": mae, "detector": detector}


def _close(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    error = (ours.double() - reference.double()).abs().max() / reference.double().abs().max()
    assert ours.shape == reference.shape and error < TOLERANCE, (what, float(error))


def _project_config(fixture):
    meta = dict(fixture["meta"]["project_mae_config"])
    return get_config(meta.pop("preset"), **meta)


def test_the_published_mae_computes_what_the_reference_computed(fixture, published):
    mae = load_model(published["mae"])
    assert not mae.training
    assert dataclasses.asdict(mae.config) == {**dataclasses.asdict(_project_config(fixture)),
                                              "drop_path": 0.1}  # fmt: skip
    rgba, valid, mask = fixture["rgba"].float(), fixture["valid"], fixture["token_mask"]
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(mae.forward_features(rgba), fixture["features"],
                                       strict=True)):  # fmt: skip
            _close(a, b.float(), f"stage {i}")
        masked = mae.forward_encoder(rgba, mask)
        for i, (a, b) in enumerate(zip(masked, fixture["masked_features"], strict=True)):
            _close(a, b.float(), f"masked stage {i}")
        pred = mae.forward_decoder(masked)
        _close(pred, fixture["pred"].float(), "reconstruction")
        losses = mae.forward_loss(rgba, pred, valid, mae.voxel_mask(mask))
    for ours, name in zip(losses, ("loss", "loss_rgb", "loss_alpha"), strict=True):
        _close(ours, fixture[name].float(), name)


def test_the_published_detector_computes_what_the_reference_computed(fixture, published):
    detector = load_model(published["detector"])
    assert isinstance(detector, Detector) and detector.detector.scale_offsets
    assert detector.detector.channels == 64 and detector.detector.num_convs == 1
    assert detector.detector.pre_nms_thresh == 0.0  # the reference evaluates with 0
    rgba = fixture["rgba"].float()
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(detector.forward_features(rgba), fixture["fpn"],
                                       strict=True)):  # fmt: skip
            _close(a, b.float(), f"FPN level {i}")
        out = detector(rgba)
    for level, stride in enumerate(detector.strides):
        _close(out.logits[level], fixture["head_logits"][level].float(), f"logits {level}")
        _close(out.centerness[level], fixture["head_centerness"][level].float(), f"ctr {level}")
        reference = fixture["head_bbox_reg"][level].float()  # distances in voxels (x stride)
        _close(out.deltas[level][:, :6] * stride, reference[:, :6], f"distances {level}")
        _close(out.deltas[level][:, 6:], reference[:, 6:], f"offsets {level}")


def test_files_are_told_apart_by_content_and_described(fixture, published):
    mae, det = (read_checkpoint(published[k]) for k in ("mae", "detector"))
    assert (mae.format, mae.task, mae.epoch) == (REFERENCE_MAE, "pretrain", 1200)
    assert (det.format, det.task) == (REFERENCE_DETECTOR, "detect")
    assert mae.alpha_step == det.alpha_step == REFERENCE_ALPHA_STEP
    info = checkpoint_info(published["detector"])
    assert info["architecture"]["depths"] == [2, 2, 2, 2] and info["detector"]["channels"] == 64
    assert info["tensors"] == len(det.state) and info["parameters"] > 0


def test_strict_loading_names_what_does_not_fit(fixture, published, tmp_path):
    state = dict(fixture["mae_state_dict"])
    state.pop("decoder2.conv_block.conv1.bias")
    state["out.conv.weight"] = state["out.conv.weight"][:3]
    path = tmp_path / "broken.pt"
    torch.save({"epoch": 1, "state_dict": state, "train_args": {}}, path)
    with pytest.raises(ValueError) as error:
        load_model(path)
    assert "decoder.decoder2.block.conv1.bias" in str(error.value) and "misshapen" in str(
        error.value)  # fmt: skip
    state = {**fixture["mae_state_dict"], "stages.0.0.attn.extra": torch.zeros(1)}
    torch.save({"epoch": 1, "state_dict": state, "train_args": {}}, path)
    with pytest.raises(ValueError, match=r"stages\.0\.0\.attn\.extra"):
        load_model(path)


def test_python_objects_and_damaged_files_are_refused_by_name(fixture, tmp_path):
    odd = tmp_path / "odd.pt"
    torch.save({"epoch": 1, "state_dict": fixture["mae_state_dict"],
                "train_args": {"root": Path("/data")}}, odd)  # fmt: skip
    with pytest.raises(ValueError, match=r"odd\.pt: holds Python objects.*trusted=True"):
        read_checkpoint(odd)
    assert read_checkpoint(odd, trusted=True).format == REFERENCE_MAE  # on purpose only
    cut = tmp_path / "cut.pt"
    cut.write_bytes(FIXTURE.read_bytes()[:100_000])
    with pytest.raises(ValueError, match=r"cut\.pt: not a readable checkpoint"):
        read_checkpoint(cut)


def test_files_that_are_not_checkpoints_are_refused_by_name_on_the_command_line(
    tmp_path, capsys
):
    whole = tmp_path / "whole.pt"
    torch.save({"weights": torch.zeros(256)}, whole)
    files = {"cut.pt": (whole.read_bytes()[:300], "not a readable checkpoint, truncated"),
             "notes.pt": (b"lr: 0.1\n", "not a torch checkpoint (the file starts with b'lr: "),
             "empty.pt": (b"", "not a torch checkpoint (the file is empty")}  # fmt: skip
    for name, (content, said) in files.items():
        (tmp_path / name).write_bytes(content)
        assert cli_main(["checkpoint", "info", str(tmp_path / name)]) == 2, name
        assert f"{tmp_path / name}: {said}" in capsys.readouterr().err


def test_a_downstream_network_starts_from_the_published_mae(fixture, published):
    net = build_semantic_net(_project_config(fixture), 5)
    report = load_pretrained(net, published["mae"])
    assert report.format == REFERENCE_MAE and report.epoch == 1200
    assert "published MAE" in report.summary()
    own, reference = net.state_dict(), fixture["mae_state_dict"]
    for ours, theirs in (("encoder.patch_embed.weight", "patch_partition.0.weight"),
                         ("decoder4.block.residual.0.weight", "decoder4.conv_block.conv3.weight")):
        assert torch.equal(own[ours], reference[theirs].float()), ours


def _our_checkpoint(model, task: str, model_config: dict, path: Path) -> Path:
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoint = make_checkpoint(model, optimizer, scheduler, DataPosition(3, 1, 0), [], {},
                                 model_config, task=task)  # fmt: skip
    return save_checkpoint(checkpoint, path)


def test_ours_export_to_the_published_layouts_and_back(fixture, tmp_path):
    config = _project_config(fixture)
    torch.manual_seed(0)
    mae = build_mae(config)
    ours = _our_checkpoint(mae, "pretrain", dataclasses.asdict(config), tmp_path / "mae")
    out, kind = export_reference(ours, tmp_path / "exported_mae.pt")
    assert kind == REFERENCE_MAE
    exported = torch.load(out, weights_only=True)  # plain values only
    assert set(exported) == {"epoch", "state_dict", "train_args"}
    assert tensor_layout(exported["state_dict"]) == tensor_layout(fixture["mae_state_dict"])
    back = load_model(out)
    assert all(torch.equal(a, back.state_dict()[n]) for n, a in mae.state_dict().items())

    detector = Detector(config, DetectorConfig(channels=64, num_convs=1))
    model_config = {**dataclasses.asdict(config), "network": "detect",
                    "detector": dataclasses.asdict(detector.detector)}  # fmt: skip
    saved = _our_checkpoint(detector, "detect", model_config, tmp_path / "det")
    out, kind = export_reference(saved, tmp_path / "exported_det.pt")
    exported = torch.load(out, weights_only=True)
    assert kind == REFERENCE_DETECTOR
    for key in ("backbone_state_dict", "fcos_state_dict"):
        assert tensor_layout(exported[key]) == tensor_layout(fixture[key]), key
    assert all(torch.equal(a, load_model(out).state_dict()[n])
               for n, a in detector.state_dict().items())  # fmt: skip

    old = json.loads(json.dumps(model_config))
    old["detector"].pop("scale_offsets")  # a detector trained before the field: its behaviour
    legacy = _our_checkpoint(detector, "detect", old, tmp_path / "legacy")
    assert not load_model(legacy).detector.scale_offsets
    with pytest.raises(ValueError, match="scale_offsets"):
        export_reference(legacy, tmp_path / "no.pt")


def test_grids_meet_the_published_weights_on_their_alpha_convention(tmp_path):
    from grid_store import GridStore, RadianceGrid
    from grid_store.dataset import GridDataset

    rgba = np.zeros((4, 3, 2, 2), np.float32)
    rgba[3] = 0.5
    rgba[3, 0] = 1.0
    url = str(tmp_path / "g.zarr")
    GridStore(url).write_grid("g", RadianceGrid(rgba=rgba, bbox_min=np.zeros(3),
                              bbox_max=np.array([0.04, 0.02, 0.02]), voxel_size=0.02,
                              delta=0.02))  # fmt: skip
    alpha = GridDataset(url, size=4, alpha_step=0.01)[0]["rgba"][3]
    # density over a step half the voxel: 1 - (1 - 0.5)^(0.01 / 0.02) = 1 - sqrt(0.5)
    assert alpha[1:3, :2, :2].flatten().tolist() == pytest.approx([1 - math.sqrt(0.5)] * 8)
    assert (alpha[0, :2, :2] == 1).all() and (alpha[3:] == 0).all() and (alpha[:, 2:] == 0).all()
    stored = GridDataset(url, size=4)[0]["rgba"][3]
    assert stored[1, 0, 0] == 0.5


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    from grid_store import GridStore
    from pipeline.synthetic.ground_truth import sample_ground_truth
    from pipeline.synthetic.room import make_room

    url = str(tmp_path_factory.mktemp("rooms") / "rooms.zarr")
    for seed in range(3):
        GridStore(url).write_grid(f"room{seed}",
                                  sample_ground_truth(make_room(seed), 32).with_empty_space(0.01))
    return url


def test_every_command_takes_the_published_files(fixture, published, store, tmp_path, capsys):
    overrides = json.dumps({k: v for k, v in fixture["meta"]["project_mae_config"].items()
                            if k not in ("preset", "resolution")})  # fmt: skip
    run = tmp_path / "semantics"
    assert cli_main(["finetune", "semantics", "--store", store, "--out", str(run),
                     "--pretrained", str(published["mae"]), "--preset", "tiny",
                     "--resolution", "32", "--model-overrides", overrides, "--epochs", "1",
                     "--batch-size", "2", "--num-workers", "0", "--val-scenes", "room2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["transfer"]["format"] == REFERENCE_MAE and summary["init"] == "pretrained"
    assert summary["alpha_step"] == REFERENCE_ALPHA_STEP
    assert summary["alpha_step_source"] == "pretraining checkpoint"

    boxes = tmp_path / "boxes.json"
    assert cli_main(["detect", "--store", store, "--scene-id", "room1", "--checkpoint",
                     str(published["detector"]), "--out", str(boxes)]) == 0  # fmt: skip
    assert json.loads(boxes.read_text())["scene_id"] == "room1"
    capsys.readouterr()
    assert cli_main(["evaluate", "--store", store, "--checkpoint", str(published["detector"]),
                     "--scene-ids", "room1"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["num_scenes"] == 1

    feats = tmp_path / "feats.npz"
    assert cli_main(["features", "--store", store, "--scene-id", "room0", "--checkpoint",
                     str(published["mae"]), "--out", str(feats)]) == 0  # fmt: skip
    with np.load(feats) as saved:
        assert saved["stage_0"].shape == (6, 8, 8, 8) and saved["stage_3"].shape == (48, 1, 1, 1)
        assert saved["strides"].tolist() == [4, 8, 16, 32]
    capsys.readouterr()
    assert cli_main(["checkpoint", "info", str(published["mae"])]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == REFERENCE_MAE


def test_the_finetune_flow_takes_the_published_mae(prefect_api, fixture, published, store,
                                                   tmp_path):  # fmt: skip
    from flows.finetune import finetune_nerfmae

    overrides = {k: v for k, v in fixture["meta"]["project_mae_config"].items()
                 if k not in ("preset", "resolution")}  # fmt: skip
    summary = finetune_nerfmae(
        store=store, task="semantics", pretrained=str(published["mae"]),
        out_dir=str(tmp_path / "run"), resolution=32, epochs=1, batch_size=2,
        options={"num_workers": 0, "val_scenes": ["room2"], "device": "cpu",
                 "model_overrides": overrides},
    )  # fmt: skip
    assert summary["transfer"]["format"] == REFERENCE_MAE and math.isfinite(summary["val_loss"])
