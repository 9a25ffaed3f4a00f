"""Classical molecular dynamics from the start state: the anharmonic motion a force field knows.

    md = mmff_paths(x, v, z, mask, lags)                     # (B, P, N, 3) Å, float64
    pred = blend_md(harmonic, md, lags, tau_fs)              # harmonic + exp(−Δt/τ) (md − harmonic)

For each state, MMFF94 (RDKit; bonds and bond orders perceived from x itself, neutral
molecule, every atom, hydrogens included) integrates Newton's equations from x and v with
velocity Verlet, `DT_FS` per step, and the positions at each lag are read off the trajectory
(the last step of each interval is shortened to land on the lag exactly). Nothing is fitted.

Why: the harmonic prior (`atomray.vibration`) carries GFN2-xTB's normal modes, exact to second
order about the minimum, but not the anharmonic motion of soft torsions and large-amplitude
modes — where the flexible CV folds' error lies. A force field carries it: MMFF94 MD alone
reaches an out-of-domain S2T of 0.441 and 0.433 ×10⁻² Å² on CV folds 2 and 3 (harmonic_all
0.671, 0.716; ATOM 0.588, 0.468; EGNO 0.620, 0.529), 7× below harmonic_all at 0–10 fs. But
MMFF94 is not GFN2-xTB: its frequencies are off (on the rigid aromatics of folds 0 and 4, where
the GFN2-xTB modes are nearly exact, MMFF94 MD is 13–16× worse than harmonic_all) and its
trajectory parts from the true one over a few hundred fs. So the `anharmonic_all` floor
follows MMFF94 at short lags and hands over to the harmonic floor at long ones,

    anharmonic_all(Δt) = harmonic_all(Δt) + exp(−Δt/τ) (mmff_md(Δt) − harmonic_all(Δt)),  τ = 150 fs,

τ the median of the values fitted on each CV fold's training windows (300, 100, 50, 150, 200
fs among 50–500 fs; `benchmarks/anharmonic_floor.py`). Five-fold mean out-of-domain S2T
0.189 against harmonic_all 0.322 (fixed τ; 2026-12-03, the README's table per fold).
`ModelConfig.anharmonic` makes it the prior (τ learned from 150 fs).

A state whose bonds cannot be perceived, or which MMFF94 cannot type, has no MD path (NaN, or
`fallback` where given; one warning per element formula) and `blend_md` keeps the harmonic
path for it. Cost: ~8 ms per window of 10–26 atoms and horizons ≤ 400 fs on one core (mean
over the CV's log-uniform horizons), on the host, outside autograd.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch
from ase.symbols import Symbols
from torch import Tensor

from atomray.data.windows import atomic_masses
from atomray.recent import Recent
from atomray.relaxation import mmff_field

DT_FS = 0.5  # velocity-Verlet step (fs)
TAU_MD_FS = 150.0  # hand-over time of the anharmonic_all floor and a fresh anharmonic prior
KCAL_MOL_A_U = 4.184e-4  # 1 kcal/mol/Å divided by 1 u, in Å/fs²
CACHE_BYTES = 256 * 2**20  # MD results kept (least recently used out first), keyed by their inputs' bytes
_RECENT = Recent(max_bytes=CACHE_BYTES)
_WARNED: set[str] = set()


def mmff_acceleration(x: np.ndarray, z: np.ndarray):
    """A function pos (N, 3) Å → acceleration (N, 3) Å/fs² under MMFF94 for the molecule with
    atomic numbers z whose bonds are perceived from x; None when that fails."""
    built = mmff_field(x, z, nonBondedThresh=100.0)
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


def mmff_paths(x: Tensor, v: Tensor, z: Tensor, mask: Tensor, lags: Tensor,
               fallback: Tensor | None = None) -> Tensor:
    """(B, P, N, 3) float64 on x's device: each state's MMFF94 MD positions at each lag, from
    x, v (B, N, 3) Å and Å/fs of every atom, z, mask (B, N), lags (B, P) fs. States MMFF94
    cannot handle get `fallback` (B, P, N, 3), NaN when None; padding is 0. Results are kept
    up to `CACHE_BYTES` (`_RECENT`, per process): a training step that weighs its loss by the
    anharmonic floor and then runs an anharmonic model integrates each window once, and the
    fixed evaluation batches of every epoch after the first cost nothing. (Training batches
    are new every epoch; once an epoch's outnumber the budget, evaluation batches fall out
    and are integrated again.)"""
    arrays = tuple(np.ascontiguousarray(t.detach().cpu().numpy()).astype(dtype, copy=False) for t, dtype in
                   ((x, np.float64), (v, np.float64), (z, np.int64), (mask, np.bool_), (lags, np.float64)))
    key = hashlib.blake2b(b"".join(a.tobytes() + str(a.shape).encode() for a in arrays), digest_size=16).digest()
    out = _RECENT.get(key, lambda: _integrate(*arrays)).copy()
    if fallback is not None:
        missing = np.isnan(out)
        out[missing] = fallback.detach().double().cpu().numpy()[missing]
    return torch.from_numpy(out).to(x.device)


def _integrate(xs: np.ndarray, vs: np.ndarray, zs: np.ndarray, ms: np.ndarray, ls: np.ndarray) -> np.ndarray:
    """`mmff_paths` computed, NaN for states MMFF94 cannot handle."""
    out = np.zeros((*ls.shape, *xs.shape[1:]))
    for i in range(len(xs)):
        atoms = np.flatnonzero(ms[i])
        acceleration = mmff_acceleration(xs[i, atoms], zs[i, atoms]) if len(atoms) > 1 else None
        if acceleration is None:
            _warn_unhandled(zs[i, atoms])
            out[i][:, atoms] = np.nan
            continue
        out[i][:, atoms] = verlet_path(xs[i, atoms], vs[i, atoms], ls[i], acceleration)
    return out


def blend_md(harmonic: Tensor, md: Tensor, lags: Tensor, tau_fs: Tensor | float = TAU_MD_FS) -> Tensor:
    """(B, P, N, 3) harmonic + exp(−Δt/τ) (md − harmonic); lags (B, P) fs; the harmonic path
    where md is NaN (no MD for that state). Differentiable in τ."""
    weight = torch.exp(-lags.to(harmonic.dtype) / tau_fs)[..., None, None]
    gap = md.to(harmonic.dtype) - harmonic
    return harmonic + weight * torch.where(torch.isnan(gap), torch.zeros_like(gap), gap)


def _warn_unhandled(z: np.ndarray) -> None:
    formula = str(Symbols(np.asarray(z))) if len(z) else "(empty)"
    if formula not in _WARNED:
        _WARNED.add(formula)
        warnings.warn(f"MMFF94 cannot type {formula} (bonds not perceived or no parameters): its states keep the "
                      "harmonic path, no anharmonic motion", stacklevel=3)
