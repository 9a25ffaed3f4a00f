"""MMFF94 energy and forces in batched PyTorch, and velocity-Verlet MD for many windows at once.

    terms = [mmff_terms(x, z) for x, z in states]     # RDKit, once per molecule or state; None: untyped
    batch = MMFFBatch.stack(terms, n_atoms=N)         # B windows padded to N atoms
    e = energy(batch, pos)                            # (B,) kcal/mol at pos (B, N, 3) Å
    e, f = forces(batch, pos)                         # and (B, N, 3) kcal/mol/Å
    paths = verlet_paths(batch, x, v, mass, lags)     # (B, P, N, 3) Å at lags (B, P) fs; float64

Why: `atomray.priors.anharmonic` integrates MMFF94 one window at a time through RDKit (~45 µs
per 0.5-fs step of a 21-atom molecule with its Python around it, ~90 ms per window at 1 ps).
Here the force field is flat term lists over all windows of a batch — every term's atom
indices point into the flattened (B·N) atom axis, its window into (B,) — so one evaluation is a
fixed ~300 tensor ops whatever B is, on CPU or CUDA, with no Python loop over terms or atoms,
and `torch.compile` fuses it.

What RDKit supplies: bonds perceived from the geometry (`atomray.priors.minima.mmff_field`:
`DetermineBonds(charge=0)`, sanitised), MMFF94 atom types, partial charges and the parameters
of each term (`MMFFMolProperties.GetMMFF*Params`), enumerated as RDKit's MMFF builder does:

    bond stretch   every bond with parameters
    angle bend     every i-j-k about a centre of degree ≥ 2; linear form k_a (1 + cos θ) when the
                   centre's MMFF type is linear (types 4, 53, 61)
    stretch-bend   the same angles except about linear centres, θ0 of the angle, r0 of the bonds
                   (carried on the angle rows: k_ba = 0 where RDKit has no stretch-bend)
    out-of-plane   the three (i, j, k; l out of plane) permutations about every centre of degree 3
                   with a parameter (zero k_oop dropped: it adds nothing)
    torsion        i-j-k-l about every bond j-k whose atoms are both non-terminal, in no triple
                   bond and SP2 or SP3, i ≠ l (no three-membered rings)
    vdW + charges  every pair ≥ 3 bonds apart in the same fragment and ≤ 100 Å apart in the
                   perceiving geometry; buffered 14-7 with RDKit's donor-acceptor scaled R*, ε;
                   332.0716 q_i q_j / (r + 0.05) (constant dielectric 1), × 0.75 for 1-4 pairs

and the energy expressions are MMFF94's (Halgren, J. Comput. Chem. 17, 490 (1996)) with
143.9325 kcal/mol per mdyn Å and θ, χ in degrees inside the angle terms. Energies and
gradients equal RDKit's `CalcEnergy` / `CalcGrad` to ~1e-13 relative on tg80-mini.

Forces are analytic: each term's derivative with respect to its bond vectors, chain-ruled by
hand (torsions: dE/dcos φ · (−sin φ) · dφ/dx with Blondel and Karplus's dφ/dx, no 1/sin φ)
and scattered onto its atoms in one index_add per coordinate. On one CPU thread, 64 tg80-mini
windows take 1.4 ms per evaluation against 4.0 ms for `torch.autograd.grad` of the energy
(paired medians); autograd stays available, `forces(..., analytic=False)`, and is tested to
agree. Coordinates are laid out (3, n) inside: reductions over xyz are then row sums, several
times faster on CPU than over a trailing dimension of 3.

`verlet_paths` steps every window with its own step h_b = min(dt, next lag − t_b): the step
sizes are planned on the host from the lags (`step_plan`), exactly as
`atomray.priors.anharmonic.verlet_path` shortens the last step of each interval, so each window
lands on its own lags and matches that reference to ~1e-14 Å at lags ≤ 100 fs (~1e-12 Å at
400 fs). A window whose lags are done keeps stepping with h = 0. Cost on one CPU thread for 64
windows, lags ≤ 400 fs (`benchmarks/bench_forcefield.py`): eager about the RDKit loop's time
(its ~300 small ops per step are bound by dispatch and memory traffic), `compiled=True` 2.5×
faster after ~15 s of compilation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

KCAL_MOL_A_U = 4.184e-4  # 1 kcal/mol/Å divided by 1 u, in Å/fs²
MDYN_A = 143.9325  # kcal/mol per mdyn Å: MMFF94's prefactor of the valence terms
DEG = 180.0 / np.pi
CUBIC_STRETCH = -2.0  # Å⁻¹
CUBIC_BEND = -0.006981317  # deg⁻¹ (−0.4 rad⁻¹)
COULOMB = 332.0716  # kcal/mol Å per e²
ELE_BUFFER = 0.05  # Å
SCALE_1_4 = 0.75
LINEAR_TYPES = frozenset({4, 53, 61})  # MMFF94 atom types whose angles are linear (MMFFPROP "lin")
NONBONDED_THRESH = 100.0  # Å, RDKit's nonBondedThresh as atomray uses it
KINDS = ("bonds", "angles", "oops", "torsions", "pairs")


@dataclass(frozen=True)
class MMFFTerms:
    """MMFF94 terms of one molecule of `n_atoms` atoms: per kind, atom indices (int64) and
    parameters (float64), rows in RDKit's order."""
    n_atoms: int
    bonds: Tensor           # (Nb, 2) i, j
    bond_params: Tensor     # (Nb, 2) k_b mdyn/Å, r0 Å
    angles: Tensor          # (Na, 3) i, j (centre), k
    angle_params: Tensor    # (Na, 7) k_a mdyn Å/rad², θ0 deg, linear 0/1, stretch-bend k_ba IJK, KJI mdyn/rad,
    #                         r0_ij, r0_kj Å of the two bonds
    oops: Tensor            # (No, 4) i, j (centre), k, l (out of plane)
    oop_params: Tensor      # (No, 1) k_oop mdyn Å/rad²
    torsions: Tensor        # (Nt, 4) i, j, k, l
    torsion_params: Tensor  # (Nt, 3) V1, V2, V3 kcal/mol
    pairs: Tensor           # (Np, 2) i < j, ≥ 3 bonds apart
    pair_params: Tensor     # (Np, 4) R*_ij Å, ε_ij kcal/mol, q_i q_j e², electrostatic scale (0.75 for 1-4)


