"""Exporters: one molecule of a TG80-frames data set -> an sGDML-style npz or any file ASE
writes (extxyz, .traj), so that other MD / ML tools can read atomray data.

    export_molecule("data/md17", "aspirin", "aspirin.npz")      # by suffix: .npz
    export_molecule("data/md17", "aspirin", "aspirin.extxyz")   # .extxyz / .xyz / .traj via ASE

npz keys: `R` (F, N, 3) float32 Å, `z` (N,) uint8, `V` (F, N, 3) float32 Å/fs, `dt_fs` (),
`t_fs` (F,) the time of every frame (gaps between contiguous pieces stay visible), `name`,
`theory`. ASE files carry positions (Å), velocities as ASE momenta (ASE velocity unit: Å per
1/ase.units.fs fs), and `time_fs`, `dt_fs`, `molecule_id` in every frame's info.

Both are read back by `atomray.data.importers` (format "npz" / "ase") to the same frames:
import(export(x)) == x (exactly for npz; to the 1e-8 text precision of extxyz).
Files are written under a temporary name in the destination directory and renamed.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atomray.config import ConfigError
from atomray.data.frames import DataError, MOLECULES_FILE
from atomray.data.dataset import load_trajectories, read_molecules
from atomray.outputs import check_output_file

ASE_FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".traj": "traj"}


@dataclass
class ExportedTrajectory:
    """One molecule's frames in file order: all contiguous pieces, concatenated."""

    molecule_id: str
    atomic_numbers: np.ndarray  # (N,) int64
    dt_fs: float
    theory: str
    times_fs: np.ndarray  # (F,) float64, fs
    positions: np.ndarray  # (F, N, 3) float32, Å
    velocities: np.ndarray  # (F, N, 3) float32, Å/fs


def load_molecule(root: str | Path, molecule_id: str | None = None) -> ExportedTrajectory:
    """A molecule's whole trajectory from a data set (`None`: the data set's only molecule)."""
    table = read_molecules(root)
    ids = table.column("molecule_id").to_pylist()
    if molecule_id is None:
        if len(ids) != 1:
            raise ConfigError(f"{Path(root) / MOLECULES_FILE}: holds {len(ids)} molecules {ids[:10]}; "
                              f"expected a molecule id to export")
        molecule_id = ids[0]
    if molecule_id not in ids:
        raise DataError(f"{Path(root) / MOLECULES_FILE}: no molecule {molecule_id!r}; molecules: {ids[:20]}")
    pieces = load_trajectories(root, [molecule_id])[molecule_id]
    row = ids.index(molecule_id)
    times = np.concatenate([p.t0_fs + np.arange(p.n_frames) * p.dt_fs for p in pieces])
    return ExportedTrajectory(
        molecule_id=molecule_id,
        atomic_numbers=np.asarray(pieces[0].atomic_numbers, np.int64),
        dt_fs=float(pieces[0].dt_fs),
        theory=table.column("theory")[row].as_py() or "",
        times_fs=times,
        positions=np.concatenate([p.positions for p in pieces]),
        velocities=np.concatenate([p.velocities for p in pieces]),
    )


def _temporary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def _check_target(path: Path, overwrite: bool) -> None:
    check_output_file(path)  # an unwritable place fails before the data set is read
    if path.exists() and not overwrite:
        raise ConfigError(f"output {path}: file exists; expected a new path (or pass --overwrite)")


def export_npz(traj: ExportedTrajectory, path: str | Path, overwrite: bool = False) -> Path:
    """Write `traj` as an sGDML-style npz (keys in the module docstring); returns the path."""
    path = Path(path)
    _check_target(path, overwrite)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as fh:  # a file object: numpy would append ".npz" to a name
            np.savez(
                fh,
                R=traj.positions.astype(np.float32),
                z=traj.atomic_numbers.astype(np.uint8),
                V=traj.velocities.astype(np.float32),
                dt_fs=np.float64(traj.dt_fs),
                t_fs=traj.times_fs.astype(np.float64),
                name=np.str_(traj.molecule_id),
                theory=np.str_(traj.theory),
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_ase(traj: ExportedTrajectory, path: str | Path, overwrite: bool = False) -> Path:
    """Write `traj` with ASE (.extxyz / .xyz as extxyz, .traj); velocities in ASE units."""
    import ase.io
    import ase.units
    from ase import Atoms

    path = Path(path)
    fmt = ASE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"output {path}: unknown suffix {path.suffix!r}; expected one of "
                          f"{', '.join(ASE_FORMATS)} or .npz")
    _check_target(path, overwrite)
    images = []
    for t, pos, vel in zip(traj.times_fs, traj.positions, traj.velocities):
        atoms = Atoms(numbers=traj.atomic_numbers, positions=pos.astype(np.float64))
        atoms.set_velocities(vel.astype(np.float64) / ase.units.fs)  # Å/fs -> ASE units
        atoms.info.update(time_fs=float(t), dt_fs=traj.dt_fs, molecule_id=traj.molecule_id)
        images.append(atoms)
    tmp = _temporary(path)
    try:
        ase.io.write(str(tmp), images, format=fmt)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_molecule(root: str | Path, molecule_id: str | None, path: str | Path,
                    overwrite: bool = False) -> Path:
    """Export one molecule of the data set at `root` to `path`; the suffix picks the format
    (.npz: sGDML-style npz; .extxyz / .xyz / .traj: ASE)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != ".npz" and suffix not in ASE_FORMATS:
        raise ConfigError(f"output {path}: unknown suffix {path.suffix!r}; expected .npz or one of "
                          f"{', '.join(ASE_FORMATS)}")
    _check_target(path, overwrite)
    traj = load_molecule(root, molecule_id)
    if suffix == ".npz":
        return export_npz(traj, path, overwrite)
    return export_ase(traj, path, overwrite)
