"""The minimum a vibrating molecule oscillates about: MMFF94 finds the conformer basin, GFN2-xTB
refines its minimum once per basin.

    finder = BasinFinder(z)                  # one molecule, atomic numbers (N,) in a fixed atom order
    k = finder.assign(x)                     # basin index of state x (N, 3) Å, or -1 (MMFF94 cannot type it)
    finder.minimum(k)                        # (minimum (N, 3) Å float64, refined: bool)
    finder = machine_finder(z)               # the same, backed by the machine's basin store (new states)

A state's basin: its geometry x (every atom, hydrogens included) is minimised with MMFF94
(RDKit; bonds and bond orders perceived from x itself, neutral molecule, at most `MAX_STEPS`
steps; or, given the molecule's bond graph `bonds`, with those bonds and only their orders
perceived — a rollout passes its start's graph, so a distorted state cannot change the
molecule: a squeezed benzene ring is perceived with a transannular bond and relaxes to Dewar
benzene, and the basin store held such minima from earlier rollouts, docs/experiments.md).
Two states whose MMFF94 minima lie within `BASIN_RMSD` of each other after superposition
share a basin. The first state met in a basin defines it: its MMFF94 minimum is
refined with GFN2-xTB (tblite, BFGS to `GFN2_FMAX`), and every later state of the basin reuses
that refined minimum (callers superpose it on their state). A failed refinement keeps the
MMFF94 minimum of that first state, unrefined (no normal modes; `atomray.priors.modes`).

Why: at long lags, not knowing the vibrations' phases, the best guess about a molecule's shape
is the shape it vibrates about, and for a molecule never seen a minimum estimates it. Why
GFN2-xTB: MMFF94's own minimum is biased against GFN2-xTB (and DFT) geometries on some
molecules — on tg80-mini's salicylic acid, moving toward it made the rigid-body floor 1.5–2.5×
worse; the refined minimum helps on all 15 molecules (docs/physics-floors.md). MMFF94 still
finds the basin (the conformer) in milliseconds.

Where basins live: a data set's frames get their basin once, stored beside the data set
(`atomray.priors.frames`: one `BasinFinder` per molecule, frames in time order, so the result
does not depend on who computes it). New states — a prediction, a rollout step, a data set
without stored physics — go through `machine_finder`, whose basins are kept on disk for every
process of the machine (`atomray.priors.store`): the first writer's minimum, so results do not
depend on the order in which processes meet the states.

Cost: ~3.5 ms per state of 10–25 atoms on one CPU core for MMFF94, plus 0.1–0.6 s for each new
basin's refinement (a tg80-mini molecule has a handful).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np

from atomray.priors.recent import Recent
from atomray.priors.rigid import kabsch_np
from atomray.priors.store import BasinStore
from atomray.threads import single_threaded

MAX_STEPS = 500
GFN2_FMAX = 0.03  # eV/Å: the refinement stops below this largest force (tighter wanders along flat torsions:
# on lib-3785, 0.003 ends 0.26 Å RMSD away, in a conformer the molecule does not visit)
GFN2_MAX_STEPS = 300
BASIN_RMSD = 0.05  # Å: two MMFF94 minima this close (after superposition) are the same basin
RECENT_STATES = 8192  # MMFF94 minima kept per process, keyed by the state's bytes (least recently used out first)
_RECENT = Recent(max_items=RECENT_STATES)
_WARNED: set[str] = set()


def molecule_bonds(x: np.ndarray, z: np.ndarray) -> np.ndarray | None:
    """(n_b, 2) int64 atom pairs: the bond graph RDKit perceives from x (N, 3) Å with atomic
    numbers z (N,) — the connectivity `mmff_field` would use — or None when perception fails."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds

    RDLogger.DisableLog("rdApp.*")
    mol = _bare_molecule(x, z)
    try:
        rdDetermineBonds.DetermineConnectivity(mol)
    except (ValueError, RuntimeError):
        return None
    return np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()], np.int64).reshape(-1, 2)


