"""Suite-wide fixtures: small, deterministic, CPU-only."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Keep the suite's torch work predictable on small CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
LEGO_200 = SHARED_DATA / "nerf_synthetic" / "lego_200"


@pytest.fixture
def lego_dir() -> Path:
    """The real Blender lego scene at 200x200, or a clean skip where it is absent."""
    if not (LEGO_200 / "transforms_train.json").is_file():
        pytest.skip(f"real data not available at {LEGO_200} (see ../shared/data/README.md)")
    return LEGO_200


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
