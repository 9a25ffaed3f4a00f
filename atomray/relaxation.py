"""Relaxation toward the nearest minimum: the shape a vibrating molecule oscillates about.

    shift = relaxed_shift(x, z, mask)          # (B, N, 3) Å, float64; method="gfn2" by default

For each state, the geometry x (every atom of the molecule, hydrogens included) is minimised
with MMFF94 (RDKit; bonds and bond orders perceived from x itself, neutral molecule, at most
`MAX_STEPS` steps). With method "gfn2" (the default) that minimum is then refined with
GFN2-xTB (tblite, BFGS to 0.03 eV/Å) — once per conformer basin: two states whose MMFF94
minima lie within `BASIN_RMSD` of each other after superposition share the refined minimum,
kept in memory per molecule and on disk for every process of the machine
(`atomray.basin_store`). The minimum is superposed on x (mass-weighted Kabsch,
`atomray.physics.superpose`) and the shift is the displacement from x to it. It is a vector
per atom that turns with the molecule and ignores translations, like a velocity.

Why: 98 % of the rotor floor's error out of domain is internal motion, and the best a
predictor can do at long lags, not knowing the vibrations' phases, is the molecule's average
shape. A minimum estimates that shape for a molecule never seen. Why GFN2-xTB: MMFF94's
minimum is biased against GFN2-xTB (and DFT) geometries on some molecules — on tg80-mini's
salicylic acid, moving toward it makes the rotor floor 1.5–2.5× worse; the refined minimum
helps on all 15 molecules (`benchmarks/relaxed_floor.py --per-molecule`). MMFF94 still
finds the basin (the conformer) x vibrates in, in milliseconds. Models use the shift through
`ModelConfig.relaxed_prior` / `relaxed_input` (`ModelConfig.relaxation` picks the method).

A state whose bonds cannot be perceived, or which MMFF94 cannot type, gets a zero shift (no
relaxation) and one warning per element formula; a failed GFN2-xTB refinement keeps the MMFF94
minimum. Cost: ~3.5 ms per state of 10–25 atoms on one CPU core for MMFF94, plus 0.1–0.6 s the
first time the machine meets a basin (a tg80-mini molecule has a handful), so it runs on the
host, outside autograd and `torch.compile`. A state reuses the refined minimum of the first
state of its basin (within the refinement's tolerance, ~10⁻³ Å, of its own); with the basin
store that is the same minimum in every process, so results do not depend on the order in
which processes meet the states.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import torch
from ase.symbols import Symbols
from torch import Tensor

from atomray.basin_store import BasinStore
from atomray.data.windows import atomic_masses
from atomray.physics import superpose
from atomray.recent import Recent

MAX_STEPS = 500
TAU_FS = 250.0  # a(Δt) = 1 − exp(−Δt/τ): the blend toward the minimum (relaxed_all, a fresh relaxed prior)
METHODS = ("gfn2", "mmff94")
GFN2_FMAX = 0.03  # eV/Å: the refinement stops below this largest force (tighter wanders along flat torsions:
# on lib-3785, 0.003 ends 0.26 Å RMSD away, in a conformer the molecule does not visit)
GFN2_MAX_STEPS = 300
BASIN_RMSD = 0.05  # Å: two MMFF94 minima this close (after superposition) are the same basin
_WARNED: set[str] = set()
# MMFF94 basin → GFN2-xTB minimum, per atom-number sequence: [(MMFF94 minimum, GFN2 minimum), ...]
_GFN2_MINIMA: dict[bytes, list[tuple[np.ndarray, np.ndarray]]] = {}
MAX_BASINS = 512  # per molecule kept in memory; beyond, refinements are computed and not kept
_BASIN_FILES: dict[int, tuple[np.ndarray, Path]] = {}  # id(GFN2 minimum) → (it, its file in the basin store)
_STORE_FAILED = False  # set when the store cannot be written: this process keeps basins in memory
RECENT_STATES = 8192  # MMFF94 minima kept per process, keyed by the state's bytes (least recently used out first)
_RECENT = Recent(max_items=RECENT_STATES)


def mmff_field(x: np.ndarray, z: np.ndarray, **kwargs):
    """(molecule, properties, MMFF94 force field) of the neutral molecule with atomic numbers z
    (N,) whose bonds are perceived from x (N, 3) Å, or None when that fails or MMFF94 has no
    parameters. The field points into the other two: keep them alive with it. `kwargs` go to
    `MMFFGetMoleculeForceField`."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem, rdDetermineBonds

    RDLogger.DisableLog("rdApp.*")
    rw = Chem.RWMol()
    for atomic_number in z:
        rw.AddAtom(Chem.Atom(int(atomic_number)))
    mol = rw.GetMol()
    conf = Chem.Conformer(len(z))
    for k, p in enumerate(np.asarray(x, dtype=np.float64)):
        conf.SetAtomPosition(k, p.tolist())
    mol.AddConformer(conf, assignId=True)
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=0)
        Chem.SanitizeMol(mol)
    except (ValueError, RuntimeError, Chem.rdchem.MolSanitizeException):
        return None
    props = AllChem.MMFFGetMoleculeProperties(mol)
    field = None if props is None else AllChem.MMFFGetMoleculeForceField(mol, props, **kwargs)
    return None if field is None else (mol, props, field)


