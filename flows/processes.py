"""Child processes whose output becomes a Prefect task's log, line by line.

The flows launch work in other processes (``torchrun`` for several GPUs, nerfstudio's
environment for its training and extraction); a user watching the run in the UI reads
their output as it is printed, and an error carries its last lines.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections import deque
from typing import Any

OUTPUT_TAIL = 40
"""Lines of a failed process's output its error carries."""


def stream_process(
    command: list[str], logger: Any, env: dict[str, str] | None = None, cwd: str | None = None
) -> tuple[int, str]:
    """Run ``command`` with each output line (stdout and stderr) an INFO record of
    ``logger``; returns its exit status and its last :data:`OUTPUT_TAIL` lines. Output is
    unbuffered (``PYTHONUNBUFFERED``), so lines reach the log as they are printed."""
    logger.info("launching %s", shlex.join(command))
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL)
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, cwd=cwd, errors="replace") as proc:  # fmt: skip
        assert proc.stdout is not None
        for raw in proc.stdout:
            # rich redraws progress with carriage returns: keep the last state of a line
            line = raw.rstrip().rsplit("\r", 1)[-1]
            if line.strip():
                logger.info("%s", line)
                tail.append(line)
    return proc.returncode, "\n".join(tail)


__all__ = ["OUTPUT_TAIL", "stream_process"]
