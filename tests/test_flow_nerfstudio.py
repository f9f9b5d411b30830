"""build-dataset's nerfstudio backend (flows.nerfstudio_backend) and finished nerfstudio runs
as its input.

In the main environment, a fake nerfstudio environment (``bin/python`` and ``bin/nerfmae``
scripts that record how they were called, write a run folder the way the training process
does and copy the room's ground truth as "its" grid) checks what the flow decides: the
command lines, the budgets, the log streaming, the store entry, the caching, the error
when the environment is missing. The test marked ``nerfstudio`` trains a real nerfacto run
on a tiny room in ``make test-nerfstudio``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RES = 16

# A run's config.yml as nerfstudio 1.1.5 dumps it, trimmed to what find_run reads.
FAKE_CONFIG = """\
!!python/object:nerfstudio.engine.trainer.TrainerConfig
experiment_name: ''
method_name: {method}
output_dir: !!python/object/apply:pathlib.PosixPath
- {out}
pipeline: !!python/object:nerfstudio.pipelines.base_pipeline.VanillaPipelineConfig
  datamanager: !!python/object:nerfstudio.data.datamanagers.parallel_datamanager.ParallelDataManagerConfig
    data: !!python/object/apply:pathlib.PosixPath
    - {data}
    dataparser: !!python/object:nerfstudio.data.dataparsers.nerfstudio_dataparser.NerfstudioDataParserConfig
      data: !!python/object/apply:pathlib.PosixPath []
relative_model_dir: !!python/object/apply:pathlib.PosixPath
- nerfstudio_models
timestamp: ''
"""  # noqa: E501

FAKE_TOOL = """\
#!{python}
# A stand-in for nerfstudio's environment: records its call, acts like the real tool.
import json, os, shutil, sys
from pathlib import Path

name, args = Path(sys.argv[0]).name, sys.argv[1:]
with open(os.environ["FAKE_NERFSTUDIO_CALLS"], "a") as f:
    f.write(json.dumps([name, *args]) + "\\n")
if name == "python":  # -m pipeline.nerfstudio.train_run --metrics M ... -- METHOD ...
    assert args[:2] == ["-m", "pipeline.nerfstudio.train_run"], args
    ns = args[args.index("--") + 1:]
    run = Path(ns[ns.index("--output-dir") + 1]) / ns[0]
    (run / "nerfstudio_models").mkdir(parents=True, exist_ok=True)
    (run / "nerfstudio_models" / "step-000000029.ckpt").write_bytes(b"weights")
    (run / "dataparser_transforms.json").write_text("{{}}")
    config = {config!r}.format(method=ns[0], out=run.parent, data=ns[ns.index("--data") + 1])
    (run / "config.yml").write_text(config)
    print("fake ns-train: step 30/30", flush=True)
    metrics = {{"backend": "nerfstudio", "method": ns[0], "steps": 30, "seconds": 1.5,
               "psnr_holdout": 21.5, "config": str(run / "config.yml")}}
    Path(args[args.index("--metrics") + 1]).write_text(json.dumps(metrics))
else:  # nerfmae extract CONFIG --out GRID --resolution R ...
    sys.path.insert(0, {repo!r})
    from pipeline.nerfstudio.run import find_run

    capture = find_run(args[1]).transforms_json.parent
    shutil.copy(capture / "ground_truth" / "grid.npz", args[args.index("--out") + 1])
    print("fake nerfmae extract: done", flush=True)
