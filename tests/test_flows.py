"""The Prefect flows on tiny synthetic scenes, under one session-wide ``prefect_test_harness``
(the SIGKILL test uses a real server and the temporary-server test a fresh ``PREFECT_HOME``:
both are about what the harness's server does not do, freeing a dead run's GPU slot).

Scenes are 8 views of 16x16 pixels, NeRFs train 30 steps, grids have 24 samples on the
longest side: every figure here is about orchestration (what runs, what is skipped,
what is reported), not about quality.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# Prefect's private home and settings: tests/conftest.py (read before any import).
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# A NeRF small enough to train 30 steps in a few seconds on a busy CPU.
NERF = {
    "max_steps": 30,
    "device": "cpu",
    "check_every": 0,
    "progress": False,
    "seed": 0,
    "num_threads": 1,
    "target_samples": 4096,
    "initial_rays": 256,
    "max_rays": 1024,
    "samples_per_diagonal": 64,
    "eval_chunk": 4096,
    "field": {
        "encoding": {
            "n_levels": 4,
            "n_features_per_level": 2,
            "log2_hashmap_size": 12,
            "base_resolution": 8,
            "finest_resolution": 64,
        },
        "hidden_dim": 16,
        "sh_degree": 2,
        "backend": "torch",
    },
    "occupancy": {"resolution": 16, "update_every": 8, "warmup_steps": 8},
}
RES = 24
LIBRARY_PACKAGES = {"nerf_training", "pipeline", "grid_store", "model"}
FAST = {"nerf": NERF, "resolution": RES, "retries": 0, "retry_delay_s": 0.0, "max_parallel": 1}


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def scene_root(tmp_path_factory) -> Path:
    """Three tiny synthetic scenes in one folder."""
    from pipeline.synthetic import generate_scene

    root = tmp_path_factory.mktemp("scenes")
    for seed in range(3):
        generate_scene(
            root / f"room_{seed}", seed=seed, n_views=8, image_size=16, grid_resolution=RES
        )
    return root


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory) -> Path:
    """NeRF runs shared by tests that do not count trainings (Prefect's cache reuses them)."""
    return tmp_path_factory.mktemp("nerf_runs")


@pytest.fixture
def count_trainings(monkeypatch) -> list[str]:
    """Scene folders the NeRF trainer was called on (the task imports it at call time)."""
    import nerf_training

    calls: list[str] = []
    real = nerf_training.train_nerf

    def counting(scene_dir, run_dir, config=None):
        calls.append(Path(scene_dir).name)
        return real(scene_dir, run_dir, config=config)

    monkeypatch.setattr(nerf_training, "train_nerf", counting)
    return calls


def by_id(reports: list[dict]) -> dict[str, dict]:
    return {r["scene_id"]: r for r in reports}


def shell_build_dataset(scenes: Path, out: Path, nerf: dict, *options: str) -> list[str]:
    """``python flows/build_dataset.py`` on ``scenes``, store and runs under ``out``."""
    return [
        sys.executable,
        str(REPO / "flows" / "build_dataset.py"),
        "--scenes",
        str(scenes),
        "--store",
        str(out / "grids.zarr"),
        "--runs-dir",
        str(out / "runs"),
        "--resolution",
        str(RES),
        "--retries",
        "0",
        *options,
        *[f"--nerf-option={k}={json.dumps(v)}" for k, v in nerf.items()],
    ]


def run_artifact(state, kind: str):
    """The one artifact of type ``kind`` of the flow run that ended in ``state``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    (art,) = [a for a in arts if a.type == kind]
    return art


def run_logs(state) -> list:
    """Every log record the API holds for the flow run of ``state`` and its sub-flow runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # records are sent in batches by a background worker
    root = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[root])
            )
        )
        ids = [root, *(child.id for child in children)]
        return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))


def table_artifact(state) -> list[dict]:
    """The build-dataset table (one dict per row) of the flow run that ended in ``state``."""
    data = run_artifact(state, "table").data
    return json.loads(data) if isinstance(data, str) else data


