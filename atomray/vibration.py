"""Harmonic vibration about the nearest minimum: the internal motion a start state already
tells, as far as the potential is quadratic.

    osc, d0 = harmonic_paths(x, v_int, z, mask, lags)   # (B, P, N, 3), (B, N, 3) Å, float64
    change = vibrate(osc, d0, rot, lags, tau_fs)          # (B, P, N, 3): add to the rigid motion

For each state, the nearest minimum x* (`atomray.relaxation.nearest_minimum`: MMFF94 finds the
basin, GFN2-xTB refines it) is superposed on x (mass-weighted Kabsch). The GFN2-xTB Hessian H
at x* (central differences of analytic forces, step `HESSIAN_STEP`; 6N force calls, once per
basin and process) gives the normal modes: eigenvectors e_k and angular frequencies ω_k of
M^-½ H M^-½ once the three translations and three rotations are projected out. The start
displacement d0 = x − x* and the internal velocity (v less the rigid-body motion,
`atomray.physics.internal_velocity`), mass-weighted and projected on the modes, give each
mode's amplitude and phase, and each mode oscillates on its own:

    q_k(Δt) = c_k + (q_k(0) − c_k) cos ω_k Δt + q̇_k(0) sin(ω_k Δt) / ω_k,   osc(Δt) = M^-½ Σ_k e_k q_k(Δt)

(plus the part of d0 outside the modes, which the superposition makes ~0), c_k = f_k / ω_k² the
mode's own minimum, f the mass-weighted force left at x* (the refinement stops at 0.03 eV/Å,
and along soft torsions that residual force alone moves atoms by 0.02 Å in 60 fs). Modes
softer than 30 cm⁻¹ oscillate at 30 cm⁻¹. Measured on the CV windows of nine molecules
(sum of S2T): every mode oscillating with c_k 4.21, without c_k 4.27, c_k on modes above
150 cm⁻¹ only 4.29; soft modes (< 100 cm⁻¹) held still instead of oscillating 6.97 — soft
torsions are anharmonic but their harmonic oscillation still helps. Anharmonic coupling
dephases the modes over hundreds of fs, so the prediction decays toward the minimum,
d(Δt) = exp(−Δt/τ) osc(Δt), and the change to add to the rigid-body motion is
R(Δt) (d(Δt) − d0), turned with the body. Without a refined minimum (GFN2-xTB failed, or
`method="mmff94"`) there are no modes and osc = d0 at every lag: the move toward the minimum
of `atomray.relaxation.toward_minimum` with s = 1.

Why: the trajectories are GFN2-xTB molecular dynamics, so GFN2-xTB's harmonic normal modes are
the molecule's own vibrations to first order. On tg80-mini they remove 79 % (median over
molecules) of the relaxed_all floor's error at the CV horizons (`benchmarks/relaxed_floor.py
--per-molecule`): the `harmonic_all` floor (`atomray.evaluate`) and `ModelConfig.prior=harmonic`.
The exponential damping is the ensemble average of dephasing; τ = 1000 fs fits best among
250, 500, 1000 fs and no damping on both the CV (≤ 400 fs) and pretraining (≤ 1000 fs) horizons.

Reproducibility: each basin's minimum is refined from the first state met there
(`atomray.relaxation.basin_minimum`). Without a shared store, two processes that meet a basin's
states in another order hold minima ~10⁻⁵ Å apart; the Hessians then differ at tblite's SCF
noise, and the soft modes' phases carry that into the floor: the harmonic_all error of 48
windows changed by up to 1.5 × 10⁻³ (relative) between forward and reversed order
(`benchmarks/floor_reproducibility.py --no-store`; relaxed_all within 10⁻⁵). The basin store
(`atomray.basin_store`, on by default) gives every process the first writer's minimum and
modes: the same change is then exactly 0, and a run's logged figures and a later
`atomray.evaluate` agree to float rounding.

Cost: the Hessian, 6N GFN2-xTB force calls (0.05 s for ethanol, ~1 s for 21–28 atoms on one
core), once per basin and machine (once per process with `ATOMRAY_CACHE_DIR=off`); then about
what the relaxation costs (MMFF94 per state dominates).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor

from atomray import basin_store
from atomray.data.windows import atomic_masses
from atomray.physics import kabsch
from atomray.relaxation import basin_file, nearest_minimum, warn_unrelaxed

HESSIAN_STEP = 0.005  # Å, central differences of GFN2-xTB forces
TAU_VIB_FS = 1000.0  # dephasing time of the harmonic_all floor and a fresh harmonic prior
EV_PER_A2_U_IN_FS2 = 9.648533e-3  # 1 eV / (Å² u) = 9.65e-3 fs⁻²: ω² from the mass-weighted Hessian
CM_TO_OMEGA = 2 * np.pi * 2.99792458e-5  # angular frequency (fs⁻¹) of one wavenumber (cm⁻¹)
OMEGA_MIN = CM_TO_OMEGA * 30.0  # fs⁻¹ (30 cm⁻¹): softer modes (torsions near a saddle) use this
_MODES: dict[int, tuple] = {}  # id(minimum) → (minimum, ω (K,), E (3N, K), mass-weighted residual force (K,))


def gfn2_hessian(x: np.ndarray, z: np.ndarray, step: float = HESSIAN_STEP) -> tuple[np.ndarray, np.ndarray]:
    """(3N, 3N) symmetric GFN2-xTB Hessian (eV/Å²) at x (N, 3) Å, by central differences of the
    analytic forces (tblite, neutral), and the forces at x (N, 3) eV/Å."""
    from ase import Atoms
    from tblite.ase import TBLite

    atoms = Atoms(numbers=np.asarray(z), positions=np.asarray(x, dtype=np.float64))
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    n = len(z)
    hess = np.zeros((3 * n, 3 * n))
    atoms.positions = np.array(x, dtype=np.float64)
    force = atoms.get_forces()
    for i in range(n):
        for a in range(3):
            p = np.array(x, dtype=np.float64)
            p[i, a] += step
            atoms.positions = p
            plus = atoms.get_forces().ravel()
            p[i, a] -= 2 * step
            atoms.positions = p
            minus = atoms.get_forces().ravel()
            hess[:, 3 * i + a] = (minus - plus) / (2 * step)
    return 0.5 * (hess + hess.T), force


def rigid_basis(x: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """(3N, r) orthonormal basis of the mass-weighted translations and rotations of x (N, 3);
    r = 6, or 5 for a linear molecule."""
    sq = np.sqrt(mass)[:, None]
    r = x - (mass[:, None] * x).sum(0) / mass.sum()
    vecs = [(sq * np.eye(3)[a]).ravel() for a in range(3)]
    vecs += [(sq * np.cross(np.eye(3)[a], r)).ravel() for a in range(3)]
    u, s, _ = np.linalg.svd(np.stack(vecs, 1), full_matrices=False)
    return u[:, s > 1e-6 * s.max()]


def normal_modes(minimum: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ω (K,) fs⁻¹, E (3N, K) orthonormal mass-weighted modes, f (K,) the residual force at the
    minimum on each mode, fs⁻² Å √u) of the GFN2-xTB minimum (N, 3), K = 3N − 6 (− 5 if linear);
    cached per minimum object (`nearest_minimum` hands out one array per basin) and, for a
    basin in the store, on disk beside it (`atomray.basin_store`)."""
    hit = _MODES.get(id(minimum))
    if hit is not None and hit[0] is minimum:
        return hit[1:]
    stored = basin_file(minimum)
    path = None if stored is None else stored.with_suffix(modes_suffix())
    arrays = None if path is None else basin_store.read(path)
    if arrays is None:
        arrays = dict(zip(("omega", "modes", "force"), _modes_of(minimum, z)))
        if path is not None:  # every process uses the first writer's modes
            with contextlib.suppress(OSError):  # unwritable: this process keeps its own
                arrays = basin_store.read(basin_store.write_once(path, arrays)) or arrays
    omega, modes, f = arrays["omega"], arrays["modes"], arrays["force"]
    _MODES[id(minimum)] = (minimum, omega, modes, f)
    return omega, modes, f


