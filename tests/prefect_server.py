"""A real ``prefect server start`` on loopback, for the tests that need one.

The session-wide ``prefect_test_harness`` server (tests/test_flows.py) is Prefect's
*ephemeral* server, which runs none of the server's background services; among them the
repossessor that frees the concurrency slots of a holder that died. A test of what users
see after a crash needs the real server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect", "--no-prompt"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
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


def wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
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


def isolated_env(home: Path, **prefect: str) -> dict[str, str]:
    """This environment without inherited ``PREFECT_*``: a private ``PREFECT_HOME``,
    telemetry off, warnings only, plus ``prefect`` settings.

    A process without ``PREFECT_API_URL`` starts a temporary server, and Prefect gives it
    20 s; under ``pytest -n auto`` beside other work that has run out (seen at 12-07), so
    it gets the session harness's 120 s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PREFECT_LOGGING_LEVEL="WARNING",
        **prefect,
    )
    return env


@contextmanager
def running_server(home: Path, log: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Start a server with a private ``PREFECT_HOME``; yield its API URL and the environment
    (:func:`isolated_env`, UI off) for processes that should use it."""
    api = f"http://127.0.0.1:{free_port()}/api"
    env = isolated_env(
        home,
        PREFECT_API_URL=api,
        PREFECT_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="1",
    )
    port = api.rsplit(":", 1)[1].split("/")[0]
    with log.open("w") as out:
        server = subprocess.Popen(
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_healthy(api, server, timeout=60)
            yield api, env
        finally:
            stop(server)
            shutil.rmtree(home, ignore_errors=True)
