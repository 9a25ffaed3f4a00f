"""Shared pieces of the prior tests (tests/priors): small real molecules, their GFN2-xTB minima,
tg80-mini trajectories and windows, per-frame physics built in memory, an empty basin store.

Everything here is real RDKit / tblite / data; results are cached per test session and handed
out as copies, so a test may change what it gets.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
TG80 = ROOT / "data" / "tg80-mini"


@functools.cache
def _conformer(smiles: str) -> tuple[np.ndarray, np.ndarray]:
    from atomray.tg80.engines import embed, molecule_with_hydrogens

    mol = molecule_with_hydrogens(smiles, smiles)
    return np.array([a.GetAtomicNum() for a in mol.GetAtoms()]), embed(mol, 0, smiles)


def conformer(smiles: str) -> tuple[np.ndarray, np.ndarray]:
    """(z (N,), x (N, 3) Å) of an embedded (MMFF-cleaned) conformer, hydrogens included."""
    z, x = _conformer(smiles)
    return z.copy(), x.copy()


@functools.cache
def _minimum(smiles: str) -> tuple[np.ndarray, np.ndarray]:
    from atomray.priors.minima import gfn2_minimum, mmff_minimum

    z, x = _conformer(smiles)
    xm = gfn2_minimum(mmff_minimum(x, z), z)
    assert xm is not None
    return z, xm - xm.mean(0)


def minimum(smiles: str) -> tuple[np.ndarray, np.ndarray]:
    """(z (N,), the GFN2-xTB minimum (N, 3) Å, centred): MMFF94's minimum refined with GFN2-xTB."""
    z, xm = _minimum(smiles)
    return z.copy(), xm.copy()


@functools.cache
def _trajectory(molecule_id: str):
    from atomray.data.pipeline import molecule_files, molecule_segments

    return molecule_segments(TG80, molecule_id, molecule_files(TG80, [molecule_id])[molecule_id])[0]


def trajectory(molecule_id: str):
    """The first frames row of a tg80-mini molecule (`atomray.data.frames.Trajectory`, read-only arrays)."""
    return _trajectory(molecule_id)


def data_config(context_atoms: str = "all"):
    """jobs/configs/pretrain.yaml's data settings, with `context_atoms` (heavy: hydrogens are context atoms)."""
    from atomray.config import load_config

    cfg = load_config(ROOT / "jobs" / "configs" / "pretrain.yaml")
    score = "heavy" if context_atoms == "heavy" else cfg.data.score_atoms
    return replace(cfg.data, context_atoms=context_atoms, score_atoms=score)


@functools.cache
def _windows(molecule_ids: tuple[str, ...], n: int, context_atoms: str, seed: int,
             frame_fraction: tuple[float, float]) -> dict[str, np.ndarray]:
    from atomray.data.pipeline import fixed_windows

    return fixed_windows(TG80, list(molecule_ids), n, data_config(context_atoms), seed, frame_fraction)


def windows(molecule_ids: Sequence[str], n: int, context_atoms: str = "all", seed: int = 0,
            frame_fraction: tuple[float, float] = (0.0, 1.0)) -> dict[str, np.ndarray]:
    """`fixed_windows` of tg80-mini (a padded numpy batch, a fresh copy)."""
    return {k: v.copy() for k, v in _windows(tuple(molecule_ids), n, context_atoms, seed, frame_fraction).items()}


def frame_physics(batch: dict[str, np.ndarray], from_states: bool = False):
    """`FramePhysics` (in memory, root tg80-mini) of exactly the start frames of `batch`'s windows:
    for each molecule, `compute_molecule` meets them in the order the windows hold them — the
    order in which `StateBasins` meets the windows' states — and every other frame of the row
    gets basin -1 (none), so a lookup of the wrong frame reads no basin. The frames are the
    data set's own (lab frame, float32), or with `from_states` the windows' start states
    (centred; model and context atoms put back in the molecule's order): then the basins are
    opened by the very states `StateBasins` meets."""
    from atomray.priors.frames import FramePhysics, compute_molecule
    from atomray.priors.paths import window_order

    molecules = {}
    ids = np.asarray(batch["molecule_id"], dtype=object)
    for mid in dict.fromkeys(ids):
        rows = np.flatnonzero(ids == mid)
        traj = trajectory(mid)
        assert set(batch["segment"][rows]) == {traj.segment}
        frames = np.asarray(batch["frame"][rows])  # frames of the row: the trajectory starts at first_frame
        if from_states:
            k, j = int(batch["mask"][rows[0]].sum()), int((batch["ctx_mass"][rows[0]] > 0).sum())
            x = np.concatenate([batch["x0"][rows, :k], batch["ctx_x0"][rows, :j]], 1).astype(np.float64)
            positions = np.empty_like(x)
            positions[:, window_order(traj.atomic_numbers, k, k + j)] = x
        else:
            positions = traj.positions[frames - traj.first_frame].astype(np.float64)
        physics = compute_molecule(mid, traj.atomic_numbers, [(traj.segment, positions)])
        full = np.full(traj.first_frame + traj.n_frames, -1, np.int32)
        full[frames] = physics.frames[traj.segment]
        physics.frames[traj.segment] = full
        molecules[str(mid)] = physics
    return FramePhysics(str(TG80), molecules)


def fresh_store(monkeypatch, folder: Path) -> Path:
    """An empty machine basin store at `folder` for this test: ATOMRAY_CACHE_DIR and the
    process's machine finders (`atomray.priors.minima._MACHINE`) reset."""
    from atomray.priors import minima, store

    monkeypatch.setenv(store.ENV, str(folder))
    monkeypatch.setattr(minima, "_MACHINE", {})
    return folder


def as_torch(batch: dict[str, Any], dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Numpy batch → torch tensors (object arrays kept as they are); floating arrays to `dtype` if given."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray) and v.dtype != object:
            t = torch.from_numpy(np.ascontiguousarray(v))
            out[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        else:
            out[k] = v
    return out


def as_numpy(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