# ----------------------------------------------------------------- plain functions
def test_discover_scenes_accepts_folder_glob_list_and_single_scene(scene_root):
    from flows.scenes import discover_scenes

    rooms = sorted(scene_root.iterdir())
    assert discover_scenes(scene_root) == rooms
    assert discover_scenes(str(scene_root / "room_[01]")) == rooms[:2]
    assert discover_scenes([rooms[2], str(rooms[0])]) == [rooms[2], rooms[0]]
    assert discover_scenes(rooms[1]) == [rooms[1]]  # a scene folder itself
    with pytest.raises(FileNotFoundError, match="nowhere"):
        discover_scenes(scene_root / "nowhere")
    with pytest.raises(FileNotFoundError, match="matches no folder"):
        discover_scenes(str(scene_root / "zzz*"))


def test_scene_ids_are_made_valid_and_duplicates_fail(tmp_path):
    from flows.scenes import plan_jobs

    a = tmp_path / "x" / "my scene#1"
    b = tmp_path / "y" / "my scene#1"
    jobs, failures = plan_jobs([a, b])
    assert [j.scene_id for j in jobs] == ["my_scene_1"]
    assert [f["status"] for f in failures] == ["failed"]
    assert "already used by" in failures[0]["reason"] and str(a) in failures[0]["reason"]


def test_fingerprint_follows_images_and_transforms_not_ground_truth(scene_root, tmp_path):
    from flows.tasks import scene_fingerprint

    scene = tmp_path / "s"
    shutil.copytree(scene_root / "room_0", scene)
    base = scene_fingerprint(scene)
    assert scene_fingerprint(scene_root / "room_0") == base  # a copy hashes the same
    (scene / "ground_truth" / "grid.npz").write_bytes(b"changed")
    assert scene_fingerprint(scene) == base
    image = sorted((scene / "images").iterdir())[0]
    data = bytearray(image.read_bytes())
    data[-1] ^= 1
    image.write_bytes(bytes(data))
    assert scene_fingerprint(scene) != base
    with pytest.raises(FileNotFoundError, match="no transforms.json"):
        scene_fingerprint(scene / "images")


def test_new_ground_truth_renews_the_store_entry_but_not_the_nerf(scene_root, tmp_path):
    from flows.scenes import BuildSettings, grid_hash, nerf_hash
    from flows.tasks import scene_fingerprint
    from pipeline.labels import ground_truth_path, labels_fingerprint

    scene = tmp_path / "s"
    shutil.copytree(scene_root / "room_0", scene)
    settings = BuildSettings(store=str(tmp_path / "g.zarr"), runs_dir=str(tmp_path))

    def keys() -> tuple[str, str]:
        nerf = nerf_hash(scene_fingerprint(scene), settings)
        return nerf, grid_hash(nerf, settings, labels_fingerprint(ground_truth_path(scene)))

    nerf, grid = keys()
    (scene / "ground_truth" / "grid.npz").write_bytes(b"relabelled")
    assert keys()[0] == nerf and keys()[1] != grid
    assert grid_hash(nerf, settings, None) != grid  # a scene without labels: another entry


def test_flow_files_do_not_shadow_project_packages():
    # Loading a flow file puts flows/ first on sys.path (Prefect and `python flows/x.py`).
    packages = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    stems = {p.stem for p in (REPO / "flows").glob("*.py")}
    assert packages and not stems & packages


def test_engine_argv_is_what_model_engine_parses_back():
    from flows.training_runs import torchrun_command
    from model.pretrain import build_arg_parser
    from model.tasks.pretrain import PretrainConfig
    from model.training.cli import config_from_args

    config = PretrainConfig(
        store_url="s3://b/g.zarr",
        out_dir="/tmp/run",
        preset="tiny",
        epochs=3,
        augment=False,
        scenes=["a", "b"],
        model_overrides={"mask_ratio": 0.5},
        max_steps=7,
        lr=3e-4,
    )
    command = torchrun_command(config, 2)
    assert command[5:7] == ["-m", "model.pretrain"]
    parsed = build_arg_parser().parse_args(command[7:])
    assert config_from_args(PretrainConfig, parsed) == config