def mmff_terms(x: np.ndarray, z: np.ndarray, nonbonded_thresh: float = NONBONDED_THRESH) -> MMFFTerms | None:
    """The MMFF94 terms of the neutral molecule with atomic numbers z (N,) whose bonds are
    perceived from x (N, 3) Å, as `MMFFGetMoleculeForceField(nonBondedThresh=100)` builds them;
    None when perception fails or MMFF94 has no parameters."""
    from rdkit import Chem

    from atomray.priors.minima import mmff_field

    built = mmff_field(x, z, nonBondedThresh=nonbonded_thresh)
    if built is None:
        return None
    mol, props, _ = built
    n = mol.GetNumAtoms()
    if props.GetMMFFDielectricModel() != 1 or props.GetMMFFDielectricConstant() != 1.0:
        raise ValueError(f"mmff_terms: expected MMFF94's constant dielectric 1, found model "
                         f"{props.GetMMFFDielectricModel()} constant {props.GetMMFFDielectricConstant()}")
    rows: dict[str, tuple[list, list]] = {kind: ([], []) for kind in KINDS}

    def r0(i: int, j: int) -> float:
        found = props.GetMMFFBondStretchParams(mol, i, j)
        return 0.0 if found is None else found[2]

    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        found = props.GetMMFFBondStretchParams(mol, i, j)
        if found is not None:
            _add(rows, "bonds", (i, j), found[1:])
    for centre in mol.GetAtoms():
        j = centre.GetIdx()
        nbrs = [a.GetIdx() for a in centre.GetNeighbors()]
        linear = props.GetMMFFAtomType(j) in LINEAR_TYPES
        for a, i in enumerate(nbrs):
            for k in nbrs[a + 1:]:
                angle = props.GetMMFFAngleBendParams(mol, i, j, k)
                if angle is None:
                    continue
                stbn = None if linear else props.GetMMFFStretchBendParams(mol, i, j, k)
                kba = (0.0, 0.0) if stbn is None else stbn[1:]
                _add(rows, "angles", (i, j, k), (angle[1], angle[2], float(linear), *kba, r0(i, j), r0(k, j)))
        if len(nbrs) == 3:
            koop = props.GetMMFFOopBendParams(mol, nbrs[0], j, nbrs[1], nbrs[2])
            if koop:
                a, b, c = nbrs
                for i, k, l in ((a, b, c), (a, c, b), (b, c, a)):
                    _add(rows, "oops", (i, j, k, l), (koop,))
    sp2_sp3 = (Chem.HybridizationType.SP2, Chem.HybridizationType.SP3)
    for j, k in mol.GetSubstructMatches(Chem.MolFromSmarts("[!$(*#*)&!D1]~[!$(*#*)&!D1]")):
        if mol.GetAtomWithIdx(j).GetHybridization() not in sp2_sp3 or \
                mol.GetAtomWithIdx(k).GetHybridization() not in sp2_sp3:
            continue
        for i in (a.GetIdx() for a in mol.GetAtomWithIdx(j).GetNeighbors()):
            for l in (a.GetIdx() for a in mol.GetAtomWithIdx(k).GetNeighbors()):
                found = None if k == i or l == j or l == i else props.GetMMFFTorsionParams(mol, i, j, k, l)
                if found is not None:
                    _add(rows, "torsions", (i, j, k, l), found[1:])
    hops = Chem.GetDistanceMatrix(mol)  # (N, N) bonds on the shortest path, 1e8 between fragments
    frag = np.zeros(n, dtype=np.int64)
    for f, atoms in enumerate(Chem.GetMolFrags(mol)):
        frag[list(atoms)] = f
    xs = np.asarray(x, dtype=np.float64)
    near = np.linalg.norm(xs[:, None] - xs[None], axis=-1) <= nonbonded_thresh  # (N, N)
    charge = [props.GetMMFFPartialCharge(i) for i in range(n)]
    for i, j in zip(*np.nonzero(np.triu((hops >= 3) & (frag[:, None] == frag[None]) & near))):
        i, j = int(i), int(j)
        _, _, rstar, eps = props.GetMMFFVdWParams(i, j)
        _add(rows, "pairs", (i, j), (rstar, eps, charge[i] * charge[j], SCALE_1_4 if hops[i, j] == 3 else 1.0))
    fields = {}
    for kind, (atoms, params) in rows.items():
        fields[kind] = torch.tensor(atoms, dtype=torch.int64).reshape(len(atoms), _WIDTH[kind][0])
        fields[_PARAMS[kind]] = torch.tensor(params, dtype=torch.float64).reshape(len(params), _WIDTH[kind][1])
    return MMFFTerms(n_atoms=n, **fields)