def modes_suffix() -> str:
    """The file suffix of a stored basin's modes: the Hessian's settings are part of it."""
    return f".modes-step{HESSIAN_STEP}-min{OMEGA_MIN:.6g}.npz"


def _modes_of(minimum: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`normal_modes` computed: the Hessian, projected and diagonalised."""
    mass = atomic_masses(np.asarray(z)).astype(np.float64)
    w = np.repeat(1.0 / np.sqrt(mass), 3)
    hess, force = gfn2_hessian(minimum, z)
    k = hess * w[:, None] * w[None, :]
    q = rigid_basis(minimum, mass)
    proj = np.eye(len(k)) - q @ q.T
    lam, vecs = np.linalg.eigh(proj @ k @ proj)
    internal = np.square(q.T @ vecs).sum(0) < 0.5
    omega = np.sqrt(np.clip(lam[internal] * EV_PER_A2_U_IN_FS2, OMEGA_MIN**2, None))
    modes = vecs[:, internal]
    return omega, modes, modes.T @ (force.ravel() * w) * EV_PER_A2_U_IN_FS2


def _paths_of(x: np.ndarray, v: np.ndarray, z: np.ndarray, lags: np.ndarray,
              method: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(osc (P, N, 3), d0 (N, 3)) for one state, or None when MMFF94 cannot relax it."""
    minimum, refined = nearest_minimum(x, z, method)
    if minimum is None:
        return None
    mass = atomic_masses(z).astype(np.float64)
    rot, cp, cq = (t.numpy() for t in kabsch(torch.from_numpy(minimum), torch.from_numpy(x), torch.from_numpy(mass)))
    d0 = x - ((minimum - cp) @ rot.T + cq)  # (N, 3), in x's frame
    if not refined:
        return np.broadcast_to(d0, (len(lags), *d0.shape)).copy(), d0
    omega, modes, f = normal_modes(minimum, z)
    sq = np.repeat(np.sqrt(mass), 3)
    q0 = modes.T @ ((d0 @ rot).ravel() * sq)  # into the minimum's frame, mass-weighted, on the modes
    qd = modes.T @ ((v @ rot).ravel() * sq)
    wt = omega[None] * lags[:, None]  # (P, K)
    centre = f / omega**2  # each mode oscillates about its own minimum (the refinement's residual force)
    q = centre + (q0 - centre) * np.cos(wt) + qd * np.sin(wt) / omega
    rest = (d0 @ rot).ravel() - (modes @ q0) / sq  # d0 outside the modes, kept
    osc = ((q @ modes.T) / sq + rest).reshape(len(lags), -1, 3) @ rot.T  # back into x's frame
    return osc, d0


def harmonic_paths(x: Tensor, v_int: Tensor, z: Tensor, mask: Tensor, lags: Tensor,
                   method: str = "gfn2") -> tuple[Tensor, Tensor]:
    """(osc (B, P, N, 3), d0 (B, N, 3)) float64 on x's device: each state's undamped harmonic
    displacement from its superposed minimum at each lag, and at lag 0 (d0 = x − minimum).
    x, v_int (B, N, 3) Å and Å/fs (velocity relative to the rigid-body motion), z, mask (B, N),
    lags (B, P) fs. Zero at padding and for states MMFF94 cannot handle (one warning)."""
    xs, vs = x.detach().double().cpu().numpy(), v_int.detach().double().cpu().numpy()
    zs, ms = z.detach().long().cpu().numpy(), mask.detach().bool().cpu().numpy()
    ls = lags.detach().double().cpu().numpy()
    osc, d0 = np.zeros((*ls.shape, *xs.shape[1:])), np.zeros_like(xs)
    for i in range(len(xs)):
        atoms = np.flatnonzero(ms[i])
        if len(atoms) < 2:
            continue
        out = _paths_of(xs[i, atoms], vs[i, atoms], zs[i, atoms], ls[i], method)
        if out is None:
            warn_unrelaxed(zs[i, atoms])
            continue
        osc[i][:, atoms], d0[i, atoms] = out
    return torch.from_numpy(osc).to(x.device), torch.from_numpy(d0).to(x.device)


def vibrate(osc: Tensor, d0: Tensor, rot: Tensor | None, lags: Tensor, tau_fs: Tensor | float = TAU_VIB_FS) -> Tensor:
    """(B, P, N, 3) R(Δt) (exp(−Δt/τ) osc(Δt) − d0): the change of the internal displacement,
    turned with the body's orientation R (B, P, 3, 3), or in x's frame when rot is None;
    lags (B, P) fs. Differentiable in τ."""
    dtype = osc.dtype if rot is None else rot.dtype
    damp = torch.exp(-lags.to(dtype) / tau_fs)[..., None, None]  # (B, P, 1, 1)
    change = damp * osc.to(dtype) - d0[:, None].to(dtype)
    return change if rot is None else change @ rot.transpose(-1, -2)
