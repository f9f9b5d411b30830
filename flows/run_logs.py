"""The project's own log records in the Prefect run they belong to.

The library packages log through the standard :mod:`logging` module (``nerf_training``
reports PSNR, ``pipeline.extract`` the box it samples, ``grid_store`` each scene it
writes). Prefect sends to its API only the records of its run loggers, and a flow-run
process's root logger sits at WARNING, so in a deployment run none of those lines reached
the UI: a task's log read "Finished in state Completed()" and nothing else.

Prefect's ``PREFECT_LOGGING_EXTRA_LOGGERS`` setting would attach its API handler to named
loggers, but it is read when Prefect configures logging, which in a worker's flow-run
process happens before the flow file is imported, and it leaves the loggers' level alone
(INFO records are dropped by the WARNING root). :func:`library_logs_to_run` does both,
for as long as a flow or task body runs; :func:`with_library_logs` wraps the flows and the
tasks that do library work (a task on a Dask worker in another process routes its own).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

LIBRARY_LOGGERS = ("nerf_training", "pipeline", "grid_store", "model")
"""Top-level loggers of the project's packages (every module logs under one of them)."""


class _InRunFilter(logging.Filter):
    """Pass only records made inside a Prefect flow or task run (or tagged with one).

    Library code also logs outside runs (a thread left over, an import); Prefect's
    handler would turn each such record into a warning about a missing flow run id.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "flow_run_id", None):
            return True
        from prefect.context import FlowRunContext, TaskRunContext

        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class _Routing:
    """Reference-counted attachment: nested flows and concurrent task threads share one
    handler; the last to leave restores the loggers as they were."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.handler: logging.Handler | None = None
        self.saved_levels: dict[str, int] = {}

    def enter(self, level: int) -> None:
        with self.lock:
            self.depth += 1
            if self.depth > 1:
                return
            from prefect.logging.handlers import APILogHandler

            self.handler = APILogHandler()
            self.handler.addFilter(_InRunFilter())
            for name in LIBRARY_LOGGERS:
                logger = logging.getLogger(name)
                self.saved_levels[name] = logger.level
                if logger.getEffectiveLevel() > level:
                    logger.setLevel(level)
                # Named in PREFECT_LOGGING_EXTRA_LOGGERS: Prefect's handler is there already.
                if not any(isinstance(h, APILogHandler) for h in logger.handlers):
                    logger.addHandler(self.handler)

    def leave(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth > 0:
                return
            for name in LIBRARY_LOGGERS:
                logger = logging.getLogger(name)
                logger.removeHandler(self.handler)
                logger.setLevel(self.saved_levels.pop(name, logging.NOTSET))
            self.handler = None


_ROUTING = _Routing()


@contextmanager
def library_logs_to_run(level: int = logging.INFO) -> Iterator[None]:
    """While inside, records of :data:`LIBRARY_LOGGERS` at ``level`` and above go to the
    current Prefect run's logs (and, by propagation, to the console handlers as before)."""
    _ROUTING.enter(level)
    try:
        yield
    finally:
        _ROUTING.leave()


def with_library_logs(fn: F) -> F:
    """Run ``fn`` inside :func:`library_logs_to_run` (put it under ``@flow`` / ``@task``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with library_logs_to_run():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
