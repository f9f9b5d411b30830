"""Suite-wide fixtures: small, deterministic, CPU-only."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Keep the suite's torch work predictable on small CI machines: under pytest-xdist (`make
# test` runs one worker per core) one thread per worker, since two threads on each of two
# busy cores run many times slower than one. A worker inherits the controller's environment,
# in which this line has already run: the worker's setting overrides it, not defaults to it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
else:
    os.environ.setdefault("OMP_NUM_THREADS", "2")

# Prefect reads its settings when imported: a private home and no telemetry (there is
# no network) must be in place before the first ``import prefect``.
_PREFECT_HOME = tempfile.mkdtemp(prefix="nerfmae-prefect-home-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_UI_ENABLED"] = "false"
for _name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE"):
    os.environ.pop(_name, None)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
LEGO_200 = SHARED_DATA / "nerf_synthetic" / "lego_200"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``nerfstudio`` need nerfstudio's own environment (``make nerfstudio``):
    skipped where it is not installed, except under ``NERFMAE_REQUIRE_NERFSTUDIO`` (set by
    ``make test-nerfstudio``), where a broken install must fail them, not hide in a skip."""
    if os.environ.get("NERFMAE_REQUIRE_NERFSTUDIO") or importlib.util.find_spec("nerfstudio"):
        return
    skip = pytest.mark.skip(reason="needs nerfstudio: `make test-nerfstudio` runs it")
    for item in items:
        if "nerfstudio" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that sets torch's thread count (a benchmark's ``main``, a CLI's ``--threads``)
    must not leave it to the tests its worker runs next: under xdist that is two threads on
    each of two busy cores."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def lego_dir() -> Path:
    """The real Blender lego scene at 200x200, or a clean skip where it is absent."""
    if not (LEGO_200 / "transforms_train.json").is_file():
        pytest.skip(f"real data not available at {LEGO_200} (see ../shared/data/README.md)")
    return LEGO_200


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """One temporary Prefect server (SQLite) for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()
