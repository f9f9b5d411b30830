"""The frame maths between a capture's world and a nerfstudio run's normalised frame, on
hand-made frame files and a fake field (no nerfstudio import)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.nerfstudio.field import WorldField
from pipeline.nerfstudio.frames import NerfstudioFrame, check_camera_centres, read_frame

ANGLE = np.deg2rad(30.0)
R = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0.0], [np.sin(ANGLE), np.cos(ANGLE), 0.0],
              [0.0, 0.0, 1.0]])  # fmt: skip
T = np.array([0.5, -1.0, 0.25])
S = 0.4
COLMAP = np.array([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0]])  # ns-process-data's


def frame_files(tmp_path, applied=True):
    """A run's dataparser_transforms.json as nerfstudio writes it: the dataparser's (R, T, S)
    composed with the capture's applied transform and scale."""
    dataparser = np.vstack([np.hstack([R, T[:, None]]), [0, 0, 0, 1]])
    capture = {"frames": []}
    scale = S
    if applied:
        dataparser = dataparser @ np.vstack([COLMAP, [0, 0, 0, 1]])
        capture.update(applied_transform=COLMAP.tolist(), applied_scale=2.0)
        scale *= 2.0
    saved = tmp_path / "dataparser_transforms.json"
    saved.write_text(json.dumps({"transform": dataparser[:3].tolist(), "scale": scale}))
    transforms = tmp_path / "transforms.json"
    transforms.write_text(json.dumps(capture))
    return saved, transforms


@pytest.mark.parametrize("applied", [True, False])
def test_the_applied_transform_is_factored_out(tmp_path, applied):
    frame = read_frame(*frame_files(tmp_path, applied))
    np.testing.assert_allclose(frame.rotation, R, atol=1e-12)
    np.testing.assert_allclose(frame.translation, T, atol=1e-12)
    assert frame.scale == pytest.approx(S)
    x = np.array([[1.0, 2.0, 3.0], [-0.5, 0.0, 0.7]])
    # by hand: x_N = S (R x + T)
    np.testing.assert_allclose(frame.to_nerfstudio(x), S * (x @ R.T + T))
    np.testing.assert_allclose(frame.to_world(frame.to_nerfstudio(x)), x, atol=1e-12)
    assert frame.density_to_world(np.array([10.0])) == pytest.approx([10.0 * S])


class BlobField:
    """A fake field in nerfstudio's frame: a Gaussian density at ``centre`` and a colour
    that is the view direction, so where a point and a direction land can be read off."""

    aabb = torch.tensor([[-1.0, -1, -1], [1, 1, 1]])
    centre = torch.tensor([0.2, -0.1, 0.3])

    def density(self, x):
        return 50.0 * torch.exp(-((x - self.centre) ** 2).sum(-1) / 0.01)

    def color(self, x, d):
        return (d + 1) / 2


def test_a_point_a_density_and_a_direction_mapped_into_the_world(tmp_path):
    frame = read_frame(*frame_files(tmp_path))
    field = WorldField(BlobField(), frame)
    peak = torch.as_tensor(frame.to_world(BlobField.centre.numpy()[None]), dtype=torch.float32)
    # the blob's peak lands where the frame puts it, its density per world unit x S
    assert float(field.density(peak)[0]) == pytest.approx(50.0 * S, rel=1e-4)
    beside = peak + torch.tensor([[0.05 / S, 0, 0]])  # 0.05 normalised units away
    assert float(field.density(beside)[0]) == pytest.approx(50.0 * S * np.exp(-0.25), rel=1e-3)
    d = torch.tensor([[1.0, 0.0, 0.0]])
    expected = (torch.as_tensor(R[:, 0], dtype=torch.float32) + 1) / 2  # R @ x-axis
    torch.testing.assert_close(field.color(peak, d)[0], expected)
    # the world box holds nerfstudio's cube: its corners map inside
    corners = frame.to_world(np.array([[-1.0, -1, -1], [1, 1, 1], [1, -1, 1]]))
    assert (corners >= field.aabb[0].numpy() - 1e-5).all()
    assert (corners <= field.aabb[1].numpy() + 1e-5).all()


def test_camera_centres_catch_a_wrong_scale(tmp_path):
    frame = read_frame(*frame_files(tmp_path))
    centres = np.random.default_rng(0).normal(size=(12, 3))
    theirs = frame.to_nerfstudio(centres)
    assert check_camera_centres(frame, centres, theirs, "run") < 1e-9
    wrong = NerfstudioFrame(frame.rotation, frame.translation, frame.scale * 2.0)
    with pytest.raises(ValueError, match="run: the capture's camera centres .* miss"):
        check_camera_centres(wrong, centres, theirs, "run")
    with pytest.raises(ValueError, match="12 cameras in the capture, 11"):
        check_camera_centres(frame, centres, theirs[:11], "run")


def test_malformed_frame_files_name_the_file_and_field(tmp_path):
    saved, transforms = frame_files(tmp_path)
    saved.write_text(json.dumps({"transform": R.tolist(), "scale": 1.0}))  # 3x3, not 3x4
    with pytest.raises(ValueError, match="dataparser_transforms.json: transform"):
        read_frame(saved, transforms)
    saved.write_text(json.dumps({"transform": np.eye(4)[:3].tolist()}))
    with pytest.raises(ValueError, match="dataparser_transforms.json: scale"):
        read_frame(saved, transforms)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_frame(tmp_path / "nope.json", transforms)
