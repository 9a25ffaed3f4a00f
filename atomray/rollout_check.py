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
of the rollouts' step velocities (after any thermostat: `temperature_k`; the model's own,
before it: `model_temperature_k`) beside the reference's, and the temperature of the internal
motion alone (`internal_temperature_k`, rotation removed: what a thermostat holds and what the
verdict judges) beside the reference's; one plot per molecule. Beside them, the same figures
of the prior alone rolled out from the same starts (`prior_*`, a `floor`): the floor a trained
model must beat, `behind_prior` the figures in which it does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from atomray.config import RunConfig
from atomray.predict import InitialState, model_atoms
from atomray.rollout import Rollout


@dataclass
class Reference:
    """Reference MD of one molecule: positions / velocities (T, n, 3) of the rolled-out atoms.
    `run_starts`: the first frame of each independent piece joined in it (a data set's
    segments, `pooled_md`'s runs), so that nothing reads the join as motion."""

    source: str
    positions: np.ndarray
    velocities: np.ndarray
    dt_fs: float
    run_starts: tuple[int, ...] = (0,)

    def runs(self) -> list[np.ndarray]:
        """The positions of each independent piece."""
        return np.split(self.positions, list(self.run_starts[1:]))

    @classmethod
    def joined(cls, source: str, pieces: list[tuple[np.ndarray, np.ndarray]], dt_fs: float) -> "Reference":
        """Independent pieces (positions, velocities) joined end to end, each one's start kept."""
        starts = tuple(int(k) for k in np.cumsum([0] + [len(x) for x, _ in pieces[:-1]]))
        return cls(source, np.concatenate([x for x, _ in pieces]), np.concatenate([v for _, v in pieces]), dt_fs,
                   starts)


def dataset_reference(root: str, molecule_id: str, cfg: RunConfig) -> Reference:
    """The molecule's trajectory in a data set (every piece), the model's atoms only."""
    from atomray.data.pipeline import molecule_files, molecule_segments

    pieces = molecule_segments(root, molecule_id, molecule_files(root, [molecule_id]).get(molecule_id, []))
    keep = model_atoms(cfg, pieces[0].atomic_numbers)
    return Reference.joined(f"{root} ({molecule_id})", [(p.positions[:, keep].astype(np.float64),
                                                         p.velocities[:, keep].astype(np.float64)) for p in pieces],
                            pieces[0].dt_fs)


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


