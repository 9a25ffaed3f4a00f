"""Bad input, one test per case: the right error type, a message that names the file /
molecule / key and says what was expected, and nothing half-written left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atomray.config import ConfigError, DataConfig, load_config
from atomray.data.frames import DataError, Trajectory
from atomray.data.dataset import load_trajectories, read_segments, validate_dataset
from atomray.data.importers import import_dataset
from atomray.data.sources import ImportConfig
from atomray.data.windows import egno_start_frames, sample_windows


def import_fails(tmp_path: Path, snapshot, inputs, cfg: ImportConfig, error=DataError) -> str:
    """Run an import that must fail; check the workspace is exactly as before; return the message."""
    before = snapshot(tmp_path)
    with pytest.raises(error) as err:
        import_dataset(inputs, tmp_path / "out", cfg)
    assert snapshot(tmp_path) == before, "the failed import left files behind"
    assert not (tmp_path / "out").exists()
    return str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_coordinates_are_refused(tmp_path, snapshot, md17_npz, bad):
    r = np.zeros((6, 9, 3)) + np.arange(9)[None, :, None]
    r[4, 2, 1] = bad
    path, _, _ = md17_npz(R=r)
    msg = import_fails(tmp_path, snapshot, [path], ImportConfig("md17", 0.5))
    assert str(path) in msg and "'R'" in msg
    assert "NaN or inf" in msg and "frame 4, atom 2" in msg and "expected finite" in msg


def test_bad_second_file_leaves_no_half_written_data_set(tmp_path, snapshot, md17_npz):
    good, _, _ = md17_npz("md17_ethanol.npz")
    r = np.ones((6, 9, 3))
    r[5, 0, 0] = np.nan
    bad, _, _ = md17_npz("md17_broken.npz", R=r)
    msg = import_fails(tmp_path, snapshot, [good, bad], ImportConfig("md17", 0.5))
    assert str(bad) in msg and "expected finite" in msg


def test_atom_count_must_match_the_element_list(tmp_path, snapshot, md17_npz):
    path, _, _ = md17_npz(z=np.array([6, 8, 1, 1]), R=np.ones((5, 9, 3)))
    msg = import_fails(tmp_path, snapshot, [path], ImportConfig("md17", 0.5))
    assert str(path) in msg and "'R'" in msg
    assert "9 atoms per frame" in msg and "element list has 4 atoms" in msg


def test_velocities_must_match_the_positions(tmp_path, snapshot):
    path = tmp_path / "v.npz"
    np.savez(path, R=np.ones((5, 3, 3)), z=np.array([8, 1, 1]), V=np.ones((4, 3, 3)))
    msg = import_fails(tmp_path, snapshot, [path], ImportConfig("npz", 1.0))
    assert str(path) in msg and "'V'" in msg and "expected the positions' shape (5, 3, 3)" in msg


def test_missing_npz_key_lists_the_keys_found(tmp_path, snapshot, md17_npz):
    path = tmp_path / "md17_ethanol.npz"
    np.savez(path, positions_wrong=np.ones((5, 9, 3)), z=np.ones(9, dtype=int), E=np.zeros(5))
    msg = import_fails(tmp_path, snapshot, [path], ImportConfig("md17", 0.5))
    assert str(path) in msg and "expected key 'R'" in msg
    assert "found keys ['E', 'positions_wrong', 'z']" in msg


def test_revised_md17_file_imported_as_md17_is_pointed_to_rmd17(tmp_path, snapshot, rmd17_npz):
    path, _ = rmd17_npz([0, 1, 2, 3])
    msg = import_fails(tmp_path, snapshot, [path], ImportConfig("md17", 0.5))
    assert str(path) in msg and "expected key 'R'" in msg and "use format 'rmd17'" in msg
    assert "'coords'" in msg and "'old_indices'" in msg


def test_revised_md17_without_old_indices_is_refused(tmp_path, snapshot):
    path = tmp_path / "rmd17_x.npz"
    np.savez(path, coords=np.ones((4, 3, 3)), nuclear_charges=np.array([8, 1, 1]))
    msg = import_fails(tmp_path, snapshot, [path], ImportConfig("rmd17", 0.5))
    assert str(path) in msg and "expected key 'old_indices'" in msg and "found keys ['coords', 'nuclear_charges']" in msg


def test_revised_md17_repeated_old_index_is_refused(tmp_path, snapshot):
    path = tmp_path / "rmd17_x.npz"
    np.savez(path, coords=np.ones((4, 3, 3)), nuclear_charges=np.array([8, 1, 1]),
             old_indices=np.array([7, 3, 4, 3]))
    msg = import_fails(tmp_path, snapshot, [path], ImportConfig("rmd17", 0.5))
    assert str(path) in msg and "'old_indices'" in msg and "frames at 1.5 fs and 1.5 fs" in msg
    assert "expected each step once" in msg


def test_frame_times_off_the_time_step_grid_are_refused(tmp_path, snapshot):
    path = tmp_path / "t.npz"
    np.savez(path, R=np.ones((3, 3, 3)), z=np.array([8, 1, 1]), t_fs=np.array([0.0, 1.0, 1.7]))
    msg = import_fails(tmp_path, snapshot, [path], ImportConfig("npz", 1.0))
    assert str(path) in msg and "'t_fs'" in msg and "frames at 1.0 fs and 1.7 fs" in msg
    assert "on the dt_fs grid" in msg


@pytest.mark.parametrize("bad_z", [0, 119, -1])
def test_element_numbers_must_be_1_to_118(tmp_path, snapshot, md17_npz, bad_z):
    z = np.array([6, 6, 8, 1, 1, bad_z, 1, 1, 1])
    path, _, _ = md17_npz(z=z)
    msg = import_fails(tmp_path, snapshot, [path], ImportConfig("md17", 0.5))
    assert str(path) in msg and "'z'" in msg
    assert f"atomic number {bad_z} at atom 5" in msg and "expected 1–118" in msg


def test_not_an_npz_file_is_refused(tmp_path, snapshot):
    path = tmp_path / "md17_garbage.npz"
    path.write_bytes(b"\x00garbage" * 100)
    msg = import_fails(tmp_path, snapshot, [path], ImportConfig("md17", 0.5))
    assert str(path) in msg and "not an .npz archive" in msg and "expected a zip file" in msg


def test_ase_frames_must_have_the_same_atoms(tmp_path, snapshot):
    import ase.io
    from ase import Atoms

    path = tmp_path / "mixed.extxyz"
    ase.io.write(str(path), [Atoms("H2O", positions=np.eye(3)), Atoms("H2O", positions=np.eye(3)),
                             Atoms("CO", positions=np.eye(3)[:2])], format="extxyz")
    msg = import_fails(tmp_path, snapshot, [path], ImportConfig("ase", 1.0))
    assert str(path) in msg and "frame 2 has atoms CO" in msg and "expected the same atom list" in msg


def test_duplicate_molecule_ids_are_refused(tmp_path, snapshot, md17_npz):
    a, _, _ = md17_npz("md17_aspirin.npz")
    b, _, _ = md17_npz("aspirin_dft.npz", seed=3)
    msg = import_fails(tmp_path, snapshot, [a, b], ImportConfig("md17", 0.5))
    assert "duplicate molecule id 'aspirin'" in msg and str(a) in msg and str(b) in msg


def test_non_empty_destination_is_not_overwritten(tmp_path, snapshot, md17_npz):
    path, _, _ = md17_npz()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as err:
        import_dataset([path], tmp_path / "out", ImportConfig("md17", 0.5))
    assert str(tmp_path / "out") in str(err.value) and "--overwrite" in str(err.value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("dt", [0.0, -0.5, float("nan")])
def test_time_step_must_be_positive(dt):
    with pytest.raises(ConfigError, match="dt_fs: expected a positive time step in fs"):
        ImportConfig("md17", dt)


def test_time_step_in_file_must_agree_with_the_requested_one(tmp_path, snapshot):
    path = tmp_path / "t.npz"
    np.savez(path, R=np.ones((5, 3, 3)), z=np.array([8, 1, 1]), dt_fs=np.float64(2.0))
    msg = import_fails(tmp_path, snapshot, [path], ImportConfig("npz", 0.5))
    assert str(path) in msg and "'dt_fs' says [2.0] fs" in msg and "asks for dt 0.5 fs" in msg


# --- trajectories too short for the horizon -------------------------------------------------


def short_trajectory(n_frames: int = 20) -> Trajectory:
    pos = np.random.default_rng(0).normal(size=(n_frames, 4, 3)).astype(np.float32)
    return Trajectory("ethanol", np.array([6, 6, 8, 1]), 1.0, 0.0, pos, np.zeros_like(pos))


def test_sample_windows_refuses_a_trajectory_shorter_than_the_horizon():
    cfg = DataConfig(horizon="fixed", horizon_fs=50.0, num_lags=8, rwpe_k=0, context_atoms="heavy")
    with pytest.raises(DataError) as err:
        sample_windows(short_trajectory(20), 4, cfg, np.random.default_rng(0))
    msg = str(err.value)
    assert "molecule 'ethanol'" in msg and "20 frames" in msg and "horizon of 50 frames" in msg
    assert "need at least 51" in msg


def test_egno_start_frames_refuse_a_trajectory_shorter_than_the_margins():
    with pytest.raises(DataError) as err:
        egno_start_frames(15000, where="molecule 'aspirin'")
    msg = str(err.value)
    assert "molecule 'aspirin'" in msg and "15000 frames" in msg and "margin of 10000" in msg


def test_importer_min_frames_refuses_a_trajectory_shorter_than_the_horizon(tmp_path, snapshot, md17_npz):
    path, _, _ = md17_npz(n_frames=40)
    msg = import_fails(tmp_path, snapshot, [path], ImportConfig("md17", 0.5, min_frames=100))
    assert str(path) in msg and "molecule 'ethanol'" in msg
    assert "39 frames" in msg and "expected at least 100 (min_frames)" in msg


# --- broken Parquet -------------------------------------------------------------------------


def shard_of(root: Path) -> Path:
    return sorted((root / "frames").glob("*.parquet"))[0]


def test_truncated_parquet_shard_is_named(tiny_dataset):
    shard = shard_of(tiny_dataset)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    for read in (lambda: read_segments(shard), lambda: validate_dataset(tiny_dataset),
                 lambda: load_trajectories(tiny_dataset)):
        with pytest.raises(DataError) as err:
            read()
        assert str(shard) in str(err.value) and "not a readable Parquet file" in str(err.value)
    assert shard.read_bytes() == data[: len(data) // 2]  # readers never modify their input


def test_corrupt_parquet_shard_is_named(tiny_dataset):
    shard = shard_of(tiny_dataset)
    shard.write_bytes(np.random.default_rng(0).bytes(4096))
    for read in (lambda: read_segments(shard), lambda: validate_dataset(tiny_dataset)):
        with pytest.raises(DataError) as err:
            read()
        assert str(shard) in str(err.value) and "not a readable Parquet file" in str(err.value)


def test_corrupt_molecules_file_is_named(tiny_dataset):
    path = tiny_dataset / "molecules.parquet"
    path.write_bytes(b"PAR1" + b"\xff" * 64 + b"PAR1")
    with pytest.raises(DataError) as err:
        validate_dataset(tiny_dataset)
    assert str(path) in str(err.value) and "not a readable Parquet file" in str(err.value)


def rewrite_column(path: Path, name: str, convert) -> None:
    table = pq.read_table(path)
    i = table.column_names.index(name)
    pq.write_table(table.set_column(i, name, convert(table.column(name))), path)


def test_positions_stored_as_float64_are_refused(tiny_dataset):
    shard = shard_of(tiny_dataset)
    rewrite_column(shard, "positions", lambda c: c.cast(pa.list_(pa.float64())))
    for read in (lambda: read_segments(shard), lambda: validate_dataset(tiny_dataset)):
        with pytest.raises(DataError) as err:
            read()
        msg = str(err.value)
        assert str(shard) in msg and "column 'positions' has type list<element: double>" in msg
        assert "expected list<" in msg and "float>" in msg


def test_n_atoms_stored_as_string_is_refused(tiny_dataset):
    shard = shard_of(tiny_dataset)
    rewrite_column(shard, "n_atoms", lambda c: c.cast(pa.string()))
    with pytest.raises(DataError) as err:
        validate_dataset(tiny_dataset)
    msg = str(err.value)
    assert str(shard) in msg and "column 'n_atoms' has type string, expected int32" in msg


def test_positions_whose_length_disagrees_with_n_atoms_are_refused(tiny_dataset):
    shard = shard_of(tiny_dataset)
    rewrite_column(shard, "n_atoms", lambda c: pa.array([8] * len(c), pa.int32()))
    with pytest.raises(DataError) as err:
        read_segments(shard)
    msg = str(err.value)
    assert str(shard) in msg and "molecule 'ethanol' segment 0" in msg
    assert "positions hold 810 values, expected n_frames*n_atoms*3 = 720" in msg


# --- configs --------------------------------------------------------------------------------


def test_config_value_of_the_wrong_type_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  num_layers: six\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "'model.num_layers'" in msg and "expected int" in msg and "'six'" in msg


def test_unknown_config_key_suggests_the_closest_valid_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  num_layer: 6\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "unknown config key 'model.num_layer'" in msg
    assert "did you mean model.num_layers" in msg


# --- exporting ------------------------------------------------------------------------------


def test_export_of_an_unknown_molecule_names_the_data_set(tiny_dataset, tmp_path, snapshot):
    from atomray.data.exporters import export_molecule

    before = snapshot(tmp_path)
    with pytest.raises(DataError) as err:
        export_molecule(tiny_dataset, "aspirin", tmp_path / "aspirin.npz")
    msg = str(err.value)
    assert str(tiny_dataset / "molecules.parquet") in msg and "no molecule 'aspirin'" in msg and "ethanol" in msg
    assert snapshot(tmp_path) == before


def test_export_does_not_overwrite_an_existing_file(tiny_dataset, tmp_path, snapshot):
    from atomray.data.exporters import export_molecule

    target = tmp_path / "ethanol.extxyz"
    target.write_text("keep me")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as err:
        export_molecule(tiny_dataset, "ethanol", target)
    assert str(target) in str(err.value) and "--overwrite" in str(err.value)
    with pytest.raises(ConfigError, match="unknown suffix '.pdb'; expected .npz"):
        export_molecule(tiny_dataset, "ethanol", tmp_path / "ethanol.pdb")
    assert snapshot(tmp_path) == before