# ----------------------------------------------------------------- flows
def test_build_dataset_writes_every_scene_and_a_table(
    prefect_api, scene_root, shared_runs, tmp_path
):
    from flows.build_dataset import build_dataset
    from grid_store import GridStore, RadianceGrid

    store = str(tmp_path / "grids.zarr")
    state = build_dataset(
        scenes=str(scene_root / "room_[01]"),
        store=store,
        runs_dir=str(shared_runs),
        return_state=True,
        **FAST,
    )
    assert state.is_completed()
    reports = by_id(state.result())
    assert set(reports) == {"room_0", "room_1"}
    gs = GridStore(store, mode="r")
    assert gs.list_scenes() == ["room_0", "room_1"]
    for sid, r in reports.items():
        assert r["status"] == "written" and r["psnr"] is not None
        attrs = gs.scene_attrs(sid)
        assert attrs["config_hash"] == r["config_hash"]
        assert attrs["source"] == str((scene_root / sid).resolve())
        grid = gs.read_grid(sid)
        assert max(grid.shape) == RES and list(grid.shape) == r["grid_shape"]
        # the room's ground truth travelled with its grid (pipeline.labels)
        truth_path = scene_root / sid / "ground_truth" / "grid.npz"
        truth = RadianceGrid.load_npz(truth_path)
        np.testing.assert_array_equal(grid.boxes, truth.boxes)
        index, _ = truth.nearest_voxel(grid.points())
        nearest = truth.semantic[tuple(np.moveaxis(index, -1, 0))]
        np.testing.assert_array_equal(grid.semantic, nearest)
        assert grid.meta["labels"]["source"] == str(truth_path)
    rows = {row["scene"]: row for row in table_artifact(state)}
    assert set(rows) == {"room_0", "room_1"}
    assert rows["room_0"]["status"] == "written"
    assert rows["room_0"]["psnr_db"] == reports["room_0"]["psnr"]
    assert rows["room_0"]["grid"] == "x".join(map(str, reports["room_0"]["grid_shape"]))
    assert state.message == "2 written"

    # The library's own records (not only Prefect's) are in the run's logs, tied to a task.
    library = [log for log in run_logs(state) if log.name.split(".")[0] in LIBRARY_PACKAGES]
    wrote = [log for log in library if f"{store}: wrote scene room_0" in log.message]
    assert len(wrote) == 1 and wrote[0].name == "grid_store.store"
    assert wrote[0].task_run_id is not None
    assert any(log.name == "pipeline.extract" and "extracting" in log.message for log in library)


def test_rerun_skips_stored_scenes_and_new_resolution_reuses_nerfs(
    prefect_api, scene_root, tmp_path, count_trainings
):
    from flows.build_dataset import build_dataset
    from grid_store import GridStore

    store, runs = str(tmp_path / "grids.zarr"), str(tmp_path / "runs")
    kwargs = {**FAST, "scenes": str(scene_root / "room_0"), "store": store, "runs_dir": runs}
    first = by_id(build_dataset(**kwargs))
    assert first["room_0"]["status"] == "written" and count_trainings == ["room_0"]

    again = by_id(build_dataset(**kwargs))
    assert again["room_0"]["status"] == "cached"
    assert again["room_0"]["config_hash"] == first["room_0"]["config_hash"]
    assert count_trainings == ["room_0"]  # not trained again

    # New extraction settings: a new grid, but the trained NeRF comes from Prefect's cache.
    finer = by_id(build_dataset(**{**kwargs, "resolution": RES + 8}))
    assert finer["room_0"]["status"] == "written"
    assert finer["room_0"]["config_hash"] != first["room_0"]["config_hash"]
    assert count_trainings == ["room_0"]
    assert max(GridStore(store, mode="r").read_grid("room_0").shape) == RES + 8


def test_bad_scene_folders_fail_alone(prefect_api, scene_root, shared_runs, tmp_path):
    from flows.build_dataset import build_dataset
    from grid_store import GridStore

    scenes = tmp_path / "scenes"
    shutil.copytree(scene_root / "room_0", scenes / "good")
    (scenes / "no_transforms" / "images").mkdir(parents=True)
    shutil.copytree(scene_root / "room_1", scenes / "missing_image")
    missing = sorted((scenes / "missing_image" / "images").iterdir())[3]
    missing.unlink()

    store = str(tmp_path / "grids.zarr")
    state = build_dataset(
        scenes=str(scenes), store=store, runs_dir=str(shared_runs), return_state=True, **FAST
    )
    assert state.is_completed()
    reports = by_id(state.result())
    assert reports["good"]["status"] == "written"
    assert reports["no_transforms"]["status"] == "failed"
    assert "no transforms.json" in reports["no_transforms"]["reason"]
    assert reports["missing_image"]["status"] == "failed"
    assert missing.name in reports["missing_image"]["reason"]
    assert GridStore(store, mode="r").list_scenes() == ["good"]
    assert state.message == "2 failed, 1 written; reasons in build-dataset-report"
    rows = {row["scene"]: row for row in table_artifact(state)}
    assert (
        rows["missing_image"]["status"] == "failed"
        and missing.name in rows["missing_image"]["reason"]
    )