def _bare_molecule(x: np.ndarray, z: np.ndarray, bonds: np.ndarray | None = None):
    """An RDKit molecule of atoms z (N,) at x (N, 3) Å, with single bonds `bonds` (or none)."""
    from rdkit import Chem

    rw = Chem.RWMol()
    for atomic_number in z:
        rw.AddAtom(Chem.Atom(int(atomic_number)))
    for i, j in () if bonds is None else np.asarray(bonds, np.int64):
        rw.AddBond(int(i), int(j), Chem.BondType.SINGLE)
    mol = rw.GetMol()
    conf = Chem.Conformer(len(z))
    for k, p in enumerate(np.asarray(x, dtype=np.float64)):
        conf.SetAtomPosition(k, p.tolist())
    mol.AddConformer(conf, assignId=True)
    return mol


def mmff_field(x: np.ndarray, z: np.ndarray, bonds: np.ndarray | None = None, **kwargs):
    """(molecule, properties, MMFF94 force field) of the neutral molecule with atomic numbers z
    (N,) whose bonds are perceived from x (N, 3) Å — or, given `bonds` (n_b, 2), whose bonds are
    those and only their orders are perceived — or None when that fails or MMFF94 has no
    parameters. The field points into the other two: keep them alive with it. `kwargs` go to
    `MMFFGetMoleculeForceField`."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem, rdDetermineBonds

    RDLogger.DisableLog("rdApp.*")
    mol = _bare_molecule(x, z, bonds)
    try:
        if bonds is None:
            rdDetermineBonds.DetermineBonds(mol, charge=0)
        else:
            rdDetermineBonds.DetermineBondOrders(mol, charge=0)
        Chem.SanitizeMol(mol)
    except (ValueError, RuntimeError, Chem.rdchem.MolSanitizeException):
        return None
    props = AllChem.MMFFGetMoleculeProperties(mol)
    field = None if props is None else AllChem.MMFFGetMoleculeForceField(mol, props, **kwargs)
    return None if field is None else (mol, props, field)


def mmff_minimum(x: np.ndarray, z: np.ndarray, max_steps: int = MAX_STEPS,
                 bonds: np.ndarray | None = None) -> np.ndarray | None:
    """(N, 3) Å: the MMFF94 minimum nearest to x (atomic numbers z (N,); bonds perceived from x,
    or `bonds`, `mmff_field`), or None when bonds cannot be perceived or MMFF94 has no
    parameters for the molecule."""
    built = mmff_field(x, z, bonds)
    if built is None:
        return None
    mol, _, field = built
    field.Minimize(maxIts=max_steps)
    return np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64)


def recent_mmff_minimum(x: np.ndarray, z: np.ndarray, max_steps: int = MAX_STEPS,
                        bonds: np.ndarray | None = None) -> np.ndarray | None:
    """`mmff_minimum`, with the last `RECENT_STATES` answers kept (keyed by the state's bytes
    and `bonds`): a rollout or an evaluation may meet the same state more than once. Returns a
    copy."""
    x, z = np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(z, dtype=np.int64)
    graph = b"perceived" if bonds is None else np.ascontiguousarray(bonds, dtype=np.int64).tobytes()
    key = x.tobytes() + z.tobytes() + f"{max_steps}/{x.shape}/".encode() + graph
    hit = _RECENT.get(key, lambda: mmff_minimum(x, z, max_steps, bonds))
    return None if hit is None else hit.copy()


def gfn2_minimum(start: np.ndarray, z: np.ndarray) -> np.ndarray | None:
    """(N, 3) Å: the GFN2-xTB minimum (tblite, neutral, BFGS to `GFN2_FMAX`) nearest to start,
    or None when the calculation fails."""
    from ase import Atoms
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    atoms = Atoms(numbers=np.asarray(z), positions=np.asarray(start, dtype=np.float64))
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    try:
        with single_threaded():  # tblite's OpenMP pool spins next to torch's threads (atomray.threads)
            BFGS(atoms, logfile=None).run(fmax=GFN2_FMAX, steps=GFN2_MAX_STEPS)
    except Exception:  # tblite raises on SCF failure; the caller falls back to MMFF94
        return None
    return np.asarray(atoms.get_positions(), dtype=np.float64)


def centroid_radii(x: np.ndarray) -> np.ndarray:
    """Each atom's distance (Å) from the centroid of x (…, N, 3): (…, N).

    The basins' index. Superposition with equal weights puts the two centroids together and
    rotates; a rotation keeps every atom's distance from the centroid, so by the triangle
    inequality |R p_i − q_i| ≥ | |p_i| − |q_i| | atom by atom, and the root mean square of the
    radii's differences is a lower bound on `rmsd_superposed`. A basin whose bound is already
    above `BASIN_RMSD` cannot match, and only the few left need the superposition."""
    x = np.asarray(x, dtype=np.float64)
    return np.linalg.norm(x - x.mean(-2, keepdims=True), axis=-1)


def rmsd_superposed(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Root-mean-square distance (Å) between p (…, N, 3) and q (N, 3) after the best rotation and
    translation (equal weights), batched over p's leading dimensions."""
    p = np.asarray(p, dtype=np.float64)
    q = np.broadcast_to(np.asarray(q, dtype=np.float64), p.shape)
    rot, cp, cq = kabsch_np(p, q, np.ones(p.shape[:-1]))
    fitted = (p - cp) @ np.swapaxes(rot, -1, -2) + cq
    return np.sqrt(np.square(fitted - q).sum(-1).mean(-1))


