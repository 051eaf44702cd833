"""Shared fixtures. Real data lives in ../shared/data beside the checkout; tests that need it skip
with a clear message when it is absent (a user's fresh clone has no ../shared).

Under CI (``CI=true``; ``.ci/run`` sets it) a skip fails the run unless ``Testing/allowed_skips.txt``
lists it: see ``Testing/strict_skips.py``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

pytest_plugins = ("strict_skips",)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ACTIONPP_SHARED_DATA", REPO.parent / "shared" / "data"))

# Cached pre-training (training/pretrain_cache.py) goes to a folder of this test session, never the
# user's cache.
os.environ.setdefault("ACTIONPP_CACHE_DIR", tempfile.mkdtemp(prefix="actionpp-test-cache-"))

# Keep CPU tests quick and reproducible on the 2-core CI machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (../shared/data is absent): skipped")
    return SHARED_DATA


@pytest.fixture(scope="session")
def acdc_root(shared_data: Path) -> Path:
    root = shared_data / "ACDC"
    if not root.is_dir():
        pytest.skip(f"ACDC data not found at {root}: skipped")
    return root


@pytest.fixture(scope="session")
def la_root(shared_data: Path) -> Path:
    root = shared_data / "LA"
    if not root.is_dir():
        pytest.skip(f"LA data not found at {root}: skipped")
    return root