_WIDTH = {"bonds": (2, 2), "angles": (3, 7), "oops": (4, 1), "torsions": (4, 3), "pairs": (2, 4)}
_PARAMS = {"bonds": "bond_params", "angles": "angle_params", "oops": "oop_params",
           "torsions": "torsion_params", "pairs": "pair_params"}


def _add(rows: dict, kind: str, atoms: tuple, params: Sequence[float]) -> None:
    rows[kind][0].append(list(atoms))
    rows[kind][1].append([float(p) for p in params])


@dataclass(frozen=True)
class MMFFBatch:
    """The terms of B windows padded to `n_atoms` atoms, concatenated kind by kind. `terms`
    indexes the flattened (B·n_atoms) atom axis; `atoms` (M,) lists every term's atoms slot by
    slot (all i, then all j, ...) for one gather and one scatter per evaluation; `windows` (T,)
    is each term's window; `params` holds each kind's parameters transposed, (m, n), so that a
    parameter is a contiguous row; `valid` (B,) says which windows have terms (the others feel
    no force)."""
    batch_size: int
    n_atoms: int
    terms: MMFFTerms
    atoms: Tensor  # (M,) int64
    windows: Tensor  # (T,) int64
    params: tuple[Tensor, ...]  # per kind in KINDS, (m, n)
    valid: Tensor  # (B,) bool

    @staticmethod
    def stack(terms: Sequence[MMFFTerms | None], n_atoms: int, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float64) -> MMFFBatch:
        """One batch from per-window terms (None: no terms), each padded to `n_atoms`."""
        for b, t in enumerate(terms):
            if t is not None and t.n_atoms > n_atoms:
                raise ValueError(f"MMFFBatch.stack: window {b} has {t.n_atoms} atoms, more than n_atoms={n_atoms}")
        present = [(b, t) for b, t in enumerate(terms) if t is not None]
        fields, windows = {}, []
        for kind in KINDS:
            width = _WIDTH[kind]
            idx = [getattr(t, kind) + b * n_atoms for b, t in present]
            par = [getattr(t, _PARAMS[kind]) for _, t in present]
            fields[kind] = torch.cat(idx) if idx else torch.zeros(0, width[0], dtype=torch.int64)
            fields[_PARAMS[kind]] = (torch.cat(par) if par else torch.zeros(0, width[1])).to(dtype)
            windows += [torch.full((len(getattr(t, kind)),), b, dtype=torch.int64) for b, t in present]
        flat = MMFFTerms(n_atoms=len(terms) * n_atoms, **fields)
        atoms = torch.cat([getattr(flat, kind).T.reshape(-1) for kind in KINDS])
        return MMFFBatch(
            batch_size=len(terms), n_atoms=n_atoms,
            terms=MMFFTerms(flat.n_atoms, **{k: v.to(device) for k, v in fields.items()}),
            atoms=atoms.to(device), windows=torch.cat(windows or [torch.zeros(0, dtype=torch.int64)]).to(device),
            params=tuple(getattr(flat, _PARAMS[kind]).T.contiguous().to(device) for kind in KINDS),
            valid=torch.tensor([t is not None for t in terms], dtype=torch.bool, device=device))


