"""Finding and loading a nerfstudio run (pipeline.nerfstudio.run).

The first tests read hand-made run folders in the main environment (no nerfstudio). The
ones marked ``nerfstudio`` train a tiny nerfacto run on a small synthetic room on the CPU
(once per session, through ``pipeline.nerfstudio.ns_train``: offline, LPIPS stood in) and
load it; ``make test-nerfstudio`` runs them in .venv-nerfstudio.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.nerfstudio.ns_train import CPU_MODEL_FLAGS
from pipeline.nerfstudio.run import find_run, is_nerfstudio_config

REPO_ROOT = Path(__file__).resolve().parents[1]

# The head of a config.yml as nerfstudio 1.1.5 dumps it (a trimmed TrainerConfig).
CONFIG = """\
!!python/object:nerfstudio.engine.trainer.TrainerConfig
_target: !!python/name:nerfstudio.engine.trainer.Trainer ''
data: &id003 !!python/object/apply:pathlib.PosixPath
- scene
experiment_name: scene
method_name: nerfacto
output_dir: !!python/object/apply:pathlib.PosixPath
- outputs
pipeline: !!python/object:nerfstudio.pipelines.base_pipeline.VanillaPipelineConfig
  datamanager: !!python/object:nerfstudio.data.datamanagers.{datamanager}
    data: *id003
    dataparser: !!python/object:nerfstudio.data.dataparsers.{dataparser}
      data: !!python/object/apply:pathlib.PosixPath []
      scale_factor: 1.0
    eval_image_indices: !!python/tuple
    - 0
