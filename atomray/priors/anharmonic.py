"""Classical molecular dynamics from the start state: the anharmonic motion a force field knows.

    md, ok = md_paths(x, v, z, lags)                         # (W, P, N, 3) Å float64, (W,) bool
    pred = blend_md(harmonic, md, ok, lags, tau_fs)          # harmonic + exp(−Δt/τ) (md − harmonic)

For each state, MMFF94 (RDKit; bonds and bond orders perceived from x itself, neutral
molecule, every atom, hydrogens included) integrates Newton's equations from x and v with
velocity Verlet, `DT_FS` per step, and the positions at each lag are read off the trajectory
(the last step of each interval is shortened to land on the lag exactly). Nothing is fitted.

Why: the harmonic prior (`atomray.priors.modes`) carries GFN2-xTB's normal modes, exact to
second order about the minimum, but not the anharmonic motion of soft torsions and
large-amplitude modes — where the flexible CV folds' error lies. A force field carries it:
MMFF94 MD alone reaches an out-of-domain S2T of 0.441 and 0.433 ×10⁻² Å² on CV folds 2 and 3
(harmonic_all 0.671, 0.716), 7× below harmonic_all at 0–10 fs. But MMFF94 is not GFN2-xTB: its
frequencies are off (on the rigid aromatics of folds 0 and 4, where the GFN2-xTB modes are
nearly exact, MMFF94 MD is 13–16× worse than harmonic_all) and its trajectory parts from the
true one over a few hundred fs. So the `anharmonic_all` floor follows MMFF94 at short lags and
hands over to the harmonic floor at long ones,

    anharmonic_all(Δt) = harmonic_all(Δt) + exp(−Δt/τ) (mmff_md(Δt) − harmonic_all(Δt)),  τ = 150 fs,

τ the median of the values fitted on each CV fold's training windows (300, 100, 50, 150, 200
fs among 50–500 fs). `ModelConfig.anharmonic` makes it the prior (τ learned from 150 fs).

A state whose bonds cannot be perceived, or which MMFF94 cannot type, has no MD path (ok False;
one warning per element formula) and `blend_md` keeps the harmonic path for it. Cost: ~8 ms per
window of 10–26 atoms and horizons ≤ 400 fs on one core (mean over the CV's log-uniform
horizons), ~90 ms at 1 ps: in the data path, never in a forward pass (docs/physics-floors.md).
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch
from ase.symbols import Symbols
from torch import Tensor

from atomray.elements import atomic_masses
from atomray.priors.forcefield import KCAL_MOL_A_U, NONBONDED_THRESH
from atomray.priors.minima import mmff_field
from atomray.priors.recent import Recent

DT_FS = 0.5  # velocity-Verlet step (fs)
TAU_MD_FS = 150.0  # hand-over time of the anharmonic_all floor and a fresh anharmonic prior
CACHE_BYTES = 256 * 2**20  # MD results kept (least recently used out first), keyed by their inputs' bytes
_RECENT = Recent(max_bytes=CACHE_BYTES)
_WARNED: set[str] = set()


def mmff_acceleration(x: np.ndarray, z: np.ndarray):
    """A function pos (N, 3) Å → acceleration (N, 3) Å/fs² under MMFF94 for the molecule with
    atomic numbers z whose bonds are perceived from x; None when that fails."""
    built = mmff_field(x, z, nonBondedThresh=NONBONDED_THRESH)
    if built is None:
        return None
    field = built[2]
    inv_mass = 1.0 / atomic_masses(np.asarray(z)).astype(np.float64)[:, None]

    def acceleration(pos: np.ndarray) -> np.ndarray:
        flat = pos.ravel().tolist()
        field.CalcEnergy(flat)  # without it CalcGrad(pos) goes wrong after calls at other positions (MD blows up)
        return -np.asarray(field.CalcGrad(flat)).reshape(-1, 3) * KCAL_MOL_A_U * inv_mass

    acceleration.keep_alive = built  # the force field points into the molecule and its properties
    return acceleration


def verlet_path(x: np.ndarray, v: np.ndarray, lags: np.ndarray, acceleration, dt: float = DT_FS) -> np.ndarray:
    """(P, N, 3) positions at lags (P,) fs (ascending or not) from x, v (N, 3) by velocity Verlet."""
    order = np.argsort(lags)
    out = np.empty((len(lags), *x.shape))
    pos, vel, acc, t = x.astype(np.float64).copy(), v.astype(np.float64).copy(), acceleration(x), 0.0
    for k in order:
        while t < lags[k] - 1e-9:
            h = min(dt, lags[k] - t)
            vel = vel + 0.5 * h * acc
            pos = pos + h * vel
            acc = acceleration(pos)
            vel = vel + 0.5 * h * acc
            t += h
        out[k] = pos
    return out


def md_paths(x: np.ndarray, v: np.ndarray, z: np.ndarray, lags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(paths (W, P, N, 3) float64, ok (W,) bool): MMFF94 MD positions at each lag of W states of
    one molecule, x, v (W, N, 3) Å and Å/fs of every atom, z (N,), lags (W, P) fs; paths are 0
    where ok is False (MMFF94 cannot type the molecule). Each state's result is kept up to
    `CACHE_BYTES` (`_RECENT`, per process), keyed by its inputs' bytes: a state met again (a
    window scored twice, a rollout revisiting a state) integrates once. Bonds are perceived
    from each state itself (a proton transfer changes them between frames)."""
    x, v = np.asarray(x, np.float64), np.asarray(v, np.float64)
    z, lags = np.asarray(z, np.int64), np.asarray(lags, np.float64)
    out = np.zeros((*lags.shape, *x.shape[1:]))
    ok = np.zeros(len(x), bool)
    for i in range(len(x)):
        key = hashlib.blake2b(x[i].tobytes() + v[i].tobytes() + z.tobytes() + lags[i].tobytes(), digest_size=16).digest()

        def integrate(i=i):
            acceleration = mmff_acceleration(x[i], z)
            return None if acceleration is None else verlet_path(x[i], v[i], lags[i], acceleration)

        path = _RECENT.get(key, integrate)
        if path is None:
            _warn_unhandled(z)
            continue
        out[i], ok[i] = path, True
    return out, ok


def blend_md(harmonic: Tensor, md: Tensor, ok: Tensor, lags: Tensor, tau_fs: Tensor | float = TAU_MD_FS) -> Tensor:
    """(B, P, N, 3) harmonic + exp(−Δt/τ) (md − harmonic); lags (B, P) fs; the harmonic path
    where ok (B,) is False (no MD for that state). Differentiable in τ."""
    weight = torch.exp(-lags.to(harmonic.dtype) / tau_fs)[..., None, None] * ok.to(harmonic.dtype)[:, None, None, None]
    return harmonic + weight * (md.to(harmonic.dtype) - harmonic)


def _warn_unhandled(z: np.ndarray) -> None:
    formula = str(Symbols(np.asarray(z))) if len(z) else "(empty)"
    if formula not in _WARNED:
        _WARNED.add(formula)
        warnings.warn(f"MMFF94 cannot type {formula} (bonds not perceived or no parameters): its states keep the "
                      "harmonic path, no anharmonic motion", stacklevel=3)
