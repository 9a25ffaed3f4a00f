"""`data.path` and `storage_path` on an S3-compatible object store: moto's standalone server on
127.0.0.1, a real Ray head and a real `mlflow server`. A data set is imported to s3://, a run
trains from it into s3://, its driver is killed mid-run, and the same name submitted again
resumes the same MLflow run from the checkpoint on the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servers import ray_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.embed_dim=16", "model.num_layers=1", "model.num_heads=2", "data.rwpe_k=4",
        "data.horizon_max_fs=200", "data.chunk_frames=400", "data.train_windows=192",
        "data.val_windows=48", "data.batch_size=32", "scaling.num_workers=2", "scaling.cpus_per_worker=0.5"]

DRIVER = """
import json, sys, ray
from atomray.config import load_config
from atomray.train.pretrain import pretrain, resolve
cfg = resolve(load_config("jobs/configs/tiny.yaml", json.loads(sys.argv[2])))
ray.init(address=sys.argv[1])
result = pretrain(cfg)
print("RESULT", json.dumps({"run_id": result.run_id, "checkpoint": result.checkpoint, "history": result.history}))
"""


def import_to_s3(dataset: Path, tmp_path: Path, target: str) -> None:
    """Export every molecule of a local data set to npz and import them all into `target`."""
    from atomray.data.dataset import read_molecules
    from atomray.data.exporters import export_molecule
    from atomray.data.importers import import_dataset
    from atomray.data.sources import ImportConfig

    molecules = read_molecules(dataset)
    ids, dts = molecules.column("molecule_id").to_pylist(), set(molecules.column("dt_fs").to_pylist())
    assert len(dts) == 1, dts
    files = [export_molecule(dataset, m, tmp_path / "npz" / f"{m}.npz") for m in ids]
    import_dataset(files, target, ImportConfig(format="npz", dt_fs=dts.pop(), molecule_ids=tuple(ids)))


def start_driver(servers: dict, overrides: list[str], log: Path) -> subprocess.Popen:
    env = {**ray_env(), **servers["aws"], "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", DRIVER, servers["gcs"], json.dumps(overrides)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def test_s3_data_and_storage_survive_a_killed_driver_and_resume_the_same_mlflow_run(servers, mmff_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    from atomray import storage
    from atomray.checkpoint import STATE_FILE
    from atomray.tracking import load_best

    data = f"s3://{servers['bucket']}/datasets/tg80-tiny"
    import_to_s3(mmff_dataset, tmp_path, data)
    assert storage.is_file(storage.join(data, "molecules.parquet"))
    assert not Path("s3:").exists() and not (ROOT / "s3:").exists()

    epochs = 4
    overrides = [*TINY, f"data.path={data}", f"storage_path=s3://{servers['bucket']}/results", "name=s3-run",
                 f"train.epochs={epochs}", "tracking.experiment=s3-run", f"tracking.tracking_uri={servers['mlflow']}"]
    c = MlflowClient(servers['mlflow'])
    first = start_driver(servers, overrides, tmp_path / "first.log")
    run_id, deadline = "", time.time() + 600
    while time.time() < deadline and first.poll() is None:  # kill the driver once epoch 1 is committed
        exp = c.get_experiment_by_name("s3-run")
        runs = c.search_runs([exp.experiment_id]) if exp else []
        if runs and c.get_metric_history(runs[0].info.run_id, "val_s2t"):
            run_id = runs[0].info.run_id
            os.killpg(first.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    first.wait(60)
    log = (tmp_path / "first.log").read_text()
    assert run_id, f"no epoch was committed before the driver ended:\n{log[-4000:]}"
    assert "RESULT" not in log, "the run finished before the driver could be killed"
    run_dir = f"s3://{servers['bucket']}/results/s3-run"
    assert storage.read_text(storage.join(run_dir, "mlflow_run_id")) == run_id

    second = start_driver(servers, overrides, tmp_path / "second.log")
    second.wait(900)
    log = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, log[-6000:]
    result = json.loads(next(line for line in log.splitlines() if line.startswith("RESULT"))[len("RESULT "):])

    assert result["run_id"] == run_id  # the same MLflow run, resumed
    runs = c.search_runs([c.get_experiment_by_name("s3-run").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    history = result["history"]
    assert [int(r["epoch"]) for r in history] == list(range(epochs))
    for key in ("val_s2t", "val_s2s", "train_loss"):
        logged = sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))
        assert logged == [(int(r["epoch"]), r[key]) for r in history], key

    # Resumed, not restarted: the second driver began after the epochs the first committed.
    state = json.loads(storage.read_text(storage.join(result["checkpoint"], STATE_FILE)))
    assert result["checkpoint"] == f"{run_dir}/best" and storage.is_file(f"{run_dir}/best/model.pt")
    committed = [json.loads(storage.read_text(storage.join(run_dir, d, STATE_FILE)))
                 for d in storage.listdir(run_dir, "dir") if d.startswith("checkpoint_")]
    resumes = max(committed, key=lambda s: s["epoch"])["resumed_at"]
    assert len(resumes) == 1 and resumes[0] >= 1, resumes
    assert state["epoch"] in range(epochs)

    # The best checkpoint and the pyfunc model are in MLflow, and load_best loads them.
    assert c.search_logged_models(experiment_ids=[runs[0].info.experiment_id],
                                  filter_string=f"source_run_id = '{run_id}'")
    from atomray.tracking import load_model_uri

    _, stored_cfg, _ = load_model_uri(servers['mlflow'], result["checkpoint"])  # straight from s3://.../best
    assert stored_cfg.name == "s3-run"
    model, cfg, best_run = load_best("s3-run", tracking_uri=servers['mlflow'])
    assert best_run == run_id and cfg.data.path == data and sum(p.numel() for p in model.parameters()) > 0
