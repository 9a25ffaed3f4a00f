"""Every committed config builds its model and runs one forward pass on windows of the shipped
data set, prepared by the same data path as training (its prior paths included); every file in
cluster/ parses with the tool that consumes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from atomray.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds_model_and_runs_forward(path):
    from atomray.model import build_model

    from dataclasses import replace

    from atomray.data.pipeline import fixed_windows, to_torch
    from atomray.model.registry import model_inputs
    from atomray.priors.frames import FramePhysics
    from atomray.train.loss import training_transform

    cfg = load_config(path, [f"data.path={ROOT / 'data' / 'tg80-mini'}"])  # the MD17 configs' data is downloaded
    data = replace(cfg.data, horizon="fixed", horizon_fs=min(cfg.data.horizon_max_fs, cfg.data.horizon_fs, 400.0))
    cfg = replace(cfg, data=data)
    model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k).eval()
    molecules = ["aspirin", "ethanol"]
    windows = fixed_windows(data.path, molecules, 3, data, 0)
    assert FramePhysics.load(data.path, molecules) is not None, \
        "tg80-mini ships with its per-frame physics (python jobs/frame_physics.py --data data/tg80-mini)"
    transform, _ = training_transform(cfg, molecules)
    batch = to_torch(transform(windows))
    with torch.no_grad():
        out = model(**model_inputs(batch))
    assert out.shape == batch["target"].shape and torch.isfinite(out).all()


def test_cluster_launcher_yaml_matches_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    for path in sorted((ROOT / "cluster").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if "cluster_name" in doc:
            jsonschema.validate(doc, schema)
            assert doc["head_node_type"] in doc["available_node_types"]
            assert any(t.get("resources", {}).get("GPU") for t in doc["available_node_types"].values())
            assert any("pip install" in c and "atomray" in c for c in doc["setup_commands"])


def test_kuberay_manifests_run_the_pretraining_job():
    cluster = yaml.safe_load((ROOT / "cluster" / "kuberay-raycluster.yaml").read_text())
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    groups = cluster["spec"]["workerGroupSpecs"]
    assert any(c["resources"]["limits"].get("nvidia.com/gpu") for g in groups for c in g["template"]["spec"]["containers"])
    assert "jobs/pretrain.py" in (ROOT / "cluster" / "kuberay-raycluster.yaml").read_text()

    job = yaml.safe_load((ROOT / "cluster" / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"].startswith("python jobs/pretrain.py")
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert "working_dir" in runtime_env
    spec = job["spec"]["rayClusterSpec"]
    assert spec["headGroupSpec"]["template"]["spec"]["containers"] and spec["workerGroupSpecs"]
    # The entrypoint's overrides are valid config keys.
    overrides = [t for t in job["spec"]["entrypoint"].split() if "=" in t]
    config = job["spec"]["entrypoint"].split("--config ")[1].split()[0]
    load_config(ROOT / config, overrides)


def test_runtime_env_excludes_local_outputs():
    env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    for heavy in (".venv", "mlruns", "ray_results", "mlflow.db"):
        assert heavy in env["excludes"]
    assert all(isinstance(v, str) for v in env.get("env_vars", {}).values())
