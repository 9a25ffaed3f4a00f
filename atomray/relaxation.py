"""Relaxation toward the nearest force-field minimum: the shape a vibrating molecule oscillates about.

    shift = relaxed_shift(x, z, mask)          # (B, N, 3) Å, float64

For each state, the geometry x (every atom of the molecule, hydrogens included) is minimised
with MMFF94 (RDKit; bonds and bond orders perceived from x itself, neutral molecule, at most
`MAX_STEPS` steps), the minimum is superposed on x (mass-weighted Kabsch,
`atomray.physics.superpose`) and the shift is the displacement from x to it. It is a vector
per atom that turns with the molecule and ignores translations, like a velocity.

Why: 98 % of the rotor floor's error out of domain is internal motion, and the best a
predictor can do at long lags, not knowing the vibrations' phases, is the molecule's average
shape. A force-field minimum estimates that shape for a molecule never seen
(`benchmarks/relaxed_floor.py`: rotor_all moved toward it scores 0.85 × rigid_all on the CV
folds, no network). Models use it through `ModelConfig.relaxed_prior` / `relaxed_input`.

A state whose bonds cannot be perceived, or which MMFF94 cannot type, gets a zero shift (no
relaxation) and one warning per element formula. Cost: ~3.5 ms per state of 10–25 atoms on
one CPU core (0.2 ms of it bond perception), so it runs on the host, outside autograd and
`torch.compile`. Deterministic: the same x gives the same shift.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from ase.symbols import Symbols
from torch import Tensor

from atomray.data.windows import atomic_masses
from atomray.physics import superpose

MAX_STEPS = 500
TAU_FS = 250.0  # a(Δt) = 1 − exp(−Δt/τ): the blend toward the minimum (relaxed_all, a fresh relaxed prior)
_WARNED: set[str] = set()


def relax_geometry(x: np.ndarray, z: np.ndarray, max_steps: int = MAX_STEPS) -> np.ndarray | None:
    """(N, 3) Å: the MMFF94 minimum nearest to x (atomic numbers z (N,)), or None when bonds
    cannot be perceived or MMFF94 has no parameters for the molecule."""
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
    if props is None:
        return None
    field = AllChem.MMFFGetMoleculeForceField(mol, props)
    if field is None:
        return None
    field.Minimize(maxIts=max_steps)
    return np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64)


def relaxed_shift(x: Tensor, z: Tensor, mask: Tensor, max_steps: int = MAX_STEPS) -> Tensor:
    """(B, N, 3) float64 on x's device: superposed MMFF94 minimum − x for each state (B, N, 3)
    Å with atomic numbers z (B, N) and real-atom mask (B, N); 0 at padding and for states
    MMFF94 cannot handle. The molecule must be complete (hydrogens included)."""
    xs = x.detach().double().cpu().numpy()
    zs = z.detach().long().cpu().numpy()
    ms = mask.detach().bool().cpu().numpy()
    relaxed, done = xs.copy(), np.zeros(len(xs), dtype=bool)
    for i in range(len(xs)):
        atoms = np.flatnonzero(ms[i])
        if len(atoms) < 2:
            continue
        out = relax_geometry(xs[i, atoms], zs[i, atoms], max_steps)
        if out is None:
            formula = Symbols(zs[i, atoms]).get_chemical_formula(mode="hill")
            if formula not in _WARNED:
                _WARNED.add(formula)
                warnings.warn(f"relaxation: MMFF94 cannot relax {formula} (bonds not perceived or atoms "
                              f"not typed); its shift is 0 (no relaxation)", stacklevel=2)
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