@functools.cache
def store_tag() -> str:
    """The basin store's folder for this refinement: its settings and the tblite version, so a
    change of either never reads minima refined the old way."""
    from importlib.metadata import version

    return f"gfn2-fmax{GFN2_FMAX}-steps{GFN2_MAX_STEPS}-rmsd{BASIN_RMSD}-mmff{MAX_STEPS}-tblite{version('tblite')}"


class BasinFinder:
    """The conformer basins of one molecule (atomic numbers z (N,), one atom order), found in
    the order states are met. Without a store the basins live in this object; with a
    `BasinStore` they are read from and written to disk under its lock, so every process of the
    machine numbers them the same way and uses the first writer's minimum."""

    def __init__(self, z: np.ndarray, store: BasinStore | None = None):
        self.z = np.asarray(z, dtype=np.int64)
        self.store = store
        self.mmff: list[np.ndarray] = []  # each basin's MMFF94 minimum (the first met in it)
        self.minima: list[np.ndarray] = []  # its refined minimum (or that MMFF94 minimum when refinement failed)
        self.refined: list[bool] = []
        self.files: list[Path | None] = []  # its file in the store
        self.modes_cache: dict[int, object] = {}  # basin index → its Basin with normal modes (`atomray.priors.modes`)
        self._radii: list[np.ndarray] = []  # each MMFF94 minimum's `centroid_radii`: the index of `_match`
        self._radii_stacked = np.zeros((0, 0))  # the same stacked, (basins, N), restacked after an `_add`

    def __len__(self) -> int:
        return len(self.mmff)

    def minimum(self, index: int) -> tuple[np.ndarray, bool]:
        """(minimum (N, 3) Å float64, refined) of basin `index`."""
        return self.minima[index], self.refined[index]

    def _match(self, mmff: np.ndarray, start: int = 0) -> int:
        """Index of the first basin (from `start`) whose MMFF94 minimum lies within BASIN_RMSD, or -1.
        Only basins whose `centroid_radii` bound is within BASIN_RMSD are superposed: the same
        answer as superposing every basin (the bound never exceeds the RMSD; the small margin
        covers rounding), at a cost that barely grows with the store (a store of 2 096 aspirin
        basins: 10 ms a search superposing all, 0.4 ms with the index; docs/benchmarks.md)."""
        if len(self.mmff) <= start:
            return -1
        if len(self._radii_stacked) != len(self._radii):
            self._radii_stacked = np.stack(self._radii)
        bound = np.sqrt(np.square(self._radii_stacked[start:] - centroid_radii(mmff)).mean(-1))
        maybe = start + np.flatnonzero(bound < BASIN_RMSD + 1e-9)
        if not maybe.size:
            return -1
        close = np.flatnonzero(rmsd_superposed(np.stack([self.mmff[k] for k in maybe]), mmff) < BASIN_RMSD)
        return int(maybe[close[0]]) if close.size else -1

    def _add(self, mmff: np.ndarray, minimum: np.ndarray | None, path: Path | None = None) -> int:
        self._radii.append(centroid_radii(mmff))
        self.mmff.append(mmff)
        self.minima.append(mmff if minimum is None else minimum)
        self.refined.append(minimum is not None)
        self.files.append(path)
        return len(self.mmff) - 1

    def assign(self, x: np.ndarray, max_steps: int = MAX_STEPS, bonds: np.ndarray | None = None) -> int:
        """The basin index of state x (N, 3) Å, refining a new basin when none matches; -1 when
        MMFF94 cannot handle the molecule (one warning per element formula). `bonds` (n_b, 2):
        the molecule's bond graph, kept whatever x looks like (default: perceived from x)."""
        mmff = recent_mmff_minimum(x, self.z, max_steps, bonds)
        if mmff is None:
            warn_unrelaxed(self.z)
            return -1
        hit = self._match(mmff)
        if hit >= 0:
            return hit
        if self.store is None:
            return self._add(mmff, gfn2_minimum(mmff, self.z))
        with self.store.locked():  # other processes may have added basins since we last looked
            known = len(self.mmff)
            for found, minimum, path in self.store.read_from(known):
                self._add(found, minimum, path)
            hit = self._match(mmff, known)
            if hit >= 0:
                return hit
            minimum = gfn2_minimum(mmff, self.z)
            return self._add(mmff, minimum, self.store.add(len(self.mmff), mmff, minimum))