def mmff_minimum(x: np.ndarray, z: np.ndarray, max_steps: int = MAX_STEPS) -> np.ndarray | None:
    """(N, 3) Å: the MMFF94 minimum nearest to x (atomic numbers z (N,)), or None when bonds
    cannot be perceived or MMFF94 has no parameters for the molecule."""
    built = mmff_field(x, z)
    if built is None:
        return None
    mol, _, field = built
    field.Minimize(maxIts=max_steps)
    return np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64)


def gfn2_minimum(start: np.ndarray, z: np.ndarray) -> np.ndarray | None:
    """(N, 3) Å: the GFN2-xTB minimum (tblite, neutral, BFGS to `GFN2_FMAX`) nearest to start,
    or None when the calculation fails."""
    from ase import Atoms
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    atoms = Atoms(numbers=np.asarray(z), positions=np.asarray(start, dtype=np.float64))
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    try:
        BFGS(atoms, logfile=None).run(fmax=GFN2_FMAX, steps=GFN2_MAX_STEPS)
    except Exception:  # tblite raises on SCF failure; the caller falls back to MMFF94
        return None
    return np.asarray(atoms.get_positions(), dtype=np.float64)


def rmsd_superposed(p: np.ndarray, q: np.ndarray) -> float:
    """Root-mean-square distance (Å) between p and q (N, 3) after the best rotation and
    translation (`atomray.physics.superpose`, equal weights)."""
    pt, qt = torch.from_numpy(np.asarray(p, dtype=np.float64)), torch.from_numpy(np.asarray(q, dtype=np.float64))
    fitted = superpose(pt, qt, torch.ones(len(pt), dtype=torch.float64))
    return float((fitted - qt).square().sum(-1).mean().sqrt())


def _match(basins: list[tuple[np.ndarray, np.ndarray]], mmff: np.ndarray) -> np.ndarray | None:
    """The GFN2-xTB minimum of the first basin whose MMFF94 minimum lies within BASIN_RMSD."""
    for known, minimum in basins:
        if rmsd_superposed(known, mmff) < BASIN_RMSD:
            return minimum
    return None


def basin_minimum(mmff: np.ndarray, z: np.ndarray) -> np.ndarray | None:
    """The GFN2-xTB minimum of the basin whose MMFF94 minimum is `mmff`: refined from it once
    per basin and molecule — once per machine with the basin store (`atomray.basin_store`),
    whose basins every process reads in the same order — then looked up (any orientation;
    callers superpose it)."""
    global _STORE_FAILED
    basins = _GFN2_MINIMA.setdefault(np.asarray(z, dtype=np.int64).tobytes(), [])
    hit = _match(basins, mmff)
    if hit is not None:
        return hit
    store = None if _STORE_FAILED or len(basins) >= MAX_BASINS else BasinStore.for_atoms(z, store_tag())
    if store is not None:
        try:
            return _stored_minimum(store, basins, mmff, z)
        except OSError as err:  # a read-only or full disk: keep going in memory, say so once
            _STORE_FAILED = True
            warnings.warn(f"relaxation: the basin store {store.folder} failed ({err}); basins are kept "
                          f"in this process only from now on", stacklevel=2)
    minimum = gfn2_minimum(mmff, z)
    if minimum is not None and len(basins) < MAX_BASINS and store is None:
        basins.append((mmff, minimum))
    return minimum


def _stored_minimum(store: BasinStore, basins: list[tuple[np.ndarray, np.ndarray]], mmff: np.ndarray,
                    z: np.ndarray) -> np.ndarray | None:
    """`basin_minimum` through the store: `basins` holds its files 0 … k−1 in order; read what
    other processes added, then refine and add a new basin if none matches (under the lock)."""
    with store.locked():
        for known, minimum, path in store.read_from(len(basins)):
            basins.append((known, minimum))
            _BASIN_FILES[id(minimum)] = (minimum, path)
        hit = _match(basins, mmff)
        if hit is not None:
            return hit
        minimum = gfn2_minimum(mmff, z)
        if minimum is not None:
            _BASIN_FILES[id(minimum)] = (minimum, store.add(len(basins), mmff, minimum))
            basins.append((mmff, minimum))
        return minimum


@functools.cache
def store_tag() -> str:
    """The basin store's folder for this refinement: its settings and the tblite version, so a
    change of either never reads minima refined the old way."""
    from importlib.metadata import version

    return f"gfn2-fmax{GFN2_FMAX}-steps{GFN2_MAX_STEPS}-rmsd{BASIN_RMSD}-mmff{MAX_STEPS}-tblite{version('tblite')}"