# Each term kind, coordinates first: from its atoms' positions, one (3, n) per slot, and its
# parameters (m, n), the energy per term (n,) and, when asked, its gradient on each slot (3, n).
def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(0)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    (a0, a1, a2), (b0, b1, b2) = a, b  # (3, n) by rows
    return torch.stack((a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0))


def _bond(p: list[Tensor], par: Tensor, grad: bool):
    d = p[0] - p[1]  # (3, n)
    r = _dot(d, d).sqrt()
    kb, r0 = par
    dr = r - r0
    e = 0.5 * MDYN_A * kb * dr * dr * (1 + CUBIC_STRETCH * dr + 7 / 12 * CUBIC_STRETCH**2 * dr * dr)
    if not grad:
        return e, []
    g = MDYN_A * kb * dr * (1 + 1.5 * CUBIC_STRETCH * dr + 7 / 6 * CUBIC_STRETCH**2 * dr * dr) / r * d
    return e, [g, -g]


def _angle(p: list[Tensor], par: Tensor, grad: bool):
    """Angle bend and stretch-bend on the same i-j-k rows."""
    a, b = p[0] - p[1], p[2] - p[1]  # (3, n)
    ra, rb = _dot(a, a).sqrt(), _dot(b, b).sqrt()
    ka, theta0, linear, kba_ijk, kba_kji, r0_ij, r0_kj = par
    cos = (_dot(a, b) / (ra * rb)).clamp(-1.0, 1.0)
    dtheta = DEG * torch.acos(cos) - theta0  # deg
    linear = linear > 0
    c2 = MDYN_A / DEG**2
    bend = torch.where(linear, MDYN_A * ka * (1 + cos), 0.5 * c2 * ka * dtheta * dtheta * (1 + CUBIC_BEND * dtheta))
    stretch = kba_ijk * (ra - r0_ij) + kba_kji * (rb - r0_kj)
    e = bend + MDYN_A / DEG * stretch * dtheta
    if not grad:
        return e, []
    sin = (1 - cos * cos).clamp(min=0).sqrt().clamp(min=1e-8)
    de_dtheta = c2 * ka * dtheta * (1 + 1.5 * CUBIC_BEND * dtheta) + MDYN_A / DEG * stretch  # per deg
    de_dcos = torch.where(linear, MDYN_A * ka, -DEG * de_dtheta / sin)
    ua, ub = a / ra, b / rb
    ga = de_dcos / ra * (ub - cos * ua) + MDYN_A / DEG * kba_ijk * dtheta * ua
    gb = de_dcos / rb * (ua - cos * ub) + MDYN_A / DEG * kba_kji * dtheta * ub
    return e, [ga, -ga - gb, gb]


