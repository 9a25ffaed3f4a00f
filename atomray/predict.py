"""Zero-shot prediction of a new molecule's trajectory with a trained operator.

    state = state_from_smiles("CC(=O)Nc1ccc(O)cc1", temperature_k=300, seed=0)   # or state_from_file
    frames = predict(model, cfg, state, lags_fs=[10, 50, 100, 500, 1000], elements=seen)
    write_extxyz("paracetamol.extxyz", frames)

The initial state is the molecule's atoms with positions (Å) and velocities (Å/fs); the
model sees the atoms it was trained on (`data.context_atoms`: heavy atoms, or every atom),
centred on their centroid, with RWPE from the 1.6 Å radius graph, exactly as the window
sampler makes them. Lags may be
any number and any spacing (T-RoPE takes real times; they are fed P = data.num_lags at a
time), and the output is in the input's coordinate frame. The model's prior paths go through
the same transform as training windows (`atomray.priors.paths`), with the state's basin found
through the machine's basin store (MMFF94, and GFN2-xTB once for a basin never met).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from atomray.config import RunConfig
from atomray.data.frames import DataError, check_atomic_numbers, check_coordinates


@dataclass
class InitialState:
    """One molecular state: atomic numbers (N,), positions (N,3) Å, velocities (N,3) Å/fs.
    `frame_of`: (data set root, molecule id, frames row, frame) when the state is a frame of a
    data set, so its prior reads the data set's stored per-frame physics (`atomray.priors.frames`)
    instead of minimising it again; None for a new state."""

    name: str
    atomic_numbers: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    frame_of: tuple[str, str, int, int] | None = None


@dataclass
class PredictedFrames:
    """The model's prediction: the atoms it predicts (heavy atoms, or every atom) at each lag."""

    name: str
    atomic_numbers: np.ndarray  # (N,)
    lags_fs: np.ndarray  # (P,)
    positions: np.ndarray  # (P, N, 3) Å, in the input's frame
    initial_positions: np.ndarray  # (N, 3) Å


def state_from_smiles(smiles: str, temperature_k: float = 300.0, seed: int = 0, conformers: int = 1) -> InitialState:
    """3-D structure of a SMILES (RDKit ETKDG, seeded, then MMFF94 relaxation), velocities
    drawn from Maxwell–Boltzmann at `temperature_k`. `conformers` > 1: the lowest GFN2-xTB
    minimum among that many embeddings (seeds `seed`, `seed` + 1, …, each relaxed with MMFF94 and
    then GFN2-xTB, `lowest_conformer`) with the first embedding's stereochemistry (a SMILES that
    leaves a double bond's E/Z open is embedded as either; the first one's is kept), instead of
    the first embedding, whatever rotamer it is."""
    from rdkit import Chem

    from atomray.tg80.dynamics import maxwell_boltzmann
    from atomray.tg80.engines import EngineError, embed, molecule_with_hydrogens

    if not smiles or Chem.MolFromSmiles(smiles) is None:
        raise DataError(f"SMILES {smiles!r} is not a valid molecule")
    if conformers < 1:
        raise DataError(f"SMILES {smiles!r}: conformers must be >= 1, found {conformers}")
    mol = molecule_with_hydrogens(smiles, f"SMILES {smiles!r}")
    try:
        pos = embed(mol, seed, f"SMILES {smiles!r}")
        if conformers > 1:
            pos = lowest_conformer(mol, [pos] + [embed(mol, seed + k, f"SMILES {smiles!r}")
                                                 for k in range(1, conformers)], f"SMILES {smiles!r}")
    except EngineError as err:
        raise DataError(str(err)) from None
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    masses = np.array([a.GetMass() for a in mol.GetAtoms()])
    vel = maxwell_boltzmann(masses, temperature_k, np.random.default_rng(seed))
    return InitialState(smiles, z, pos, vel)


