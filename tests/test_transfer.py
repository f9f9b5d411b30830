"""The downstream skip network and loading it from a pretraining checkpoint."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.checkpoints.transfer import load_pretrained
from model.networks.presets import build_mae, get_config
from model.networks.skip_net import build_semantic_net, build_superres_net
from model.training.checkpointing import DataPosition, make_checkpoint, save_checkpoint


def pretraining_checkpoint(tmp_path, config) -> tuple[torch.nn.Module, str]:
    """A real checkpoint file of a randomly initialised MAE (the engine's format)."""
    torch.manual_seed(0)
    mae = build_mae(config)
    optimizer = torch.optim.AdamW(mae.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoint = make_checkpoint(
        mae, optimizer, scheduler, DataPosition(7, 1, 2), [], {}, dataclasses.asdict(config),
        task="pretrain",
    )
    return mae, str(save_checkpoint(checkpoint, tmp_path / "ckpt"))


def test_heads_give_labels_and_upsampled_grids_of_the_right_shape():
    config = get_config("tiny")
    rgba = torch.rand(2, 4, 32, 32, 32)
    assert build_semantic_net(config, 5)(rgba).shape == (2, 5, 32, 32, 32)
    assert build_superres_net(config, 1.5)(rgba).shape == (2, 4, 48, 48, 48)
    with pytest.raises(ValueError, match=r"expected \(B, 4, 32, 32, 32\)"):
        build_semantic_net(config, 5)(torch.rand(1, 4, 16, 16, 16))


def test_encoder_and_decoder_blocks_carry_over_and_the_rest_is_fresh(tmp_path):
    config = get_config("tiny")
    mae, path = pretraining_checkpoint(tmp_path, config)
    torch.manual_seed(1)
    net = build_semantic_net(config, 4)
    fresh_before = {k: v.clone() for k, v in net.state_dict().items()}
    report = load_pretrained(net, path)

    state, mae_state = net.state_dict(), mae.state_dict()
    assert report.step == 7 and report.loaded and report.fresh and report.dropped
    for name in report.loaded:
        source = name if name.startswith("encoder.") else f"decoder.{name}"
        assert torch.equal(state[name], mae_state[source]), name
    for name in report.fresh:
        assert torch.equal(state[name], fresh_before[name]), name
    assert set(report.loaded) | set(report.fresh) == set(state)
    assert {n.split(".")[0] for n in report.fresh} == {"pos_embed", "encoder1", "decoder1", "head"}
    assert {"mask_token", "pos_embed"} <= set(report.dropped)
    assert {n.split(".")[1] for n in report.dropped if n.startswith("decoder.")} == {
        "decoder1",
        "out",
    }
    assert "loaded" in report.summary() and "mask_token" in report.summary()

    # The carried encoder computes what the pretrained MAE's unmasked encoder computes.
    rgba = torch.rand(1, 4, 32, 32, 32)
    net.eval(), mae.eval()
    with torch.no_grad():
        ours = net.encoder.forward_tokens(net.encoder.embed(rgba) + net.pos_embed)
        theirs = mae.forward_features(rgba)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_a_checkpoint_of_another_preset_or_resolution_is_refused(tmp_path):
    _, path = pretraining_checkpoint(tmp_path, get_config("tiny", embed_dim=48))
    net = build_semantic_net(get_config("tiny"), 4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"model_config\.embed_dim is 48, this network's is 24"):
        load_pretrained(net, path)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())

    _, path = pretraining_checkpoint(tmp_path / "r", get_config("tiny", resolution=64))
    with pytest.raises(ValueError, match="resolution is 64, this network's is 32"):
        load_pretrained(net, path)
    report = load_pretrained(net, path, allow_resolution_change=True)
    assert "encoder.patch_embed.weight" in report.loaded


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    bogus = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, bogus)
    with pytest.raises(ValueError, match="not a 'nerf-mae"):
        load_pretrained(build_semantic_net(get_config("tiny"), 4), bogus)
    with pytest.raises(FileNotFoundError):
        load_pretrained(build_semantic_net(get_config("tiny"), 4), tmp_path / "missing.pt")


def test_a_tiny_semantic_net_overfits_one_room():
    """One synthetic room's ground truth at 32^3, class-weighted cross-entropy with void
    ignored: the labels are learnable through the skip network (mIoU towards 1)."""
    import numpy as np

    from model.metrics.semantic import SemanticMetrics, class_weights, label_counts
    from pipeline.synthetic import SEMANTIC_CLASSES, make_room, sample_ground_truth

    torch.manual_seed(0)
    room = sample_ground_truth(make_room(0), 32)
    x, y, z = room.shape
    rgba = torch.zeros(1, 4, 32, 32, 32)
    rgba[0, :, :x, :y, :z] = torch.from_numpy(room.rgba.astype(np.float32))
    labels = torch.zeros(1, 32, 32, 32, dtype=torch.long)
    labels[0, :x, :y, :z] = torch.from_numpy(room.semantic.astype(np.int64))
    valid = torch.zeros(1, 32, 32, 32, dtype=torch.bool)
    valid[0, :x, :y, :z] = True
    k = len(SEMANTIC_CLASSES)
    weights = class_weights(label_counts(labels, k, valid))
    net = build_semantic_net(get_config("tiny"), k)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3)

    def miou(logits) -> float:
        metric = SemanticMetrics(k)
        metric.update(logits.detach(), labels, valid)
        return metric.compute()["miou"]

    first = None
    for _ in range(30):
        logits = net(rgba)
        first = miou(logits) if first is None else first
        loss = torch.nn.functional.cross_entropy(logits, labels, weight=weights, ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first < 0.2 and miou(net(rgba)) > 0.9
