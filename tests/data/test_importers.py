"""Importers and exporters on small synthetic files: the numbers that come out of a data set
are the numbers that went into the file (EGNO forward differences, rMD17 runs, ASE units)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atomray.config import ConfigError
from atomray.data.exporters import export_molecule
from atomray.data.frames import DataError
from atomray.data.dataset import load_trajectories, read_molecules, read_segments, validate_dataset
from atomray.data.importers import import_dataset, molecule_id_from_path
from atomray.data.sources import ImportConfig

REPO = Path(__file__).resolve().parents[2]
KEYS = ("positions", "velocities")


def test_md17_import_gives_egno_positions_and_forward_difference_velocities(tmp_path, md17_npz):
    path, r, z = md17_npz("md17_ethanol.npz", n_frames=40, dt_fs=0.5)
    summaries = import_dataset([path], tmp_path / "out", ImportConfig("md17", 0.5), command="test")
    (piece,) = load_trajectories(tmp_path / "out")["ethanol"]
    assert piece.t0_fs == 0.0 and piece.dt_fs == 0.5
    assert np.array_equal(piece.atomic_numbers, z)
    # EGNO: x = x[:-1], v = x[1:] - x[:-1] (per frame); atomray keeps Å/fs, i.e. / dt
    assert np.array_equal(piece.positions, r[:-1].astype(np.float32))
    np.testing.assert_allclose(piece.velocities, (r[1:] - r[:-1]) / 0.5, rtol=1e-6, atol=1e-7)
    assert summaries[0].n_frames == 39 and summaries[0].n_heavy == 3


def test_md17_molecules_row_records_source_theory_and_provenance(tmp_path, md17_npz):
    path, _, _ = md17_npz("md17_ethanol.npz")
    import_dataset([path], tmp_path / "out", ImportConfig("md17", 0.5), command="import_data.py md17")
    (row,) = read_molecules(tmp_path / "out").to_pylist()
    assert (row["source"], row["theory"], row["dt_fs"], row["n_frames"]) == ("md17", "PBE+TS", 0.5, 39)
    prov = json.loads(row["provenance"])
    assert prov["command"] == "import_data.py md17"
    assert prov["input"] == "md17_ethanol.npz"
    assert prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name, expected", [
    ("md17_aspirin.npz", "aspirin"), ("aspirin_dft.npz", "aspirin"), ("rmd17_uracil.npz", "uracil"),
    ("md22_Ac-Ala3-NHMe.npz", "Ac-Ala3-NHMe"), ("benzene_old_dft.npz", "benzene_old"), ("run.extxyz", "run"),
])
def test_molecule_id_comes_from_the_file_name(name, expected):
    assert molecule_id_from_path(Path("/data") / name) == expected


def test_md22_import_uses_its_time_step_and_theory(tmp_path, md17_npz):
    path, r, _ = md17_npz("md22_Ac-Ala3-NHMe.npz", n_frames=20, dt_fs=1.0)
    import_dataset([path], tmp_path / "out", ImportConfig("md22", 1.0))
    (row,) = read_molecules(tmp_path / "out").to_pylist()
    assert (row["molecule_id"], row["theory"], row["dt_fs"]) == ("Ac-Ala3-NHMe", "PBE+MBD", 1.0)
    (piece,) = load_trajectories(tmp_path / "out")["Ac-Ala3-NHMe"]
    np.testing.assert_allclose(piece.velocities, r[1:] - r[:-1], rtol=1e-6, atol=1e-7)


def test_segment_frames_split_a_long_trajectory_that_loads_back_whole(tmp_path, md17_npz):
    path, r, _ = md17_npz(n_frames=50)
    import_dataset([path], tmp_path / "split", ImportConfig("md17", 0.5, segment_frames=10))
    import_dataset([path], tmp_path / "whole", ImportConfig("md17", 0.5))
    (shard,) = (tmp_path / "split" / "frames").glob("*.parquet")
    assert [s.n_frames for s in read_segments(shard)] == [10, 10, 10, 10, 9]
    assert [s.t0_fs for s in read_segments(shard)] == [0.0, 5.0, 10.0, 15.0, 20.0]
    (split,), (whole,) = load_trajectories(tmp_path / "split")["ethanol"], load_trajectories(tmp_path / "whole")["ethanol"]
    for key in KEYS:
        assert np.array_equal(getattr(split, key), getattr(whole, key))


def test_rmd17_rows_are_sorted_and_split_into_runs_of_consecutive_old_indices(tmp_path, rmd17_npz):
    old = [0, 1, 2, 3, 10, 11, 12, 20, 30, 31]  # runs 0-3, 10-12, 20 (too short), 30-31
    path, base = rmd17_npz(old)
    (summary,) = import_dataset([path], tmp_path / "out", ImportConfig("rmd17", 0.5))
    pieces = load_trajectories(tmp_path / "out")["ethanol"]
    assert [(p.t0_fs, p.n_frames) for p in pieces] == [(0.0, 3), (5.0, 2), (15.0, 1)]
    for p, first in zip(pieces, (0, 10, 30)):
        steps = np.arange(first, first + p.n_frames)
        assert np.array_equal(p.positions, base[steps].astype(np.float32))
        np.testing.assert_allclose(p.velocities, (base[steps + 1] - base[steps]) / 0.5, rtol=1e-6, atol=1e-7)
    assert summary.dropped_rows == 1
    (row,) = read_molecules(tmp_path / "out").to_pylist()
    assert (row["source"], row["theory"], row["n_frames"]) == ("rmd17", "PBE/def2-SVP", 6)


def test_rmd17_min_segment_frames_drops_shorter_runs(tmp_path, rmd17_npz):
    path, _ = rmd17_npz([0, 1, 2, 3, 10, 11, 12, 20, 30, 31])
    import_dataset([path], tmp_path / "out", ImportConfig("rmd17", 0.5, min_segment_frames=3))
    pieces = load_trajectories(tmp_path / "out")["ethanol"]
    assert [(p.t0_fs, p.n_frames) for p in pieces] == [(0.0, 3), (5.0, 2)]


def test_rmd17_without_consecutive_rows_is_refused_with_the_reason(tmp_path, rmd17_npz):
    path, _ = rmd17_npz(list(range(0, 40, 2)))  # every other MD step: no two rows consecutive
    with pytest.raises(DataError) as err:
        import_dataset([path], tmp_path / "out", ImportConfig("rmd17", 0.5))
    msg = str(err.value)
    assert str(path) in msg and "sub-sampled" in msg and "not consecutive" in msg
    assert "longest run of consecutive old_indices is 1 rows" in msg
    assert not (tmp_path / "out").exists()


def test_ase_extxyz_velocities_are_converted_from_ase_units_to_angstrom_per_fs(tmp_path):
    import ase.io
    import ase.units
    from ase import Atoms

    # one carbon moving at 0.01 Å/fs = 1000 m/s: kinetic energy ½ m v² = 0.06224 eV
    images = []
    for k in range(3):
        atoms = Atoms("CO", positions=[[0.01 * k, 0, 0], [1.13, 0, 0]])
        atoms.set_velocities([[0.01 * ase.units.Angstrom / ase.units.fs, 0, 0], [0, 0, 0]])
        images.append(atoms)
    ke_ev = 0.5 * 12.011 * 1.66053907e-27 * 1000.0**2 / 1.602176634e-19
    assert images[0].get_kinetic_energy() == pytest.approx(ke_ev, rel=1e-4)
    path = tmp_path / "co.extxyz"
    ase.io.write(str(path), images, format="extxyz")
    import_dataset([path], tmp_path / "out", ImportConfig("ase", 1.0))
    (piece,) = load_trajectories(tmp_path / "out")["co"]
    assert piece.n_frames == 3  # velocities from the file: no frame dropped
    np.testing.assert_allclose(piece.velocities[:, 0], [[0.01, 0, 0]] * 3, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(piece.velocities[:, 1], 0.0, atol=1e-9)


def test_ase_extxyz_with_velocities_keeps_every_frame(tmp_path, extxyz_file):
    path, pos, vel = extxyz_file(n_frames=12, with_velocities=True)
    import_dataset([path], tmp_path / "out", ImportConfig("ase", 1.0))
    (piece,) = load_trajectories(tmp_path / "out")["traj"]
    np.testing.assert_allclose(piece.positions, pos, atol=1e-6)
    np.testing.assert_allclose(piece.velocities, vel, rtol=1e-5, atol=1e-7)


def test_ase_extxyz_without_velocities_uses_forward_differences(tmp_path, extxyz_file):
    path, pos, _ = extxyz_file(n_frames=12, dt_fs=2.0, with_velocities=False)
    import_dataset([path], tmp_path / "out", ImportConfig("ase", 2.0))
    (piece,) = load_trajectories(tmp_path / "out")["traj"]
    assert piece.n_frames == 11
    np.testing.assert_allclose(piece.velocities, (pos[1:] - pos[:-1]) / 2.0, atol=1e-6)


def test_generic_npz_reads_named_keys_and_file_velocities(tmp_path):
    rng = np.random.default_rng(3)
    pos, vel = rng.normal(size=(7, 4, 3)), rng.normal(scale=0.01, size=(7, 4, 3))
    path = tmp_path / "custom.npz"
    np.savez(path, xyz=pos, atomic_numbers=np.array([8, 1, 1, 6]), velocities=vel)
    import_dataset([path], tmp_path / "out", ImportConfig("npz", 2.0, positions_key="xyz"))
    (piece,) = load_trajectories(tmp_path / "out")["custom"]
    assert np.array_equal(piece.positions, pos.astype(np.float32))
    assert np.array_equal(piece.velocities, vel.astype(np.float32))
    assert read_molecules(tmp_path / "out").column("source").to_pylist() == ["npz"]


def test_multiple_files_become_one_molecule_each(tmp_path, md17_npz):
    a, ra, _ = md17_npz("md17_ethanol.npz", n_frames=30)
    b, rb, zb = md17_npz("md17_water.npz", n_frames=20, z=np.array([8, 1, 1]), seed=4)
    summaries = import_dataset([a, b], tmp_path / "out", ImportConfig("md17", 0.5))
    assert [s.molecule_id for s in summaries] == ["ethanol", "water"]
    info = validate_dataset(tmp_path / "out")
    assert (info["molecules"], info["shards"], info["frames"]) == (2, 2, 29 + 19)
    trajs = load_trajectories(tmp_path / "out")
    assert np.array_equal(trajs["water"][0].positions, rb[:-1].astype(np.float32))
    assert np.array_equal(trajs["water"][0].atomic_numbers, zb)


def test_molecule_ids_given_once_per_file_override_file_names(tmp_path, md17_npz):
    a, _, _ = md17_npz("md17_ethanol.npz")
    b, _, _ = md17_npz("aspirin_dft.npz", seed=5)
    import_dataset([a, b], tmp_path / "out", ImportConfig("md17", 0.5, molecule_ids=("eth", "asp")))
    assert read_molecules(tmp_path / "out").column("molecule_id").to_pylist() == ["eth", "asp"]
    with pytest.raises(ConfigError, match="one id per input file"):
        import_dataset([a, b], tmp_path / "out2", ImportConfig("md17", 0.5, molecule_ids=("eth",)))


def test_overwrite_replaces_a_non_empty_destination(tmp_path, md17_npz):
    a, _, _ = md17_npz("md17_ethanol.npz")
    b, _, _ = md17_npz("md17_other.npz", seed=9)
    import_dataset([a], tmp_path / "out", ImportConfig("md17", 0.5))
    import_dataset([b], tmp_path / "out", ImportConfig("md17", 0.5, overwrite=True))
    assert read_molecules(tmp_path / "out").column("molecule_id").to_pylist() == ["other"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "out"]


def assert_same_pieces(a: dict, b: dict, exact: bool = True) -> None:
    (pa_,), (pb_,) = a.values(), b.values()
    assert [(p.t0_fs, p.n_frames, p.dt_fs) for p in pa_] == [(p.t0_fs, p.n_frames, p.dt_fs) for p in pb_]
    for p, q in zip(pa_, pb_):
        assert np.array_equal(p.atomic_numbers, q.atomic_numbers)
        for key in KEYS:
            if exact:
                assert np.array_equal(getattr(p, key), getattr(q, key)), key
            else:  # extxyz stores 8 decimals
                np.testing.assert_allclose(getattr(p, key), getattr(q, key), rtol=0, atol=2e-7)


@pytest.mark.parametrize("suffix, fmt, exact", [(".npz", "npz", True), (".traj", "ase", True),
                                                 (".extxyz", "ase", False)])
def test_export_then_import_gives_back_the_same_frames(tmp_path, rmd17_npz, suffix, fmt, exact):
    path, _ = rmd17_npz([0, 1, 2, 3, 10, 11, 12, 20, 30, 31])  # gaps must survive the round trip
    import_dataset([path], tmp_path / "orig", ImportConfig("rmd17", 0.5))
    exported = export_molecule(tmp_path / "orig", "ethanol", tmp_path / f"ethanol{suffix}")
    import_dataset([exported], tmp_path / "back", ImportConfig(fmt, 0.5))
    assert_same_pieces(load_trajectories(tmp_path / "orig"), load_trajectories(tmp_path / "back"), exact)


def test_exported_npz_has_sgdml_keys_and_units(tmp_path, md17_npz):
    path, r, z = md17_npz(n_frames=10)
    import_dataset([path], tmp_path / "ds", ImportConfig("md17", 0.5))
    out = export_molecule(tmp_path / "ds", None, tmp_path / "e.npz")
    with np.load(out) as f:
        assert {"R", "z", "V", "dt_fs", "t_fs"} <= set(f.files)
        assert np.array_equal(f["z"], z) and float(f["dt_fs"]) == 0.5
        np.testing.assert_allclose(f["R"], r[:-1], atol=1e-6)
        np.testing.assert_allclose(f["V"], (r[1:] - r[:-1]) / 0.5, atol=1e-6)
        assert np.array_equal(f["t_fs"], np.arange(9) * 0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "e.npz", "inputs"]


def run_job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "import_data.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_imports_exports_and_reimports_end_to_end(tmp_path, md17_npz):
    a, ra, _ = md17_npz("md17_ethanol.npz", n_frames=30)
    b, _, _ = md17_npz("md17_water.npz", n_frames=20, z=np.array([8, 1, 1]), seed=4)
    res = run_job("--format", "md17", "--dt-fs", "0.5", a, b, "--out", tmp_path / "ds", "--segment-frames", "8")
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith(("ethanol:", "water:"))]
    assert lines[0].startswith("ethanol: 29 frames, 9 atoms (3 heavy), 14.5 fs in 4 segment(s)")
    assert lines[1].startswith("water: 19 frames, 3 atoms (1 heavy), 9.5 fs")
    assert "jobs/import_data.py" in json.loads(read_molecules(tmp_path / "ds").column("provenance")[0].as_py())["command"]
    res = run_job("export", "--data", tmp_path / "ds", "--molecule", "ethanol", "--to", tmp_path / "eth.extxyz")
    assert res.returncode == 0, res.stderr
    res = run_job("import", "--format", "ase", "--dt-fs", "0.5", tmp_path / "eth.extxyz", "--out", tmp_path / "back")
    assert res.returncode == 0, res.stderr
    (piece,) = load_trajectories(tmp_path / "back")["eth"]
    np.testing.assert_allclose(piece.positions, ra[:-1], atol=1e-6)


def test_cli_reports_bad_input_and_leaves_no_output(tmp_path, md17_npz):
    path, _, _ = md17_npz("md17_ethanol.npz", R=np.full((5, 9, 3), np.nan))
    res = run_job("--format", "md17", "--dt-fs", "0.5", path, "--out", tmp_path / "ds")
    assert res.returncode == 2
    assert "import_data: error:" in res.stderr and str(path) in res.stderr and "NaN" in res.stderr
    assert not (tmp_path / "ds").exists()
    res = run_job("--format", "md17", path, "--out", tmp_path / "ds")  # no silent default dt
    assert res.returncode == 2 and "--dt-fs" in res.stderr


def test_imported_shard_is_zstd_float32_parquet(tmp_path, md17_npz):
    path, _, _ = md17_npz()
    import_dataset([path], tmp_path / "out", ImportConfig("md17", 0.5))
    (shard,) = (tmp_path / "out" / "frames").glob("*.parquet")
    meta = pq.ParquetFile(shard)
    for name in KEYS:
        assert meta.schema_arrow.field(name).type.value_type == pa.float32()
    assert meta.metadata.row_group(0).column(0).compression == "ZSTD"