def basin_file(minimum: np.ndarray) -> Path | None:
    """The store's file of a refined minimum `basin_minimum` handed out, or None (not stored)."""
    hit = _BASIN_FILES.get(id(minimum))  # the entry holds the array: its id cannot be reused
    return hit[1] if hit is not None and hit[0] is minimum else None


def nearest_minimum(x: np.ndarray, z: np.ndarray, method: str = "gfn2",
                    max_steps: int = MAX_STEPS) -> tuple[np.ndarray | None, bool]:
    """(minimum (N, 3) Å or None, refined): the minimum nearest to x (atomic numbers z (N,)) —
    MMFF94's, refined with GFN2-xTB for method "gfn2" (refined True) — or None when MMFF94
    cannot handle the molecule. A failed GFN2-xTB refinement leaves the MMFF94 minimum
    (refined False). A refined minimum is the cached array of its basin: the same object for
    every state of the basin (`atomray.vibration` caches its normal modes by it)."""
    if method not in METHODS:
        raise ValueError(f"relaxation method must be one of {', '.join(METHODS)}, found {method!r}")
    mmff = recent_mmff_minimum(x, z, max_steps)
    if mmff is None or method == "mmff94":
        return mmff, False
    refined = basin_minimum(mmff, z)
    return (mmff, False) if refined is None else (refined, True)


def recent_mmff_minimum(x: np.ndarray, z: np.ndarray, max_steps: int = MAX_STEPS) -> np.ndarray | None:
    """`mmff_minimum`, with the last `RECENT_STATES` answers kept (keyed by the state's bytes): a
    training step asks for each window twice (its loss weight by a floor, then the model's
    prior), and for the fixed evaluation windows every epoch; the minimisation is most of the
    harmonic prior's cost. Returns a copy."""
    x, z = np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(z, dtype=np.int64)
    key = x.tobytes() + z.tobytes() + f"{max_steps}/{x.shape}".encode()
    hit = _RECENT.get(key, lambda: mmff_minimum(x, z, max_steps))
    return None if hit is None else hit.copy()


def relax_geometry(x: np.ndarray, z: np.ndarray, method: str = "gfn2", max_steps: int = MAX_STEPS) -> np.ndarray | None:
    """(N, 3) Å: the minimum nearest to x (`nearest_minimum`), or None when MMFF94 cannot
    handle the molecule."""
    return nearest_minimum(x, z, method, max_steps)[0]


def warn_unrelaxed(z: np.ndarray) -> None:
    """One warning per element formula: MMFF94 cannot relax this molecule."""
    formula = Symbols(z).get_chemical_formula(mode="hill")
    if formula not in _WARNED:
        _WARNED.add(formula)
        warnings.warn(f"relaxation: MMFF94 cannot relax {formula} (bonds not perceived or atoms "
                      f"not typed); its shift is 0 (no relaxation)", stacklevel=3)


def relaxed_shift(x: Tensor, z: Tensor, mask: Tensor, method: str = "gfn2", max_steps: int = MAX_STEPS) -> Tensor:
    """(B, N, 3) float64 on x's device: superposed minimum − x for each state (B, N, 3) Å with
    atomic numbers z (B, N) and real-atom mask (B, N); 0 at padding and for states MMFF94
    cannot handle. The molecule must be complete (hydrogens included)."""
    xs = x.detach().double().cpu().numpy()
    zs = z.detach().long().cpu().numpy()
    ms = mask.detach().bool().cpu().numpy()
    relaxed, done = xs.copy(), np.zeros(len(xs), dtype=bool)
    for i in range(len(xs)):
        atoms = np.flatnonzero(ms[i])
        if len(atoms) < 2:
            continue
        out = relax_geometry(xs[i, atoms], zs[i, atoms], method, max_steps)
        if out is None:
            warn_unrelaxed(zs[i, atoms])
            continue
        relaxed[i, atoms], done[i] = out, True
    weight = torch.from_numpy(atomic_masses(zs).astype(np.float64) * ms)
    xd = torch.from_numpy(xs)
    keep = torch.from_numpy(ms & done[:, None])[..., None]
    shift = (superpose(torch.from_numpy(relaxed), xd, weight) - xd) * keep
    return shift.to(x.device)


def toward_minimum(shift: Tensor, rot: Tensor, lags: Tensor, scale: Tensor | float = 1.0,
                   tau_fs: Tensor | float = TAU_FS) -> Tensor:
    """(B, P, N, 3) a(Δt) R(Δt) δ: the move toward the minimum at each lag, δ (B, N, 3) turned
    with the body's orientation R (B, P, 3, 3), a(Δt) = scale (1 − exp(−Δt/τ)), lags (B, P) fs.
    Differentiable in scale and τ (the relaxed prior learns them)."""
    a = scale * -torch.expm1(-lags.to(rot.dtype) / tau_fs)  # (B, P)
    turned = shift[:, None].to(rot.dtype) @ rot.transpose(-1, -2)  # (B, P, N, 3)
    return a[..., None, None] * turned