def _oop(p: list[Tensor], par: Tensor, grad: bool):
    """Wilson angle χ of bond j-l to the plane i-j-k."""
    a, b, c = p[0] - p[1], p[2] - p[1], p[3] - p[1]  # (3, n)
    m = _cross(a, b)
    rm, rc = _dot(m, m).sqrt(), _dot(c, c).sqrt()
    nrm, u = m / rm, c / rc
    sin = _dot(nrm, u).clamp(-1.0, 1.0)
    chi = DEG * torch.asin(sin)  # deg
    c2 = MDYN_A / DEG**2
    e = 0.5 * c2 * par[0] * chi * chi
    if not grad:
        return e, []
    de_dsin = c2 * DEG * par[0] * chi / (1 - sin * sin).clamp(min=0).sqrt().clamp(min=1e-8)
    gm = de_dsin / rm * (u - sin * nrm)  # dE/dm, m = a × b
    gc = de_dsin / rc * (nrm - sin * u)
    ga, gb = _cross(b, gm), _cross(gm, a)
    return e, [ga, -ga - gb - gc, gb, gc]


def _torsion(p: list[Tensor], par: Tensor, grad: bool):
    """E = ½ [V1 (1 + cos φ) + V2 (1 − cos 2φ) + V3 (1 + cos 3φ)], a cubic in cos φ; gradient
    by dE/dcos φ · (−sin φ) · dφ/dx with dφ/dx of Blondel & Karplus (J. Comput. Chem. 17, 1132
    (1996)), free of 1/sin φ."""
    f, g, h = p[0] - p[1], p[1] - p[2], p[3] - p[2]  # (3, n)
    a, b = _cross(f, g), _cross(h, g)
    aa, bb = _dot(a, a), _dot(b, b)
    ab = (aa * bb).sqrt()
    cos = (_dot(a, b) / ab).clamp(-1.0, 1.0)
    v1, v2, v3 = par
    e = 0.5 * (v1 * (1 + cos) + 2 * v2 * (1 - cos * cos) + v3 * (1 + (4 * cos * cos - 3) * cos))
    if not grad:
        return e, []
    gg = _dot(g, g)
    gn = gg.sqrt()
    sin = -gn * _dot(b, f) / ab
    de_dphi = -0.5 * (v1 - 4 * v2 * cos + v3 * (12 * cos * cos - 3)) * sin
    da, db = de_dphi * gn / aa * a, de_dphi * gn / bb * b  # −dE/dx_i, dE/dx_l
    fg, hg = _dot(f, g) / gg, _dot(h, g) / gg
    return e, [-da, (1 + fg) * da - hg * db, (hg - 1) * db - fg * da, db]


def _pair(p: list[Tensor], par: Tensor, grad: bool):
    """Buffered 14-7 van der Waals and buffered Coulomb."""
    d = p[0] - p[1]  # (3, n)
    r = _dot(d, d).sqrt()
    rstar, eps, qq, scale = par
    rho = r / rstar
    rho2 = rho * rho
    rho7 = rho2 * rho2 * rho2 * rho  # products: pow(x, 7) is several times slower on CPU
    a = 1.07 / (rho + 0.07)
    a2 = a * a
    a = a2 * a2 * a2 * a
    b = 1.12 / (rho7 + 0.12)
    coulomb = COULOMB * qq * scale / (r + ELE_BUFFER)
    e = eps * a * (b - 2) + coulomb
    if not grad:
        return e, []
    de = -7 * eps / rstar * a * ((b - 2) / (rho + 0.07) + b * rho7 / (rho * (rho7 + 0.12))) - coulomb / (r + ELE_BUFFER)
    g = de / r * d
    return e, [g, -g]