def test_quality_gate_rejects_without_writing(prefect_api, scene_root, shared_runs, tmp_path):
    from flows.build_dataset import build_dataset, reports_of
    from grid_store import GridStore

    store = str(tmp_path / "grids.zarr")
    state = build_dataset(
        scenes=str(scene_root / "room_0"),
        store=store,
        runs_dir=str(shared_runs),
        min_psnr=99.0,
        return_state=True,
        **FAST,
    )
    assert state.is_failed() and "no scene reached the store (1 rejected)" in state.message
    (r,) = reports_of(state)
    assert r["status"] == "rejected" and "< min_psnr 99" in r["reason"] and r["psnr"] < 99
    assert GridStore(store, mode="r").list_scenes() == []


def test_a_run_that_stores_nothing_fails_and_still_reports(prefect_api, scene_root, tmp_path):
    from flows.build_dataset import NoSceneStored, build_dataset, reports_of

    scenes = tmp_path / "scenes"
    for name in ("a", "b"):
        (scenes / name / "images").mkdir(parents=True)  # no transforms.json
    kwargs = {**FAST, "scenes": str(scenes), "store": str(tmp_path / "grids.zarr")}
    state = build_dataset(**kwargs, return_state=True)
    assert state.is_failed()
    assert state.message == "no scene reached the store (2 failed); reasons in build-dataset-report"
    assert [r["status"] for r in reports_of(state)] == ["failed", "failed"]
    rows = table_artifact(state)  # the report is written all the same
    assert [row["scene"] for row in rows] == ["a", "b"]
    assert all("no transforms.json" in row["reason"] for row in rows)
    with pytest.raises(NoSceneStored, match="no scene reached the store") as raised:
        build_dataset(**kwargs)  # from Python: an exception that carries the rows
    assert [r["scene_id"] for r in raised.value.reports] == ["a", "b"]

    from flows.end_to_end import nerfmae_pipeline

    with pytest.raises(NoSceneStored):  # the whole chain stops there, before pretraining
        nerfmae_pipeline(
            store=kwargs["store"], work_dir=str(tmp_path / "work"), scenes=str(scenes),
            nerf=NERF, resolution=RES, max_parallel=1, pretraining={"preset": "tiny"},
        )  # fmt: skip
    assert not (tmp_path / "work" / "mae").exists()


def test_transient_error_is_retried_and_bad_input_is_not(
    prefect_api, scene_root, tmp_path, monkeypatch
):
    import nerf_training
    from flows.build_dataset import build_dataset

    calls: list[str] = []
    real = nerf_training.train_nerf

    def flaky(scene_dir, run_dir, config=None):
        calls.append(Path(scene_dir).name)
        if Path(scene_dir).name == "bad":
            raise ValueError("bad scene: transforms.json field 'frames' is empty")
        if calls.count(Path(scene_dir).name) == 1:
            raise RuntimeError("CUDA error: an illegal memory access (transient)")
        return real(scene_dir, run_dir, config=config)

    monkeypatch.setattr(nerf_training, "train_nerf", flaky)
    shutil.copytree(scene_root / "room_2", tmp_path / "scenes" / "room_2")
    shutil.copytree(scene_root / "room_2", tmp_path / "scenes" / "bad")
    (tmp_path / "scenes" / "bad" / "transforms.json").write_text('{"frames": []}')
    reports = by_id(
        build_dataset(
            scenes=str(tmp_path / "scenes"),
            store=str(tmp_path / "g.zarr"),
            runs_dir=str(tmp_path / "runs"),
            **{**FAST, "retries": 2},
        )
    )
    assert reports["room_2"]["status"] == "written"
    assert calls.count("room_2") == 2  # failed once, retried once
    assert reports["bad"]["status"] == "failed" and "'frames' is empty" in reports["bad"]["reason"]
    assert calls.count("bad") == 1  # a ValueError is not retried


