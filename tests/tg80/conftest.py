"""Fixtures for the TG80 builder tests: a real local Ray runtime (2 CPUs, no dashboard),
started once per session and only by the tests that ask for it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never join a `ray start` cluster
    yield ray
    if started:
        ray.shutdown()
