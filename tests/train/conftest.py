"""Fixtures for training tests: a real local Ray runtime and a tiny MMFF-built data set.

The data set is made by the real TG80 builder (RDKit MMFF94, NVE velocity Verlet), not by
hand: small molecules from the seed list, 1.2 ps each, built once per test session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MMFF_MOLECULES = "ethanol,malonaldehyde,benzene,toluene,uracil,salicylic_acid,naphthalene,aspirin"


def build_mmff_dataset(out: Path, names: str = MMFF_MOLECULES, production_fs: float = 1200.0) -> Path:
    from atomray.tg80.build import build
    from atomray.tg80.presets import preset_config

    n = len(names.split(","))
    cfg = preset_config("tiny", [f"seed_names={names}", f"n_seeds={n}",
                                 f"md.production_fs={production_fs}", "md.segment_fs=400"])
    build(cfg, out, executor="local", command="tests: build_mmff_dataset")
    return out


@pytest.fixture(scope="session")
def mmff_dataset(tmp_path_factory) -> Path:
    return build_mmff_dataset(tmp_path_factory.mktemp("mmff") / "tg80-tiny")


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray runtime on 2 CPUs for the module; shut down (with torch.distributed state)
    afterwards so the next module starts clean."""
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