def test_dask_runner_builds_the_same_store(prefect_api, scene_root, shared_runs, tmp_path):
    from flows.build_dataset import build_dataset
    from grid_store import GridStore

    scenes = str(scene_root / "room_[01]")
    threads = build_dataset(
        scenes=scenes, store=str(tmp_path / "a.zarr"), runs_dir=str(shared_runs), **FAST
    )
    on_dask = build_dataset(
        scenes=scenes,
        store=str(tmp_path / "b.zarr"),
        runs_dir=str(tmp_path / "runs_b"),
        local_dask_workers=2,
        dask_processes=False,
        **FAST,
    )
    assert [r["status"] for r in on_dask] == ["written", "written"]
    a, b = GridStore(tmp_path / "a.zarr", mode="r"), GridStore(tmp_path / "b.zarr", mode="r")
    assert a.list_scenes() == b.list_scenes() == ["room_0", "room_1"]
    assert [r["config_hash"] for r in threads] == [r["config_hash"] for r in on_dask]
    for sid in a.list_scenes():
        ga, gb = a.read_grid(sid), b.read_grid(sid)
        np.testing.assert_array_equal(ga.rgba, gb.rgba)
        np.testing.assert_array_equal(ga.bbox_min, gb.bbox_min)


@pytest.mark.slow
def test_pipeline_flow_synthesizes_builds_and_pretrains(prefect_api, tmp_path):
    from prefect.artifacts import Artifact

    from flows.end_to_end import nerfmae_pipeline
    from flows.pretrain import PRETRAIN_ARTIFACT_KEY

    summary = nerfmae_pipeline(
        store=str(tmp_path / "grids.zarr"),
        work_dir=str(tmp_path / "work"),
        synthetic_scenes=2,
        synthetic_views=8,
        synthetic_image_size=16,
        nerf=NERF,
        resolution=RES,
        max_parallel=1,
        pretraining={
            "preset": "tiny",
            "epochs": 2,
            "batch_size": 1,
            "resolution": 32,
            "options": {"num_workers": 0, "device": "cpu", "val_fraction": 0.5, "max_steps": 2},
        },
    )
    assert [r["status"] for r in summary["scenes"]] == ["written", "written"]
    assert (tmp_path / "work" / "scenes" / "synth_0001" / "transforms.json").is_file()
    mae = summary["pretrain"]
    assert mae["steps"] == 2 and np.isfinite(mae["train_loss"]) and np.isfinite(mae["val_psnr"])
    assert Path(mae["recon_png"]).is_file()
    assert Path(mae["run_dir"]).parent == (tmp_path / "work" / "mae")
    markdown = Artifact.get(PRETRAIN_ARTIFACT_KEY).data
    assert f"- validation pictures: `{Path(mae['recon_png']).parent}`" in markdown
    assert "![recon](data:image/png;base64," in markdown and "file:" not in markdown
    assert f"{mae['val_psnr']:.4g}" in markdown


def test_pretrain_flow_without_out_dir_never_reuses_a_run_folder(prefect_api, scene_root, tmp_path):
    """Started twice without an out_dir, as the deployment is: two runs, two folders."""
    from flows.pretrain import pretrain_mae
    from grid_store import GridStore, RadianceGrid

    store = GridStore(tmp_path / "grids.zarr", mode="a")
    store.write_grid(
        "room_0", RadianceGrid.load_npz(scene_root / "room_0" / "ground_truth" / "grid.npz")
    )
    options = {"num_workers": 0, "device": "cpu", "max_steps": 1}
    runs = tmp_path / "runs"
    first = pretrain_mae(store=store.url, runs_dir=str(runs), epochs=1, options=options)
    second = pretrain_mae(store=store.url, runs_dir=str(runs), epochs=1, options=options)
    assert first["steps"] == second["steps"] == 1
    folders = sorted(p for p in runs.iterdir())
    assert [str(p) for p in folders] == sorted([first["run_dir"], second["run_dir"]])
    assert all((p / "checkpoints" / "latest.pt").is_file() for p in folders)