_TERM = {"bonds": _bond, "angles": _angle, "oops": _oop, "torsions": _torsion, "pairs": _pair}


def _evaluate(batch: MMFFBatch, pos: Tensor, with_energy: bool = True,
              with_grad: bool = True) -> tuple[Tensor | None, Tensor | None]:
    """Energy (B,) kcal/mol and gradient (B, N, 3) kcal/mol/Å at pos (B, N, 3) Å, each when asked."""
    gathered = torch.stack([c.index_select(0, batch.atoms) for c in pos.reshape(-1, 3).unbind(1)])  # (3, M)
    energies, grads, start = [], [], 0
    for kind, par in zip(KINDS, batch.params):  # five term kinds, not a loop over terms
        n, k = par.shape[1], _WIDTH[kind][0]
        slots = [gathered[:, start + s * n:start + (s + 1) * n] for s in range(k)]  # k × (3, n)
        e, g = _TERM[kind](slots, par, with_grad)
        energies.append(e)
        grads += g
        start += k * n
    e = pos.new_zeros(batch.batch_size).index_add(0, batch.windows, torch.cat(energies)) if with_energy else None
    if not with_grad:
        return e, None
    zero = pos.new_zeros(pos.shape[0] * pos.shape[1])  # (B·N,)
    g = [zero.index_add(0, batch.atoms, torch.cat([slot[c] for slot in grads])) for c in range(3)]  # 1-D: fast cat
    return e, torch.stack(g, -1).reshape(pos.shape)


def _check_positions(batch: MMFFBatch, pos: Tensor, name: str) -> None:
    if tuple(pos.shape) != (batch.batch_size, batch.n_atoms, 3):
        raise ValueError(f"{name}: expected ({batch.batch_size}, {batch.n_atoms}, 3) positions for this MMFFBatch, "
                         f"found {tuple(pos.shape)}")


def energy(batch: MMFFBatch, pos: Tensor) -> Tensor:
    """(B,) MMFF94 energy in kcal/mol of each window at pos (B, N, 3) Å (0 for windows without terms)."""
    _check_positions(batch, pos, "energy")
    return _evaluate(batch, pos, with_grad=False)[0]


def forces(batch: MMFFBatch, pos: Tensor, analytic: bool = True) -> tuple[Tensor, Tensor]:
    """(energy (B,) kcal/mol, forces (B, N, 3) kcal/mol/Å) at pos (B, N, 3) Å: analytic
    gradients, or `torch.autograd.grad` of the energy when `analytic` is False."""
    _check_positions(batch, pos, "forces")
    if analytic:
        e, g = _evaluate(batch, pos)
        return e, -g
    with torch.enable_grad():
        leaf = pos.detach().requires_grad_(True)
        e = energy(batch, leaf)
        (g,) = torch.autograd.grad(e.sum(), leaf)
    return e.detach(), -g


