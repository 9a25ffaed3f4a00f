"""jobs/rollout.py end to end: a model checkpoint, an MMFF-built molecule (SMILES) with fresh
MMFF reference MD, a real `mlflow server` on 127.0.0.1; the extxyz holds every atom."""

from __future__ import annotations

import dataclasses

import pytest

from jobrun import job_main

pytestmark = pytest.mark.slow


def test_rollout_job_writes_extxyz_with_every_atom_and_an_mlflow_run(servers, tmp_path, capsys):
    import ase.io
    from mlflow.tracking import MlflowClient

    from atomray.checkpoint import TrainState, save_checkpoint
    from atomray.config import RunConfig
    from atomray.model import build_model

    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, prior="rigid", relaxed_input=False,
                                                             prior_input=False, embed_dim=16, num_layers=1,
                                                             num_heads=2),
                              data=dataclasses.replace(cfg.data, context_atoms="all", num_lags=8, rwpe_k=4))
    model = build_model(cfg.model, num_lags=8, rwpe_dim=4)
    ckpt = save_checkpoint(tmp_path / "ckpt", model, cfg, TrainState(elements=[1, 6, 8]))
    out = tmp_path / "rollouts"
    printed = job_main(capsys, "rollout.py", "--model", ckpt, "--smiles", "CCO", "--reference-engine", "mmff",
                       "--starts", 2, "--total-ps", 0.4, "--step-fs", 100, "--out", out,
                       "--tracking-uri", servers["mlflow"], "--experiment", "rollout-job").out
    images = ase.io.read(out / "smiles-seed0.extxyz", index=":")
    assert len(images) == 1 + 4 * 4  # the start and 4 frames per step of 100 fs
    assert sorted(images[0].numbers) == [1, 1, 1, 1, 1, 1, 6, 6, 8]  # hydrogens included
    assert (out / "rollouts.csv").is_file() and (out / "CCO.png").is_file()
    c = MlflowClient(servers["mlflow"])
    run = c.search_runs([c.get_experiment_by_name("rollout-job").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.info.run_id in printed
    # The rigid prior with a zero correction keeps every bond: a stable rollout.
    assert run.data.metrics["mean_stability"] == 1.0
    assert {"mean_w1_bond_length_a", "mean_temperature_k", "mean_reference_temperature_k"} <= set(run.data.metrics)
    assert any(a.path == "rollout" for a in c.list_artifacts(run.info.run_id))
