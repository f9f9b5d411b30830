"""The FCOS detector: target assignment on a hand-made scene, the losses on hand-derived
values, inference, and a ``tiny`` detector overfitting one synthetic room."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grid_store.boxes import world_to_voxel
from grid_store.dataset import real_extent
from model import get_config
from model.detection.inference import detect
from model.detection.losses import fcos_losses, sigmoid_focal_loss, weighted_iou_loss
from model.detection.targets import assign_targets, level_layout
from model.metrics.detection import DetectionEvaluator
from model.networks.detector import Detector, DetectorConfig, level_locations
from pipeline.synthetic.ground_truth import sample_ground_truth
from pipeline.synthetic.room import make_room

RANGES = DetectorConfig().size_ranges
# 32^3 input, strides 4, 8, 16, 32: levels of 8^3, 4^3, 2^3 and 1^3 cells
LAYOUT = level_layout([(8, 8, 8), (4, 4, 4), (2, 2, 2), (1, 1, 1)], [4, 8, 16, 32])


def _positives(targets, level: int) -> set[tuple[float, ...]]:
    rows = ((targets.matched[0] >= 0) & (LAYOUT.levels == level)).nonzero()[:, 0]
    return {tuple(LAYOUT.locations[r].tolist()) for r in rows}


def test_locations_are_cell_centres_in_voxel_coordinates():
    loc = level_locations((2, 1, 3), 8)
    assert loc.tolist()[:3] == [[4, 4, 4], [4, 4, 12], [4, 4, 20]]
    assert loc.tolist()[3] == [12, 4, 4]


def test_assignment_on_a_hand_made_scene():
    # Box A: centre 16, side 24 (hull [4, 28]). Level 0 cells sit at 2, 6, ..., 30: inside
    # the hull and within 1.5 x 4 = 6 of the centre are 14 and 18 on each axis (8 cells);
    # their largest distance is 28 - 14 = 14, in level 0's [-1, 16]. Level 1 cells (4, 12,
    # 20, 28): 12 and 20 are within 12 of the centre, largest distance 16, in [16, 32].
    # Level 2 cells (8, 24) reach 20, outside [32, 64]: no positives there.
    # Box B: centre 14, side 6 (hull [11, 17]) takes cell (14, 14, 14) from A (smaller).
    big = [16.0, 16, 16, 24, 24, 24, 0]
    small = [14.0, 14, 14, 6, 6, 6, 0]
    boxes = [torch.tensor([big, small])]
    valid = torch.ones(1, 32, 32, 32, dtype=torch.bool)
    t = assign_targets(LAYOUT, boxes, valid, RANGES, 1.5)
    level0 = {(x, y, z) for x in (14.0, 18.0) for y in (14.0, 18.0) for z in (14.0, 18.0)}
    assert _positives(t, 0) == level0
    assert _positives(t, 1) == {(x, y, z) for x in (12.0, 20) for y in (12.0, 20)
                                for z in (12.0, 20)}  # fmt: skip
    assert _positives(t, 2) == set() and _positives(t, 3) == set()
    row = {tuple(v.tolist()): i for i, v in enumerate(LAYOUT.locations)}
    assert int(t.matched[0, row[(14.0, 14.0, 14.0)]]) == 1  # the smaller box wins
    r = row[(18.0, 18.0, 18.0)]
    assert int(t.matched[0, r]) == 0
    # distances 14 (to 4) and 10 (to 28) on each axis, in stride units; yaw 0's code
    np.testing.assert_allclose(t.deltas[0, r].tolist(), [3.5] * 3 + [2.5] * 3 + [0.5, -0.5])
    assert float(t.centerness[0, r]) == pytest.approx((10 / 14) ** 1.5)
    assert t.objectness.sum() == 16 and (t.centerness[0][t.matched[0] < 0] == 0).all()

    # Padding from x = 16 on: cells at x = 18 (and 20 on level 1) are never positive.
    valid[:, 16:] = False
    t = assign_targets(LAYOUT, boxes, valid, RANGES, 1.5)
    assert _positives(t, 0) == {p for p in level0 if p[0] < 16}
    assert all(p[0] < 16 for p in _positives(t, 1))
    assert not t.location_valid[0][LAYOUT.locations[:, 0] > 16].any()
    assert real_extent(valid[0]).tolist() == [16.0, 32.0, 32.0]


def test_a_grid_without_boxes_has_no_positives():
    t = assign_targets(LAYOUT, [torch.zeros(0, 7)], torch.ones(1, 32, 32, 32, dtype=bool),
                       RANGES, 1.5)  # fmt: skip
    assert t.objectness.sum() == 0 and (t.matched == -1).all()


def test_focal_loss_hand_values():
    logits = torch.zeros(2)
    loss = sigmoid_focal_loss(logits, torch.tensor([1.0, 0.0]), alpha=0.25, gamma=2.0)
    # p = 0.5: CE = ln 2, (1 - p_t)^2 = 1/4; alpha_t = 0.25 at the positive, 0.75 at the negative
    ln2 = math.log(2)
    np.testing.assert_allclose(loss.tolist(), [0.25 * 0.25 * ln2, 0.75 * 0.25 * ln2])
    # a confident right answer costs ~nothing, a confident wrong one ~alpha * CE
    sure = sigmoid_focal_loss(torch.tensor([10.0, -10.0]), torch.tensor([1.0, 1.0]))
    assert float(sure[0]) < 1e-9 and float(sure[1]) == pytest.approx(0.25 * 10, rel=1e-3)


def test_iou_loss_hand_values():
    gt = torch.tensor([[0.0, 0, 0, 2, 2, 2, 0], [0.0, 0, 0, 2, 2, 2, 0]])
    # the second prediction is shifted by half its width: IoU = 4 / 12 = 1/3
    pred = torch.tensor([[0.0, 0, 0, 2, 2, 2, 0], [1.0, 0, 0, 2, 2, 2, 0]], requires_grad=True)
    loss = weighted_iou_loss(pred, gt, torch.tensor([1.0, 3.0]))
    assert float(loss.detach()) == pytest.approx((0 + 3 * (2 / 3)) / 4)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[1, 0] > 0  # moving back raises IoU


def _room_batch(size: int):
    grid = sample_ground_truth(make_room(0), size).with_empty_space(0.01)
    x, y, z = grid.rgba.shape[1:]
    rgba = torch.zeros(1, 4, size, size, size)
    rgba[0, :, :x, :y, :z] = torch.from_numpy(np.array(grid.rgba, np.float32))
    valid = torch.zeros(1, size, size, size, dtype=torch.bool)
    valid[0, :x, :y, :z] = True
    boxes = [torch.from_numpy(world_to_voxel(grid.boxes, grid.bbox_min, grid.voxel_size))]
    return rgba, valid, boxes


def test_losses_have_gradients_and_padding_gives_no_detections():
    torch.manual_seed(0)
    config = DetectorConfig(channels=16, num_convs=1, pre_nms_thresh=0.0)
    model = Detector(get_config("tiny", resolution=32), config)
    rgba, valid, boxes = _room_batch(32)
    out = model(rgba)
    layout = level_layout([tuple(m.shape[-3:]) for m in out.logits], model.strides)
    targets = assign_targets(layout, boxes, valid, config.size_ranges, 1.5)
    losses = fcos_losses(out, layout, targets, boxes)
    assert set(losses) == {"loss", "loss_cls", "loss_reg", "loss_ctr"}
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.head.parameters())
    # objectness starts at the prior: the focal term is known before any training
    assert float(torch.sigmoid(out.logits[0]).mean()) == pytest.approx(0.01, rel=0.05)
    # with every location scored (threshold 0), detections come only from unmasked ones
    none = torch.zeros_like(targets.location_valid)
    assert len(detect(out, layout, none, config)[0].boxes) == 0
    one = none.clone()
    one[0, 5] = True
    found = detect(out, layout, one, config)[0]
    assert len(found.boxes) == 1
    assert len(detect(out, layout, targets.location_valid, config)[0].boxes) > 1
    # real locations of this room: those inside its grid, never in the padding
    assert (layout.locations[targets.location_valid[0]] < real_extent(valid[0])).all()
    assert targets.location_valid[0].sum() < len(layout.locations)


def test_a_tiny_detector_overfits_one_room():
    torch.manual_seed(0)
    config = DetectorConfig(channels=32, num_convs=2)
    model = Detector(get_config("tiny", resolution=32), config)
    rgba, valid, boxes = _room_batch(32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    layout = None

    def ap50() -> float:
        model.eval()
        with torch.no_grad():
            out = model(rgba)
            targets = assign_targets(layout, boxes, valid, config.size_ranges, 1.5)
            found = detect(out, layout, targets.location_valid, config)[0]
        model.train()
        evaluator = DetectionEvaluator()
        evaluator.add("room0", found.boxes, found.scores, boxes[0])
        return evaluator.compute()["ap50"]

    for _ in range(200):
        out = model(rgba)
        if layout is None:
            layout = level_layout([tuple(m.shape[-3:]) for m in out.logits], model.strides)
            before = ap50()
        targets = assign_targets(layout, boxes, valid, config.size_ranges, 1.5)
        loss = fcos_losses(out, layout, targets, boxes)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    after = ap50()
    assert before < 0.2
    assert after > 0.9, (before, after)


def test_classes_follow_the_assigned_box_and_reach_the_detections():
    big = [16.0, 16, 16, 24, 24, 24, 0]
    small = [14.0, 14, 14, 6, 6, 6, 0]
    valid = torch.ones(1, 32, 32, 32, dtype=torch.bool)
    t = assign_targets(LAYOUT, [torch.tensor([big, small])], valid, RANGES, 1.5,
                       labels=[torch.tensor([3, 7])])  # fmt: skip
    positive = t.matched[0] >= 0
    assert (t.classes[0][positive] == torch.tensor([3, 7])[t.matched[0][positive]]).all()
    assert (t.classes[0][~positive] == -1).all() and set(t.classes[0].tolist()) == {-1, 3, 7}

    torch.manual_seed(0)
    config = DetectorConfig(channels=16, num_convs=1, num_classes=9, pre_nms_thresh=0.0)
    model = Detector(get_config("tiny", resolution=32), config)
    out = model(torch.rand(1, 4, 32, 32, 32))
    assert out.logits[0].shape == (1, 9, 8, 8, 8)
    losses = fcos_losses(out, LAYOUT, t, [torch.tensor([big, small])])
    assert math.isfinite(float(losses["loss"]))
    found = detect(out, LAYOUT, t.location_valid, config)[0]
    assert found.labels.shape == found.scores.shape and int(found.labels.max()) < 9


def test_stage_norm_gives_the_fpn_each_stage_at_unit_scale_and_only_when_asked():
    config = get_config("tiny", resolution=32)
    torch.manual_seed(0)
    plain = Detector(config, DetectorConfig(channels=16))
    normed = Detector(config, DetectorConfig(channels=16, stage_norm="layer"))
    # the reference's detector keeps its exact state dict; the norms are new parts
    extra = set(normed.state_dict()) - set(plain.state_dict())
    assert extra == {f"stage_norm.norms.{i}.{w}" for i in range(4) for w in ("weight", "bias")}
    assert set(plain.state_dict()) <= set(normed.state_dict())
    normed.load_state_dict(plain.state_dict(), strict=False)
    seen = []
    normed.fpn.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0]))
    rgba = torch.rand(2, 4, 32, 32, 32)
    with torch.no_grad():
        normed.forward_features(rgba * 100)  # a large input: the FPN sees unit scale anyway
        stages = plain.encode(plain.embed_tokens(rgba * 100))
    for stage, fed in zip(stages, seen[0], strict=True):
        mean = stage.mean(1, keepdim=True)
        expected = (stage - mean) / (stage.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        assert torch.allclose(fed, expected, atol=1e-4)
    with pytest.raises(ValueError, match="stage_norm"):
        DetectorConfig(stage_norm="batch")