relative_model_dir: !!python/object/apply:pathlib.PosixPath
- nerfstudio_models
timestamp: 2026-01-01_000000
"""
NERFSTUDIO_DATA = "nerfstudio_dataparser.NerfstudioDataParserConfig"
DATAMANAGER = "parallel_datamanager.ParallelDataManagerConfig"


def _hand_made_run(root: Path, dataparser: str = NERFSTUDIO_DATA, steps=(10, 29)) -> Path:
    """``root/outputs/scene/nerfacto/<timestamp>/`` trained in ``root`` on ``root/scene``."""
    (root / "scene").mkdir(parents=True)
    (root / "scene" / "transforms.json").write_text(json.dumps({"frames": []}))
    run = root / "outputs" / "scene" / "nerfacto" / "2026-01-01_000000"
    (run / "nerfstudio_models").mkdir(parents=True)
    for step in steps:
        (run / "nerfstudio_models" / f"step-{step:09d}.ckpt").write_bytes(b"")
    (run / "dataparser_transforms.json").write_text("{}")
    (run / "config.yml").write_text(CONFIG.format(dataparser=dataparser, datamanager=DATAMANAGER))
    return run / "config.yml"


def test_a_run_is_found_by_content_from_anywhere(tmp_path, monkeypatch):
    config = _hand_made_run(tmp_path / "work")
    monkeypatch.chdir(tmp_path)  # not where ns-train ran: the relative data is found anyway
    assert is_nerfstudio_config(config)
    run = find_run(config.parent)
    assert run.config_path == config.resolve()
    assert run.step == 29 and run.checkpoint.name == "step-000000029.ckpt"
    assert run.data == (tmp_path / "work" / "scene").resolve()
    assert run.transforms_json == run.data / "transforms.json"
    assert run.method == "nerfacto" and run.nerfstudio_version is None

    (tmp_path / "other.yml").write_text("pipeline: {model: nerfacto}\n")
    (tmp_path / "blob.yml").write_bytes(bytes(range(256)))
    for path in ("other.yml", "blob.yml", "missing.yml", "work/scene/transforms.json"):
        assert not is_nerfstudio_config(tmp_path / path), path
    with pytest.raises(ValueError, match="other.yml: not a nerfstudio run's config.yml"):
        find_run(tmp_path / "other.yml")


def test_missing_pieces_are_named(tmp_path):
    config = _hand_made_run(tmp_path / "a", steps=())
    with pytest.raises(FileNotFoundError, match=r"config.yml: no checkpoint: .*nerfstudio_models"):
        find_run(config)

    config = _hand_made_run(tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "scene")
    with pytest.raises(FileNotFoundError, match=r"config.yml: pipeline.datamanager.data = scene"):
        find_run(config)
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "transforms.json").write_text("{}")
    assert find_run(config, data=moved).transforms_json == moved.resolve() / "transforms.json"

    config = _hand_made_run(tmp_path / "c", dataparser="blender_dataparser.BlenderDataParserConfig")
    with pytest.raises(ValueError, match="BlenderDataParserConfig: only runs of"):
        find_run(config)


def test_the_key_check_names_what_does_not_fit_without_nerfstudio(tmp_path):
    """The checks that stop a checkpoint loading into the wrong model (nerfstudio's own
    loader falls back to strict=False), on hand-made tensors."""
    from pipeline.nerfstudio.run import _check_keys, _uses_tcnn

    run = find_run(_hand_made_run(tmp_path))
    model = {"field.mlp_head.layers.0.weight": np.zeros((64, 32)),
             "field.mlp_base.model.0.hash_table": np.zeros((16384, 2))}  # fmt: skip
    _check_keys(model, dict(model), run)  # fits: nothing raised
    saved = {"field.mlp_head.layers.0.weight": np.zeros((64, 16)),
             "field.mlp_base.model.params": np.zeros(100)}  # fmt: skip
    with pytest.raises(ValueError) as caught:
        _check_keys(model, saved, run)
    message = str(caught.value)
    assert str(run.checkpoint) in message and str(run.config_path) in message
    assert "missing from the checkpoint: field.mlp_base.model.0.hash_table" in message
    assert "not in the model: field.mlp_base.model.params" in message
    assert "of another shape: field.mlp_head.layers.0.weight (64, 16) (model (64, 32))" in message
    assert _uses_tcnn(saved) and not _uses_tcnn(model)  # tiny-cuda-nn's flat params


# ------------------------------------------------------------- in nerfstudio's environment

STEPS = 30
# Small enough to train in seconds on a CPU: nerfstudio's own hash grid and MLPs (no
# tiny-cuda-nn here), fewer rays and samples, a smaller hash table.
TRAIN_FLAGS = [
    "--machine.device-type", "cpu", "--vis", "tensorboard",
    "--max-num-iterations", str(STEPS),
    "--pipeline.model.implementation", "torch",
    "--pipeline.datamanager.train-num-rays-per-batch", "256",
    *CPU_MODEL_FLAGS,
]  # fmt: skip


@pytest.fixture(scope="session")
def ns_run(tmp_path_factory) -> Path:
    """A nerfacto run of a 20-view 32-pixel room, trained here: its config.yml. ns-train
    runs in the work folder with relative paths (``outputs``, ``scene``), as users run it."""
    from pipeline.synthetic.writer import generate_scene

    work = tmp_path_factory.mktemp("nerfstudio")
    generate_scene(work / "scene", seed=0, n_views=20, image_size=32, grid_resolution=16)
    command = [sys.executable, "-m", "pipeline.nerfstudio.ns_train", "nerfacto", *TRAIN_FLAGS,
               "--output-dir", "outputs", "--data", "scene"]  # fmt: skip
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (config,) = (work / "outputs").glob("scene/nerfacto/*/config.yml")
    return config


@pytest.mark.nerfstudio
def test_a_trained_run_is_found(ns_run):
    run = find_run(ns_run)
    assert is_nerfstudio_config(ns_run)
    assert run.method == "nerfacto" and run.step == STEPS - 1
    assert run.data == ns_run.parents[4] / "scene"
    saved = json.loads(run.dataparser_transforms.read_text())
    assert np.asarray(saved["transform"]).shape == (3, 4) and saved["scale"] > 0


@pytest.mark.nerfstudio
def test_the_field_loads_with_the_checkpoints_tensors(ns_run):
    import torch

    from pipeline.nerfstudio.run import load_nerfstudio_field

    run = find_run(ns_run)
    field = load_nerfstudio_field(run)
    assert (field.step, field.method, field.implementation) == (STEPS - 1, "nerfacto", "torch")
    assert field.aabb.shape == (2, 3)
    saved = torch.load(run.checkpoint, weights_only=False)["pipeline"]
    for key, value in field.model.state_dict().items():  # the trained field, not a fresh one
        assert torch.equal(value.cpu(), saved["_model." + key].cpu()), key

    g = torch.Generator().manual_seed(0)
    x = torch.rand(500, 3, generator=g) * 2 - 1
    d = torch.nn.functional.normalize(torch.randn(500, 3, generator=g), dim=-1)
    sigma, rgb = field.density(x), field.color(x, d)
    assert sigma.shape == (500,) and rgb.shape == (500, 3)
    assert torch.isfinite(sigma).all() and (sigma >= 0).all()
    assert torch.isfinite(rgb).all() and (rgb >= 0).all() and (rgb <= 1).all()
    assert field.density(x[:0]).shape == (0,)


def _copy_run(ns_run: Path, to: Path, edit) -> Path:
    """The run's files in ``to`` with its checkpoint's model tensors passed through edit."""
    import torch

    source = find_run(ns_run)
    (to / "nerfstudio_models").mkdir(parents=True)
    for name in ("config.yml", "dataparser_transforms.json"):
        shutil.copy(source.run_dir / name, to / name)
    checkpoint = torch.load(source.checkpoint, weights_only=False)
    checkpoint["pipeline"] = edit(dict(checkpoint["pipeline"]))
    torch.save(checkpoint, to / "nerfstudio_models" / source.checkpoint.name)
    return to / "config.yml"


@pytest.mark.nerfstudio
def test_a_checkpoint_that_does_not_fit_is_an_error(ns_run, tmp_path):
    from pipeline.nerfstudio.run import _tcnn_available, load_nerfstudio_field

    data = ns_run.parents[4] / "scene"  # the copies are elsewhere: the capture is given

    def rename(state):
        state["_model.field.mlp_head.layers.9.weight"] = state.pop(
            "_model.field.mlp_head.layers.2.weight")  # fmt: skip
        return state

    run = find_run(_copy_run(ns_run, tmp_path / "renamed", rename), data=data)
    expected = (r"missing from the checkpoint: field.mlp_head.layers.2.weight; "
                r"not in the model: field.mlp_head.layers.9.weight")  # fmt: skip
    with pytest.raises(ValueError, match=expected):
        load_nerfstudio_field(run)

    def as_tcnn(state):
        """The field's torch hash grid and MLP as tiny-cuda-nn saves them: one flat tensor."""
        import torch

        torch_keys = [k for k in state if k.startswith("_model.field.mlp_base.model.")]
        flat = torch.cat([state.pop(k).reshape(-1) for k in torch_keys])
        state["_model.field.mlp_base.model.params"] = flat
        return state

    if _tcnn_available():
        pytest.skip("tinycudann is installed here: a tcnn run would load")
    run = find_run(_copy_run(ns_run, tmp_path / "tcnn", as_tcnn), data=data)
    expected = r"trained with tiny-cuda-nn .*tinycudann\) is not installed"
    with pytest.raises(ValueError, match=expected):
        load_nerfstudio_field(run)


