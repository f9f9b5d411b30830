"""The flows' command lines give their temporary Prefect server time to start, and leave a
timeout the user chose alone.

Prefect resolves its settings from the environment when a process imports it, so the
command lines run in a fresh interpreter whose environment sets no timeout (whatever the
test session's environment holds), once as they are and once under a user's timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flows.local_server import STARTUP_TIMEOUT_S

REPO = Path(__file__).resolve().parents[1]

# What each command line's flow sees as its server's startup timeout, with the flows
# replaced by recorders (nothing starts a server).
PROBE = """
import json
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as TIMEOUT
from prefect.settings import temporary_settings
import flows.build_dataset as build_dataset
import flows.end_to_end as end_to_end
from flows.training_runs import flow_arg_parser, run_flow_command


class State:
    def is_failed(self):
        return False


def timeouts_in_flows():
    seen = {"outside": TIMEOUT.value()}

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
    return seen


unset = timeouts_in_flows()
with temporary_settings(updates={TIMEOUT: 37}):  # as a profile or the environment sets it
    user = timeouts_in_flows()
print("SEEN" + json.dumps({"unset": unset, "user": user}))
"""


def test_command_lines_wait_for_their_server_unless_the_user_chose(tmp_path):
    # A fresh interpreter without any PREFECT_* setting but a private home.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("SEEN"))
    seen = json.loads(line.removeprefix("SEEN"))
    flows = ("build_dataset", "end_to_end", "training_flow")
    assert seen["unset"] == {"outside": 20, **dict.fromkeys(flows, STARTUP_TIMEOUT_S)}
    assert seen["user"] == {"outside": 37, **dict.fromkeys(flows, 37)}
