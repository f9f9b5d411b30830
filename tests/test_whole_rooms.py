"""Rooms larger than the model's cube: read whole by validation, `detect` and `evaluate`
through overlapping windows (model.inference.windows, model.detection.windowed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grid_store import GridStore, RadianceGrid
from grid_store.boxes import voxel_to_world
from grid_store.dataset import GridDataset
from model.detection.geometry import pairwise_rotated_iou
from model.detection.inference import Detections, detect
from model.detection.losses import fcos_losses
from model.detection.targets import assign_targets, level_layout, location_mask
from model.detection.windowed import detect_in_windows, window_ground_truth
from model.inference.detection import LoadedDetector, detect_scenes, evaluate_detector
from model.inference.windows import core_bounds, room_windows, stitch_dense, window_starts
from model.networks.detector import Detector, DetectorConfig
from model.networks.presets import get_config
from nerfmae.cli import main as cli_main
from pipeline.export_3d import write_boxes_json

SHAPE = (48, 40, 44)
"""A room larger than the 32^3 cube on every axis."""
SIDE = 8
CLASSES = ["void", *(f"class_{c}" for c in "abcdefgh")]
ORIGIN = np.array([-1.0, 2.0, 0.5])
VOXEL = 0.05


def corner_boxes() -> np.ndarray:
    """``(8, 7)`` voxel boxes: an ``8^3`` cube two voxels in from each corner of the room."""
    near, far = 2 + SIDE / 2, [n - 2 - SIDE / 2 for n in SHAPE]
    centres = [[far[a] if c[a] else near for a in range(3)] for c in np.ndindex(2, 2, 2)]
    return np.array([[*c, SIDE, SIDE, SIDE, 0.0] for c in centres], dtype=np.float32)


def corner_room() -> RadianceGrid:
    """Solid coloured cubes in the eight corners (box class i + 1, its semantic label too)."""
    rgba = np.zeros((4, *SHAPE), np.float32)
    semantic = np.zeros(SHAPE, np.uint8)
    rng = np.random.default_rng(0)
    for i, box in enumerate(corner_boxes()):
        lo = (box[:3] - SIDE / 2).astype(int)
        region = tuple(slice(a, a + SIDE) for a in lo)
        rgba[(slice(0, 3), *region)] = rng.random(3)[:, None, None, None]
        rgba[(3, *region)] = 1.0
        semantic[region] = i + 1
    return RadianceGrid(
        rgba=rgba, bbox_min=ORIGIN, bbox_max=ORIGIN + (np.array(SHAPE) - 1) * VOXEL,
        voxel_size=VOXEL, delta=VOXEL, semantic=semantic,
        boxes=voxel_to_world(corner_boxes(), ORIGIN, VOXEL),
        box_labels=np.arange(1, 9, dtype=np.int64), meta={"semantic_classes": CLASSES},
    )  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    grids = GridStore(str(tmp_path_factory.mktemp("whole") / "rooms.zarr"))
    for scene in ("r0", "r1"):
        grids.write_grid(scene, corner_room())
    return grids.url


def test_windows_cover_an_axis_with_the_overlap_asked_and_cores_split_it():
    assert window_starts(64, 32, 16) == [0, 16, 32]
    assert window_starts(50, 32, 16) == [0, 9, 18]  # evenly spread, the last ends at 50
    assert window_starts(32, 32, 16) == window_starts(20, 32, 16) == [0]
    starts = window_starts(100, 32, 8)
    assert starts[-1] + 32 == 100 and max(np.diff(starts)) <= 32 - 8
    # every point of the axis belongs to exactly one window's core
    points = np.arange(0, 100, 0.25)
    owners = sum(((points >= lo) & (points < hi)).astype(int) for lo, hi in core_bounds(starts, 32))
    assert (owners == 1).all()
    with pytest.raises(ValueError, match="overlap"):
        window_starts(64, 32, 32)


def test_stitching_windows_of_the_input_gives_the_input_back():
    rgba = torch.rand(4, *SHAPE)
    extent = (45, 40, 33)  # the rest is padding: no window reads past it
    seen = []

    def run(crops):
        seen.append(len(crops))
        return crops

    out = stitch_dense(run, rgba, extent, 32, 16, window_batch=3)
    real = (slice(None), *(slice(0, n) for n in extent))
    assert torch.allclose(out[real], rgba[real], atol=1e-6)
    assert sum(seen) == len(room_windows(extent, 32, 16)) == 2 * 2 * 2


def test_windowed_detection_reports_each_box_once_in_room_coordinates():
    boxes = torch.from_numpy(corner_boxes())
    labels = torch.arange(1, 9)
    calls = []

    def oracle(crops, valid, window_boxes, window_labels):
        # a perfect detector: each window finds the boxes centred in it, nudged a little
        # differently per window, so only the cores and NMS keep one of each
        calls.append(len(crops))
        found = [Detections(b + 0.01 * len(calls), torch.ones(len(b)), lab)
                 for b, lab in zip(window_boxes, window_labels, strict=True)]  # fmt: skip
        return found, {"loss": torch.tensor(1.0)}

    merged, losses = detect_in_windows(
        oracle, torch.zeros(4, *SHAPE), torch.ones(SHAPE, dtype=torch.bool), SHAPE, 32, 16,
        nms_thresh=0.3, top_n=100, boxes=boxes, labels=labels,
    )  # fmt: skip
    assert len(merged.boxes) == 8 and losses == {"loss": pytest.approx(1.0)}
    iou = pairwise_rotated_iou(merged.boxes.double(), boxes.double())
    best = iou.max(dim=0)
    assert (best.values > 0.95).all()  # every corner box found, at its place in the room
    assert torch.equal(merged.labels[best.indices], labels)
    shifted, kept = window_ground_truth(boxes, labels, room_windows(SHAPE, 32, 16)[-1], 32)
    assert kept.tolist() == [8] and shifted[0, :3].tolist() == [42 - 16, 34 - 8, 38 - 12]


def test_whole_grid_samples_keep_every_box_and_label(store):
    crops = GridDataset(store, ["r0"], size=32)
    whole = GridDataset(store, ["r0", "r1"], size=32, whole=True)
    assert whole.sample_shape == SHAPE and whole.oversized() == {"r0": SHAPE, "r1": SHAPE}
    assert len(crops[0]["boxes"]) == 1  # a 32^3 cube at index 0 holds one corner
    sample = whole[1]
    assert sample["rgba"].shape == (4, *SHAPE) and bool(sample["valid"].all())
    assert len(sample["boxes"]) == 8 and sample["semantic"].shape == SHAPE
    with pytest.raises(ValueError, match="augment"):
        GridDataset(store, ["r0"], size=32, whole=True, augment=True)


def _far_corner_detector(store) -> tuple[LoadedDetector, Detections]:
    """A detector overfit to the room's far-corner 32^3 window, and its detections there
    (window coordinates)."""
    torch.manual_seed(0)
    config = DetectorConfig(channels=32, num_convs=2, num_classes=len(CLASSES))
    model = Detector(get_config("tiny", resolution=32), config)
    window = room_windows(SHAPE, 32, 16)[-1]
    sample = GridDataset(store, ["r0"], size=32, whole=True)[0]
    rgba = sample["rgba"][(slice(None), *window.slices(32))][None]
    valid = sample["valid"][window.slices(32)][None]
    boxes, labels = window_ground_truth(sample["boxes"], sample["box_labels"], window, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    layout = None
    for _ in range(120):
        out = model(rgba)
        if layout is None:
            layout = level_layout([tuple(m.shape[-3:]) for m in out.logits], model.strides)
        targets = assign_targets(layout, [boxes], valid, config.size_ranges, 1.5, [labels])
        loss = fcos_losses(out, layout, targets, [boxes])["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        own = detect(model(rgba), layout, location_mask(layout, valid[0])[None], config)[0]
    return LoadedDetector(model, "memory", None, CLASSES, ["r1"], ["r0"]), own


def test_a_box_in_the_far_corner_is_found_and_every_stored_box_counted(store, tmp_path):
    detector, own = _far_corner_detector(store)
    found = next(detect_scenes(detector, store, ["r1"]))
    assert found.rgba.shape == (4, *SHAPE) and len(found.gt_boxes) == 8
    far = corner_boxes()[-1]
    best = int(np.argmin(np.linalg.norm(found.boxes[:, :3] - far[:3], axis=1)))
    # found in the far corner, with its class: its centre inside the stored box
    assert np.abs(found.boxes[best, :3] - far[:3]).max() < SIDE / 2 and found.labels[best] == 8
    # ... and it is the window's own best detection, moved into room coordinates
    start = torch.tensor([*room_windows(SHAPE, 32, 16)[-1].start, 0, 0, 0, 0.0])
    assert torch.allclose(torch.from_numpy(found.boxes[best]), own.boxes[0] + start, atol=1e-4)
    # boxes.json names the class of every labelled box
    write_boxes_json(tmp_path / "boxes.json", "r1", found.world_boxes, found.scores, found.labels,
                     detector.class_names)  # fmt: skip
    saved = json.loads((tmp_path / "boxes.json").read_text())["detections"]
    assert saved[best]["label"] == 8 and saved[best]["class"] == "class_h"
    assert all(d["class"] == CLASSES[d["label"]] for d in saved)
    metrics = evaluate_detector(detector, store, ["r0", "r1"], picture_dir=tmp_path)
    assert metrics["num_gt"] == 16 and "class_h" in metrics["per_class_ap50"]
    assert (tmp_path / "r1.png").is_file()


def test_fine_tuning_validates_whole_rooms_and_evaluate_defaults_to_them(
    store, tmp_path, capsys
):
    run = tmp_path / "detect"
    code = cli_main(["finetune", "detect", "--store", store, "--out", str(run), "--scratch",
                     "--preset", "tiny", "--resolution", "32", "--max-steps", "1",
                     "--batch-size", "1", "--num-workers", "0", "--val-scenes", "r1",
                     "--fpn-channels", "8", "--num-classes", "9"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["val_num_gt"] == 8  # all of the validation room's boxes, not one corner's
    checkpoint = str(run / "checkpoints" / "latest.pt")
    assert cli_main(["evaluate", "--store", store, "--checkpoint", checkpoint]) == 0
    out = capsys.readouterr()
    scores = json.loads(out.out)
    assert scores["scored_scenes"]["ids"] == ["r1"] and scores["num_gt"] == 8
    assert "validation scenes" in out.err and "not held-out" not in out.err
    assert cli_main(["evaluate", "--store", store, "--checkpoint", checkpoint,
                     "--all-scenes"]) == 0  # fmt: skip
    out = capsys.readouterr()
    assert json.loads(out.out)["scored_scenes"]["training_scenes_of_the_run"] == ["r0"]
    assert "1 of them are training scenes" in out.err


def test_semantic_validation_labels_every_voxel_of_a_room(store, tmp_path):
    from model.finetune import finetune
    from model.tasks import make_config
    from model.tasks.evaluation import evaluate_checkpoint

    summary = finetune(make_config(
        "semantics", store_url=store, out_dir=str(tmp_path / "sem"), scratch=True,
        preset="tiny", resolution=32, max_steps=1, batch_size=1, num_workers=0,
        val_scenes=["r1"],
    ))  # fmt: skip
    scored = evaluate_checkpoint(summary["checkpoint"], ["r1"], per_scene=True)
    confusion = scored["scene_states"]["r1"]["confusion"]  # [true, predicted], void unscored
    # every labelled voxel of the room, each corner cube's 512 under its class, where a
    # 32^3 corner would hold one cube
    assert confusion.sum(dim=1).tolist() == [0] + [SIDE**3] * 8


def test_super_resolution_refuses_grids_larger_than_its_cube(store, tmp_path, capsys):
    fine = GridStore(str(tmp_path / "fine.zarr"))
    room = corner_room()
    for scene in ("r0", "r1"):
        fine.write_grid(scene, RadianceGrid(
            rgba=room.rgba.repeat(2, 1).repeat(2, 2).repeat(2, 3), bbox_min=room.bbox_min,
            bbox_max=room.bbox_min + (np.array(SHAPE) * 2 - 1) * VOXEL / 2,
            voxel_size=VOXEL / 2, delta=VOXEL / 2,
        ))  # fmt: skip
    code = cli_main(["finetune", "superres", "--store", store, "--target-store", fine.url,
                     "--out", str(tmp_path / "sr"), "--scratch", "--preset", "tiny",
                     "--resolution", "32", "--max-steps", "1", "--num-workers", "0",
                     "--val-scenes", "r1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "48x40x44" in err and "--resolution 64" in err
    assert not (tmp_path / "sr").exists()