@pytest.mark.nerfstudio
def test_camera_centres_of_the_dataparser_and_the_capture(ns_run):
    from pipeline.nerfstudio.frames import check_camera_centres, read_frame
    from pipeline.nerfstudio.run import capture_camera_centres, nerfstudio_camera_centres

    run = find_run(ns_run)
    ours, theirs = capture_camera_centres(run), nerfstudio_camera_centres(run)
    assert ours.shape == theirs.shape == (18, 3)  # nerfstudio trains on 90 % of 20 views
    frame = read_frame(run.dataparser_transforms, run.transforms_json)
    assert check_camera_centres(frame, ours, theirs, str(run.config_path)) < 1e-5


@pytest.mark.nerfstudio
def test_extracted_grid_holds_the_fields_own_values_in_world_units(ns_run, tmp_path):
    """Extraction from config.yml equals nerfstudio's field queried by hand: world voxel
    centres mapped into the run's frame, sigma_N scaled to world units, colour averaged
    over NeRF-RPN's 18 directions turned into the run's frame."""
    import torch

    from pipeline.directions import rpn_fixed_directions
    from pipeline.extract import extract_grid
    from pipeline.nerfstudio.frames import read_frame
    from pipeline.nerfstudio.run import load_nerfstudio_field

    grid = extract_grid(ns_run, 12, directions="fixed", empty_below=0.0)
    run = find_run(ns_run)
    assert grid.meta["nerf"]["backend"] == "nerfstudio"
    assert grid.meta["nerf"]["method"] == "nerfacto" and grid.meta["nerf"]["steps"] == STEPS - 1
    capture_box = np.asarray(json.loads(run.transforms_json.read_text())["aabb"])
    np.testing.assert_allclose(grid.bbox_min, capture_box[0], atol=1e-6)  # the capture's box

    frame = read_frame(run.dataparser_transforms, run.transforms_json)
    field = load_nerfstudio_field(run)
    picks = np.random.default_rng(0).integers(0, grid.shape, size=(40, 3))  # (40, 3) voxels
    world = grid.bbox_min + picks * grid.voxel_size
    x_n = torch.as_tensor(frame.to_nerfstudio(world), dtype=torch.float32)
    sigma_w = frame.scale * field.density(x_n).double().numpy()
    alpha = 1 - np.exp(-sigma_w * grid.delta)
    stored = grid.alpha[tuple(picks.T)]
    np.testing.assert_allclose(stored, alpha, atol=1e-4)
    turned = frame.direction_to_nerfstudio(rpn_fixed_directions())
    dirs = torch.as_tensor(turned, dtype=torch.float32)
    rgb = torch.stack([field.color(x_n, d.expand(len(x_n), 3)) for d in dirs]).mean(0).numpy()
    np.testing.assert_allclose(grid.rgb[(slice(None), *picks.T)].T, rgb, atol=1e-4)


@pytest.mark.nerfstudio
def test_nerfmae_extract_takes_a_config_yml_and_keeps_the_scenes_labels(ns_run, tmp_path):
    from grid_store import GridStore
    from nerfmae.cli import main as cli_main

    store = str(tmp_path / "grids.zarr")
    assert cli_main(["extract", str(ns_run), "--store", store, "--scene-id", "ns_room",
                     "--resolution", "16"]) == 0  # fmt: skip
    grid = GridStore(store, mode="r").read_grid("ns_room")
    assert grid.meta["nerf"]["backend"] == "nerfstudio"
    assert grid.semantic is not None and grid.boxes is not None  # from scene/ground_truth/
