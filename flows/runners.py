"""Where a flow's tasks run: a local thread pool, a local Dask cluster, or an existing one.

The flows take the choice as plain parameters (so a deployment can set it from the UI)
and apply it with ``flow.with_options(task_runner=...)`` on the sub-flow that fans out
over scenes.

GPUs on Dask: a Dask cluster declares GPUs as worker *resources*
(``dask worker tcp://scheduler:8786 --resources "GPU=1"``, one worker per GPU). With
``gpus_per_task`` set, each scene task is submitted under
``dask.annotate(resources={"GPU": gpus_per_task})`` and the scheduler only runs it on a
worker with a free GPU. Leave it None on clusters that declare no GPU resource (the
tasks would wait forever for one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner


def choose_task_runner(
    *,
    max_parallel: int = 2,
    dask_address: str | None = None,
    local_dask_workers: int | None = None,
    dask_processes: bool = True,
    gpus_per_worker: int | None = None,
) -> TaskRunner:
    """The task runner for the given choice (first match wins).

    Args:
        max_parallel: threads of the default runner (scenes in flight at once).
        dask_address: scheduler of an existing Dask cluster (``tcp://host:8786``).
        local_dask_workers: start a temporary local Dask cluster with this many workers.
        dask_processes: local cluster workers are processes (True) or threads in this
            process (False; what the tests use).
        gpus_per_worker: GPU resource each local worker declares (None: none).
    """
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    if local_dask_workers:
        from prefect_dask import DaskTaskRunner

        cluster_kwargs = {
            "n_workers": int(local_dask_workers),
            "threads_per_worker": 1,
            "processes": bool(dask_processes),
            "dashboard_address": None,
        }
        if gpus_per_worker:
            cluster_kwargs["resources"] = {"GPU": int(gpus_per_worker)}
        return DaskTaskRunner(cluster_kwargs=cluster_kwargs)
    if max_parallel < 1:
        raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
    return ThreadPoolTaskRunner(max_workers=max_parallel)


@contextlib.contextmanager
def gpu_resources(gpus_per_task: float | None) -> Iterator[None]:
    """Annotate the Dask tasks submitted inside with a GPU resource need (no-op for None)."""
    if not gpus_per_task:
        yield
        return
    import dask

    with dask.annotate(resources={"GPU": gpus_per_task}):
        yield
