"""``build-dataset`` deployed from ``prefect.yaml`` and run by a process worker, against a
real Prefect server on loopback: the sequence the README gives users.

Everything runs as subprocesses with a private ``PREFECT_HOME`` and telemetry off; all
of them are stopped in ``finally``.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from prefect_server import PREFECT, REPO, running_server, stop

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# A NeRF small enough to train in a few seconds (the same as tests/test_flows.py's).
TINY_NERF = {
    "max_steps": 30,
    "device": "cpu",
    "check_every": 0,
    "progress": False,
    "num_threads": 1,
    "target_samples": 4096,
    "initial_rays": 256,
    "max_rays": 1024,
    "samples_per_diagonal": 64,
    "field": {
        "encoding": {
            "n_levels": 4,
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


def test_readme_names_and_runs_every_deployment_as_flow_slash_deployment():
    """`prefect deployment run` takes FLOW/DEPLOYMENT: a README naming a deployment by its
    own name twice, or leaving one out, sends users to "not found"."""
    import importlib
    import inspect
    import shlex

    import yaml

    flows = {}
    for deployment in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]:
        path, function = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, function)
        flows[f"{flow.name}/{deployment['name']}"] = flow
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Orchestration with Prefect\n")[1].split("\n## ")[0]
    assert set(re.findall(r"^\| `([\w-]+/[\w-]+)` \|", section, flags=re.M)) == set(flows)
    commands = [shlex.split(line, comments=True)
                for line in section.replace("\\\n", " ").splitlines()
                if line.startswith("prefect deployment run ")]  # fmt: skip
    assert sorted(c[3] for c in commands) == sorted(flows)
    for command in commands:
        names = [arg.split("=")[0] for arg in command[5::2]]
        assert command[4::2] == ["--param"] * len(names), command
        assert set(names) <= set(inspect.signature(flows[command[3]].fn).parameters), command


@pytest.mark.slow
def test_deployment_runs_through_a_process_worker(tmp_path):
    import httpx

    from grid_store import GridStore
    from pipeline.synthetic import generate_scene

    scene = generate_scene(
        tmp_path / "scenes" / "room_0", seed=0, n_views=8, image_size=16, grid_resolution=24
    )
    store = tmp_path / "grids.zarr"
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    with running_server(tmp_path / "prefect_home", logs / "server.log") as (api, env):

        def start(name: str, *args: str) -> subprocess.Popen:
            out = (logs / f"{name}.log").open("w")
            proc = subprocess.Popen(
                [*PREFECT, *args],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.append(proc)
            return proc

        def cli(*args: str) -> str:
            done = subprocess.run(
                [*PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
            return done.stdout

        try:
            cli("work-pool", "create", "nerfmae-process", "--type", "process")
            deployed = cli("deploy", "--all")
            assert "build-dataset/build-dataset" in deployed
            assert (
                "pretrain-mae/pretrain-mae" in deployed
                and "finetune-nerfmae/finetune-nerfmae" in deployed
                and "finetune-nerfmae/finetune-detect" in deployed
                and "nerfmae-pipeline/nerfmae-pipeline" in deployed
            )
            start("worker", "worker", "start", "--pool", "nerfmae-process", "--limit", "1")

            def run_deployment(name: str, params: dict) -> dict:
                ran = cli("deployment", "run", name, "--params", json.dumps(params))
                flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", ran).group(1)
                deadline = time.monotonic() + 150
                while time.monotonic() < deadline:
                    run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=5).json()
                    if run["state"]["type"] in TERMINAL:
                        break
                    time.sleep(1)
                worker_log = (logs / "worker.log").read_text()
                assert run["state"]["type"] == "COMPLETED", (
                    f"{name} ended {run['state']['type']}:\n{worker_log[-4000:]}"
                )
                return run

            def messages_of(run: dict) -> list[dict]:
                """The run's log records and its sub-flow runs' (the scenes' tasks)."""
                children = httpx.post(
                    f"{api}/flow_runs/filter",
                    json={"flow_runs": {"parent_flow_run_id": {"any_": [run["id"]]}}},
                    timeout=5,
                ).json()
                ids = [run["id"], *(c["id"] for c in children)]
                return httpx.post(
                    f"{api}/logs/filter",
                    json={"logs": {"flow_run_id": {"any_": ids}}, "limit": 200},
                    timeout=5,
                ).json()

            params = {
                "scenes": str(scene),
                "store": str(store),
                "runs_dir": str(tmp_path / "runs"),
                "nerf": TINY_NERF,
                "resolution": 24,
                "retries": 0,
                "min_psnr": None,
            }
            run = run_deployment("build-dataset/build-dataset", params)
            assert GridStore(store, mode="r").list_scenes() == ["room_0"]
            assert run["parameters"]["store"] == str(store)
            assert run["state"]["message"] == "1 written"
            # What a user watching the UI reads: the library's own lines, in the task runs.
            # The flow-run process sends its last records in a batch as it exits.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                by_logger = {r["name"]: r["message"] for r in messages_of(run)}
                if "grid_store.store" in by_logger:
                    break
                time.sleep(1)
            assert "held-out" in by_logger.get("nerf_training.run", ""), sorted(by_logger)
            assert f"{store}: wrote scene room_0" in by_logger.get("grid_store.store", "")

            # pretrain-mae twice with the deployment's default output: two run folders.
            mae = {
                "store": str(store),
                "runs_dir": str(tmp_path / "mae_runs"),
                "preset": "tiny",
                "epochs": 1,
                "options": {"num_workers": 0, "device": "cpu"},
            }
            first = run_deployment("pretrain-mae/pretrain-mae", mae)
            second = run_deployment("pretrain-mae/pretrain-mae", mae)
            assert "out_dir" not in first["parameters"]
            folders = sorted((tmp_path / "mae_runs").iterdir())
            assert len(folders) == 2 and all((f / "metrics.json").is_file() for f in folders)
            assert first["id"] != second["id"]
        finally:
            for proc in reversed(procs):
                stop(proc)