def lowest_conformer(mol, embedded: list[np.ndarray], where: str) -> np.ndarray:
    """(N, 3) Å: the lowest GFN2-xTB minimum (`atomray.priors.minima.gfn2_minimum`, tblite) of the
    embedded conformers of `mol` whose stereochemistry (perceived from 3-D, before and after the
    relaxation) is the first one's. Why: a fresh reference MD runs 100 ps after 1 ps of
    equilibration, too short to leave a rotamer GFN2-xTB puts kcal/mol above another; from
    acetylacetone enol's first embedding (s-trans, 3.5 kcal/mol above s-cis) every one of five
    runs stayed s-trans for 23–48 ps and then went s-cis for good, so its dihedrals measured the
    decay from the embedding, not the molecule at 300 K (docs/experiments.md)."""
    from atomray.priors.minima import gfn2_minimum
    from atomray.tg80.engines import EngineError, TBLiteEngine

    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    stereo = stereo_from_3d(mol, embedded[0])
    engine = TBLiteEngine(mol, "GFN2-xTB", where)
    best, lowest = None, np.inf
    for pos in embedded:
        minimum = None if stereo_from_3d(mol, pos) != stereo else gfn2_minimum(pos, z)
        if minimum is None or stereo_from_3d(mol, minimum) != stereo:
            continue
        energy = engine.forces(minimum)[0]
        if energy < lowest:
            best, lowest = minimum, energy
    if best is None:
        raise EngineError(f"{where}: GFN2-xTB relaxed none of the {len(embedded)} embedded conformers")
    return best


