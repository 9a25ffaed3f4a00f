"""`jobs/evaluate.py` and `atomray.evaluate` on real parts: a checkpoint trained by Ray Train on
a tiny MMFF-built set, a real `mlflow server` on 127.0.0.1, real Parquet data.

- the evaluate module reproduces, on the run's validation windows, the figures the run logged;
- the job writes evaluation.csv / .md / s2t_vs_dt.png and one MLflow run with them;
- ATOM evaluates at any number of lags, EGNO refuses another one with a clear message;
- bad requests (unseen elements, too long a horizon, unknown molecule) are named.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from jobrun import job_main
from servers import mlflow_server


pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# Training molecules hold no nitrogen, so uracil (N) is an element the model never saw.
TRAIN_MOLECULES = "[ethanol,malonaldehyde,benzene,toluene,salicylic_acid,naphthalene,aspirin]"
TINY = ["model.embed_dim=16", "model.num_layers=1", "model.num_heads=2", "data.rwpe_k=4",
        "data.horizon_max_fs=200", "data.chunk_frames=400", "data.train_windows=192",
        "data.val_windows=48", "data.batch_size=32", "scaling.num_workers=2", "scaling.cpus_per_worker=0.5",
        "train.epochs=2", f"data.molecules={TRAIN_MOLECULES}", "data.include_unstable=true"]


@pytest.fixture(scope="module")
def trained(ray_local, mmff_dataset, tmp_path_factory):
    from atomray.config import load_config
    from atomray.train.pretrain import pretrain, resolve

    root = tmp_path_factory.mktemp("evaluate")
    with mlflow_server(root / "mlflow") as uri:
        cfg = resolve(load_config(ROOT / "jobs/configs/tiny.yaml", TINY + [
            f"data.path={mmff_dataset}", f"storage_path={root / 'ray'}", "name=eval-src",
            "tracking.experiment=eval-src", f"tracking.tracking_uri={uri}"]))
        result = pretrain(cfg)
        yield {"root": root, "uri": uri, "result": result, "data": mmff_dataset}


def evaluate_job(trained, *args, expect: int = 0):
    """`python jobs/evaluate.py ARGS` as a user runs it (a process of its own)."""
    import os

    env = dict(os.environ, MLFLOW_TRACKING_URI=trained["uri"], PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "jobs/evaluate.py", *map(str, args)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == expect, out.stdout[-4000:] + "\n--- stderr ---\n" + out.stderr[-4000:]
    return out


def test_evaluate_reproduces_the_validation_figures_the_run_logged(trained):
    from mlflow.tracking import MlflowClient

    from atomray.checkpoint import load_model, read_state
    from atomray.evaluate import FLOORS, run_validation

    result = trained["result"]
    model, cfg = load_model(result.checkpoint)
    metrics, n = run_validation(model, cfg)
    assert n == 48
    best = result.best
    logged = MlflowClient(trained["uri"]).get_run(result.run_id).data.metrics
    assert metrics["val_s2t"] == pytest.approx(logged["best_val_s2t"], rel=1e-5)
    assert metrics["val_s2s"] == pytest.approx(logged["best_val_s2s"], rel=1e-5)
    for key in [f"val_s2t_{f}" for f in FLOORS] + ["val_s2t_lag1", "val_s2t_lag8"]:
        # harmonic_all too: this process reads the basins and modes the run's worker stored
        assert metrics[key] == pytest.approx(best[key], rel=1e-5), key
    assert read_state(result.checkpoint).epoch == best["epoch"]


def test_evaluate_job_writes_tables_plot_and_one_mlflow_run(trained, tmp_path):
    from mlflow.tracking import MlflowClient

    out_dir = tmp_path / "eval"
    out = evaluate_job(trained, "--model", trained["result"].checkpoint, "--data", trained["data"],
                       "--molecules", "ethanol", "benzene", "--horizons-fs", "25", "100", "--num-lags", "4", "8",
                       "--windows", "16", "--out", out_dir, "--experiment", "eval-test")
    rows = list(csv.DictReader(open(out_dir / "evaluation.csv")))
    # (2 molecules + mean) x 2 horizons x 2 lag counts, each with the model and every floor
    assert len(rows) == 12
    assert {r["molecule_id"] for r in rows} == {"ethanol", "benzene", "mean"}
    assert {(r["num_lags"], r["horizon_fs"]) for r in rows} == {(p, h) for p in ("4", "8") for h in ("25.0", "100.0")}
    for r in rows:
        assert float(r["model_s2t"]) > 0 and float(r["rigid_all_s2t"]) > 0 and r["strongest_floor"]
    text = (out_dir / "evaluation.md").read_text()
    assert "## P = 4 lags" in text and "## P = 8 lags" in text and "rotor_all" in text
    assert (out_dir / "s2t_vs_dt.png").stat().st_size > 10_000
    assert "windows in" in out.stdout
    c = MlflowClient(trained["uri"])
    runs = c.search_runs([c.get_experiment_by_name("eval-test").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["data_digest"] and run.data.params["model"] == trained["result"].checkpoint
    assert "s2t_P8_dt100fs" in run.data.metrics and "s2t_rigid_all_P4_dt25fs" in run.data.metrics
    assert {a.path for a in c.list_artifacts(run.info.run_id)} == {"evaluation.csv", "evaluation.md", "s2t_vs_dt.png"}


def test_egno_checkpoint_refuses_another_number_of_lags(trained, tmp_path, capsys):
    from dataclasses import replace

    from atomray.checkpoint import TrainState, read_config, read_state, save_checkpoint
    from atomray.model import build_model

    cfg = read_config(trained["result"].checkpoint)
    cfg = replace(cfg, model=replace(cfg.model, name="egno", gnn_hidden_dim=8, num_layers=2))
    egno = tmp_path / "egno"
    save_checkpoint(egno, build_model(cfg.model, cfg.data.num_lags, cfg.data.rwpe_k), cfg,
                    TrainState(elements=read_state(trained["result"].checkpoint).elements))
    base = ["--model", egno, "--data", trained["data"], "--molecules", "ethanol", "--horizons-fs", "50",
            "--windows", "8", "--no-mlflow", "--out", tmp_path / "out"]
    job_main(capsys, "evaluate.py", *base, "--num-lags", "8")
    out = job_main(capsys, "evaluate.py", *base, "--num-lags", "4", expect=2)
    assert "built for P = 8 lags" in out.err and "cannot predict P = 4" in out.err


@pytest.mark.parametrize("args, message", [
    (["--molecules", "uracil"], "never occurred in the model's training data"),
    (["--molecules", "ethanol", "--horizons-fs", "5000"], "needs 5001 frames"),
    (["--molecules", "caffeine"], "no molecule 'caffeine'"),
])
def test_bad_requests_are_named(trained, tmp_path, capsys, args, message):
    out = job_main(capsys, "evaluate.py", "--model", trained["result"].checkpoint, "--data", trained["data"],
                   "--windows", "4", "--no-mlflow", "--out", tmp_path / "bad", *args, expect=2)
    assert message in out.err, out.err[-2000:]
    assert not (tmp_path / "bad" / "evaluation.csv").exists()
