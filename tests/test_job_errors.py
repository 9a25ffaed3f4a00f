"""Jobs report a damaged checkpoint, an unwritable output path and a missing or bad SMILES
library in one line that names the file, exit 2, and leave nothing half-written. Every job
runs in process (tests/jobrun.py) and fails before any real work, so no test starts Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atomray.checkpoint import TrainState, save_checkpoint
from atomray.config import config_from_dict
from jobrun import job_main

CFG = config_from_dict({}, ["model.embed_dim=16", "model.num_layers=1", "model.num_heads=2", "data.rwpe_k=4"])


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    from atomray.model import build_model

    directory = tmp_path / "ckpt"
    save_checkpoint(directory, build_model(CFG.model, CFG.data.num_lags, CFG.data.rwpe_k), CFG,
                    TrainState(elements=[1, 6, 8]))
    return directory


def under_a_file(tmp_path: Path) -> Path:
    """An output path nobody can create, root included: its parent is a regular file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory\n")
    return blocker / "out"


def one_line_error(err: str, job: str) -> str:
    assert err.startswith(f"{job}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def evaluate_args(checkpoint: Path, out: Path) -> list:
    return ["--model", checkpoint, "--data", checkpoint.parent / "no-data", "--no-mlflow", "--out", out]


def predict_args(checkpoint: Path, out: Path) -> list:
    return ["--smiles", "CCO", "--model", checkpoint, "--lags-fs", "10", "--out", out]


JOBS = {"evaluate": (evaluate_args, "evaluation"), "predict": (predict_args, "pred.extxyz")}


# -- damaged checkpoints ------------------------------------------------------------------------


@pytest.mark.parametrize("job", sorted(JOBS))
def test_damaged_weights_are_named_without_unsafe_advice(capsys, tmp_path, checkpoint, job):
    (checkpoint / "model.pt").write_bytes(os.urandom(256))
    args, out_name = JOBS[job]
    out = job_main(capsys, f"{job}.py", *args(checkpoint, tmp_path / out_name), expect=2)
    err = one_line_error(out.err, job)
    assert f"{checkpoint / 'model.pt'}: checkpoint file is not a valid PyTorch weights file (" in err
    assert "weights_only" not in err
    assert not (tmp_path / out_name).exists()


@pytest.mark.parametrize("job", sorted(JOBS))
def test_damaged_state_is_named(capsys, tmp_path, checkpoint, job):
    (checkpoint / "state.json").write_text('{"epoch": 3, "elem')
    args, out_name = JOBS[job]
    out = job_main(capsys, f"{job}.py", *args(checkpoint, tmp_path / out_name), expect=2)
    assert f"{checkpoint / 'state.json'}: not a readable checkpoint state" in one_line_error(out.err, job)
    assert not (tmp_path / out_name).exists()


def test_missing_config_is_named(capsys, tmp_path, checkpoint):
    (checkpoint / "config.yaml").unlink()
    out = job_main(capsys, "evaluate.py", *evaluate_args(checkpoint, tmp_path / "evaluation"), expect=2)
    assert f"{checkpoint / 'config.yaml'}: checkpoint file not found" in one_line_error(out.err, "evaluate")


# -- unwritable output paths --------------------------------------------------------------------


@pytest.mark.parametrize("job", sorted(JOBS))
def test_output_under_a_file_is_refused_before_work(capsys, tmp_path, checkpoint, job):
    out_path = under_a_file(tmp_path) / JOBS[job][1]
    out = job_main(capsys, f"{job}.py", *JOBS[job][0](checkpoint, out_path), expect=2)
    err = one_line_error(out.err, job)
    assert str(out_path) in err and f"{tmp_path / 'blocker'} is a file, not a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "ckpt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
@pytest.mark.parametrize("job", sorted(JOBS))
def test_output_in_a_read_only_directory_is_refused(capsys, tmp_path, checkpoint, job):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        out = job_main(capsys, f"{job}.py", *JOBS[job][0](checkpoint, locked / "sub" / JOBS[job][1]), expect=2)
        assert f"no write permission on {locked}" in one_line_error(out.err, job)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_permission_check_is_made_for_root_too(capsys, tmp_path, checkpoint, monkeypatch):
    # root may write anywhere, so the read-only case above cannot fail for it; here the
    # permission check itself says no, as it does for any other user
    from atomray import outputs

    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False)
    out = job_main(capsys, "evaluate.py", *evaluate_args(checkpoint, tmp_path / "evaluation"), expect=2)
    err = one_line_error(out.err, "evaluate")
    assert f"{tmp_path / 'evaluation'}: cannot write the output directory: no write permission on {tmp_path}" in err
    assert not (tmp_path / "evaluation").exists()


