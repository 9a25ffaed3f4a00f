"""jobs/rollout.py end to end: a model checkpoint, an MMFF-built molecule (SMILES) with fresh
MMFF reference MD, a real `mlflow server` on 127.0.0.1; the extxyz holds every atom."""

from __future__ import annotations

import dataclasses

import pytest

from jobrun import job_main

pytestmark = pytest.mark.slow


def rigid_checkpoint(path):
    """A small rigid-prior ATOM, untrained (its zero correction: the prior alone), saved to path."""
    from atomray.checkpoint import TrainState, save_checkpoint
    from atomray.config import RunConfig
    from atomray.model import build_model

    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, prior="rigid", relaxed_input=False,
                                                             prior_input=False, embed_dim=16, num_layers=1,
                                                             num_heads=2),
                              data=dataclasses.replace(cfg.data, context_atoms="all", num_lags=8, rwpe_k=4))
    model = build_model(cfg.model, num_lags=8, rwpe_dim=4)
    return save_checkpoint(path, model, cfg, TrainState(elements=[1, 6, 8]))


def test_rollout_job_writes_extxyz_with_every_atom_and_an_mlflow_run(servers, tmp_path, capsys):
    import csv

    import ase.io
    from mlflow.tracking import MlflowClient

    ckpt = rigid_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "rollouts"
    printed = job_main(capsys, "rollout.py", "--model", ckpt, "--smiles", "CCO", "--reference-engine", "mmff",
                       "--starts", 2, "--total-ps", 0.4, "--step-fs", 100, "--energy-drift", "--out", out,
                       "--tracking-uri", servers["mlflow"], "--experiment", "rollout-job").out
    images = ase.io.read(out / "smiles_0fs.extxyz", index=":")  # the starts are frames of the reference MD
    assert len(images) == 1 + 4 * 4  # the start and 4 frames per step of 100 fs
    assert sorted(images[0].numbers) == [1, 1, 1, 1, 1, 1, 6, 6, 8]  # hydrogens included
    assert (out / "rollouts.csv").is_file() and (out / "CCO.png").is_file()
    failures = (out / "failures.csv").read_text().splitlines()  # a row per rollout, both holding
    assert failures[0].startswith("rollout,molecule,stable,first_failure_ps,kind,atoms") and len(failures) == 3
    assert all(",True," in row for row in failures[1:]) and " breaks at " not in printed
    c = MlflowClient(servers["mlflow"])
    run = c.search_runs([c.get_experiment_by_name("rollout-job").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.info.run_id in printed
    assert run.data.params["reference_ensemble"] == "nve"  # no thermostat: NVE reference MD
    # The rigid prior with a zero correction keeps every bond: a stable rollout.
    assert run.data.metrics["mean_stability"] == 1.0
    assert {"mean_w1_bond_length_a", "mean_temperature_k", "mean_reference_temperature_k",
            "mean_energy_drift_ev_per_ps"} <= set(run.data.metrics)
    assert "energy drift of CCO (mmff)" in printed and "10 energy calls" in printed  # 2 rollouts × 5 step starts
    assert any(a.path == "rollout" for a in c.list_artifacts(run.info.run_id))
    # The floor rolls out beside it by default: an untrained checkpoint is its prior, so the prior
    # alone scores the same and the verdict calls it what it is.
    with open(out / "rollouts.csv") as fh:
        row = next(csv.DictReader(fh))
    for key in ("stability", "w1_bond_length_a", "w1_bond_angle_deg", "w1_dihedral_deg"):
        assert float(row[f"prior_{key}"]) == float(row[key]), key
    verdict = next(line for line in printed.splitlines() if line.startswith("verdict against the prior alone"))
    assert verdict.startswith("verdict against the prior alone: a defect: the prior alone is as close or closer on "
                              f"CCO (bonds {float(row['w1_bond_length_a']):.4g} vs {float(row['w1_bond_length_a']):.4g}")
    assert "; angles " in verdict and "; dihedrals " in verdict
    assert (out / "rollouts.md").read_text().endswith(verdict + "\n")  # the table's file says it too
    assert run.data.metrics["molecules_beating_prior"] == 0.0 and run.data.params["prior_floor"] == "True"
    assert run.data.metrics["CCO.prior_w1_bond_angle_deg"] == run.data.metrics["CCO.w1_bond_angle_deg"]


def test_stride_sweep_writes_its_table_and_plot_and_the_thermostat_reaches_mlflow(servers, tmp_path, capsys):
    import csv

    from mlflow.tracking import MlflowClient

    ckpt = rigid_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "rollouts"
    printed = job_main(capsys, "rollout.py", "--model", ckpt, "--smiles", "CCO", "--reference-engine", "mmff",
                       "--starts", 2, "--total-ps", 0.4, "--step-fs", 100, "--stride-sweep", 50, 100,
                       "--momentum", "--thermostat", "csvr", "--tau-fs", 10, "--no-prior-floor", "--out", out,
                       "--tracking-uri", servers["mlflow"], "--experiment", "rollout-sweep").out
    with open(out / "stride_sweep.csv") as fh:
        sweep = list(csv.DictReader(fh))
    assert [float(r["stride_fs"]) for r in sweep] == [50.0, 100.0] and (out / "stride_sweep.png").is_file()
    # the rigid prior freezes the vibrations: no stride holds, and the job says so and why
    assert "stride sweep: no stride holds; the rollout below runs in steps of 100 fs" in printed
    assert all("w1_bond_length_a" in r["misses"] for r in sweep) and "verdict: CCO misses" in printed
    c = MlflowClient(servers["mlflow"])
    run = c.search_runs([c.get_experiment_by_name("rollout-sweep").experiment_id])[0]
    assert run.data.params["thermostat"] == "csvr" and run.data.params["momentum"] == "True"
    # an NVT rollout is judged against NVT reference MD at the thermostat's temperature (the default)
    assert run.data.params["reference_ensemble"] == "nvt" and "then 0.4 ps NVT" in printed
    header = (out / "rollouts.csv").read_text().splitlines()[0]
    assert "internal_temperature_k" in header
    assert "prior_stability" not in header and "against the prior alone" not in printed  # --no-prior-floor
    assert "molecules_beating_prior" not in run.data.metrics and run.data.params["prior_floor"] == "False"
    assert [m.step for m in c.get_metric_history(run.info.run_id, "sweep.stability")] == [50, 100]
    # the thermostat holds the next step's start at 300 K; the rigid prior's own velocities carry no vibration
    assert 200 < run.data.metrics["mean_temperature_k"] < 400
    assert run.data.metrics["mean_model_temperature_k"] < run.data.metrics["mean_temperature_k"]
