"""The second half of the product end to end, against a real `mlflow server` on 127.0.0.1 and
a tiny MMFF-built set of 20 molecules: five-fold cross-validation, a Tune sweep with
ablation switches, the best checkpoint back from MLflow, zero-shot prediction, notebooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobrun import job_main
from servers import mlflow_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MOLECULES = ("aspirin,benzene,ethanol,malonaldehyde,naphthalene,salicylic_acid,toluene,uracil,paracetamol,"
             "nicotinamide,isoniazid,vanillin,coumarin,methyl_salicylate,dopamine,amphetamine,salicylamide,"
             "valproic_acid,phenacetin,benzocaine")
# Tiny runs: one CPU worker, a 1-block model, horizons that fit the 70-frame in-distribution
# test range (last 10 % of 700 fs).
TINY = ["model.embed_dim=16", "model.num_layers=1", "model.num_heads=2", "model.gnn_hidden_dim=16",
        "data.rwpe_k=4", "data.horizon_min_fs=4", "data.horizon_max_fs=60",
        "data.chunk_frames=200", "data.train_windows=128", "data.val_windows=40", "data.test_windows=40",
        "data.batch_size=32", "scaling.num_workers=1", "scaling.cpus_per_worker=0.25", "train.epochs=2",
        "data.include_unstable=true"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A 20-molecule MMFF data set and a real MLflow server; the environment jobs run with."""
    root = tmp_path_factory.mktemp("issue6")
    from atomray.tg80.build import build
    from atomray.tg80.presets import preset_config

    data = root / "mmff20"
    build(preset_config("tiny", [f"seed_names={MOLECULES}", "n_seeds=20", "md.production_fs=700",
                                 "md.segment_fs=350"]), data, executor="local", command="tests")
    with mlflow_server(root / "mlflow") as uri:
        env = dict(os.environ, MLFLOW_TRACKING_URI=uri, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
        env.pop("RAY_ADDRESS", None)
        yield {"root": root, "data": data, "uri": uri, "env": env}


def run_job(env, *args, timeout=1200):
    out = subprocess.run([sys.executable, *args], env=env["env"], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-6000:] + "\n--- stderr ---\n" + out.stderr[-6000:]
    return out.stdout


def client(env):
    from mlflow.tracking import MlflowClient

    return MlflowClient(env["uri"])


def runs_of(env, experiment):
    c = client(env)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, experiment
    return c.search_runs([exp.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def cv(env):
    stdout = run_job(env, "jobs/cv.py", "--config", "jobs/configs/cv.yaml", "--max-concurrent", "3",
                     "--name", "cv-test", *TINY, f"data.path={env['data']}", f"storage_path={env['root'] / 'ray'}",
                     "tracking.experiment=cv-test")
    return stdout


def test_cv_makes_one_parent_and_five_fold_children_with_disjoint_splits(env, cv, tmp_path):
    runs = runs_of(env, "cv-test")
    parents = [r for r in runs if r.data.tags.get("atomray.kind") == "cv"]
    children = [r for r in runs if r.data.tags.get("atomray.kind") == "train"]
    assert len(parents) == 1 and len(children) == 5
    parent = parents[0]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert sorted(int(r.data.params["data.fold"]) for r in children) == [0, 1, 2, 3, 4]
    for r in children:
        assert r.info.status == "FINISHED"
        for key in ("best_test_s2t", "best_test_s2s", "best_test_id_s2t", "best_test_id_s2s"):
            assert np.isfinite(r.data.metrics[key]), key
        split = json.loads(Path(client(env).download_artifacts(r.info.run_id, "split/split.json", str(tmp_path))).read_text())
        train, val, test = set(split["train"]), set(split["val"]), set(split["test"])
        assert train and val and test and not (train & val) and not (train & test) and not (val & test)
        clusters = split["clusters"]
        assert not {clusters[m] for m in test} & {clusters[m] for m in train | val}
        arts = {a.path for a in client(env).list_artifacts(r.info.run_id, "split")}
        assert {"split/split.csv", "split/split_umap.png"} <= arts
    for key in ("mean_ood_s2t", "mean_id_s2t", "fold0_ood_s2t", "fold4_id_s2s"):
        assert key in parent.data.metrics, key
    arts = {a.path for a in client(env).list_artifacts(parent.info.run_id, "cv")}
    assert "cv/cv_summary.md" in arts and "cv/cv_summary.csv" in arts
    assert "OOD S2T" in cv and "OOD S2T no_motion" in cv and "OOD S2T rotor_all" in cv and "fold 4" in cv
    assert "the strongest floor (" in cv  # the summary's verdict, model against the strongest floor
    assert "against that fold's strongest floor: beats it on " in cv and "of 5 (fold 0 " in cv  # and per fold
    for floor in ("no_motion", "linear", "rigid_heavy", "rigid_all", "rotor_all", "relaxed_all"):
        assert f"mean_ood_s2t_{floor}" in parent.data.metrics, floor


@pytest.fixture(scope="module")
def sweep(env):
    return run_job(env, "jobs/tune.py", "--config", "jobs/configs/sweep.yaml", "--ablation",
                   "--switches", "model.gamma", "model.attention", "--max-concurrent", "2",
                   "--name", "sweep-test", *TINY, f"data.path={env['data']}", f"storage_path={env['root'] / 'ray'}",
                   "tracking.experiment=sweep-test")


def test_sweep_runs_one_child_per_trial_with_ablation_switches(env, sweep):
    runs = runs_of(env, "sweep-test")
    parents = [r for r in runs if r.data.tags.get("atomray.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("atomray.kind") == "train"]
    assert len(parents) == 1 and len(children) == 3  # the default, one per alternative switch value
    settings = {(r.data.params["model.gamma"], r.data.params["model.attention"]) for r in children}
    assert settings == {("learned", "self"), ("fixed", "self"), ("learned", "heterogeneous")}
    assert all(r.info.status == "FINISHED" for r in children)
    arts = {a.path for a in client(env).list_artifacts(parents[0].info.run_id, "sweep")}
    assert {"sweep/results.csv", "sweep/ablation.png"} <= arts
    assert "default" in sweep


def test_load_best_returns_the_run_mlflow_ranks_best(env, sweep, tmp_path, monkeypatch):
    import tempfile

    import mlflow

    from atomray.tracking import download_checkpoint, load_best

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the checkpoint copies go

    mlflow.set_tracking_uri(env["uri"])
    ranked = mlflow.search_runs(experiment_names=["sweep-test"], filter_string="tags.`atomray.kind` = 'train'",
                                order_by=["metrics.best_val_s2t ASC"])
    model, cfg, run_id = load_best("sweep-test", "best_val_s2t", "min", env["uri"])
    assert run_id == ranked.iloc[0]["run_id"]
    assert cfg.model.attention == ranked.iloc[0]["params.model.attention"]
    assert not model.training
    copies = lambda: list(scratch.glob("atomray-ckpt-*"))  # noqa: E731  (torch keeps its own caches there too)
    assert not copies()  # the downloaded copy is gone once the model is loaded
    with pytest.raises(LookupError, match="models:/no-such-model@champion"):
        download_checkpoint(env["uri"], "models:/no-such-model@champion")
    assert not copies()  # a failed download leaves nothing either


def test_register_and_predict_a_new_molecule(env, sweep, tmp_path):
    import ase.io

    from atomray.tracking import register_best

    uri = register_best("sweep-test", "atom-test", "champion", tracking_uri=env["uri"])
    assert uri == "models:/atom-test@champion"
    out = tmp_path / "pred.extxyz"
    lags = ["5", "10", "20", "40", "80"]
    stdout = run_job(env, "jobs/predict.py", "--smiles", "CC(=O)Nc1ccc(O)cc1", "--model", uri,
                     "--lags-fs", *lags, "--out", str(out))
    assert "time:" in stdout
    frames = ase.io.read(out, index=":")
    assert len(frames) == len(lags)
    from rdkit import Chem

    every_atom = [a.GetAtomicNum() for a in Chem.AddHs(Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1")).GetAtoms()]
    assert [list(f.numbers) for f in frames] == [every_atom] * len(lags)  # data.context_atoms=all: hydrogens too
    assert [f.info["lag_fs"] for f in frames] == [float(x) for x in lags]


@pytest.mark.parametrize("args, message", [
    (["--smiles", "C1CC", "--model", "models:/atom-test@champion"], "not a valid molecule"),
    (["--smiles", "CC(F)O", "--model", "models:/atom-test@champion"], "never occurred"),
    (["--smiles", "CCO", "--model", "models:/atom-test@nonexistent"], "models:/atom-test@nonexistent"),
])
def test_predict_errors_are_clear(env, sweep, tmp_path, capsys, monkeypatch, args, message):
    from atomray.tracking import register_best

    register_best("sweep-test", "atom-test", "champion", tracking_uri=env["uri"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["uri"])
    out = job_main(capsys, "predict.py", *args, "--lags-fs", "10", "--out", tmp_path / "x.extxyz", expect=2)
    assert message in out.err, out.err[-3000:]
    assert not (tmp_path / "x.extxyz").exists()


def execute_notebook(path: Path, parameters: dict, cwd: Path, timeout: int = 900):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def test_notebooks_execute_headless(env, sweep):
    os.environ["MLFLOW_TRACKING_URI"] = env["uri"]  # the kernel inherits the environment
    nb = execute_notebook(ROOT / "notebooks" / "tune_sweep.ipynb", {
        "CONFIG": "jobs/configs/sweep.yaml",
        "OVERRIDES": TINY + [f"data.path={env['data']}", f"storage_path={env['root'] / 'ray'}",
                             "tracking.experiment=notebook-test"],
        "SWITCHES": ["model.gamma"], "NAME": "notebook-sweep", "TRACKING_URI": env["uri"],
        "MAX_CONCURRENT": 2, "RAY_ADDRESS": None}, ROOT / "notebooks")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
    assert len([r for r in runs_of(env, "notebook-test") if r.data.tags.get("atomray.kind") == "train"]) == 2

    nb = execute_notebook(ROOT / "notebooks" / "best_checkpoint.ipynb", {
        "EXPERIMENT": "notebook-test", "METRIC": "best_val_s2t", "TRACKING_URI": env["uri"],
        "REGISTERED_NAME": "atom-notebook", "ALIAS": "champion", "MOLECULE": "", "START_FRAME": 10,
        "LAGS_FS": [5, 10, 20, 40, 80]}, ROOT / "notebooks")
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "no motion" in text and "rotor_all" in text and "models:/atom-notebook@champion" in text
