"""Zero-shot prediction of a new molecule's trajectory with a trained operator.

    state = state_from_smiles("CC(=O)Nc1ccc(O)cc1", temperature_k=300, seed=0)   # or state_from_file
    frames = predict(model, cfg, state, lags_fs=[10, 50, 100, 500, 1000], elements=seen)
    write_extxyz("paracetamol.extxyz", frames)

The initial state is the molecule's atoms with positions (Å) and velocities (Å/fs); the
model sees the atoms it was trained on (`data.context_atoms`: heavy atoms, or every atom),
centred on their centroid, with RWPE from the 1.6 Å radius graph, exactly as the window
sampler makes them. Lags may be
any number and any spacing (T-RoPE takes real times; they are fed P = data.num_lags at a
time), and the output is in the input's coordinate frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from atomray.config import RunConfig
from atomray.data.frames import DataError, check_atomic_numbers, check_coordinates

@dataclass
class InitialState:
    """One molecular state: atomic numbers (N,), positions (N,3) Å, velocities (N,3) Å/fs."""

    name: str
    atomic_numbers: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray


@dataclass
class PredictedFrames:
    """The model's prediction: the atoms it predicts (heavy atoms, or every atom) at each lag."""

    name: str
    atomic_numbers: np.ndarray  # (N,)
    lags_fs: np.ndarray  # (P,)
    positions: np.ndarray  # (P, N, 3) Å, in the input's frame
    initial_positions: np.ndarray  # (N, 3) Å


def state_from_smiles(smiles: str, temperature_k: float = 300.0, seed: int = 0) -> InitialState:
    """3-D structure of a SMILES (RDKit ETKDG, seeded, then MMFF94 relaxation), velocities
    drawn from Maxwell–Boltzmann at `temperature_k`."""
    from rdkit import Chem

    from atomray.tg80.dynamics import maxwell_boltzmann
    from atomray.tg80.engines import EngineError, embed, molecule_with_hydrogens

    if not smiles or Chem.MolFromSmiles(smiles) is None:
        raise DataError(f"SMILES {smiles!r} is not a valid molecule")
    mol = molecule_with_hydrogens(smiles, f"SMILES {smiles!r}")
    try:
        pos = embed(mol, seed, f"SMILES {smiles!r}")
    except EngineError as err:
        raise DataError(str(err)) from None
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    masses = np.array([a.GetMass() for a in mol.GetAtoms()])
    vel = maxwell_boltzmann(masses, temperature_k, np.random.default_rng(seed))
    return InitialState(smiles, z, pos, vel)


def state_from_file(path: str | Path, temperature_k: float = 300.0, seed: int = 0, index: int = 0) -> InitialState:
    """A structure any `ase.io.read` reads (extxyz, .traj, .xyz, ...), frame `index`.
    Velocities come from the file when it has them (ASE units, converted to Å/fs), else
    they are drawn at `temperature_k`."""
    import ase.io
    from ase import units

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        atoms = ase.io.read(path, index=index)
    except Exception as err:  # ase raises many types for unreadable input
        raise DataError(f"{path}: ase cannot read it as a structure ({err})") from None
    z = check_atomic_numbers(atoms.get_atomic_numbers(), str(path))
    pos = check_coordinates(atoms.get_positions()[None], len(z), str(path))[0].astype(np.float64)
    has_v = atoms.has("momenta") and np.any(atoms.get_momenta() != 0)
    if has_v:
        vel = atoms.get_velocities() * units.fs
    else:
        from atomray.tg80.dynamics import maxwell_boltzmann

        vel = maxwell_boltzmann(atoms.get_masses(), temperature_k, np.random.default_rng(seed))
    return InitialState(path.stem, z, pos, vel)


def model_atoms(cfg: RunConfig, z: np.ndarray) -> np.ndarray:
    """Indices of the atoms the model predicts (the sampler's selection)."""
    from atomray.data.windows import atom_selection

    return atom_selection(z, cfg.data.context_atoms)


def predict(model, cfg: RunConfig, state: InitialState, lags_fs: Sequence[float],
            elements: Sequence[int] = ()) -> PredictedFrames:
    """Predict the positions of `state`'s model atoms at `lags_fs` (fs after the state)."""
    import torch

    from atomray.data.windows import rwpe_of_frames

    lags = np.asarray(lags_fs, dtype=np.float64)
    if lags.ndim != 1 or len(lags) == 0 or not np.all(np.isfinite(lags)) or np.any(lags <= 0):
        raise DataError(f"lags must be a non-empty list of positive times in fs, found {list(lags_fs)}")
    keep = model_atoms(cfg, state.atomic_numbers)
    z = state.atomic_numbers[keep]
    if cfg.model.max_atomic_number and z.max() > cfg.model.max_atomic_number:
        raise DataError(f"{state.name}: atomic number {int(z.max())} exceeds the model's max_atomic_number "
                        f"{cfg.model.max_atomic_number}")
    from atomray.evaluate import check_elements

    check_elements(z, elements, state.name)
    x = state.positions[keep].astype(np.float32)
    origin = x.mean(0)
    x0 = (x - origin)[None]  # (1, N, 3)
    v0 = state.velocities[keep].astype(np.float32)[None]
    rwpe = rwpe_of_frames(x0, cfg.data.rwpe_k, cfg.data.radius) if cfg.data.rwpe_k > 0 else None
    # The models take P = cfg.data.num_lags lags per sample; any other number of lags is cut
    # into groups of P (the last group padded by repeating its final lag), one sample each.
    p = cfg.data.num_lags
    groups = -(-len(lags) // p)
    padded = np.concatenate([lags, np.full(groups * p - len(lags), lags[-1])]).reshape(groups, p)
    b, n = groups, len(z)
    with torch.no_grad():
        out = model(torch.from_numpy(np.repeat(x0, b, 0)), torch.from_numpy(np.repeat(v0, b, 0)),
                    torch.from_numpy(np.repeat(z[None].astype(np.int64), b, 0)),
                    torch.from_numpy(padded.astype(np.float32)), torch.ones(b, n, dtype=torch.bool),
                    None if rwpe is None else torch.from_numpy(np.repeat(rwpe, b, 0)))
    positions = out.reshape(b * p, n, 3)[: len(lags)].double().numpy() + origin  # (len(lags), N, 3)
    return PredictedFrames(state.name, z, lags, positions, x.astype(np.float64))


def write_extxyz(path: str | Path, frames: PredictedFrames) -> Path:
    """Write the predicted frames (one per lag, `lag_fs` in each frame's info) atomically."""
    return write_frames(path, frames.atomic_numbers, frames.positions,
                        [{"lag_fs": float(t), "molecule": frames.name} for t in frames.lags_fs])


def write_frames(path: str | Path, atomic_numbers: np.ndarray, positions: np.ndarray, infos: Sequence[dict]) -> Path:
    """An extxyz trajectory of `positions` (T, N, 3) Å with one info dict per frame, written
    under a temporary name and renamed (no half-written file)."""
    import os

    import ase.io
    from ase import Atoms

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Atoms(numbers=atomic_numbers, positions=p, info=info) for p, info in zip(positions, infos)]
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        ase.io.write(tmp, images, format="extxyz")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