def stereo_from_3d(mol, positions: np.ndarray) -> str:
    """The isomeric SMILES of `mol` with its stereochemistry perceived from `positions` (N, 3) Å."""
    from rdkit import Chem

    m = Chem.Mol(mol)
    m.RemoveAllConformers()
    conf = Chem.Conformer(m.GetNumAtoms())
    for k, p in enumerate(np.asarray(positions, np.float64)):
        conf.SetAtomPosition(k, p.tolist())
    m.AddConformer(conf, assignId=True)
    Chem.AssignStereochemistryFrom3D(m)
    return Chem.MolToSmiles(Chem.RemoveHs(m))


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

    from atomray.data.pipeline import to_torch
    from atomray.model.registry import model_inputs

    lags = np.asarray(lags_fs, dtype=np.float64)
    if lags.ndim != 1 or len(lags) == 0 or not np.all(np.isfinite(lags)) or np.any(lags <= 0):
        raise DataError(f"lags must be a non-empty list of positive times in fs, found {list(lags_fs)}")
    keep = model_atoms(cfg, state.atomic_numbers)
    z = state.atomic_numbers[keep]
    from atomray.evaluate import check_elements

    check_elements(z, elements, state.name, cfg.model.max_atomic_number)
    x = state.positions[keep].astype(np.float32)
    origin = x.mean(0)
    p = cfg.data.num_lags
    # The models take P = cfg.data.num_lags lags per sample; any other number of lags is cut
    # into groups of P (the last group padded by repeating its final lag), one sample each.
    groups = -(-len(lags) // p)
    padded = np.concatenate([lags, np.full(groups * p - len(lags), lags[-1])]).reshape(groups, p)
    batch = state_windows(cfg, [state], np.repeat(np.arange(1), groups), padded, origin[None])
    b, n = groups, len(z)
    with torch.no_grad():
        out = model(**model_inputs(to_torch(batch)))
    positions = out.reshape(b * p, n, 3)[: len(lags)].double().numpy() + origin  # (len(lags), N, 3)
    return PredictedFrames(state.name, z, lags, positions, x.astype(np.float64))


def state_windows(cfg: RunConfig, states: Sequence[InitialState], which: np.ndarray, lags: np.ndarray,
                  origins: np.ndarray, positions: np.ndarray | None = None, velocities: np.ndarray | None = None,
                  dtype=np.float32, bonds: Sequence[np.ndarray | None] | None = None,
                  match_torsions: float = math.inf) -> dict[str, np.ndarray]:
    """A padded window batch (numpy, no targets) of model inputs for new states, with their prior
    paths: row r is state `which[r]` at lags `lags[r]` (P,) fs, centred on `origins[which[r]]`
    (3,). `positions`/`velocities` (S, N_max, 3) override the states' own (rollout steps; the
    model's atoms, padded); `bonds` (one graph (n_b, 2) over the model's atoms per state, or
    None) is then the bond graph each state's basin keeps (`atomray.priors.minima`). The same
    atoms, centring, RWPE and prior transform as training windows (`match_torsions`: as
    `atomray.priors.paths.PriorPaths`; training's is never)."""
    from atomray.data.windows import atom_selection, rwpe_of_frames
    from atomray.elements import atomic_masses
    from atomray.priors.compose import prior_parts
    from atomray.priors.paths import PriorPaths

    keeps = [atom_selection(s.atomic_numbers, cfg.data.context_atoms) for s in states]
    others = [np.setdiff1d(np.arange(len(s.atomic_numbers)), k) for s, k in zip(states, keeps)]
    n = max(len(k) for k in keeps)
    m = max(len(o) for o in others)
    rows = len(which)
    out = {"x0": np.zeros((rows, n, 3), dtype), "v0": np.zeros((rows, n, 3), dtype), "z": np.zeros((rows, n), np.int64),
           "mass": np.zeros((rows, n), dtype), "mask": np.zeros((rows, n), bool), "lags_fs": lags.astype(dtype)}
    context = cfg.data.context_atoms == "heavy" and m > 0
    if context:
        out.update(ctx_x0=np.zeros((rows, m, 3), dtype), ctx_v0=np.zeros((rows, m, 3), dtype),
                   ctx_mass=np.zeros((rows, m), dtype))
    for r, i in enumerate(which):
        s, k, o = states[i], keeps[i], others[i]
        pos = s.positions[k] if positions is None else positions[i, :len(k)]
        vel = s.velocities[k] if velocities is None else velocities[i, :len(k)]
        out["x0"][r, :len(k)] = pos - origins[i]
        out["v0"][r, :len(k)] = vel
        out["z"][r, :len(k)] = s.atomic_numbers[k]
        out["mass"][r, :len(k)] = atomic_masses(s.atomic_numbers[k])
        out["mask"][r, :len(k)] = True
        if context and positions is None and len(o):  # a rollout step has no hydrogens of a heavy-atom model
            out["ctx_x0"][r, :len(o)] = s.positions[o] - origins[i]
            out["ctx_v0"][r, :len(o)] = s.velocities[o]
            out["ctx_mass"][r, :len(o)] = atomic_masses(s.atomic_numbers[o])
    if cfg.data.rwpe_k > 0:
        out["rwpe"] = np.zeros((rows, n, cfg.data.rwpe_k), dtype)
        for r, i in enumerate(which):
            k = int(out["mask"][r].sum())
            out["rwpe"][r, :k] = rwpe_of_frames(out["x0"][r:r + 1, :k], cfg.data.rwpe_k, cfg.data.radius)[0]
    known = positions is None  # a rollout step's states are new states, whatever they started from
    # new states are grouped by their atoms (the same atom order: their paths are computed together)
    graphs: dict[str, np.ndarray] = {}  # molecule id → the bond graph its states keep

    def new_id(i: int) -> str:
        name = "new:" + "-".join(map(str, states[i].atomic_numbers))
        graph = None if known or bonds is None else bonds[i]
        if graph is None:
            return name
        name += ":" + hashlib.sha256(np.ascontiguousarray(graph, np.int64).tobytes()).hexdigest()[:12]
        graphs[name] = graph
        return name

    out["molecule_id"] = np.array([states[i].frame_of[1] if known and states[i].frame_of else new_id(i)
                                   for i in which], dtype=object)
    out["segment"] = np.array([states[i].frame_of[2] if known and states[i].frame_of else -1 for i in which], np.int64)
    out["frame"] = np.array([states[i].frame_of[3] if known and states[i].frame_of else -1 for i in which], np.int64)
    frames_of: dict[str, set[str]] = {}  # data set root → the molecules whose frames start windows
    for i in which:
        if known and states[i].frame_of:
            frames_of.setdefault(states[i].frame_of[0], set()).add(states[i].frame_of[1])
    parts = prior_parts(cfg.model.prior, cfg.model.anharmonic)
    return PriorPaths(parts, StatesBasins(frames_of, graphs), dtype=dtype, circles=cfg.model.rotor_circles,
                      match_torsions=match_torsions)(out)


class StatesBasins:
    """The basin source of `state_windows`: a data set frame's stored basin where its data set
    has per-frame physics, the machine's basin store for every other state."""

    def __init__(self, frames_of: dict[str, set[str]], bonds: dict[str, np.ndarray] | None = None):
        """`frames_of`: each data set root and the molecules whose frames the states are;
        `bonds`: the bond graph the states of a new molecule id keep (`StateBasins`)."""
        from atomray.priors.frames import FramePhysics, read_molecule
        from atomray.priors.paths import DatasetBasins, StateBasins

        self.stored = {}
        for root, molecules in frames_of.items():
            found = {m: p for m in sorted(molecules) if (p := read_molecule(root, m)) is not None}
            if found:
                source = DatasetBasins(FramePhysics(root, found))
                self.stored.update(dict.fromkeys(found, source))
        self.new = StateBasins(bonds)

    def __call__(self, molecule_id, segment, frame, x, z, n_model):
        source = self.stored.get(molecule_id) if (segment >= 0).all() else None
        return (source or self.new)(molecule_id, segment, frame, x, z, n_model)


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
