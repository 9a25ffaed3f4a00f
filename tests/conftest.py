"""Shared test fixtures: the repository root and the Python that runs jobs as subprocesses.

Ray-backed tests start their own local runtime in their package's conftest (session or module
scope) and shut it down; see tests/train/conftest.py.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # shared helpers: servers.py, model/symmetry.py

# Keep tests single-threaded per process: the CI box has 2 cores, and Ray workers plus the
# driver oversubscribe quickly otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
# One basin store per test session (atomray.priors.store), shared by the session's jobs and Ray
# workers, which inherit it: tests neither read nor fill the user's ~/.cache/atomray.
if "ATOMRAY_CACHE_DIR" not in os.environ:
    os.environ["ATOMRAY_CACHE_DIR"] = tempfile.mkdtemp(prefix="atomray-basins-")
    atexit.register(shutil.rmtree, os.environ["ATOMRAY_CACHE_DIR"], True)
# Ray Train's controller polls its workers every 2 s (a tiny run ends up to 2 s after its
# last epoch) and starts a spot-preemption watcher actor per run; tests run ~30 short runs
# on 2 cores, so poll faster and skip the watcher (no spot instances here). ~9 s per run.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def python() -> str:
    """The interpreter running the tests (the project venv), for subprocess jobs."""
    return sys.executable
