"""The README's command-line tour and its Python snippets, run exactly as printed.

A new user copies them from the README into a shell in the repository root; this does the
same in a fresh temporary folder (the commands only use paths relative to it), so a
renamed option, a default that does not fit a small store or a snippet that stopped
running fails here instead of in front of the user.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from grid_store import GridStore

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def section(heading: str) -> str:
    """The README text under ``## heading`` up to the next ``##`` heading."""
    parts = re.split(r"^## ", README, flags=re.M)
    (body,) = [p for p in parts if p.startswith(heading + "\n")]
    return body


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def tour_commands() -> list[str]:
    (block,) = code_blocks(section("Command line"), "bash")
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_tour_is_what_the_readme_says():
    commands = tour_commands()
    assert [c.split()[1] for c in commands] == [
        "synth",
        "train-nerf",
        "extract",
        "store",
        "pretrain",
        "store",
        "finetune",
        "finetune",
        "detect",
        "evaluate",
        "export-3d",
    ]


@pytest.mark.slow
def test_readme_tour_and_python_snippets_run_as_printed(tmp_path):
    # The console script of this environment first on PATH, as `make setup` leaves it.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PREFECT_API_URL", None)
    outputs = []
    for command in tour_commands():
        done = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done)
    synth, train, extract, ls, pretrain, add, tuned, detector, detected, scored, exported = outputs
    tour = tmp_path / "tour"
    assert not (tmp_path / "data").exists()  # the demo's folder stays the demo's
    assert sorted(p.name for p in (tour / "scenes").iterdir()) == [
        "scene_0000",
        "scene_0001",
    ]
    assert json.loads(train.stdout)["psnr_holdout"] > 15
    assert "NeRF held-out PSNR" in extract.stdout and "-> tour/grids.zarr scene scene_0000" in (
        extract.stdout
    )
    assert "scene_0000" in ls.stdout and "1 scene(s)" in ls.stdout
    summary = json.loads(pretrain.stdout)
    assert summary["steps"] == 5 and summary["train_scenes"] == 1
    assert "batch_size 32 exceeds the 1 training scene(s): using 1" in pretrain.stderr
    assert "no validation scene" in pretrain.stderr
    assert "added 2 scene(s) to tour/truth.zarr" in add.stdout
    tuned = json.loads(tuned.stdout)
    assert tuned["task"] == "semantics" and tuned["init"] == "pretrained"
    assert tuned["steps"] == 10 and 0 <= tuned["val_miou"] <= 1
    assert (tmp_path / tuned["labels_png"]).is_file()
    detector = json.loads(detector.stdout)
    assert detector["task"] == "detect" and 0 <= detector["val_ap50"] <= 1
    stored = GridStore(tour / "truth.zarr", mode="r").read_grid("scene_0001")
    assert detector["val_num_gt"] == len(stored.boxes)  # the whole room, not a 32^3 corner
    assert "exceed the model's 32^3 cube" in outputs[7].stderr  # said once, by finetune
    boxes = json.loads((tour / "runs" / "detect" / "boxes.json").read_text())
    assert boxes["scene_id"] == "scene_0001" and boxes["units"] == "world"
    names = stored.meta["semantic_classes"]
    assert all(names[d["label"]] == d["class"] for d in boxes["detections"])
    assert "tour/runs/detect/boxes.png" in detected.stdout
    scores = json.loads(scored.stdout)
    assert scores["scored_scenes"]["ids"] == ["scene_0001"] and "per_class_ap50" in scores
    assert scores["num_gt"] == len(stored.boxes)
    assert (tour / "runs" / "detect" / "ply" / "scene_0001_points.ply").is_file()
    assert "ground-truth boxes" in exported.stdout

    snippets = code_blocks(section("Single-scene grid extraction (Python API)"), "python")
    snippets += code_blocks(section("The grid store"), "python")
    assert len(snippets) == 2
    for snippet in snippets:
        done = subprocess.run(
            [sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"{snippet}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (tour / "scenes" / "scene_0001_nerf" / "checkpoint.pt").is_file()
    assert (tmp_path / "scene_0001.npz").is_file()

    stored = GridStore(tour / "grids.zarr", mode="r").list_scenes()
    assert stored == ["scene_0000", "scene_0000_copy", "scene_0001"]