def test_new_run_dir_names_by_time_and_never_collides(tmp_path):
    from flows.training_runs import new_run_dir

    now = time.strptime("2026-12-02 11:30:05", "%Y-%m-%d %H:%M:%S")
    made = [new_run_dir(tmp_path / "runs", now) for _ in range(3)]
    assert [p.name for p in made] == ["20261202-113005", "20261202-113005-2", "20261202-113005-3"]
    assert all(p.is_dir() and not any(p.iterdir()) for p in made)


def test_build_dataset_cli_steps_sets_the_trainers_max_steps(monkeypatch, scene_root):
    import flows.build_dataset as module
    from flows.tasks import config_from_dict
    from nerf_training import TrainerConfig

    seen = {}

    def fake_flow(**kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(module, "build_dataset", fake_flow)
    with pytest.raises(SystemExit):
        module.main(["--scenes", str(scene_root), "--store", "x.zarr", "--steps", "7",
                     "--time-budget", "5", "--nerf-option", "target_samples=4096"])  # fmt: skip
    assert seen["nerf"] == {"max_steps": 7, "time_budget_s": 5.0, "target_samples": 4096}
    config = config_from_dict(TrainerConfig, seen["nerf"])
    assert (config.max_steps, config.time_budget_s) == (7, 5.0)
    with pytest.raises(ValueError, match="'steps': .*'max_steps'"):
        config_from_dict(TrainerConfig, {"steps": 7})


def test_documented_flow_parameters_are_valid_configs():
    """prefect.yaml's deployments and the flows' docstring examples (what the UI's run form
    shows) build the configs they name: a renamed field cannot hide in them again."""
    import ast
    import inspect
    import re

    import yaml

    from flows import build_dataset, end_to_end, finetune, pretrain
    from flows.tasks import config_from_dict
    from model.tasks.pretrain import PretrainConfig
    from nerf_training import TrainerConfig

    flows_by_entry = {
        "flows/build_dataset.py:build_dataset": build_dataset.build_dataset,
        "flows/pretrain.py:pretrain_mae": pretrain.pretrain_mae,
        "flows/end_to_end.py:nerfmae_pipeline": end_to_end.nerfmae_pipeline,
        # its FinetuneConfig is built from the deployment in tests/test_flow_finetune.py
        "flows/finetune.py:finetune_nerfmae": finetune.finetune_nerfmae,
    }
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert {d["entrypoint"] for d in deployments} == set(flows_by_entry)
    for deployment in deployments:
        flow_fn = flows_by_entry[deployment["entrypoint"]]
        params = deployment["parameters"]
        assert set(params) <= set(inspect.signature(flow_fn.fn).parameters), deployment["name"]
        if "nerf" in params:
            config_from_dict(TrainerConfig, params["nerf"])
        if "pretraining" in params:
            pretraining = dict(params["pretraining"])
            options = pretraining.pop("options", {})
            assert set(pretraining) <= set(inspect.signature(pretrain.pretrain_mae.fn).parameters)
            PretrainConfig(store_url="s", out_dir="o", **options)
    examples = re.findall(
        r"nerf=(\{[^}]*\})", build_dataset.__doc__ + build_dataset.build_dataset.fn.__doc__
    )
    examples += re.findall(r"``(\{[^}]*\})``", build_dataset.build_dataset.fn.__doc__)
    assert examples
    for text in examples:
        config_from_dict(TrainerConfig, ast.literal_eval(text))


@pytest.mark.slow
def test_pretrain_flow_runs_torchrun_for_several_processes(prefect_api, scene_root, tmp_path):
    from flows.pretrain import pretrain_mae
    from grid_store import GridStore, RadianceGrid

    store = GridStore(tmp_path / "grids.zarr", mode="a")
    for scene in sorted(scene_root.iterdir()):  # the exact grids: no NeRF needed here
        store.write_grid(scene.name, RadianceGrid.load_npz(scene / "ground_truth" / "grid.npz"))
    state = pretrain_mae(
        store=store.url,
        out_dir=str(tmp_path / "mae"),
        preset="tiny",
        epochs=1,
        batch_size=2,
        resolution=32,
        nproc_per_node=2,
        options={"num_workers": 0, "device": "cpu", "val_fraction": 0.25},
        return_state=True,
    )
    summary = state.result()
    assert summary["world_size"] == 2 and summary["steps"] == 1
    assert summary["train_scenes"] == 2 and summary["val_scenes"] == 1
    assert json.loads((tmp_path / "mae" / "metrics.json").read_text()) == summary
    art = run_artifact(state, "markdown")
    assert "| val PSNR (dB) |" in art.data
    assert "![recon](data:image/png;base64," in art.data and "file:" not in art.data


@pytest.mark.slow
def test_killed_flow_rerun_finishes_only_missing_scenes(scene_root, tmp_path):
    """SIGKILL while the second scene holds the GPU slot, then rerun.

    Against a real server: the harness's ephemeral one runs no repossessor, so there a dead
    holder's slot is never freed. The rerun must wait out the dead run's lease
    (flows.tasks.GPU_SLOT_LEASE_S, 60 s, + the repossessor's 15 s): with Prefect's default
    300 s lease it would time out here.
    """
    import httpx
    from prefect_server import running_server

    from flows.tasks import GPU_LIMIT
    from grid_store import GridStore

    store = tmp_path / "grids.zarr"
    # A time budget, not a step count: each scene then trains for a few seconds however
    # fast the machine is, leaving a wide window to SIGKILL during the second scene.
    nerf = {**NERF, "max_steps": None, "time_budget_s": 10.0}
    command = shell_build_dataset(scene_root, tmp_path, nerf, "--max-parallel", "1")
    with running_server(tmp_path / "prefect_home", tmp_path / "server.log") as (api, env):

        def slots_in_use() -> int:
            reply = httpx.get(f"{api}/v2/concurrency_limits/{GPU_LIMIT}", timeout=5)
            return reply.json()["active_slots"] if reply.status_code == 200 else 0

        proc = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 240  # generous: a slow, shared VM has taken minutes
            held = False
            while time.monotonic() < deadline and proc.poll() is None:
                done = (
                    GridStore(store, mode="r").list_scenes()
                    if (store / "zarr.json").exists()
                    else []
                )
                # One scene stored and the next one training: it holds the GPU slot.
                held = len(done) == 1 and slots_in_use() == 1
                if held:
                    break
                time.sleep(0.2)
            assert proc.poll() is None, (
                f"the flow ended before it could be killed:\n{proc.stdout.read().decode()}"
            )
            assert held, "no scene reached the store with the next one training in time"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        before = GridStore(store, mode="r").list_scenes()
        assert len(before) == 1 and slots_in_use() == 1  # the dead run's slot, still leased

        rerun = subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
        )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    reports = by_id(
        [json.loads(line) for line in rerun.stdout.splitlines() if line.startswith("{")]
    )
    assert set(reports) == {"room_0", "room_1", "room_2"}
    for sid, r in reports.items():
        assert r["status"] == ("cached" if sid in before else "written"), (sid, r)
    assert GridStore(store, mode="r").list_scenes() == ["room_0", "room_1", "room_2"]


def test_temporary_server_frees_the_slot_of_a_run_that_died(scene_root, tmp_path):
    """No server configured: each shell run gets a temporary one over the profile's
    database, which keeps the active-slot count of a run killed holding the GPU slot
    (seen after a real SIGKILL: active_slots 1) and runs no repossessor. The next run
    must free it, not wait for it forever."""
    from prefect_server import isolated_env

    env = isolated_env(tmp_path / "prefect_home")
    dead_holder = (
        "from prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate as U\n"
        "from flows.tasks import GPU_LIMIT\n"
        "with get_client(sync_client=True) as c:\n"
        "    c.upsert_global_concurrency_limit_by_name(GPU_LIMIT, 1)\n"
        "    c.update_global_concurrency_limit(GPU_LIMIT, U(active_slots=1))\n"
        "    print(c.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots)\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", dead_holder],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0 and made.stdout.split()[-1] == "1", made.stdout + made.stderr

    command = shell_build_dataset(scene_root / "room_0", tmp_path, NERF)
    run = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "held by a run that died; freed" in run.stdout + run.stderr
    reports = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [(r["scene_id"], r["status"]) for r in reports] == [("room_0", "written")]
