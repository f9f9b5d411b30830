"""The flows' command lines give their temporary Prefect server time to start, and leave a
timeout the user chose alone.

Prefect resolves its settings from the environment when a process imports it, so each
case runs in a fresh interpreter whose environment has no ``PREFECT_*`` variable but the
one under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.local_server import STARTUP_TIMEOUT_S

REPO = Path(__file__).resolve().parents[1]

# What each command line's flow sees as its server's startup timeout, with the flows
# replaced by recorders (nothing starts a server).
PROBE = """
import json, sys
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as TIMEOUT
import flows.build_dataset as build_dataset
import flows.end_to_end as end_to_end
import flows.pretrain as pretrain
from flows.training_runs import flow_arg_parser, run_flow_command

seen = {"outside": TIMEOUT.value()}


class State:
    def is_failed(self):
        return False


def recorder(name, result):
    def record(**_):
        seen[name] = TIMEOUT.value()
        return result
    return record


build_dataset.build_dataset = recorder("build_dataset", State())
build_dataset.reports_of = lambda state: []
build_dataset.main(["--scenes", "s", "--store", "x.zarr"])
end_to_end.nerfmae_pipeline = recorder("end_to_end", {"scenes": []})
end_to_end.main([])
run_flow_command(recorder("training_flow", {}), flow_arg_parser("d", "runs", "C"),
                 ["--store", "x.zarr"])
print("SEEN" + json.dumps(seen))
"""


def timeouts_seen(home: Path, **prefect: str) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", **prefect)
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("SEEN"))
    return json.loads(line[len("SEEN") :])


@pytest.mark.parametrize(
    ("user", "expected"), [(None, STARTUP_TIMEOUT_S), ("37", 37)], ids=["unset", "user-set"]
)
def test_command_lines_wait_for_their_server(tmp_path, user, expected):
    prefect = {} if user is None else {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": user}
    seen = timeouts_seen(tmp_path, **prefect)
    # Prefect's own default outside the command lines (or the user's value).
    assert seen.pop("outside") == (20 if user is None else expected)
    assert seen == {"build_dataset": expected, "end_to_end": expected, "training_flow": expected}