_MACHINE: dict[bytes, BasinFinder] = {}


def machine_finder(z: np.ndarray) -> BasinFinder:
    """The process's `BasinFinder` for atomic-number sequence z, backed by the machine's basin
    store (`atomray.priors.store`; in memory only when the store is off or unwritable)."""
    key = np.asarray(z, dtype=np.int64).tobytes()
    if key not in _MACHINE:
        store = BasinStore.for_atoms(z, store_tag())
        if store is not None and not store.writable():
            warnings.warn(f"minima: the basin store {store.folder} cannot be written; basins are kept in this "
                          "process only", stacklevel=2)
            store = None
        _MACHINE[key] = BasinFinder(z, store)
    return _MACHINE[key]


def nearest_minimum(x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """(minimum (N, 3) Å or None, refined) of state x through `machine_finder`: the refined
    minimum of its basin (any orientation; superpose it), or None when MMFF94 cannot handle the
    molecule."""
    finder = machine_finder(z)
    k = finder.assign(x)
    return (None, False) if k < 0 else finder.minimum(k)


def warn_unrelaxed(z: np.ndarray) -> None:
    """One warning per element formula: MMFF94 cannot relax this molecule."""
    from ase.symbols import Symbols

    formula = Symbols(np.asarray(z)).get_chemical_formula(mode="hill") if len(z) else "(empty)"
    if formula not in _WARNED:
        _WARNED.add(formula)
        warnings.warn(f"minima: MMFF94 cannot relax {formula} (bonds not perceived or atoms not typed); it gets "
                      "no vibration prior (the rigid-body motion alone)", stacklevel=3)
