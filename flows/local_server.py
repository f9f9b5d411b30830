"""Patience for the temporary Prefect server a command line starts.

Without ``PREFECT_API_URL``, running a flow starts a temporary local Prefect server and
waits ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` (Prefect's default: 20 s) for
it to answer. On a laptop busy with other work, or on the first start after an install
(the server compiles and migrates its database), that takes longer, and the command fails
before its flow has done anything. The flows' command lines therefore wait longer, unless
the user chose a timeout (environment or profile), which stays as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

STARTUP_TIMEOUT_S = 180
"""How long a command line waits for its temporary server, where the user set nothing."""


@contextmanager
def patient_server_start(timeout_s: int = STARTUP_TIMEOUT_S) -> Iterator[None]:
    """Within the block, a temporary server gets ``timeout_s`` to start, unless the
    user's settings name a timeout."""
    patience = {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: timeout_s}
    with temporary_settings(set_defaults=patience):
        yield