def step_plan(lags: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Velocity-Verlet step sizes (S, B) fs, 0 once a window is done, and for each lag (B, P)
    fs the number of steps after which it is reached (0: the start): intervals between sorted
    lags in steps of `dt`, the last one shortened to land on the lag."""
    lags = np.asarray(lags, dtype=np.float64)
    if lags.shape[1] == 0:
        return np.zeros((0, len(lags))), np.zeros(lags.shape, dtype=np.int64)
    ends = np.maximum(np.sort(lags, axis=1), 0.0)  # (B, P) the clock never runs back
    gaps = np.diff(ends, axis=1, prepend=0.0)
    counts = np.maximum(np.ceil((gaps - 1e-9) / dt), 0).astype(np.int64)  # steps per interval
    done = np.cumsum(counts, axis=1)  # (B, P)
    plan = np.zeros((int(done[:, -1].max(initial=0)), len(lags)))
    for b in range(len(lags)):  # windows, to lay out their steps; not inside the integration
        last = gaps[b] - (counts[b] - 1) * dt  # the shortened final step of each interval
        sizes = [np.r_[np.full(c - 1, dt), last[k]] for k, c in enumerate(counts[b]) if c > 0]
        plan[:done[b, -1], b] = np.concatenate(sizes) if sizes else []
    reached = np.empty_like(done)
    np.put_along_axis(reached, np.argsort(lags, axis=1, kind="stable"), done, axis=1)
    return plan, reached


def verlet_paths(batch: MMFFBatch, x: Tensor, v: Tensor, mass: Tensor, lags: Tensor, dt: float = 0.5,
                 compiled: bool = False, with_velocities: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """(B, P, N, 3) Å: positions at lags (B, P) fs (any order) of velocity-Verlet MD under
    MMFF94 from x (B, N, 3) Å and v (B, N, 3) Å/fs with masses (B, N) u (0: padding, which
    stays at x). Steps of `dt` fs, each window's last step before a lag shortened to land on it;
    a window without terms (`batch.valid` False) drifts at constant velocity. `with_velocities`
    also returns the velocities (B, P, N, 3) Å/fs there. `compiled` runs each step through
    `torch.compile` (compiled once per process, once more with dynamic shapes when a batch of
    other sizes comes; ~15 s each on CPU, repaid after a few thousand steps)."""
    _check_positions(batch, x, "verlet_paths x")
    _check_positions(batch, v, "verlet_paths v")
    if tuple(mass.shape) != tuple(x.shape[:2]) or lags.ndim != 2 or lags.shape[0] != x.shape[0]:
        raise ValueError(f"verlet_paths: expected mass {tuple(x.shape[:2])} and lags ({x.shape[0]}, P), "
                         f"found {tuple(mass.shape)} and {tuple(lags.shape)}")
    plan, reached = step_plan(lags.detach().cpu().numpy(), dt)
    steps = torch.as_tensor(plan, dtype=x.dtype, device=x.device)[:, :, None, None]  # (S, B, 1, 1)
    reached = torch.as_tensor(reached, device=x.device)[:, :, None, None]  # (B, P, 1, 1)
    mass = mass.to(x.dtype)[..., None]  # (B, N, 1)
    real = mass > 0
    per_mass = torch.where(real, KCAL_MOL_A_U / torch.where(real, mass, 1.0), 0.0)  # Å/fs² per kcal/mol/Å
    step = torch.compile(_verlet_step) if compiled else _verlet_step
    pos, vel = x.clone(), v.to(x.dtype) * real  # (B, N, 3)
    acc = -_evaluate(batch, pos, with_energy=False)[1] * per_mass
    out = pos[:, None].expand(-1, reached.shape[1], -1, -1).clone()  # (B, P, N, 3), lags at 0 fs read here
    out_v = vel[:, None].expand_as(out).clone() if with_velocities else None
    for s in range(len(plan)):  # time steps: the one loop MD cannot batch
        pos, vel, acc = step(batch, pos, vel, acc, steps[s], per_mass)
        now = reached == s + 1
        out = torch.where(now, pos[:, None], out)
        if with_velocities:
            out_v = torch.where(now, vel[:, None], out_v)
    return (out, out_v) if with_velocities else out


def _verlet_step(batch: MMFFBatch, pos: Tensor, vel: Tensor, acc: Tensor, h: Tensor, per_mass: Tensor):
    """One velocity-Verlet step of h (B, 1, 1) fs: (pos, vel, acc) (B, N, 3) at t + h."""
    vel = vel + 0.5 * h * acc
    pos = pos + h * vel
    acc = -_evaluate(batch, pos, with_energy=False)[1] * per_mass
    return pos, vel + 0.5 * h * acc, acc
