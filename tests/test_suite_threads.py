"""The suite's own thread settings (tests/conftest.py), which every timing of `make test`
rests on."""

from __future__ import annotations

import os

import torch


def test_each_xdist_worker_runs_torch_on_one_thread():
    # Under `pytest -n auto` a worker inherits the controller's OMP_NUM_THREADS: a worker
    # that kept it ran two threads on each of two busy cores.
    expected = 1 if os.environ.get("PYTEST_XDIST_WORKER") else int(os.environ["OMP_NUM_THREADS"])
    assert torch.get_num_threads() == expected
    assert os.environ["OMP_NUM_THREADS"] == str(expected)