def fresh_md(state: InitialState, smiles: str, total_fs: float, engine: str = "gfn2", dt_fs: float = 1.0,
             every: int = 10, equilibrate_fs: float = 0.0, temperature_k: float = 300.0,
             cache_dir: str | Path | None = None, progress: bool = False, ensemble: str = "nve",
             seed: int = 0, cached_only: bool = False) -> Reference | None:
    """MD of every atom through a tg80 engine for `total_fs`, every `every`-th step kept: NVE, or
    with `ensemble="nvt"` Langevin (BAOAB) at `temperature_k` with the TG80 builder's production
    friction (`atomray.tg80.dynamics.MDConfig.friction_per_fs`). One NVE trajectory of a small
    molecule keeps the total energy it started with, and so a mean temperature of its own: the
    cached 100-ps GFN2-xTB references of 2026-12-06 run at internal temperatures of 238–343 K
    after 1 ps of Langevin at 300 K (docs/experiments.md), while an NVT rollout is held at 300 K.
    NVT MD samples the distributions at `temperature_k` that such a rollout is judged against.
    `smiles` names the molecule (else its bonds are perceived from the state's geometry,
    `molecule_of_state`). Without equilibration the MD starts from exactly `state`. With
    `equilibrate_fs` > 0 it starts where the TG80 builder's production does
    (`atomray.tg80.dynamics.prepare_state`): the state's structure relaxed, Maxwell–Boltzmann
    velocities at `temperature_k`, `equilibrate_fs` of Langevin dynamics, the centre-of-mass
    velocity removed. Started from a relaxed structure at T, NVE MD equilibrates near T/2 (half
    the kinetic energy goes into the potential): a fresh --smiles reference without
    equilibration ran at 184 K for a 300 K draw (acetylacetone, 2026-12-06).

    `cache_dir`: the MD is deterministic in its inputs (the start state, `smiles`, engine,
    lengths, temperature), so with a directory it is kept there as
    `reference-<hash of the inputs>.npz` and read back by any later call with the same inputs
    (e.g. another model rolled out against the same 100 ps of GFN2-xTB MD). `progress`: a
    progress bar in simulated ps (100 ps of GFN2-xTB MD take tens of minutes on 2 cores). `seed`:
    the random stream of the equilibration's velocities and of the Langevin noise; another seed
    from the same state is another, independent run of the same length (`pooled_md`).
    `cached_only`: the cached run, or None where `cache_dir` holds none (no MD is run)."""
    from dataclasses import replace

    if ensemble not in ("nve", "nvt"):
        raise ValueError(f"fresh_md: ensemble must be 'nve' or 'nvt', found {ensemble!r}")
    cached = None
    if cache_dir is not None:
        # NVE's key is the one it had before NVT existed, so references cached then are still found
        extra = {"ensemble": ensemble} if ensemble != "nve" else {}
        extra.update({"seed": seed} if seed else {})  # seed 0's key is the one it had before seeds existed
        cached = _cached_reference_path(cache_dir, state, smiles=smiles, engine=engine, total_fs=total_fs,
                                        dt_fs=dt_fs, every=every, equilibrate_fs=equilibrate_fs,
                                        temperature_k=temperature_k, **extra)
        if cached.exists():
            with np.load(cached) as f:
                return Reference(str(f["source"]), f["positions"], f["velocities"], float(f["dt_fs"]))
    if cached_only:
        return None

    from atomray.tg80.dynamics import MDConfig, MDState, prepare_state, run_steps
    from atomray.tg80.engines import make_engine

    mol = molecule_of_state(state, smiles)
    masses = np.array([a.GetMass() for a in mol.GetAtoms()])
    md = make_engine(engine, mol, state.name)
    cfg_md = MDConfig(dt_fs=dt_fs, temperature_k=temperature_k, equilibration_fs=equilibrate_fs)
    if equilibrate_fs > 0:
        md_state = prepare_state(md, state.positions, masses, cfg_md, seed=seed)
    else:
        energy, forces = md.forces(state.positions)
        rng_state = np.random.Generator(np.random.PCG64(seed)).bit_generator.state
        md_state = MDState(state.positions.copy(), state.velocities.copy(), forces, energy, 0, rng_state)
    n_steps, chunk = int(round(total_fs / dt_fs)) + 1, 1000 * every  # chunks keep every `every`-th frame
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_steps * dt_fs / 1000, desc=f"reference {engine} MD of {state.name}", unit="ps",
                   bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} ps [{elapsed}<{remaining}]")
    pos, vel = [], []
    for start in range(0, n_steps, chunk):
        p, v, _ = run_steps(md_state, md, masses, replace(cfg_md, ensemble=ensemble), min(chunk, n_steps - start),
                            ensemble, record=True)
        pos.append(p[::every])
        vel.append(v[::every])
        if bar is not None:
            bar.update(len(p) * dt_fs / 1000)
    if bar is not None:
        bar.close()
    how = f", equilibrated {equilibrate_fs:g} fs at {temperature_k:g} K" if equilibrate_fs > 0 else ""
    how += f", seed {seed}" if seed else ""
    kind = "NVE" if ensemble == "nve" else f"NVT ({temperature_k:g} K, Langevin {cfg_md.friction_per_fs:g}/fs)"
    ref = Reference(f"{engine} {kind} from {state.name}{how}", np.concatenate(pos), np.concatenate(vel), dt_fs * every)
    if cached is not None:
        _write_reference(cached, ref)
    return ref


def pooled_md(state: InitialState, smiles: str, total_fs: float, runs: int, engine: str = "gfn2",
              workers: int = 1, **kwargs) -> Reference:
    """`runs` independent runs of `fresh_md` from `state` (seeds 0, 1, …, each `total_fs` long and
    equilibrated afresh: `kwargs` as there, with `equilibrate_fs` > 0), joined end to end
    (`Reference.run_starts` marks each). One 100-ps run of a flexible molecule crosses its
    torsion barriers a few times, so its conformer populations carry the sampling noise its two
    halves show (hexane's dihedrals: 33° between halves, docs/results.md); five runs of the same
    length as five rollouts pin them down. Seed 0 alone is `fresh_md`'s run, cached under the
    same key. `workers` > 1: that many runs at once, each in its own process with an equal share
    of the cores' threads (`reference_workers` measures the gain), a progress bar over runs; the
    runs `cache_dir` holds already are read in this process."""
    if runs < 1:
        raise ValueError(f"pooled_md: runs must be >= 1, found {runs}")
    if workers < 1:
        raise ValueError(f"pooled_md: workers must be >= 1, found {workers}")
    if runs > 1 and not kwargs.get("equilibrate_fs", 0.0) > 0:
        raise ValueError("pooled_md: independent runs need an equilibration (equilibrate_fs > 0) to start "
                         "apart; without one every run starts from the same state")
    found = {}  # the runs the cache holds already: read here, no process started for them
    if workers > 1 and kwargs.get("cache_dir") is not None:
        found = {seed: fresh_md(state, smiles, total_fs, engine, seed=seed, cached_only=True, **kwargs)
                 for seed in range(runs)}
    missing = [seed for seed in range(runs) if found.get(seed) is None]
    workers = min(workers, len(missing))
    if workers <= 1:
        found.update({seed: fresh_md(state, smiles, total_fs, engine, seed=seed, **kwargs) for seed in missing})
    else:
        found.update(_parallel_runs(state, smiles, total_fs, missing, engine, workers, kwargs))
    parts = [found[seed] for seed in range(runs)]
    if runs == 1:
        return parts[0]
    source = f"{parts[0].source} and {runs - 1} more run(s) like it (seeds 1-{runs - 1}), joined"
    return Reference.joined(source, [(r.positions, r.velocities) for r in parts], parts[0].dt_fs)


