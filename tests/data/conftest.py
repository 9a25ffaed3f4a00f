"""Fixtures for the data tests: small synthetic MD files written into tmp_path.

Nothing is downloaded. Trajectories are smooth vibrations of an ethanol-like geometry
(9 atoms, 3 heavy) so finite differences and round trips have real numbers to check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from atomray.data.frames import Molecule, write_dataset

ETHANOL_Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1], dtype=np.uint8)
ETHANOL_XYZ = np.array(
    [
        [-0.75, 0.02, 0.00], [0.76, -0.03, 0.01], [1.21, 1.30, -0.02],
        [-1.14, -1.00, 0.02], [-1.12, 0.54, 0.88], [-1.13, 0.53, -0.88],
        [1.14, -0.55, 0.88], [1.15, -0.56, -0.88], [2.17, 1.28, -0.01],
    ]
)


def vibrating_positions(n_frames: int, dt_fs: float, z: np.ndarray = ETHANOL_Z, seed: int = 0) -> np.ndarray:
    """(n_frames, N, 3) float64 Å: equilibrium + per-coordinate sines (periods 10–40 fs)."""
    rng = np.random.default_rng(seed)
    n = len(z)
    base = ETHANOL_XYZ[:n] if n <= len(ETHANOL_XYZ) else rng.normal(scale=1.5, size=(n, 3))
    t = np.arange(n_frames)[:, None, None] * dt_fs
    omega = 2 * np.pi / rng.uniform(10.0, 40.0, size=(1, n, 3))
    phase = rng.uniform(0, 2 * np.pi, size=(1, n, 3))
    amp = np.where(np.asarray(z)[None, :, None] > 1, 0.03, 0.1)
    return base[None] + amp * np.sin(omega * t + phase) + 0.001 * t  # slow drift: no symmetry


@pytest.fixture
def md17_npz(tmp_path: Path) -> Callable[..., tuple[Path, np.ndarray, np.ndarray]]:
    """Factory: write an sGDML-style npz (R, z, E, F); returns (path, R, z)."""

    def make(name: str = "md17_ethanol.npz", n_frames: int = 40, dt_fs: float = 0.5,
             z: np.ndarray = ETHANOL_Z, seed: int = 0, **replace: np.ndarray) -> tuple[Path, np.ndarray, np.ndarray]:
        r = vibrating_positions(n_frames, dt_fs, z, seed)
        arrays = dict(R=r, z=np.asarray(z), E=np.zeros((n_frames, 1)), F=np.zeros_like(r),
                      theory=np.str_("PBE+TS"))
        arrays.update(replace)
        path = tmp_path / "inputs" / name
        path.parent.mkdir(exist_ok=True)
        np.savez(path, **arrays)
        return path, arrays["R"], arrays["z"]

    return make


@pytest.fixture
def rmd17_npz(tmp_path: Path) -> Callable[..., tuple[Path, np.ndarray]]:
    """Factory: a revised-MD17-style npz whose rows are the base trajectory's frames at
    `old_indices`, stored in shuffled order; returns (path, base trajectory)."""

    def make(old_indices: list[int], name: str = "rmd17_ethanol.npz", dt_fs: float = 0.5,
             seed: int = 1) -> tuple[Path, np.ndarray]:
        old = np.asarray(old_indices, dtype=np.int64)
        base = vibrating_positions(int(old.max()) + 1, dt_fs, seed=seed)
        order = np.random.default_rng(seed).permutation(len(old))
        path = tmp_path / "inputs" / name
        path.parent.mkdir(exist_ok=True)
        np.savez(path, coords=base[old[order]], nuclear_charges=ETHANOL_Z.astype(np.int64),
                 old_indices=old[order], energies=np.zeros(len(old)), forces=base[old[order]] * 0)
        return path, base

    return make


@pytest.fixture
def extxyz_file(tmp_path: Path) -> Callable[..., tuple[Path, np.ndarray, np.ndarray | None]]:
    """Factory: an extxyz trajectory written by ASE, optionally with velocities given in
    Å/fs (stored by ASE as momenta in ASE units); returns (path, positions, velocities)."""

    def make(name: str = "traj.extxyz", n_frames: int = 12, dt_fs: float = 1.0,
             with_velocities: bool = True) -> tuple[Path, np.ndarray, np.ndarray | None]:
        import ase.io
        import ase.units
        from ase import Atoms

        pos = vibrating_positions(n_frames, dt_fs, seed=2)
        vel = np.gradient(pos, dt_fs, axis=0) if with_velocities else None
        images = []
        for k in range(n_frames):
            atoms = Atoms(numbers=ETHANOL_Z, positions=pos[k])
            if vel is not None:
                atoms.set_velocities(vel[k] / ase.units.fs)
            images.append(atoms)
        path = tmp_path / "inputs" / name
        path.parent.mkdir(exist_ok=True)
        ase.io.write(str(path), images, format="extxyz")
        return path, pos, vel

    return make


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A real two-molecule data set (one shard each) written with `write_dataset`."""
    root = tmp_path / "dataset"
    items = []
    for k, name in enumerate(("ethanol", "ethanol_b")):
        pos = vibrating_positions(30, 1.0, seed=10 + k)
        items.append((Molecule(name, ETHANOL_Z, dt_fs=1.0, n_frames=0, source="test"), pos, None))
    write_dataset(root, items)
    return root


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, bytes | None]]:
    """snapshot(dir) -> {relative path: bytes (files) or None (dirs)} of everything below dir;
    equal snapshots before and after an operation mean nothing was written or left behind."""

    def take(root: Path) -> dict[str, bytes | None]:
        if not root.exists():
            return {}
        return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
                for p in sorted(root.rglob("*"))}

    return take
