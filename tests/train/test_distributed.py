"""End to end on real parts: `ray job submit` against a Ray head on 127.0.0.1 tracking into a
real `mlflow server`; workers killed mid-epoch and at an epoch boundary; two Ray nodes with one
worker each."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from servers import BIN, ray_env

pytestmark = pytest.mark.slow

TINY = ["model.embed_dim=16", "model.num_layers=1", "model.num_heads=2", "data.rwpe_k=4",
        "data.horizon_max_fs=200", "data.chunk_frames=400", "data.train_windows=192",
        "data.val_windows=48", "data.batch_size=32", "scaling.num_workers=2",
        "scaling.cpus_per_worker=0.5"]


def mlflow_runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return c, c.search_runs([exp.experiment_id])


def assert_epochs_logged_once(c, run_id: str, epochs: int) -> None:
    for key in ("val_s2t", "val_s2s", "train_loss"):
        steps = sorted(m.step for m in c.get_metric_history(run_id, key))
        assert steps == list(range(epochs)), f"{key}: logged steps {steps}, expected 0..{epochs - 1} once each"


def test_ray_job_submit_tracks_one_run_in_mlflow_server(servers, mmff_dataset, repo_root, tmp_path):
    epochs = 2
    # A working_dir upload carries no .git; the revision travels as an environment variable.
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True).stdout.strip() or "no-git"
    env_json = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": servers["mlflow"], "OMP_NUM_THREADS": "1",
                                        "ATOMRAY_GIT_REV": rev}})
    cmd = [str(BIN / "ray"), "job", "submit", "--address", servers["dashboard"], "--working-dir", str(repo_root),
           "--runtime-env-json", env_json, "--no-wait", "--",
           "python", "jobs/pretrain.py", "--config", "jobs/configs/tiny.yaml", *TINY,
           f"data.path={mmff_dataset}", f"storage_path={tmp_path / 'results'}", "name=e2e-job",
           f"train.epochs={epochs}", "tracking.experiment=e2e-job"]
    for _ in range(30):  # the head's job agent comes up a little after the dashboard
        out = subprocess.run(cmd, env=ray_env(), capture_output=True, text=True, timeout=300)
        if out.returncode == 0 or "No available agent" not in out.stderr:
            break
        time.sleep(3)
    assert out.returncode == 0, out.stdout + out.stderr
    job_id = next(line.split("'")[1] for line in out.stdout.splitlines() if "submitted successfully" in line)
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", servers["dashboard"], "--follow", job_id],
                          env=ray_env(), capture_output=True, text=True, timeout=900).stdout
    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", servers["dashboard"], job_id],
                            env=ray_env(), capture_output=True, text=True, timeout=120).stdout
    assert "succeeded" in status.lower(), f"{status}\n--- job log ---\n{logs[-5000:]}"
    assert "MLflow run id:" in logs and "physics floors on the same windows" in logs
    assert "the strongest floor (" in logs  # the verdict names the strongest floor
    assert [logs.count(f"epoch {e}/{epochs} ") for e in range(1, epochs + 1)] == [1] * epochs, logs[-3000:]

    c, runs = mlflow_runs(servers["mlflow"], "e2e-job")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.embed_dim"] == "16"
    assert run.data.tags["git_revision"] == rev
    from atomray.tracking import source_digest

    assert run.data.tags["source_digest"] == source_digest(repo_root)
    assert_epochs_logged_once(c, run.info.run_id, epochs)

    # The best checkpoint is an artifact that loads with weights_only=True into the model.
    local = Path(c.download_artifacts(run.info.run_id, "checkpoint", str(tmp_path / "dl")))
    state = torch.load(local / "model.pt", weights_only=True)
    from atomray.config import load_config
    from atomray.model import build_model

    cfg = load_config(local / "config.yaml")
    model = build_model(cfg.model, cfg.data.num_lags, cfg.data.rwpe_k)
    model.load_state_dict(state, strict=True)


def assert_mlflow_equals_history(c, run_id: str, history: list[dict]) -> None:
    """Every metric MLflow holds for the run equals the committed checkpoint history, step by
    step: each epoch once, none missing, none from an attempt that was never committed."""
    for key in sorted(k for k in history[0] if k != "epoch"):
        logged = sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))
        expected = [(int(r["epoch"]), float(r[key])) for r in history]
        assert logged == expected, f"{key}: MLflow {logged} != committed checkpoint history {expected}"


def test_workers_killed_mid_epoch_and_at_an_epoch_boundary_resume_with_an_exact_record(servers, mmff_dataset, tmp_path):
    """The last rank is killed halfway through epoch 1 (ATOMRAY_FAULTS fail_at_epoch, a test-only
    hook) and again right after it reported epoch 2, before Ray Train committed it
    (fail_after_report): rank 0 had uploaded epoch 2's checkpoint by then. Ray Train restarts the workers twice; the run
    resumes each time from the last committed checkpoint, MLflow equals the committed
    history step by step, and the uncommitted checkpoint is gone."""
    epochs = 4
    code = f"""
import json, ray
from atomray.config import load_config
from atomray.train.pretrain import pretrain, resolve
cfg = resolve(load_config("jobs/configs/tiny.yaml", {TINY + [
        f"data.path={mmff_dataset}", f"storage_path={tmp_path / 'results'}", "name=fault",
        f"train.epochs={epochs}", "tracking.experiment=fault", f"tracking.tracking_uri={servers['mlflow']}"]!r}))