def test_import_into_an_unwritable_place_is_refused(capsys, tmp_path):
    source = tmp_path / "aspirin.npz"
    source.write_bytes(b"never read")
    target = under_a_file(tmp_path)
    out = job_main(capsys, "import_data.py", "--format", "md17", "--dt-fs", "0.5", source, "--out", target, expect=2)
    assert f"{target}: cannot create the output directory" in one_line_error(out.err, "import_data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aspirin.npz", "blocker"]


def test_export_to_an_unwritable_place_is_refused(capsys, tmp_path):
    target = under_a_file(tmp_path) / "aspirin.npz"
    out = job_main(capsys, "import_data.py", "export", "--data", tmp_path / "no-data", "--to", target, expect=2)
    assert f"{target}: cannot create the output file" in one_line_error(out.err, "import_data")


def test_build_into_an_unwritable_place_is_refused(capsys, tmp_path):
    import ray

    target = under_a_file(tmp_path)
    out = job_main(capsys, "build_tg80.py", "--preset", "tiny", "--out", target, expect=2)
    assert f"{target}: cannot create the output directory" in one_line_error(out.err, "build_tg80")
    assert not ray.is_initialized()


def test_evaluation_files_are_written_all_or_none(tmp_path, monkeypatch):
    from atomray import report

    def broken_plot(rows, path):
        Path(path).write_bytes(b"half a png")
        raise OSError(f"{path}: disk full")

    monkeypatch.setattr(report, "plot_s2t_vs_dt", broken_plot)
    monkeypatch.setattr(report, "markdown", lambda rows, title="": "tables\n")
    out = tmp_path / "new" / "eval"
    with pytest.raises(OSError, match="disk full"):
        report.write_evaluation([{"molecule_id": "mean", "model_s2t": 0.1}], out)
    assert list(tmp_path.iterdir()) == []  # no file, and not even the directories made for them


# -- SMILES libraries ---------------------------------------------------------------------------


def test_build_names_a_missing_library_before_ray_starts(capsys, tmp_path):
    import ray

    missing = tmp_path / "missing.smi"
    out = job_main(capsys, "build_tg80.py", "--preset", "tiny", "--library", missing, "--out", tmp_path / "out",
                   expect=2)
    assert one_line_error(out.err, "build_tg80") == f"build_tg80: error: {missing}: library file or directory not found"
    assert not (tmp_path / "out").exists() and not ray.is_initialized()


def test_build_names_invalid_smiles_lines(capsys, tmp_path):
    library = tmp_path / "lib.smi"
    library.write_text("SMILES Name\nC1CC bad1\nCCO ok\n" + "".join(f"C(C bad{i}\n" for i in range(12)))
    out = job_main(capsys, "build_tg80.py", "--preset", "tiny", "--executor", "local", "--library", library,
                   "--set", "n_selected=1", "--out", tmp_path / "out", expect=2)
    err = one_line_error(out.err, "build_tg80")
    assert "13 library line(s) hold an invalid SMILES (skipped): " in err
    assert f"{library}:2 'C1CC', {library}:4 'C(C'" in err and f"{library}:12 " in err
    assert f"{library}:13 " not in err and err.endswith("and 3 more")
    assert not (tmp_path / "out").exists()