def _parallel_runs(state: InitialState, smiles: str, total_fs: float, seeds: list[int], engine: str, workers: int,
                   kwargs: dict) -> dict[int, Reference]:
    """`pooled_md`'s runs of these seeds in `workers` processes (spawned: no state shared with this one)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // workers)
    progress = kwargs.get("progress", False)
    kwargs = {k: v for k, v in kwargs.items() if k != "progress"}  # the workers' runs draw no bar of their own
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_threads,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(fresh_md, state, smiles, total_fs, engine, seed=seed, **kwargs): seed
                   for seed in seeds}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(seeds), desc=f"reference {engine} MD of {state.name}, {workers} runs at once",
                       unit="run")
        parts = {}
        for done in as_completed(futures):
            parts[futures[done]] = done.result()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    return parts


def _threads(n: int) -> None:
    """A reference worker's process: n OpenMP threads for the engine (set before it is imported)."""
    import os

    os.environ["OMP_NUM_THREADS"] = str(n)


def _cached_reference_path(cache_dir: str | Path, state: InitialState, **inputs) -> Path:
    """Where `fresh_md` keeps the MD of `state` with these inputs: a hash of all of them."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()
                            + np.asarray(state.atomic_numbers, np.int64).tobytes()
                            + np.asarray(state.positions, np.float64).tobytes()
                            + np.asarray(state.velocities, np.float64).tobytes()).hexdigest()[:16]
    return Path(cache_dir) / f"reference-{digest}.npz"


def _write_reference(path: Path, ref: Reference) -> None:
    """`ref` as an .npz at `path`, whole or not at all (written under a temporary name, renamed)."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, source=ref.source, positions=ref.positions, velocities=ref.velocities, dt_fs=ref.dt_fs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fresh_reference(state: InitialState, smiles: str, cfg: RunConfig, total_fs: float, engine: str = "gfn2",
                    dt_fs: float = 1.0, every: int = 10, cache_dir: str | Path | None = None,
                    progress: bool = False, ensemble: str = "nve") -> Reference:
    """MD through a tg80 engine from exactly `state` for `total_fs`, every `every`-th step
    kept; the model's atoms only (`fresh_md`: `cache_dir`, `progress` and `ensemble` as there)."""
    return model_reference(fresh_md(state, smiles, total_fs, engine, dt_fs, every, cache_dir=cache_dir,
                                    progress=progress, ensemble=ensemble), state.atomic_numbers, cfg)


def model_reference(ref: Reference, z: np.ndarray, cfg: RunConfig) -> Reference:
    """`ref` restricted to the atoms the model rolls out."""
    keep = model_atoms(cfg, z)
    return Reference(ref.source, ref.positions[:, keep], ref.velocities[:, keep], ref.dt_fs, ref.run_starts)


def states_from_md(ref: Reference, z: np.ndarray, name: str, n: int) -> list[InitialState]:
    """n start states evenly spaced over an all-atom MD `ref` of a molecule with atoms z, as a
    data set molecule's starts are spaced over its trajectory."""
    frames = np.linspace(0, len(ref.positions) - 1, n + 1)[:-1].astype(int)
    return [InitialState(f"{name}@{k * ref.dt_fs:g}fs", z, ref.positions[k].copy(), ref.velocities[k].copy())
            for k in frames]