ray.init(address="{servers['gcs']}")
result = pretrain(cfg)
print("HISTORY", json.dumps(result.history))
"""
    faults = {"ATOMRAY_FAULTS": "fail_at_epoch=1,fail_after_report=2"}  # the test-only hook (atomray.train.faults)
    out = subprocess.run([sys.executable, "-c", code], env={**ray_env(), **faults}, capture_output=True, text=True,
                         timeout=900, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    run_dir = tmp_path / "results" / "fault"
    assert (run_dir / ".fault_mid_epoch").exists() and (run_dir / ".fault_after_report").exists(), \
        "a fault was never injected"
    history = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("HISTORY"))[len("HISTORY "):])
    assert [int(r["epoch"]) for r in history] == list(range(epochs))

    c, runs = mlflow_runs(servers["mlflow"], "fault")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert_mlflow_equals_history(c, runs[0].info.run_id, history)

    # Resumed, not restarted: each attempt began after the epochs committed before it.
    states = {d.name: json.loads((d / "state.json").read_text()) for d in run_dir.glob("checkpoint_*") if d.is_dir()}
    latest = max(states.values(), key=lambda s: s["epoch"])
    assert latest["epoch"] == epochs - 1
    # The second kill came before Ray Train committed epoch 2: it ran again, and the checkpoint
    # its first attempt uploaded was removed.
    assert latest["resumed_at"] == [1, 2], latest["resumed_at"]
    assert "removed 1 checkpoint(s) a failed attempt left uncommitted" in out.stdout, out.stdout[-3000:]
    # Each epoch line printed once: only committed epochs are reported.
    assert [out.stdout.count(f"epoch {e}/{epochs} ") for e in range(1, epochs + 1)] == [1] * epochs, out.stdout[-3000:]
    # No orphan: every checkpoint left is one Ray Train keeps (the latest and the best), each
    # with a readable state of a different epoch.
    epochs_on_disk = sorted(s["epoch"] for s in states.values())
    best = min(history, key=lambda r: r["val_s2s"])["epoch"]
    assert len(set(epochs_on_disk)) == len(epochs_on_disk) and set(epochs_on_disk) <= {epochs - 1, best}, \
        f"checkpoints on disk: {sorted(states)} with epochs {epochs_on_disk}"


def test_a_run_whose_workers_fail_ends_failed_in_mlflow_with_the_error(servers, mmff_dataset, tmp_path):
    """No retries left (train.max_failures=0) when the last worker dies in epoch 0: fit raises,
    and the MLflow run is FAILED with the error as a tag instead of staying RUNNING."""
    code = f"""
import ray
from atomray.config import load_config
from atomray.train.pretrain import pretrain, resolve
cfg = resolve(load_config("jobs/configs/tiny.yaml", {TINY + [
        f"data.path={mmff_dataset}", f"storage_path={tmp_path / 'results'}", "name=doomed",
        "train.epochs=2", "train.max_failures=0", "tracking.experiment=doomed",
        f"tracking.tracking_uri={servers['mlflow']}"]!r}))
ray.init(address="{servers['gcs']}")
pretrain(cfg)
"""
    out = subprocess.run([sys.executable, "-c", code], env={**ray_env(), "ATOMRAY_FAULTS": "fail_at_epoch=0"},
                         capture_output=True, text=True,
                         timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode != 0, out.stdout[-3000:]
    _, runs = mlflow_runs(servers["mlflow"], "doomed")
    assert len(runs) == 1 and runs[0].info.status == "FAILED", [(r.info.run_id, r.info.status) for r in runs]
    error = runs[0].data.tags.get("atomray.error", "")
    # The error names the worker that died (the last rank) and what Ray Train saw.
    assert error.startswith("WorkerGroupError") and "[Rank 1 Error Snippet]" in error, error


def test_two_nodes_one_worker_each(mmff_dataset, tmp_path):
    """`ray.cluster_utils.Cluster` with two 1-CPU nodes; SPREAD puts one worker on each.

    The workers reserve no CPU (scaling.cpus_per_worker=0): Ray Data's file listing and
    reading tasks each need a whole CPU, which a node of one CPU would not have left."""
    code = f"""
import json, ray
from pathlib import Path
from ray.cluster_utils import Cluster
from atomray.config import load_config
from atomray.train.pretrain import pretrain, resolve
cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
cluster.add_node(num_cpus=1)
ray.init(address=cluster.address)
cluster.wait_for_nodes()
cfg = resolve(load_config("jobs/configs/tiny.yaml", {TINY + [
        f"data.path={mmff_dataset}", f"storage_path={tmp_path / 'results'}", "name=two-nodes",
        "train.epochs=1", "scaling.placement_strategy=SPREAD", "scaling.cpus_per_worker=0",
        "tracking.enabled=false"]!r}))
pretrain(cfg)
nodes = [json.loads(p.read_text())["node_id"] for p in sorted(Path(cfg.storage_path, "two-nodes", "placement").glob("rank-*.json"))]
print("NODES", json.dumps(nodes), len(ray.nodes()))
ray.shutdown()
cluster.shutdown()
"""
    out = subprocess.run([sys.executable, "-c", code], env=ray_env(), capture_output=True, text=True,
                         timeout=900, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("NODES"))
    nodes = json.loads(line.split(" ", 1)[1].rsplit(" ", 1)[0])
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes
