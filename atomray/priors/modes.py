"""Harmonic vibration about the nearest minimum: the internal motion a start state already
tells, as far as the potential is quadratic.

    basin = basin_modes(finder, k)                       # Basin: minimum + GFN2-xTB normal modes
    osc, d0 = vibration_paths(x, v_int, mass, lags, basin)   # (W, P, N, 3), (W, N, 3) Å, float64
    change = vibrate(osc, d0, rot, lags, tau_fs)             # (B, P, N, 3): add to the rigid motion

For each state, its basin's minimum x* (`atomray.priors.minima`: MMFF94 finds the basin,
GFN2-xTB refines it) is superposed on x (mass-weighted Kabsch). The GFN2-xTB Hessian H at x*
(central differences of analytic forces, step `HESSIAN_STEP`; 6N force calls, once per basin)
gives the normal modes: eigenvectors e_k and angular frequencies ω_k of M^-½ H M^-½ once the
three translations and three rotations are projected out. The start displacement d0 = x − x*
and the internal velocity (v less the rigid-body motion, `atomray.priors.rigid.internal_velocity`),
mass-weighted and projected on the modes, give each mode's amplitude and phase, and each mode
oscillates on its own:

    q_k(Δt) = c_k + (q_k(0) − c_k) cos ω_k Δt + q̇_k(0) sin(ω_k Δt) / ω_k,   osc(Δt) = M^-½ Σ_k e_k q_k(Δt)

(plus the part of d0 outside the modes, which the superposition makes ~0), c_k = f_k / ω_k² the
mode's own minimum, f the mass-weighted force left at x* (the refinement stops at 0.03 eV/Å,
and along soft torsions that residual force alone moves atoms by 0.02 Å in 60 fs). Modes
softer than 30 cm⁻¹ oscillate at 30 cm⁻¹. Measured on the CV windows of nine molecules
(sum of S2T): every mode oscillating with c_k 4.21, without c_k 4.27, c_k on modes above
150 cm⁻¹ only 4.29; soft modes (< 100 cm⁻¹) held still instead of oscillating 6.97 — soft
torsions are anharmonic but their harmonic oscillation still helps.

A state far from its basin's minimum has its modes capped. In equilibrium the modes' harmonic
potential energy about their centres, ½ Σ ω_k² (q_k(0) − c_k)², is about their kinetic energy
½ Σ q̇_k(0)²; where it is more than `CAP_GATE` = 2 times that, each mode swings at most
`AMPLITUDE_CAP` = 1 thermal amplitude √(kT)/ω_k, kT = ⟨q̇_k(0)²⟩ over the modes (the state's own
internal kinetic temperature): c_k is moved to within that of q_k(0). Why: a flexible molecule's
start is often far from its basin's minimum along a torsion (gabapentin's median window: d0
0.42 Å RMS per atom). A rotation is not linear in Cartesian coordinates, so its second-order
part projects onto stiff modes with up to hundreds of kT of potential energy (per mode: median
0.5 kT, 99th percentile 257 kT) that no vibration holds, and the uncapped prior swung those
stiff modes through the minimum and back every few fs: harmonic_all was 14× worse than no motion
at 25 fs on gabapentin. Rigid molecules are in equilibrium (potential ÷ kinetic: median 1.0 for
benzene, 5–8 for gabapentin and guaifenesin) and keep the exact harmonic swing. Chosen among
caps of 0.5–2 amplitudes and gates of 0–5 on 12 training molecules of the tg80 build, on identical
windows (docs/experiments.md, "A thermal cap on the harmonic prior"; harmonic_all S2T in
10⁻² Å² at 25 / 100 / 400 / 1000 fs): uncapped 0.551 / 1.072 / 4.249 / 7.870, this 0.047 /
0.247 / 2.296 / 6.076; on the build's 10 held-out molecules 0.757 / 1.023 / 4.778 / 11.818 →
0.060 / 0.336 / 3.466 / 10.871; on tg80-mini's 16 0.112 / 0.227 / 1.239 / 2.819 → 0.031 / 0.153 /
1.168 / 2.757 (capping every window instead: benzene 0.001 → 0.022 at 25 fs; gated 0.004).
A state at rest has no thermal amplitude: displaced, it keeps its displacement and moves by its
velocities alone.

Anharmonic coupling dephases the modes over hundreds of fs, so the prediction decays toward the
minimum, d(Δt) = exp(−Δt/τ) osc(Δt), and the change to add to the rigid-body motion is
R(Δt) (d(Δt) − d0), turned with the body. Without a refined minimum (GFN2-xTB failed) there
are no modes and osc = d0 at every lag: the undamped part is a move toward the minimum.

Why: the trajectories are GFN2-xTB molecular dynamics, so GFN2-xTB's harmonic normal modes are
the molecule's own vibrations to first order. On tg80-mini they remove 79 % (median over
molecules) of the relaxed_all floor's error at the CV horizons (docs/physics-floors.md): the
`harmonic_all` floor and `ModelConfig.prior=harmonic`. The exponential damping is the ensemble
average of dephasing; τ = 1000 fs fits best among 250, 500, 1000 fs and no damping on both the
CV (≤ 400 fs) and pretraining (≤ 1000 fs) horizons.

Reproducibility: a basin's minimum is refined from the first state met there, and its modes
follow from that minimum. A data set's basins are computed once, in frame order, and stored
with it (`atomray.priors.frames`); new states share the machine's basin store
(`atomray.priors.store`), where the modes are written beside each basin's minimum. Either
way every process uses the same minimum and the same modes, so a run's logged floors and a
later evaluation agree to float rounding (without a shared minimum, the soft modes' phases
moved the harmonic_all error of 48 windows by up to 1.5 × 10⁻³ between two processes).

Cost: the Hessian, 6N GFN2-xTB force calls (0.05 s for ethanol, ~1 s for 21–28 atoms on one
core), once per basin; then the paths are a few small matrix products per window, vectorised
over every window of a basin.
"""

from __future__ import annotations

import contextlib
import math
from functools import cached_property
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from atomray.elements import atomic_masses
from atomray.priors import store
from atomray.priors.minima import BasinFinder, mmff_field
from atomray.priors.rigid import kabsch_np, rotated
from atomray.threads import single_threaded

HESSIAN_STEP = 0.005  # Å, central differences of GFN2-xTB forces
TAU_VIB_FS = 1000.0  # dephasing time of the harmonic_all floor and a fresh harmonic prior
EV_PER_A2_U_IN_FS2 = 9.648533e-3  # 1 eV / (Å² u) = 9.65e-3 fs⁻²: ω² from the mass-weighted Hessian
CM_TO_OMEGA = 2 * np.pi * 2.99792458e-5  # angular frequency (fs⁻¹) of one wavenumber (cm⁻¹)
OMEGA_MIN = CM_TO_OMEGA * 30.0  # fs⁻¹ (30 cm⁻¹): softer modes (torsions near a saddle) use this
AMPLITUDE_CAP = 1.0  # far from the minimum, a mode swings at most this many thermal amplitudes √(kT)/ω
CAP_GATE = 2.0  # far: the modes' potential energy about their centres over their kinetic energy


@dataclass(frozen=True)
class Basin:
    """One conformer basin of a molecule: atomic numbers z (N,), the minimum (N, 3) Å, and its
    normal modes — angular frequencies omega (K,) fs⁻¹, orthonormal mass-weighted modes
    (3N, K), the residual force on each mode (K,) fs⁻² Å √u. K = 0 when the minimum is
    MMFF94's alone (refinement failed): no modes, the vibration is a move to the minimum."""

    z: np.ndarray
    minimum: np.ndarray
    omega: np.ndarray
    modes: np.ndarray
    force: np.ndarray

    @property
    def refined(self) -> bool:
        return self.modes.shape[1] > 0

    @classmethod
    def unrefined(cls, z: np.ndarray, minimum: np.ndarray) -> "Basin":
        n = len(z)
        return cls(np.asarray(z, np.int64), minimum, np.zeros(0), np.zeros((3 * n, 0)), np.zeros(0))

    @cached_property
    def terminal_groups(self) -> list[tuple[int, int, list[int]]]:
        """Its terminal groups (`rotor_groups` of the minimum's bonds), perceived once per basin."""
        return rotor_groups(self.z, bond_pairs(self))

    @cached_property
    def torsions(self) -> list[tuple[int, int, int, int, list[int]]]:
        """(A, Y, X, D, side) per saturated rotatable bond Y–X of the minimum (`torsion_groups`,
        `saturated`): the dihedral A–Y–X–D that names its turn (A a heavy neighbour of Y, D one of X
        on the turning side)."""
        bonds = bond_pairs(self)
        heavy: dict[int, list[int]] = {}
        for i, j in bonds:
            if self.z[i] > 1 and self.z[j] > 1:
                heavy.setdefault(int(i), []).append(int(j))
                heavy.setdefault(int(j), []).append(int(i))
        return [(next(k for k in heavy[y] if k != x), y, x, next(k for k in heavy[x] if k in side), side)
                for y, x, side in torsion_groups(self.minimum, self.z, bonds, saturated=True)]

    def permuted(self, order: np.ndarray) -> "Basin":
        """The same basin with its atoms in `order` (indices into this basin's atoms)."""
        k = self.modes.shape[1]
        modes = self.modes.reshape(len(self.z), 3, k)[order].reshape(3 * len(order), k)
        return Basin(self.z[order], self.minimum[order], self.omega, modes, self.force)


def gfn2_hessian(x: np.ndarray, z: np.ndarray, step: float = HESSIAN_STEP) -> tuple[np.ndarray, np.ndarray]:
    """(3N, 3N) symmetric GFN2-xTB Hessian (eV/Å²) at x (N, 3) Å, by central differences of the
    analytic forces (tblite, neutral), and the forces at x (N, 3) eV/Å."""
    with single_threaded():  # tblite's OpenMP pool spins next to torch's threads (atomray.threads)
        return _hessian(x, z, step)


def _hessian(x: np.ndarray, z: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
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
    minimum on each mode) of the GFN2-xTB minimum (N, 3), K = 3N − 6 (− 5 if linear): the
    Hessian, projected and diagonalised."""
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


def modes_suffix() -> str:
    """The file suffix of a stored basin's modes: the Hessian's settings are part of it."""
    return f".modes-step{HESSIAN_STEP}-min{OMEGA_MIN:.6g}.npz"


def basin_modes(finder: BasinFinder, index: int) -> Basin:
    """Basin `index` of `finder` with its normal modes: computed once per process, and for a
    basin in the machine's store read from (or written to) the file beside its minimum, so
    every process uses the first writer's modes."""
    if index in finder.modes_cache:
        return finder.modes_cache[index]
    minimum, refined = finder.minimum(index)
    if not refined:
        basin = Basin.unrefined(finder.z, minimum)
    else:
        stored = finder.files[index]
        path = None if stored is None else stored.with_suffix(modes_suffix())
        arrays = None if path is None else store.read(path)
        if arrays is None:
            arrays = dict(zip(("omega", "modes", "force"), normal_modes(minimum, finder.z)))
            if path is not None:  # every process uses the first writer's modes
                with contextlib.suppress(OSError):  # unwritable: this process keeps its own
                    arrays = store.read(store.write_once(path, arrays)) or arrays
        basin = Basin(finder.z, minimum, arrays["omega"], arrays["modes"], arrays["force"])
    finder.modes_cache[index] = basin
    return basin


def dihedral(x: np.ndarray, a: int, b: int, c: int, d: int) -> float:
    """The dihedral angle a–b–c–d of x (N, 3), radians in (−π, π] (`atomray.structure.torsion_angles`)."""
    from atomray.structure import torsion_angles

    return float(np.radians(torsion_angles(np.asarray(x, np.float64)[None], [[a, b, c, d]])[0, 0]))


def torsion_matched(basin: Basin, x: np.ndarray) -> Basin:
    """The basin with each rotatable bond Y–X's turning side (`Basin.torsions`) turned about the
    bond until its dihedral is that of the state x (N, 3): the harmonic vibration about the minimum
    as it would be with the state's torsions. The modes' components of the side's atoms and of X
    turn with it (X sits on the axis: its stretch along the bond is unchanged, and its bonds into
    the side keep their direction relative to it; left unturned, X's C–H stretches became bends and
    a thermal butane state turned 120° shrank a bond by 10 % in 100 fs against 5 % unturned). One
    pass suffices, since turning a side about its bond keeps every other bond's dihedral."""
    m = np.array(basin.minimum, np.float64)
    turn = np.broadcast_to(np.eye(3), (len(m), 3, 3)).copy()  # (N, 3, 3) each atom's total turn
    for a, y, c, d, side in basin.torsions:
        angle = dihedral(x, a, y, c, d) - dihedral(m, a, y, c, d)
        m[side] = m[c] + rotated(m[side] - m[c], m[c] - m[y], angle)
        turn[[c, *side]] = rotated(np.eye(3), m[c] - m[y], angle).T @ turn[[c, *side]]  # r @ u turns u
    k = basin.modes.shape[1]
    modes = np.einsum("nij,njk->nik", turn, basin.modes.reshape(len(m), 3, k)).reshape(3 * len(m), k)
    return Basin(basin.z, m, basin.omega, modes, basin.force)


def vibration_paths(x: np.ndarray, v_int: np.ndarray, mass: np.ndarray, lags: np.ndarray, basin: Basin,
                    velocity: bool = False, circles: bool = False,
                    match_torsions: float = math.inf) -> tuple[np.ndarray, ...]:
    """(osc (W, P, N, 3), d0 (W, N, 3)) float64 for W states of one basin: the undamped harmonic
    displacement from the superposed minimum at each lag, and at lag 0 (d0 = x − minimum). With
    `velocity`, also osc_v (W, P, N, 3) Å/fs, the time derivative of osc at each lag (the velocity
    of the undamped oscillation, what a velocity head starts from). x, v_int (W, N, 3) Å and Å/fs (velocity
    relative to the rigid-body motion), mass (N,) u, lags (W, P) fs; atoms in the basin's order.
    `circles` turns terminal groups' hydrogens on circles about their axis (`rotor_circles`,
    `ModelConfig.rotor_circles`) instead of the modes' straight tangent lines. A state whose RMS
    displacement from the superposed minimum is more than `match_torsions` Å vibrates about
    `torsion_matched(basin, x)`, the minimum with the state's saturated torsions (the rollouts' option
    `atomray.rollout.Control.match_torsions_a`; training and the floors keep math.inf, never)."""
    w, n = x.shape[:2]
    minimum = np.broadcast_to(basin.minimum, x.shape)
    rot, cp, cq = kabsch_np(minimum, x, np.broadcast_to(mass, (w, n)))  # (W, 3, 3), (W, 1, 3)
    d0 = x - ((minimum - cp) @ np.swapaxes(rot, -1, -2) + cq)  # (W, N, 3), in x's frame
    if math.isfinite(match_torsions) and basin.refined:
        far = np.sqrt((d0**2).sum(-1).mean(-1)) > match_torsions
        if far.any() and basin.torsions:
            parts = [(np.flatnonzero(~far), basin)] + [(np.array([i]), torsion_matched(basin, x[i]))
                                                      for i in np.flatnonzero(far)]
            done = [(i, vibration_paths(x[i], v_int[i], mass, lags[i], b, velocity, circles))
                    for i, b in parts if len(i)]
            out = tuple(np.empty((w,) + a.shape[1:]) for a in done[0][1])
            for i, arrays in done:
                for o, a in zip(out, arrays):
                    o[i] = a
            return out
    if not basin.refined:
        osc = np.broadcast_to(d0[:, None], (w, lags.shape[1], n, 3)).copy()
        return (osc, d0, np.zeros_like(osc)) if velocity else (osc, d0)
    sq = np.repeat(np.sqrt(mass), 3)  # (3N,)
    d0m = (d0 @ rot).reshape(w, 3 * n)  # into the minimum's frame
    q0 = (d0m * sq) @ basin.modes  # (W, K): mass-weighted, on the modes
    qd = ((v_int @ rot).reshape(w, 3 * n) * sq) @ basin.modes
    omega = basin.omega
    wt = omega * lags[..., None]  # (W, P, K)
    centre = basin.force / omega**2  # each mode oscillates about its own minimum ...
    kinetic = (qd**2).sum(1, keepdims=True)  # (W, 1), twice the modes' kinetic energy
    potential = ((omega * (q0 - centre)) ** 2).sum(1, keepdims=True)  # (W, 1), twice their potential energy
    far = potential > CAP_GATE * kinetic  # a displacement no vibration holds
    thermal = np.sqrt(kinetic / len(omega)) / omega  # (W, K) √(kT)/ω, kT = ⟨q̇²⟩
    cap = np.where(far, AMPLITUDE_CAP * thermal, np.inf)
    centre = q0 - np.clip(q0 - centre, -cap, cap)  # ... there, within a thermal amplitude of the start
    cos, sin = np.cos(wt), np.sin(wt)
    q = centre[:, None] + (q0 - centre)[:, None] * cos + qd[:, None] * sin / omega  # (W, P, K)
    rest = d0m - (q0 @ basin.modes.T) / sq  # (W, 3N): d0 outside the modes, kept
    osc = ((q @ basin.modes.T) / sq + rest[:, None]).reshape(w, -1, n, 3)  # (W, P, N, 3), minimum's frame
    back = np.swapaxes(rot, -1, -2)[:, None]  # into x's frame
    osc = osc @ back
    if FIRST_ORDER_BONDS:
        osc = first_order_bonds(x - d0, osc, d0, mass, bond_pairs(basin))
    if not velocity:
        if circles:
            osc = rotor_circles(x - d0, osc, basin.terminal_groups)
        return osc, d0
    q_dot = qd[:, None] * cos - ((q0 - centre) * omega)[:, None] * sin  # (W, P, K)
    osc_v = ((q_dot @ basin.modes.T) / sq).reshape(w, -1, n, 3) @ back
    if circles:
        osc, osc_v = rotor_circles(x - d0, osc, basin.terminal_groups, osc_v)
    return osc, d0, osc_v


# Hold bond lengths to first order in the modes' displacement (`first_order_bonds`)? Measured, off:
# it removes the flexible molecules' spurious bond stretching but shortens rigid ones' bonds, whose
# Cartesian second-order lengthening stood in for the anharmonic thermal expansion the harmonic
# model lacks (docs/experiments.md, "Where the bonds go wrong"; benchmarks/harmonic_cap.py +bonds).
FIRST_ORDER_BONDS = False


def bond_pairs(basin: Basin) -> np.ndarray:
    """(n_b, 2) the bonds of a basin's minimum (`atomray.structure.bonds_from_geometry`)."""
    from atomray.structure import bonds_from_geometry

    return np.asarray(bonds_from_geometry(basin.z, basin.minimum).bonds, np.int64).reshape(-1, 2)


def first_order_bonds(s: np.ndarray, osc: np.ndarray, d0: np.ndarray, mass: np.ndarray, bonds: np.ndarray,
                      tol: float = 1e-5, max_iter: int = 50) -> np.ndarray:
    """The vibration osc (W, P, N, 3) about the superposed minimum s (W, N, 3) with each bond's
    length held to first order in the displacement: L(Δt) = L(0) + ê·Δ(Δt), ê the bond's direction
    in the start x = s + d0 and Δ the change of the two atoms' relative displacement. Normal modes
    are linear in Cartesian coordinates, so a mode that turns a group (a methyl, a hydroxyl, a
    torsion) moves its atoms along tangents and lengthens its bonds at second order, by
    |Δ⊥|² / 2L; this removes that part: mass-weighted Gauss–Seidel sweeps move each bond's two
    atoms along the bond to its length (the centre of mass stays; to `tol` Å or `max_iter` sweeps),
    leaving the first-order motion and x itself (Δ = 0) alone. Targets are kept within 0.5–1.5 of
    the start's length."""
    if not len(bonds):
        return osc
    bi, bj = bonds[:, 0], bonds[:, 1]
    x0 = s + d0
    r0 = x0[:, bi] - x0[:, bj]  # (W, B, 3)
    l0 = np.linalg.norm(r0, axis=-1)
    rel = (osc[:, :, bi] - osc[:, :, bj]) - (d0[:, None, bi] - d0[:, None, bj])  # (W, P, B, 3)
    target = l0[:, None] + np.einsum("wbk,wpbk->wpb", r0 / l0[..., None], rel)
    inv = 1.0 / np.asarray(mass, np.float64)  # (N,)
    p = s[:, None] + osc  # (W, P, N, 3)
    target = np.clip(target, 0.5 * l0[:, None], 1.5 * l0[:, None])  # first order is for small displacements
    for _ in range(max_iter):  # Gauss-Seidel sweeps over the bonds, each moved along itself
        worst = 0.0
        for b, (i, j) in enumerate(bonds):
            r = p[:, :, i] - p[:, :, j]  # (W, P, 3)
            length = np.linalg.norm(r, axis=-1)
            excess = length - target[:, :, b]
            worst = max(worst, float(np.abs(excess).max()))
            g = (excess / (np.maximum(length, 1e-6) * (inv[i] + inv[j])))[..., None] * r
            p[:, :, i] -= inv[i] * g
            p[:, :, j] += inv[j] * g
        if worst < tol:
            break
    return p - s[:, None]


def rotor_groups(z: np.ndarray, bonds: np.ndarray) -> list[tuple[int, int, list[int]]]:
    """(Y, X, [H, …]) for every atom X with exactly one heavy neighbour Y and at least one
    hydrogen (a methyl, an amino or hydroxyl group, a terminal =CH2): the groups that turn about
    the bond Y–X."""
    z = np.asarray(z)
    neighbours: dict[int, list[int]] = {}
    for i, j in np.asarray(bonds, np.int64).reshape(-1, 2):
        neighbours.setdefault(int(i), []).append(int(j))
        neighbours.setdefault(int(j), []).append(int(i))
    groups = []
    for x, near in sorted(neighbours.items()):
        heavy = [k for k in near if z[k] > 1]
        hydrogens = [k for k in near if z[k] == 1]
        if z[x] > 1 and len(heavy) == 1 and hydrogens:
            groups.append((heavy[0], x, hydrogens))
    return groups


def _axis(p: np.ndarray, y: int, x: int) -> np.ndarray:
    """The unit vector Y→X (..., 1, 3) of p (..., N, 3)."""
    axis = p[..., x, :] - p[..., y, :]
    return (axis / np.linalg.norm(axis, axis=-1, keepdims=True))[..., None, :]


def _about_axis(p: np.ndarray, y: int, x: int, hydrogens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The hydrogens' offsets from X (..., H, 3) in p (..., N, 3), split into the part along
    the axis Y→X and the part off it."""
    axis = _axis(p, y, x)
    h = p[..., hydrogens, :] - p[..., x, None, :]
    along = (h * axis).sum(-1, keepdims=True) * axis
    return along, h - along


def rotor_circles(s: np.ndarray, osc: np.ndarray, groups: list[tuple[int, int, list[int]]],
                  osc_v: np.ndarray | None = None):
    """The vibration osc (W, P, N, 3) about the superposed minimum s (W, N, 3) with each terminal
    group's hydrogens turned on circles about the group's axis: at every lag, a hydrogen's offset
    from the line Y→X keeps its direction and its height along the line, and takes the length
    it has at the minimum s. Normal modes are straight lines, so a methyl turning at thermal
    speed (~0.01 Å/fs at its hydrogens) leaves its circle along the tangent and stretches its C–H
    bonds by |Δ⊥|²/2L, 1.1 → 2 Å within 200 fs on a fast start; on the circle it turns instead
    (a turn by φ on the tangent line becomes the exact turn by φ), and a start whose group was
    squeezed or stretched is drawn back to the minimum's offset. The modes' own C–H stretch is
    left out of these hydrogens' offsets (a few hundredths of an Å); their bends stay. With the
    paths' velocities osc_v (W, P, N, 3), returns (osc, osc_v) with each of these hydrogens'
    velocity relative to X less its part along its offset from the axis: it moves along its
    circle (and the axis), as its position does (measured: velocities left on the straight
    lines drain the positions' spread, every width 0.4–0.7 of the reference's)."""
    if not groups:
        return (osc, osc_v) if osc_v is not None else osc
    radii = rotor_radii(s, groups)
    p, osc_v = onto_circles(s[:, None] + osc, groups, [r[:, None] for r in radii], osc_v)
    return (p - s[:, None], osc_v) if osc_v is not None else p - s[:, None]


def rotor_radii(s: np.ndarray, groups: list[tuple[int, int, list[int]]]) -> list[np.ndarray]:
    """Per group (`rotor_groups`), each hydrogen's distance from the group's axis Y→X in the
    states s (W, N, 3): a list of (W, H, 1) Å."""
    return [np.linalg.norm(_about_axis(s, y, x, h)[1], axis=-1, keepdims=True) for y, x, h in groups]


def rotor_heights(s: np.ndarray, groups: list[tuple[int, int, list[int]]]) -> list[np.ndarray]:
    """Per group (`rotor_groups`), the height of each hydrogen's offset from X along the axis
    Y→X in the states s (W, N, 3) (positive away from Y): a list of (W, H, 1) Å."""
    return [((s[..., h, :] - s[..., x, None, :]) * _axis(s, y, x)).sum(-1, keepdims=True) for y, x, h in groups]


def steer_heights(p: np.ndarray, groups: list[tuple[int, int, list[int]]], heights: list[np.ndarray],
                  lift: np.ndarray, gain: float) -> tuple[np.ndarray, np.ndarray]:
    """(p, lift) with every terminal group's hydrogens moved along the group's axis Y→X by their
    lift (..., N) Å, and the lift then moved by gain × (the group's mean target height (`heights`,
    per group broadcastable to (..., H, 1)) − its mean height now): an integral controller on the
    group's mean height alone. The hydrogens keep their spread about that mean, step to step and
    among themselves; only a steady drift of the mean is taken out, at the rate gain per call.
    p (..., N, 3); copies."""
    p = p.copy()
    lift = np.array(lift, dtype=np.float64, copy=True)
    for (y, x, hydrogens), target in zip(groups, heights):
        axis = _axis(p, y, x)
        p[..., hydrogens, :] += lift[..., hydrogens, None] * axis
        now = ((p[..., hydrogens, :] - p[..., x, None, :]) * axis).sum(-1)  # (..., H)
        error = np.asarray(target)[..., 0].mean(-1, keepdims=True) - now.mean(-1, keepdims=True)
        lift[..., hydrogens] += gain * error
    return p, lift


def onto_circles(p: np.ndarray, groups: list[tuple[int, int, list[int]]], radii: list[np.ndarray],
                 v: np.ndarray | None = None, heights: list[np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """(p, v) with every terminal group's hydrogens moved onto their circles: each one's offset
    from the line Y→X keeps its direction and its height along the line (or takes `heights`,
    per group broadcastable to (..., H, 1)) and takes the length `radii` (the same shapes); and
    each one's velocity relative to X loses its part along that offset (and, with `heights`,
    along the line), so it moves along its circle. p, v (..., N, 3); copies."""
    p = p.copy()
    v = None if v is None else v.copy()
    for k, ((y, x, hydrogens), target) in enumerate(zip(groups, radii)):
        along, radial = _about_axis(p, y, x, hydrogens)
        if heights is not None:
            along = _axis(p, y, x) * heights[k]
        radius = np.maximum(np.linalg.norm(radial, axis=-1, keepdims=True), 1e-9)
        p[..., hydrogens, :] = p[..., x, None, :] + along + radial * (target / radius)
        if v is not None:  # each hydrogen moves along its circle, not off it
            _, radial = _about_axis(p, y, x, hydrogens)
            out = radial / np.maximum(np.linalg.norm(radial, axis=-1, keepdims=True), 1e-9)
            rel = v[..., hydrogens, :] - v[..., x, None, :]
            rel = rel - (rel * out).sum(-1, keepdims=True) * out
            if heights is not None:
                axis = _axis(p, y, x)
                rel = rel - (rel * axis).sum(-1, keepdims=True) * axis
            v[..., hydrogens, :] = v[..., x, None, :] + rel
    return p, v


def vibrate(osc: Tensor, d0: Tensor, rot: Tensor | None, lags: Tensor, tau_fs: Tensor | float = TAU_VIB_FS) -> Tensor:
    """(B, P, N, 3) R(Δt) (exp(−Δt/τ) osc(Δt) − d0): the change of the internal displacement,
    turned with the body's orientation R (B, P, 3, 3), or in x's frame when rot is None;
    lags (B, P) fs. Differentiable in τ."""
    dtype = osc.dtype if rot is None else rot.dtype
    damp = torch.exp(-lags.to(dtype) / tau_fs)[..., None, None]  # (B, P, 1, 1)
    change = damp * osc.to(dtype) - d0[:, None].to(dtype)
    return change if rot is None else change @ rot.transpose(-1, -2)


def torsion_groups(x: np.ndarray, z: np.ndarray, bonds: np.ndarray | None,
                   saturated: bool = False) -> list[tuple[int, int, list[int]]]:
    """(Y, X, [atoms of X's side less X]) for every rotatable heavy-atom bond of the state x (N, 3) Å
    with atoms z over the bond graph `bonds` (None: perceived from x), its smaller side turning:
    single, in no ring, between two heavy atoms each with another heavy neighbour, and not an
    amide's C–N (its barrier, ~18 kcal/mol, holds it for far longer than a rollout); none where
    RDKit cannot perceive the bond orders. The torsion turns' bonds (`atomray.rotor_turns`).
    `saturated`: only bonds between two atoms with single bonds alone, neither aromatic (sp3–sp3:
    three rotamers behind low barriers; a torsion next to a π bond is held near planar)."""
    built = mmff_field(np.asarray(x, np.float64), np.asarray(z), bonds)
    if built is None:
        return []
    mol = built[0]
    heavy = [sum(n.GetAtomicNum() > 1 for n in a.GetNeighbors()) for a in mol.GetAtoms()]

    def double_bonded_o(atom) -> bool:
        return any(b.GetBondTypeAsDouble() == 2.0 and b.GetOtherAtom(atom).GetAtomicNum() in (8, 16)
                   for b in atom.GetBonds())

    def side(start: int, away: int) -> list[int]:
        seen, todo = {start}, [start]
        while todo:
            for n in mol.GetAtomWithIdx(todo.pop()).GetNeighbors():
                k = n.GetIdx()
                if k != away and k not in seen:
                    seen.add(k)
                    todo.append(k)
        return sorted(seen - {start})

    groups = []
    for bond in mol.GetBonds():
        a, b = bond.GetBeginAtom(), bond.GetEndAtom()
        single = bond.GetBondType() == bond.GetBondType().SINGLE and not bond.IsInRing()
        inner = min(a.GetAtomicNum(), b.GetAtomicNum()) > 1 and min(heavy[a.GetIdx()], heavy[b.GetIdx()]) > 1
        if not (single and inner):  # a double or ring bond, or a terminal group's (the rotor turns')
            continue
        if saturated and not all(not atom.GetIsAromatic() and all(o.GetBondTypeAsDouble() == 1.0
                                                                   for o in atom.GetBonds()) for atom in (a, b)):
            continue
        if {a.GetAtomicNum(), b.GetAtomicNum()} == {6, 7} and double_bonded_o(a if a.GetAtomicNum() == 6 else b):
            continue  # an amide's C–N
        y, c = a.GetIdx(), b.GetIdx()
        near_c, near_y = side(c, y), side(y, c)
        groups.append((y, c, near_c) if len(near_c) <= len(near_y) else (c, y, near_y))
    return groups
