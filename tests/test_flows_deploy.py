"""``build-dataset`` deployed from ``prefect.yaml`` and run by a process worker, against a
real Prefect server on loopback: the sequence the README gives users.

Everything runs as subprocesses with a private ``PREFECT_HOME`` and telemetry off; all
of them are stopped in ``finally``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect", "--no-prompt"]
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process (and its group: workers start flow-run children), then kill."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout} s")


@pytest.mark.slow
def test_deployment_runs_through_a_process_worker(tmp_path):
    import httpx

    from grid_store import GridStore
    from pipeline.synthetic import generate_scene

    scene = generate_scene(
        tmp_path / "scenes" / "room_0", seed=0, n_views=8, image_size=16, grid_resolution=24
    )
    store = tmp_path / "grids.zarr"
    home = tmp_path / "prefect_home"
    api = f"http://127.0.0.1:{_free_port()}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="1",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    port = api.rsplit(":", 1)[1].split("/")[0]
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

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
        server = start("server", "server", "start", "--host", "127.0.0.1", "--port", port)
        _wait_healthy(api, server, timeout=60)
        cli("work-pool", "create", "nerfmae-process", "--type", "process")
        deployed = cli("deploy", "--all")
        assert "build-dataset/build-dataset" in deployed
        assert (
            "pretrain-mae/pretrain-mae" in deployed
            and "nerfmae-pipeline/nerfmae-pipeline" in deployed
        )
        start("worker", "worker", "start", "--pool", "nerfmae-process", "--limit", "1")

        params = {
            "scenes": str(scene),
            "store": str(store),
            "runs_dir": str(tmp_path / "runs"),
            "nerf": TINY_NERF,
            "resolution": 24,
            "retries": 0,
            "min_psnr": None,
        }
        ran = cli(
            "deployment", "run", "build-dataset/build-dataset", "--params", json.dumps(params)
        )
        flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", ran).group(1)

        deadline = time.monotonic() + 150
        state = None
        while time.monotonic() < deadline:
            run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=5).json()
            state = run["state"]["type"]
            if state in TERMINAL:
                break
            time.sleep(1)
        worker_log = (logs / "worker.log").read_text()
        assert state == "COMPLETED", f"flow run ended {state}:\n{worker_log[-4000:]}"
        assert GridStore(store, mode="r").list_scenes() == ["room_0"]
        assert run["parameters"]["store"] == str(store)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(home, ignore_errors=True)