"""


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def room(tmp_path_factory) -> Path:
    """One tiny synthetic room (its ground truth is the fake environment's grid)."""
    from pipeline.synthetic import generate_scene

    root = tmp_path_factory.mktemp("ns_scenes")
    return generate_scene(root / "room", seed=0, n_views=8, image_size=16, grid_resolution=RES)


@pytest.fixture
def fake_env(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A fake nerfstudio environment folder, and the file its tools append their calls to."""
    env = tmp_path / "fake-venv-nerfstudio"
    (env / "bin").mkdir(parents=True)
    script = FAKE_TOOL.format(python=sys.executable, config=FAKE_CONFIG, repo=str(REPO))
    for name in ("python", "nerfmae"):
        (env / "bin" / name).write_text(script)
        (env / "bin" / name).chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    calls.touch()
    monkeypatch.setenv("FAKE_NERFSTUDIO_CALLS", str(calls))
    return env, calls


def read_calls(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()]


def flow_kwargs(room: Path, tmp_path: Path, **nerf) -> dict:
    return {
        "scenes": str(room),
        "runs_dir": str(tmp_path / "runs"),
        "nerf_backend": "nerfstudio",
        "nerf": nerf,
        "resolution": RES,
        "retries": 0,
        "retry_delay_s": 0.0,
        "max_parallel": 1,
    }


# ----------------------------------------------------------------- plain functions
def test_the_training_command_carries_budgets_and_a_dataparser_that_fits_the_room(tmp_path):
    from flows.nerfstudio_backend import NerfstudioConfig, train_command
    from pipeline.nerfstudio.train_run import arg_parser, split_argv

    env = tmp_path / "env"
    config = NerfstudioConfig(max_num_iterations=30, time_budget_s=5,
                              ns_train_args=["--pipeline.model.num-levels", "8"])  # fmt: skip
    command = train_command(env, "scenes/room", tmp_path / "run", config)
    assert command[:3] == [str(env / "bin" / "python"), "-m", "pipeline.nerfstudio.train_run"]
    ours, ns = split_argv(command[3:])
    # what the flow asks for is what the training process parses
    parsed = arg_parser().parse_args(ours)
    assert parsed.metrics == tmp_path / "run" / "metrics.json"
    assert (parsed.time_budget, parsed.device, parsed.evaluate) == (5.0, "auto", True)
    assert ns[:3] == ["nerfacto", "--vis", "tensorboard"]
    text = " ".join(ns)
    assert f"--output-dir {tmp_path / 'run'} " in text
    assert f"--data {Path('scenes/room').resolve()} " in text
    assert "--max-num-iterations 30 --pipeline.model.num-levels 8 nerfstudio-data" in text
    dataparser = "nerfstudio-data --scale-factor 0.5 --eval-mode interval --eval-interval 8"
    assert text.endswith(dataparser)

    # nothing given: the method's own step budget, no time budget
    ours, ns = split_argv(train_command(env, "s", "r", NerfstudioConfig())[3:])
    assert "--time-budget" not in ours and "--max-num-iterations" not in ns
    with pytest.raises(ValueError, match="'splatfacto' is not one of"):
        NerfstudioConfig(method="splatfacto")


def test_the_command_lines_budget_flags_name_nerfstudios_fields(monkeypatch):
    import flows.build_dataset as module

    seen = {}

    def fake_flow(**kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(module, "build_dataset", fake_flow)
    with pytest.raises(SystemExit):
        module.main(["--scenes", "s", "--store", "x.zarr", "--nerf-backend", "nerfstudio",
                     "--steps", "7", "--time-budget", "5", "--backend", "torch",
                     "--nerf-option", "method=instant-ngp"])  # fmt: skip
    assert seen["nerf_backend"] == "nerfstudio"
    assert seen["nerf"] == {"method": "instant-ngp", "max_num_iterations": 7,
                            "time_budget_s": 5.0, "implementation": "torch"}  # fmt: skip


def test_extraction_flags_are_the_flows_settings_or_an_error(tmp_path):
    from flows.nerfstudio_backend import extract_command

    command = extract_command(tmp_path, "run/config.yml", "g.npz", 48,
                              {"directions": "fixed", "max_cameras": None})  # fmt: skip
    assert command == [str(tmp_path / "bin" / "nerfmae"), "extract", "run/config.yml", "--out",
                       "g.npz", "--resolution", "48", "--directions", "fixed",
                       "--max-cameras", "0"]  # fmt: skip
    with pytest.raises(ValueError, match=r"\['bbox_max', 'bbox_min'\] cannot reach"):
        extract_command(tmp_path, "c", "g", 8, {"bbox_min": [0, 0, 0], "bbox_max": [1, 1, 1]})
    with pytest.raises(ValueError, match="did you mean"):
        extract_command(tmp_path, "c", "g", 8, {"direction": "fixed"})


def test_a_missing_environment_names_make_nerfstudio(tmp_path, monkeypatch):
    from flows.nerfstudio_backend import ENV_VAR, nerfstudio_environment

    with pytest.raises(FileNotFoundError, match=r"nowhere \(nerf.environment\).*make nerfstudio"):
        nerfstudio_environment(tmp_path / "nowhere")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match=rf"elsewhere \(\${ENV_VAR}\).*make nerfstudio"):
        nerfstudio_environment()


def test_the_config_hash_follows_the_backend_and_its_settings_not_the_environment(tmp_path):
    from flows.scenes import BuildSettings, nerf_hash

    def key(backend: str, **nerf) -> str:
        settings = BuildSettings(store="s", runs_dir="r", nerf=nerf, nerf_backend=backend)
        return nerf_hash("fingerprint", settings)

    ours, nerfacto = key("ours"), key("nerfstudio")
    assert len({ours, nerfacto, key("nerfstudio", method="instant-ngp"),
                key("nerfstudio", time_budget_s=60)}) == 4  # fmt: skip
    assert key("nerfstudio", environment=str(tmp_path)) == nerfacto
    with pytest.raises(ValueError, match="nerf_backend: expected one of"):
        key("ns")
    with pytest.raises(ValueError, match="'max_steps' is 'max_num_iterations'"):
        key("nerfstudio", max_steps=10)


def test_finished_runs_are_found_in_outputs_and_named_after_their_capture(room, fake_env,
                                                                          tmp_path):  # fmt: skip
    from flows.nerfstudio_backend import NerfstudioConfig, train_command
    from flows.scenes import discover_scenes, plan_jobs

    env, _ = fake_env
    outputs = tmp_path / "outputs"
    for experiment in ("a", "b"):  # two runs of the same capture, in nerfstudio's layout
        command = train_command(env, room, outputs / experiment / "nerfacto", NerfstudioConfig())
        subprocess.run(command, check=True, capture_output=True)
    (outputs / "notes").mkdir()
    runs = sorted(outputs.glob("*/nerfacto/nerfacto/config.yml"))
    assert discover_scenes(outputs) == [*runs, outputs / "notes"]
    assert discover_scenes(runs[0].parent) == [runs[0]] == discover_scenes(runs[0])
    assert discover_scenes([room, runs[1]]) == [room, runs[1]]
    jobs, failures = plan_jobs(discover_scenes(outputs))
    assert [(j.scene_id, j.nerfstudio_config) for j in jobs] == [
        ("room", str(runs[0])),
        ("notes", None),
    ]
    assert "scene id 'room' already used by" in failures[0]["reason"]


# ----------------------------------------------------------------- the flow, fake nerfstudio
def test_build_dataset_trains_with_nerfstudio_and_reuses_its_runs(
    prefect_api, room, fake_env, tmp_path, monkeypatch
):
    from test_flows import run_logs

    from flows.build_dataset import build_dataset
    from flows.nerfstudio_backend import ENV_VAR
    from grid_store import GridStore

    env, calls = fake_env
    kwargs = flow_kwargs(room, tmp_path, environment=str(env), max_num_iterations=30,
                         time_budget_s=5)  # fmt: skip
    store = str(tmp_path / "grids.zarr")
    state = build_dataset(store=store, return_state=True, **kwargs)
    assert state.is_completed(), state.message
    (report,) = state.result()
    assert (report["status"], report["psnr"]) == ("written", 21.5)
    (train, extract) = read_calls(calls)
    assert train[0] == "python" and "--time-budget" in train and "--max-num-iterations" in train
    run_dir = Path(train[train.index("--output-dir") + 1])
    assert extract[:3] == ["nerfmae", "extract", str(run_dir / "nerfacto" / "config.yml")]
    assert extract[extract.index("--resolution") + 1] == str(RES)
    attrs = GridStore(store, mode="r").scene_attrs("room")
    assert attrs["nerf_backend"] == "nerfstudio" and attrs["nerf_metrics"]["method"] == "nerfacto"
    assert attrs["nerf_metrics"]["backend"] == "nerfstudio"
    streamed = [log for log in run_logs(state) if "fake ns-train: step 30/30" in log.message]
    assert len(streamed) == 1 and streamed[0].task_run_id is not None

    again = build_dataset(store=store, **kwargs)
    assert again[0]["status"] == "cached" and again[0]["psnr"] == 21.5
    assert len(read_calls(calls)) == 2  # nothing ran

    # the finished run as input (any backend): extracted, not trained, named by its capture;
    # the environment from the variable (our backend's settings have no place for it)
    monkeypatch.setenv(ENV_VAR, str(env))
    other = str(tmp_path / "from_runs.zarr")
    (report,) = build_dataset(scenes=str(run_dir / "nerfacto"), store=other,
                              runs_dir=str(tmp_path / "runs2"), resolution=RES, retries=0,
                              max_parallel=1)  # fmt: skip
    assert (report["scene_id"], report["status"], report["psnr"]) == ("room", "written", 21.5)
    assert [c[0] for c in read_calls(calls)[2:]] == ["nerfmae"]
    attrs = GridStore(other, mode="r").scene_attrs("room")
    assert attrs["nerf_backend"] == "nerfstudio" and attrs["source"] == str(room.resolve())


def test_without_the_environment_every_scene_fails_naming_make_nerfstudio(
    prefect_api, room, tmp_path
):
    from flows.build_dataset import build_dataset, reports_of

    kwargs = flow_kwargs(room, tmp_path, environment=str(tmp_path / "no-env"))
    state = build_dataset(store=str(tmp_path / "g.zarr"), return_state=True, **kwargs)
    assert state.is_failed()
    (report,) = reports_of(state)
    assert report["status"] == "failed" and "make nerfstudio" in report["reason"]


# ----------------------------------------------------------------- real nerfstudio
@pytest.mark.nerfstudio
def test_build_dataset_with_nerfstudio_stores_a_nerfacto_grid(prefect_api, tmp_path):
    """A 20-view 32-pixel room, 30 nerfacto steps on the CPU (nerfstudio's torch modules,
    a small hash table and few samples), extracted at 32 samples and stored."""
    from flows.build_dataset import build_dataset
    from grid_store import GridStore
    from pipeline.synthetic.writer import generate_scene

    scene = generate_scene(tmp_path / "scenes" / "room", seed=0, n_views=20, image_size=32,
                           grid_resolution=32)  # fmt: skip
    from pipeline.nerfstudio.ns_train import CPU_MODEL_FLAGS

    small = ["--pipeline.datamanager.train-num-rays-per-batch", "256", *CPU_MODEL_FLAGS]
    store = str(tmp_path / "grids.zarr")
    kwargs = flow_kwargs(scene, tmp_path, device="cpu", max_num_iterations=30,
                         time_budget_s=60, ns_train_args=small)  # fmt: skip
    kwargs["resolution"] = 32
    (report,) = build_dataset(store=store, **kwargs)
    assert report["status"] == "written", report["reason"]
    gs = GridStore(store, mode="r")
    attrs = gs.scene_attrs("room")
    metrics = attrs["nerf_metrics"]
    assert attrs["nerf_backend"] == "nerfstudio" and metrics["backend"] == "nerfstudio"
    assert metrics["method"] == "nerfacto" and metrics["steps"] == 30
    assert metrics["psnr_holdout"] > 5 and metrics["n_holdout_views"] == 3  # views 0, 8, 16
    assert metrics["scene_box_extent"] < 1  # scale_factor 0.5: the room inside the box
    grid = gs.read_grid("room")
    assert max(grid.shape) == 32 and grid.semantic is not None
    assert grid.meta["nerf"]["backend"] == "nerfstudio" and grid.meta["nerf"]["steps"] >= 29
    assert os.path.isfile(metrics["config"])
    shutil.rmtree(tmp_path / "runs")