# -- outputs to URIs -----------------------------------------------------------------------------


def test_job_outputs_go_to_a_uri(capsys, tmp_path, checkpoint):
    """--out may be a URI (here file://; s3:// goes through the same pyarrow filesystem layer):
    evaluate's three files and predict's extxyz arrive there whole, and nothing is left in
    the working directory under a 'file:' name."""
    import ase.io

    root = Path(__file__).resolve().parents[1]
    out = f"file://{tmp_path}/store/eval"
    job_main(capsys, "evaluate.py", "--model", checkpoint, "--data", root / "data" / "tg80-mini", "--molecules",
             "ethanol", "--horizons-fs", 100, "--windows", 8, "--no-mlflow", "--out", out)
    assert sorted(p.name for p in (tmp_path / "store" / "eval").iterdir()) == [
        "evaluation.csv", "evaluation.md", "s2t_vs_dt.png"]
    job_main(capsys, "predict.py", *predict_args(checkpoint, f"file://{tmp_path}/store/pred.extxyz"))
    assert len(ase.io.read(tmp_path / "store" / "pred.extxyz", index=":")) == 1
    assert not Path("file:").exists()


# -- rollout settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("args, named", [
    (["--total-ps", "0.5"], "--total-ps 0.5 is shorter than one step of 1000 fs (the model's longest horizon"),
    (["--thermostat", "csvr"], "the CSVR thermostat acts on the internal velocities; it needs momentum control"),
    (["--stride-sweep", "50", "2000", "--total-ps", "1"], "--stride-sweep: every stride must be in (0, --total-ps]"),
    (["--thermostat-target", "reference"], "--thermostat-target reference sets the thermostat's temperature"),
    (["--momentum", "--thermostat", "langevin", "--thermostat-groups", "hydrogens"],
     "coupling groups 'hydrogens' are CSVR's; the 'langevin' thermostat has none"),
    (["--position-noise", "0.005", "0"], "position noise has its rigid-body part removed"),
    (["--momentum", "--position-noise", "0.005", "-0.001"], "position noise is two widths >= 0"),
    (["--reference-runs", "0"], "--reference-runs must be >= 1, found 0"),
    (["--reference-runs", "3", "--equilibrate-fs", "0"],
     "--reference-runs > 1 is for the fresh reference MD of --smiles / --structure with --equilibrate-fs > 0"),
    (["--conformers", "0"], "--conformers K (K >= 1, found 0) picks the start of a --smiles"),
    (["--match-torsions", "0"], "torsions are matched beyond an RMS displacement > 0"),
    (["--reference-workers", "-1"], "--reference-workers must be >= 0 (0: one per core), found -1"),
], ids=["total_below_one_step", "thermostat_without_momentum", "sweep_stride_too_long",
        "reference_target_without_thermostat", "groups_without_csvr", "noise_without_momentum", "negative_noise",
        "no_reference_runs", "reference_runs_without_equilibration", "no_conformers",
        "no_match_distance", "negative_reference_workers"])
def test_rollout_settings_are_refused_before_work(capsys, tmp_path, checkpoint, args, named):
    out = job_main(capsys, "rollout.py", "--model", checkpoint, "--smiles", "CCO", "--out", tmp_path / "roll",
                   "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *args, expect=2)
    assert named in one_line_error(out.err, "rollout")
    assert not (tmp_path / "roll").exists()


def test_an_nvt_reference_is_refused_for_data_set_molecules(capsys, tmp_path, checkpoint):
    """A data set's molecules are judged against their own trajectories: no fresh MD to make NVT."""
    out = job_main(capsys, "rollout.py", "--model", checkpoint, "--test-molecules", "--reference-ensemble", "nvt",
                   "--out", tmp_path / "roll", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", expect=2)
    assert "--reference-ensemble nvt is for the fresh reference MD of --smiles / --structure" in one_line_error(
        out.err, "rollout")
    assert not (tmp_path / "roll").exists()