def reference_temperature(ref: Reference, z: np.ndarray, internal: bool = False) -> float:
    """The mean kinetic temperature (K) of a reference MD of atoms z: of every motion but the
    centre of mass's (`structure.temperature`), or with `internal` of the motion within the
    molecule (`internal_temperature`), the part a thermostat of `atomray.rollout` holds."""
    from atomray import structure

    if internal:
        return float(internal_temperature(ref.positions, ref.velocities, z).mean())
    return float(structure.temperature(ref.velocities, z).mean())


def internal_temperature(x: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(T,) K: the kinetic temperature of the internal motion of frames x, v (T, N, 3) of atoms z,
    the velocities less their rigid-body part (`atomray.priors.rigid.internal_velocity`: the
    centre of mass's velocity and the rotation ω = I⁻¹L), over f = 3N − 3 − rank(I) degrees of
    freedom (3N − 6; 3N − 5 for a linear molecule). `structure.temperature` keeps the rotation
    (3N − 3): momentum control keeps a rollout's start rotation, which one short NVE reference
    may carry at several hundred K in its three degrees of freedom, while a thermostat holds
    only the internal motion; this is the temperature to judge a thermostat by."""
    import torch

    from atomray import structure
    from atomray.elements import atomic_masses
    from atomray.priors.rigid import internal_dof, rigid_motion, rigid_velocity

    x, v = np.asarray(x, np.float64), np.asarray(v, np.float64)
    x, v = (x[None], v[None]) if x.ndim == 2 else (x, v)
    if x.shape != v.shape or x.ndim != 3 or x.shape[1:] != (len(z), 3):
        raise ValueError(f"internal_temperature: positions and velocities must be (T, {len(z)}, 3), "
                         f"found {x.shape} and {v.shape}")
    mass = torch.from_numpy(np.broadcast_to(atomic_masses(np.asarray(z)), x.shape[:2]).copy())
    xt, vt = torch.from_numpy(x), torch.from_numpy(v)
    c, u, omega, _, inertia_inv = rigid_motion(xt, vt, mass)  # once: the split and the dof
    w = (vt - rigid_velocity(xt, c, u, omega)).numpy()  # `internal_velocity`, every atom has a mass
    dof = internal_dof(mass, inertia_inv)
    if np.any(dof < 1):
        raise ValueError(f"internal_temperature: {len(z)} atom(s) leave no internal degrees of freedom")
    return np.einsum("n,tnk->t", mass[0].numpy(), w * w) * structure.U_A2_FS2_IN_K / dof


def check_rollouts(traj: Rollout, references: Mapping[str, Reference], molecule_of: list[str],
                   out: str | Path | None = None, floor: Rollout | None = None) -> list[dict]:
    """One row per molecule: its rollouts (indices i with molecule_of[i] == molecule) against
    its reference. With `out`, one structure plot per molecule is written there
    (<molecule>.png) and its path put in the row. `reference_halves_w1_*`: the same distances
    between the reference's first and second halves, the sampling noise of the reference
    itself — a W1 target below it cannot be judged against that reference (a 5 ps
    trajectory of malonaldehyde's two free rotors differs from itself by 43° of dihedral).
    `floor`: the prior alone rolled out from the same states (`checkpoint.prior_model`, the
    same seed and controls); its stability and W1 distances join each row as `prior_*`, judged
    by the same bonds against the same reference (`behind_prior` reads them), and its first
    rollout joins the plot."""
    from atomray import structure

    rows = []
    for molecule in dict.fromkeys(molecule_of):
        idx = [i for i, m in enumerate(molecule_of) if m == molecule]
        z, ref = traj.atomic_numbers[idx[0]], references[molecule]
        bonds = _molecule_bonds(traj, idx)
        dt = np.diff(traj.times_fs)
        summary, distances = _stability_and_distances(traj, idx, ref, bonds)
        nan = dict.fromkeys(_DISTANCES, float("nan"))
        t_roll = _temperatures([traj.step_velocities[i][1:] for i in idx], z)
        t_model = _temperatures([traj.model_velocities[i] for i in idx], z) if traj.model_velocities else t_roll
        t_internal = _temperatures([traj.step_velocities[i][1:] for i in idx], z, [step_positions(traj, i)[1:] for i in idx])
        half = len(ref.positions) // 2
        noise = structure.structure_distances(ref.positions[:half], ref.positions[half:], z, bonds) if half else nan
        quads = rotamer_torsions(traj.positions[idx[0]][0], z, bonds)
        step = max(1, int(round(float(dt.mean()) / ref.dt_fs)))  # the reference read at the rollouts' interval
        rates = [transition_rate([traj.positions[i] for i in idx], quads, float(dt.mean())),
                 transition_rate([r[::step] for r in ref.runs()], quads, step * ref.dt_fs)]
        row = {"molecule": molecule, "rollouts": len(idx), "rollout_ps": float(traj.times_fs[-1]) / 1000,
               "stability": summary.coefficient, "mean_time_to_failure_ps": summary.mean_time_to_failure_fs / 1000,
               **{f"w1_{k}": v for k, v in distances.items()},
               "temperature_k": float(t_roll.mean()) if len(t_roll) else float("nan"),
               "model_temperature_k": float(t_model.mean()) if len(t_model) else float("nan"),
               "reference_temperature_k": reference_temperature(ref, z),
               "internal_temperature_k": float(t_internal.mean()) if len(t_internal) else float("nan"),
               "reference_internal_temperature_k": reference_temperature(ref, z, internal=True),
               **{f"reference_halves_w1_{k}": noise[k] for k in ("bond_length_a", "bond_angle_deg", "dihedral_deg")},
               "rotamer_transitions_per_100ps": rates[0], "reference_rotamer_transitions_per_100ps": rates[1]}
        if floor is not None:
            prior, prior_distances = _stability_and_distances(floor, idx, ref, bonds)
            row["prior_stability"] = prior.coefficient
            row.update({f"prior_w1_{k}": prior_distances[k] for k in ("bond_length_a", "bond_angle_deg", "dihedral_deg")})
        row["reference"] = ref.source
        if out is not None:
            # the first rollout (a trace over time needs one trajectory) against the reference
            row["plot"] = str(structure.plot_structure(
                traj.positions[idx[0]], ref.positions, z, Path(out) / f"{_safe(molecule)}.png", bonds=bonds,
                dt_fs=float(dt.mean()), reference_dt_fs=ref.dt_fs,
                floor=None if floor is None else floor.positions[idx[0]],
                title=f"{molecule}: rollout 1 of {len(idx)} ({traj.times_fs[-1] / 1000:g} ps) vs {ref.source}"))
        rows.append(row)
    return rows


_DISTANCES = ("bond_length_a", "bond_angle_deg", "dihedral_deg", "radius_of_gyration_a")  # structure_distances' keys


def _stability_and_distances(traj: Rollout, idx: list[int], ref: Reference, bonds):
    """(`structure.stability_coefficient` of rollouts `idx` by `bonds`, their pooled W1 distances
    from the reference's frames; NaN where every frame flew apart)."""
    from atomray import structure

    z = traj.atomic_numbers[idx[0]]
    summary = structure.stability_coefficient([traj.positions[i] for i in idx], bonds,
                                              dt_fs=float(np.diff(traj.times_fs).mean()),
                                              transfers=_molecule_transfers(traj, idx))
    pooled = np.concatenate([traj.positions[i][1:] for i in idx])
    pooled = pooled[np.isfinite(pooled).all((1, 2))]  # frames of molecules that flew apart are NaN
    if not len(pooled):
        return summary, dict.fromkeys(_DISTANCES, float("nan"))
    return summary, structure.structure_distances(pooled, ref.positions, z, bonds)


# the figures `behind_prior` compares, with the words the verdict uses
PRIOR_FIGURES = {"stability": "stability", "w1_bond_length_a": "bonds", "w1_bond_angle_deg": "angles",
                 "w1_dihedral_deg": "dihedrals"}


def behind_prior(row: Mapping[str, float]) -> list[str]:
    """The figures of a `check_rollouts` row with its `prior_*` beside it (a `floor` rollout) in
    which the prior alone does as well as the model or better: "stability" where the prior's is
    higher, "bonds", "angles", "dihedrals" where the prior's W1 is as small or smaller (a model
    that only matches its prior adds nothing). An empty list: the model beats its floor in
    every figure. A defect either way, whatever the targets say."""
    return [PRIOR_FIGURES[key] for key in _behind_keys(row)]


def _behind_keys(row: Mapping[str, float]) -> list[str]:
    """The keys of `PRIOR_FIGURES` in which the prior alone does as well or better (`behind_prior`)."""
    behind = []
    for key in PRIOR_FIGURES:
        model, prior = float(row[key]), float(row[f"prior_{key}"])
        if key == "stability":
            worse = prior > model
        else:  # a W1 of rollouts that all flew apart is NaN: the other is then the closer
            worse = prior <= model or (math.isnan(model) and not math.isnan(prior))
        if worse:
            behind.append(key)
    return behind


def prior_verdict(rows: list[Mapping], model: str = "the model") -> str:
    """The verdict line of `check_rollouts` rows with a floor: `model` closer than the prior alone
    in every figure on every molecule, or a defect naming each molecule and figure `behind_prior`
    finds, with both values, and the reference's halves where they differ by more than the two
    (a difference inside the reference's own noise is still a defect, and said to be so close)."""
    parts = []
    for row in rows:
        details = []
        for key in _behind_keys(row):
            text = f"{PRIOR_FIGURES[key]} {float(row[key]):.4g} vs {float(row[f'prior_{key}']):.4g}"
            noise = float(row.get(f"reference_halves_{key}", float("nan")))
            if noise > abs(float(row[key]) - float(row[f"prior_{key}"])):
                text += f", the reference's halves differ by {noise:.4g}"
            details.append(text)
        if details:
            parts.append(f"{row['molecule']} ({'; '.join(details)})")
    if not parts:
        return (f"verdict against the prior alone: {model} is closer in bonds, angles and dihedrals and no less "
                "stable on every molecule")
    return "verdict against the prior alone: a defect: the prior alone is as close or closer on " + "; ".join(parts)


def rotamer_torsions(x: np.ndarray, z: np.ndarray, bonds) -> np.ndarray:
    """(n, 4) one proper dihedral A-Y-X-B per saturated rotatable bond Y-X of the state x (N, 3)
    with atoms z (`atomray.priors.modes.torsion_groups` with `saturated`: sp3-sp3, three
    rotamers; A and B the lowest-numbered other heavy neighbours of Y and X) over `bonds` (a
    `structure.Topology`): the torsions whose rotamer changes `transition_rate` counts."""
    from atomray.priors.modes import torsion_groups

    neighbours = [set() for _ in z]
    for i, j in bonds.bonds:
        neighbours[i].add(int(j))
        neighbours[j].add(int(i))
    quads = []
    for y, c, _ in torsion_groups(np.asarray(x, np.float64), np.asarray(z), bonds.bonds, saturated=True):
        a = min(k for k in neighbours[y] if k != c and z[k] > 1)
        b = min(k for k in neighbours[c] if k != y and z[k] > 1)
        quads.append((a, y, c, b))
    return np.array(quads, np.int64).reshape(-1, 4)


def transition_rate(pieces: list[np.ndarray], quads: np.ndarray, dt_fs: float) -> float:
    """Rotamer changes of the torsions `quads` (`structure.rotamer_transitions`) per 100 ps of
    trajectory, summed over the torsions, over independent `pieces` (T, N, 3) read every
    `dt_fs` (a join between two pieces is no transition); NaN without a torsion or a frame."""
    from atomray import structure

    if not len(quads):
        return float("nan")
    frames = [p[np.isfinite(p).all((1, 2))] for p in pieces]
    span_fs = sum(max(len(f) - 1, 0) for f in frames) * dt_fs
    if span_fs <= 0:
        return float("nan")
    return 1e5 * sum(structure.rotamer_transitions(f, quads) for f in frames if len(f)) / span_fs


def _molecule_bonds(traj: Rollout, idx: list[int]):
    """The bonds every rollout of one molecule is judged by: covalent radii at its first start."""
    from atomray import structure

    return structure.bonds_from_geometry(traj.atomic_numbers[idx[0]], traj.positions[idx[0]][0])


def _molecule_transfers(traj: Rollout, idx: list[int]) -> list[tuple[int, int, int]]:
    """The protons of one molecule that may move to a second atom without breaking its rollouts:
    the hydrogen bonds of its first start (`atomray.structure.hydrogen_bond_sites`)."""
    from atomray import structure

    return structure.hydrogen_bond_sites(traj.positions[idx[0]][0], traj.atomic_numbers[idx[0]])


def rollout_failures(traj: Rollout, molecule_of: list[str]) -> list[dict]:
    """One row per rollout: whether it holds by the stability rule `check_rollouts` counts
    (`atomray.structure.stability`: every bond of the molecule's first start within ±50 % of its
    length at the rollout's own start, a proton of a hydrogen bond on either of its two atoms, no
    other pair closer than 0.7 Å) and, where it breaks,
    when (`first_failure_ps`), how (`kind`: bond_stretched, bond_compressed, close_contact,
    non_finite), which two atoms (`atoms`, e.g. "C5-H17", 0-based indices of the model's atoms) at
    what distance (`distance_a`) against their distance at the start (`start_distance_a`)."""
    from ase.data import chemical_symbols

    from atomray import structure

    rows = []
    for molecule in dict.fromkeys(molecule_of):
        idx = [i for i, m in enumerate(molecule_of) if m == molecule]
        bonds, transfers = _molecule_bonds(traj, idx), _molecule_transfers(traj, idx)
        z = traj.atomic_numbers[idx[0]]
        for i in idx:
            s = structure.stability(traj.positions[i], bonds, transfers=transfers)
            row = {"rollout": traj.names[i], "molecule": molecule, "stable": s.stable, "first_failure_ps": float("nan"),
                   "kind": s.kind or "", "atoms": "", "distance_a": float("nan"), "start_distance_a": float("nan")}
            if not s.stable:
                row["first_failure_ps"] = float(traj.times_fs[s.first_failure_frame]) / 1000
            if s.pair is not None:
                a, b = s.pair
                row["atoms"] = f"{chemical_symbols[int(z[a])]}{a}-{chemical_symbols[int(z[b])]}{b}"
                row["distance_a"] = s.distance_a
                row["start_distance_a"] = float(np.linalg.norm(traj.positions[i][0, a] - traj.positions[i][0, b]))
            rows.append(row)
    return rows


def describe_failures(rows: list[dict]) -> list[str]:
    """A line per broken rollout of `rollout_failures`, e.g. "acac@0fs breaks at 12.35 ps:
    bond_stretched C5-H17, 1.64 Å (1.09 Å at the start)"."""
    lines = []
    for r in rows:
        if r["stable"]:
            continue
        where = (f" {r['atoms']}, {r['distance_a']:.2f} Å ({r['start_distance_a']:.2f} Å at the start)"
                 if r["atoms"] else "")
        lines.append(f"{r['rollout']} breaks at {r['first_failure_ps']:.2f} ps: {r['kind']}{where}")
    return lines


@dataclass
class EnergyDrift:
    """Total energy E = E_pot(x) + ½ Σ m v² (eV) at each step start of one molecule's rollouts,
    E_pot from a tg80 engine, and the drift: the least-squares slope of E against time, eV/ps,
    per rollout (rollouts that fly apart or that the engine cannot evaluate: up to then)."""

    energies: list[np.ndarray]  # per rollout, (S_i + 1,) eV
    times_ps: np.ndarray  # (S + 1,) step-start times
    drift_ev_per_ps: np.ndarray  # per rollout
    seconds: float  # wall time of the engine calls
    calls: int


def energy_drift(traj: Rollout, indices: list[int], mol, engine: str = "gfn2") -> EnergyDrift:
    """The energy drift of rollouts `indices` of `traj`, all of one molecule whose RDKit
    molecule (explicit hydrogens, the rollout's atom order) is `mol` (`molecule_of_state`).
    Needs every atom rolled out (a model with data.context_atoms=all)."""
    import time

    from atomray.tg80.dynamics import KINETIC_EV
    from atomray.tg80.engines import EngineError, make_engine

    z = traj.atomic_numbers[indices[0]]
    if mol.GetNumAtoms() != len(z):
        raise ValueError(f"{traj.names[indices[0]]}: energy drift needs every atom rolled out "
                         f"({len(z)} of {mol.GetNumAtoms()} atoms are; a model with data.context_atoms=all)")
    masses = np.array([a.GetMass() for a in mol.GetAtoms()])
    per_step = (len(traj.times_fs) - 1) // (len(traj.step_velocities[indices[0]]) - 1)
    times = traj.times_fs[::per_step] / 1000.0
    calc = make_engine(engine, mol, traj.names[indices[0]])
    energies, drifts, seconds, calls = [], [], 0.0, 0
    for i in indices:
        calc.reset()
        series = []
        for x, v in zip(traj.positions[i][::per_step], traj.step_velocities[i]):
            if not (np.isfinite(x).all() and np.isfinite(v).all()):
                break
            t0 = time.perf_counter()
            try:
                e_pot, _ = calc.forces(x)
            except EngineError:
                break
            finally:
                seconds += time.perf_counter() - t0
                calls += 1
            series.append(e_pot + 0.5 * float(np.sum(masses[:, None] * v * v)) * KINETIC_EV)
        series = np.asarray(series)
        energies.append(series)
        drifts.append(float(np.polyfit(times[: len(series)], series, 1)[0]) if len(series) > 1 else float("nan"))
    return EnergyDrift(energies, times, np.asarray(drifts), seconds, calls)


TARGETS = {"w1_bond_length_a": 0.01, "w1_bond_angle_deg": 2.0, "w1_dihedral_deg": 10.0}  # what "holds" asks
TEMPERATURE_TOLERANCE = 0.10  # of the target (the thermostat's) or the reference's mean internal temperature


def holds(row: Mapping[str, float], target_k: float | None = None) -> list[str]:
    """What a molecule's (or the mean) row of `check_rollouts` misses of a rollout that holds:
    stability 1.0, every W1 within `TARGETS`, mean internal temperature (`internal_temperature`,
    the motion a thermostat holds) within ±10 % of `target_k` (default: the reference's internal
    temperature). An empty list: it holds. A W1 miss where the reference's own halves differ by
    more than the target (`reference_halves_w1_*`) says so; it stays a miss."""
    target = float(row["reference_internal_temperature_k"]) if target_k is None else target_k
    misses = [] if row["stability"] >= 1.0 else [f"stability {row['stability']:.2f}"]
    for k, limit in TARGETS.items():
        if not row[k] <= limit:
            noise = row.get(f"reference_halves_{k}", float("nan"))
            note = f" (the reference's halves differ by {noise:.4g})" if noise > limit else ""
            misses.append(f"{k} {row[k]:.4g} > {limit:g}{note}")
    if not abs(row["internal_temperature_k"] - target) <= TEMPERATURE_TOLERANCE * target:
        misses.append(f"internal temperature {row['internal_temperature_k']:.0f} K vs {target:.0f} K")
    return misses


def plot_stride_sweep(rows: list[Mapping[str, float]], path: str | Path, title: str = "") -> Path:
    """The stride sweep as one figure, written atomically to `path`: mean time to first failure,
    the W1 distances (each against its target) and the mean temperatures (with and without the
    rotation) against the stride
    (log axis), one point per stride. `rows`: one mean row of `check_rollouts` per stride, each
    with its `stride_fs`."""
    import matplotlib

    from atomray.outputs import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["stride_fs"])
    x = [r["stride_fs"] for r in rows]
    panels = [("mean_time_to_failure_ps", "time to first failure (ps)", max(r["rollout_ps"] for r in rows)),
              ("w1_bond_length_a", "W1 bond lengths (A)", TARGETS["w1_bond_length_a"]),
              ("w1_bond_angle_deg", "W1 bond angles (deg)", TARGETS["w1_bond_angle_deg"]),
              ("w1_dihedral_deg", "W1 proper dihedrals (deg)", TARGETS["w1_dihedral_deg"]),
              ("temperature_k", "mean temperature (K)", None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (key, label, line) in zip(axes, panels):
        ax.plot(x, [r[key] for r in rows], "o-", color="tab:blue", label="rollout")
        if key == "temperature_k":
            ax.plot(x, [r["model_temperature_k"] for r in rows], "s--", color="tab:orange", label="model's own")
            ax.plot(x, [r["reference_temperature_k"] for r in rows], ":", color="tab:grey", label="reference")
            ax.plot(x, [r["internal_temperature_k"] for r in rows], "^-", color="tab:green", label="rollout, internal")
            ax.plot(x, [r["reference_internal_temperature_k"] for r in rows], "-.", color="tab:green", lw=1.0,
                    label="reference, internal")
        elif line is not None:
            ax.axhline(line, color="tab:red" if key != "mean_time_to_failure_ps" else "tab:grey", ls="--", lw=1.0,
                       label="target" if key != "mean_time_to_failure_ps" else "rollout length")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(x, [f"{s:g}" for s in x])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("stride ΔT (fs)")
        ax.set_title(label, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def mean_row(rows: list[Mapping]) -> dict[str, float]:
    """The mean over molecules of every numeric column of `check_rollouts` rows."""
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def _temperatures(velocities: list[np.ndarray], z: np.ndarray, positions: list[np.ndarray] | None = None) -> np.ndarray:
    """Kinetic temperatures of every finite frame of some rollouts' step velocities: of every
    motion but the centre of mass's, or with their `positions` of the internal motion."""
    from atomray import structure

    if positions is None:
        return np.concatenate([structure.temperature(np.nan_to_num(v), z)[np.isfinite(v).all((1, 2))]
                               for v in velocities])
    out = []
    for x, v in zip(positions, velocities):
        ok = np.isfinite(v).all((1, 2)) & np.isfinite(x).all((1, 2))
        out.append(internal_temperature(x[ok], v[ok], z) if ok.any() else np.zeros(0))
    return np.concatenate(out)


def step_positions(traj: Rollout, i: int) -> np.ndarray:
    """(S + 1, n, 3) positions of rollout i at each step's start, where its `step_velocities` are
    (every step writes `len(times_fs) − 1) / S` frames, the step's end last)."""
    steps = len(traj.step_velocities[i]) - 1
    per_step = (len(traj.times_fs) - 1) // max(steps, 1)
    return traj.positions[i][::per_step][: steps + 1]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
