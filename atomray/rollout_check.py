"""Rollouts against reference MD: stability, structure and temperature, per molecule.

    refs = {m: dataset_reference("data/tg80-mini", m, cfg) for m in molecules}   # the data set's own MD
    rows = check_rollouts(traj, refs, out="rollouts/")                            # one row per molecule

The reference of a molecule is its own trajectory in the data set (the equilibrium
distributions at the data set's temperature), or fresh MD from the rollout's start state
through the tg80 engines (`fresh_reference`: GFN2-xTB by default, MMFF in tests) when the
state does not come from a data set. Both are restricted to the atoms the model rolls out.
Per molecule: the stability coefficient of its rollouts and the mean time to first failure,
Wasserstein-1 distances of bond lengths, bond angles, proper dihedrals and the radius of
gyration between all its rollout frames and the reference, and the mean kinetic temperature
of the rollouts' step velocities beside the reference's; one plot per molecule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from atomray.config import RunConfig
from atomray.predict import InitialState, model_atoms
from atomray.rollout import Rollout


@dataclass
class Reference:
    """Reference MD of one molecule: positions / velocities (T, n, 3) of the rolled-out atoms."""

    source: str
    positions: np.ndarray
    velocities: np.ndarray
    dt_fs: float


def dataset_reference(root: str, molecule_id: str, cfg: RunConfig) -> Reference:
    """The molecule's trajectory in a data set (every piece), the model's atoms only."""
    from atomray.data.pipeline import molecule_files, molecule_segments

    pieces = molecule_segments(root, molecule_id, molecule_files(root, [molecule_id]).get(molecule_id, []))
    keep = model_atoms(cfg, pieces[0].atomic_numbers)
    return Reference(f"{root} ({molecule_id})", np.concatenate([p.positions[:, keep] for p in pieces]).astype(np.float64),
                     np.concatenate([p.velocities[:, keep] for p in pieces]).astype(np.float64), pieces[0].dt_fs)


def molecule_of_state(state: InitialState, smiles: str = ""):
    """The RDKit molecule (explicit hydrogens) the tg80 engines need for `state`: from its SMILES
    (a `state_from_smiles` state has the same atoms in the same order), else with bonds and
    bond orders perceived from the state's geometry (neutral; RDKit's rdDetermineBonds)."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    from atomray.tg80.engines import molecule_with_hydrogens

    if smiles:
        mol = molecule_with_hydrogens(smiles, f"SMILES {smiles!r}")
    else:
        lines = [str(len(state.atomic_numbers)), state.name] + [
            f"{Chem.GetPeriodicTable().GetElementSymbol(int(z))} {x:.8f} {y:.8f} {w:.8f}"
            for z, (x, y, w) in zip(state.atomic_numbers, state.positions)]
        mol = Chem.MolFromXYZBlock("\n".join(lines) + "\n")
        try:
            rdDetermineBonds.DetermineBonds(mol, charge=0)
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"{state.name}: bonds cannot be perceived from the structure ({err})") from None
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    if not np.array_equal(z, state.atomic_numbers):
        raise ValueError(f"{state.name}: the state's atoms are not those of SMILES {smiles!r}")
    return mol


def fresh_reference(state: InitialState, smiles: str, cfg: RunConfig, total_fs: float, engine: str = "gfn2",
                    dt_fs: float = 1.0, every: int = 10) -> Reference:
    """NVE MD through a tg80 engine from exactly `state` for `total_fs`, every `every`-th step
    kept; the model's atoms only. `smiles` names the molecule (else its bonds are perceived
    from the state's geometry, `molecule_of_state`)."""
    from atomray.tg80.dynamics import MDConfig, MDState, run_steps
    from atomray.tg80.engines import make_engine

    mol = molecule_of_state(state, smiles)
    z = state.atomic_numbers
    masses = np.array([a.GetMass() for a in mol.GetAtoms()])
    md = make_engine(engine, mol, state.name)
    energy, forces = md.forces(state.positions)
    rng_state = np.random.Generator(np.random.PCG64(0)).bit_generator.state
    md_state = MDState(state.positions.copy(), state.velocities.copy(), forces, energy, 0, rng_state)
    cfg_md = MDConfig(dt_fs=dt_fs)
    pos, vel, _ = run_steps(md_state, md, masses, cfg_md, int(round(total_fs / dt_fs)) + 1, "nve", record=True)
    keep = model_atoms(cfg, z)
    return Reference(f"{engine} NVE from {state.name}", pos[::every][:, keep], vel[::every][:, keep], dt_fs * every)


def check_rollouts(traj: Rollout, references: Mapping[str, Reference], molecule_of: list[str],
                   out: str | Path | None = None) -> list[dict]:
    """One row per molecule: its rollouts (indices i with molecule_of[i] == molecule) against
    its reference. With `out`, one structure plot per molecule is written there
    (<molecule>.png) and its path put in the row."""
    from atomray import structure

    rows = []
    for molecule in dict.fromkeys(molecule_of):
        idx = [i for i, m in enumerate(molecule_of) if m == molecule]
        z, ref = traj.atomic_numbers[idx[0]], references[molecule]
        bonds = structure.bonds_from_geometry(z, traj.positions[idx[0]][0])
        dt = np.diff(traj.times_fs)
        summary = structure.stability_coefficient([traj.positions[i] for i in idx], bonds, dt_fs=float(dt.mean()))
        pooled = np.concatenate([traj.positions[i][1:] for i in idx])
        pooled = pooled[np.isfinite(pooled).all((1, 2))]  # frames of molecules that flew apart are NaN
        nan = {k: float("nan") for k in ("bond_length_a", "bond_angle_deg", "dihedral_deg", "radius_of_gyration_a")}
        distances = structure.structure_distances(pooled, ref.positions, z, bonds) if len(pooled) else nan
        t_roll = np.concatenate([structure.temperature(np.nan_to_num(traj.step_velocities[i][1:]), z)[
            np.isfinite(traj.step_velocities[i][1:]).all((1, 2))] for i in idx])
        t_ref = structure.temperature(ref.velocities, z)
        row = {"molecule": molecule, "rollouts": len(idx), "rollout_ps": float(traj.times_fs[-1]) / 1000,
               "stability": summary.coefficient, "mean_time_to_failure_ps": summary.mean_time_to_failure_fs / 1000,
               **{f"w1_{k}": v for k, v in distances.items()},
               "temperature_k": float(t_roll.mean()) if len(t_roll) else float("nan"), "reference_temperature_k": float(t_ref.mean()),
               "reference": ref.source}
        if out is not None:
            # the first rollout (a trace over time needs one trajectory) against the reference
            row["plot"] = str(structure.plot_structure(
                traj.positions[idx[0]], ref.positions, z, Path(out) / f"{_safe(molecule)}.png", bonds=bonds,
                dt_fs=float(dt.mean()), reference_dt_fs=ref.dt_fs,
                title=f"{molecule}: rollout 1 of {len(idx)} ({traj.times_fs[-1] / 1000:g} ps) vs {ref.source}"))
        rows.append(row)
    return rows


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
