"""Fixtures for training tests: a real local Ray runtime and a tiny MMFF-built data set.

The data set is made by the real TG80 builder (RDKit MMFF94, NVE velocity Verlet), not by
hand: small molecules from the seed list, 1.2 ps each, built once per test session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

S3_BUCKET = "atomray-test"
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


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    """Real servers on 127.0.0.1 for the end-to-end tests, started once: an `mlflow server`,
    moto's S3-compatible server with one bucket, and a Ray head whose processes reach both.
    Yields {"mlflow": uri, "aws": the S3 environment, "bucket", "gcs", "dashboard"}; the S3
    environment is set in this process too while the servers run."""
    from servers import mlflow_server, ray_head, s3_server

    root = tmp_path_factory.mktemp("servers")
    with s3_server(root / "s3") as aws, mlflow_server(root / "mlflow") as uri, \
            ray_head(root / "ray", env=aws) as head:
        saved = {k: os.environ.get(k) for k in aws}
        os.environ.update(aws)
        import boto3

        boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
        try:
            yield {"mlflow": uri, "aws": aws, "bucket": S3_BUCKET, **head}
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
