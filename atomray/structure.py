"""Physical validity of a trajectory: bonds, stability, structure distributions, temperature.

Plain NumPy (float64) on plain arrays, so the same checks apply to a model's rollout and to
reference MD. Shapes: a trajectory is (T, N, 3) Å, velocities (T, N, 3) Å/fs, atomic numbers
(N,). Atom order must be the same in every trajectory compared.

    top = bonds_from_geometry(z, traj[0])                  # bonds, angles, proper dihedrals
    stability(rollout, top)                                # Stability(stable=..., first_failure_frame=...)
    stability_coefficient([r1, r2, r3], top, dt_fs=50.0)   # fraction stable, time to first failure
    structure_distances(rollout, reference, z, top)        # Wasserstein-1 per quantity
    temperature(velocities, z)                             # (T,) K
    plot_structure(rollout, reference, z, "ethanol.png")

Bonds. Atoms i, j are bonded when d_ij < scale · (r_i + r_j), r the covalent radii of
Cordero et al., "Covalent radii revisited", Dalton Trans. 2008, 2832 (ase.data.covalent_radii;
RDKit's `GetPeriodicTable().GetRcovalent` holds the same values; C 0.76, H 0.31, O 0.66 Å),
scale 1.25 by default; or the bonds of an RDKit molecule. Angles i-j-k join bonds i-j and
j-k; proper dihedrals i-j-k-l run along bonded chains i-j, j-k, k-l (i ≠ l).

Stability (the rollout stability of SO3KRATES, issue 13): a trajectory is stable when every
bonded distance stays within ±`stretch` (50 %) of its value at the start and no two atoms
that are not bonded come closer than `min_distance` (0.7 Å), in every frame. Non-finite
positions are a failure too. A proton in an intramolecular hydrogen bond
(`hydrogen_bond_sites`: a hydrogen within 1.2 Å of an O or N with a second O or N within
2.2 Å) may move to its acceptor: its bond to the donor is measured to the nearer of the two,
so a proton transfer is not a break.

Dihedrals are periodic. They are compared on the circle: `circular_wasserstein` is the exact
Wasserstein-1 distance between two empirical distributions of angles on the circle of
circumference 360° (Rabin, Delon & Gousseau, J. Math. Imaging Vis. 2011: W1 = min_α ∫ |F − G
− α| dθ, attained at α = the median of F − G), so 179° and −179° are 2° apart. Bond lengths,
angles and the radius of gyration use the ordinary W1 on the line (scipy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from atomray.elements import atomic_masses
from atomray.outputs import save_figure

U_KG = 1.66053906660e-27  # atomic mass unit (CODATA 2018)
K_B = 1.380649e-23  # Boltzmann constant, J/K (exact, SI 2019)
A_PER_FS = 1e5  # 1 Å/fs in m/s
# m v² / k_B in K for m = 1 u, v = 1 Å/fs: 1.66053906660e-17 J / k_B = 1.2027e6 K
# (1 u·Å²/fs² = 1.66053906660e-17 J = 103.643 eV).
U_A2_FS2_IN_K = U_KG * A_PER_FS**2 / K_B
KINDS = ("bond_stretched", "bond_compressed", "close_contact", "non_finite")


class StructureError(ValueError):
    """Inputs of the wrong shape or meaning; the message names what was expected and found."""


# ---------------------------------------------------------------------------------------------
# topology


@dataclass(frozen=True)
class Topology:
    """bonds (n_b, 2) with i < j, angles (n_a, 3) i-j-k with j the centre and i < k, proper
    dihedrals (n_d, 4) i-j-k-l about the bond j-k (j < k); all int64 atom indices."""

    n_atoms: int
    bonds: np.ndarray
    angles: np.ndarray
    dihedrals: np.ndarray


def topology(bonds: Any, n_atoms: int) -> Topology:
    """The Topology of a bond list (pairs of atom indices; order and duplicates do not
    matter): angles and proper dihedrals derived from it."""
    pairs = np.asarray(bonds, dtype=np.int64).reshape(-1, 2) if len(bonds) else np.zeros((0, 2), np.int64)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n_atoms or (pairs[:, 0] == pairs[:, 1]).any()):
        raise StructureError(f"bonds must pair two different atoms in 0..{n_atoms - 1}, found {pairs.tolist()}")
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    neighbours: list[list[int]] = [[] for _ in range(n_atoms)]
    for i, j in pairs:
        neighbours[i].append(int(j))
        neighbours[j].append(int(i))
    angles = [(i, j, k) for j in range(n_atoms) for a, i in enumerate(sorted(neighbours[j]))
              for k in sorted(neighbours[j])[a + 1:]]
    dihedrals = [(i, j, k, l) for j, k in pairs for i in sorted(neighbours[j]) if i != k
                 for l in sorted(neighbours[k]) if l != j and l != i]
    return Topology(n_atoms, pairs, np.array(angles, np.int64).reshape(-1, 3),
                    np.array(dihedrals, np.int64).reshape(-1, 4))


def bonds_from_geometry(z: Any, x: Any, scale: float = 1.25, mol: Any = None) -> Topology:
    """Bonds of atoms `z` (N,) at positions `x` (N, 3) Å: d_ij < scale·(r_i + r_j) with Cordero
    et al. 2008 covalent radii; or, when an RDKit molecule `mol` (same atoms, same order) is
    given, its bonds. Returns the Topology (bonds, angles, proper dihedrals)."""
    from ase.data import covalent_radii

    z = np.asarray(z, dtype=np.int64)
    x = _frame(x, len(z), "x")
    if mol is not None:
        mz = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
        if not np.array_equal(mz, z):
            raise StructureError(f"bonds_from_geometry: the RDKit molecule's atoms {mz.tolist()} are not the atoms "
                                 f"z = {z.tolist()} (same elements in the same order expected)")
        return topology([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()], len(z))
    if not scale > 0:
        raise StructureError(f"bonds_from_geometry: scale must be positive, found {scale}")
    if z.size and (z.min() < 1 or z.max() >= len(covalent_radii)):
        raise StructureError(f"bonds_from_geometry: atomic numbers must lie in 1..{len(covalent_radii) - 1}, "
                             f"found {z.min()}..{z.max()}")
    r = covalent_radii[z]
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    i, j = np.nonzero(np.triu(d < scale * (r[:, None] + r[None]), k=1))
    return topology(np.stack((i, j), axis=1), len(z))


def _frame(x: Any, n: int, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (n, 3):
        raise StructureError(f"{name} must be (N, 3) = ({n}, 3) positions in Å, found shape {x.shape}")
    return x


def _trajectory(traj: Any, name: str = "trajectory") -> np.ndarray:
    traj = np.asarray(traj, dtype=np.float64)
    if traj.ndim != 3 or traj.shape[-1] != 3 or len(traj) == 0:
        raise StructureError(f"{name} must be (T, N, 3) with T >= 1, found shape {traj.shape}")
    return traj


def _topology(bonds: Any, n_atoms: int) -> Topology:
    top = bonds if isinstance(bonds, Topology) else topology(bonds, n_atoms)
    if top.n_atoms != n_atoms:
        raise StructureError(f"the bonds are for {top.n_atoms} atoms but the trajectory has {n_atoms}")
    return top


# ---------------------------------------------------------------------------------------------
# internal coordinates


def bond_lengths(traj: Any, bonds: Any) -> np.ndarray:
    """(T, n_b) bond lengths (Å) of a trajectory (T, N, 3)."""
    traj = _trajectory(traj)
    b = _topology(bonds, traj.shape[1]).bonds
    return np.linalg.norm(traj[:, b[:, 1]] - traj[:, b[:, 0]], axis=-1)


def bond_angles(traj: Any, bonds: Any) -> np.ndarray:
    """(T, n_a) bond angles i-j-k (degrees, 0..180) of a trajectory (T, N, 3)."""
    traj = _trajectory(traj)
    a = _topology(bonds, traj.shape[1]).angles
    u, w = traj[:, a[:, 0]] - traj[:, a[:, 1]], traj[:, a[:, 2]] - traj[:, a[:, 1]]
    # atan2(|u × w|, u·w) is accurate near 0° and 180°, where arccos of the cosine is not
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(u, w), axis=-1), (u * w).sum(-1)))


def dihedral_angles(traj: Any, bonds: Any) -> np.ndarray:
    """(T, n_d) proper dihedrals i-j-k-l (degrees, in (−180, 180]; IUPAC sign) of (T, N, 3)."""
    traj = _trajectory(traj)
    return torsion_angles(traj, _topology(bonds, traj.shape[1]).dihedrals)


def torsion_angles(traj: Any, quads: Any) -> np.ndarray:
    """(T, n) the dihedrals i-j-k-l of the given quadruples `quads` (n, 4) (degrees, in
    (−180, 180]; IUPAC sign) of a trajectory (T, N, 3)."""
    traj = _trajectory(traj)
    d = np.asarray(quads, np.int64).reshape(-1, 4)
    b0, b1, b2 = (traj[:, d[:, 1]] - traj[:, d[:, 0]], traj[:, d[:, 2]] - traj[:, d[:, 1]],
                  traj[:, d[:, 3]] - traj[:, d[:, 2]])
    n1, n2 = np.cross(b0, b1), np.cross(b1, b2)
    y = (np.cross(n1, n2) * b1).sum(-1) / np.linalg.norm(b1, axis=-1)
    return np.degrees(np.arctan2(y, (n1 * n2).sum(-1)))


ROTAMER_CORE_DEG = 30.0  # a three-fold torsion is in a rotamer within this of 60°, 180° or −60°


def rotamer_transitions(traj: Any, quads: Any) -> int:
    """How many times the three-fold torsions `quads` (n, 4) i-j-k-l of a trajectory (T, N, 3)
    change rotamer: each torsion's frames within `ROTAMER_CORE_DEG` of gauche+ (60°), anti
    (180°) or gauche− (−60°) are in that rotamer, the frames between carry the last one on,
    and a transition is a frame in a rotamer other than the last (a crossing that turns back
    before the next core is no transition). Frames that are not finite are skipped."""
    traj = _trajectory(traj)
    quads = np.asarray(quads, np.int64).reshape(-1, 4)
    if not len(quads):
        return 0
    traj = traj[np.isfinite(traj).all((1, 2))]
    phi = torsion_angles(traj, quads) if len(traj) else np.zeros((0, len(quads)))
    centre = np.array([60.0, 180.0, -60.0])
    gap = np.abs((phi[..., None] - centre + 180.0) % 360.0 - 180.0)  # (T, n, 3) to each rotamer's centre
    core = np.where(gap.min(-1) < ROTAMER_CORE_DEG, gap.argmin(-1), -1)
    count = 0
    for series in core.T:
        seen = series[series >= 0]
        count += int((seen[1:] != seen[:-1]).sum())
    return count


def radius_of_gyration(traj: Any, z: Any) -> np.ndarray:
    """(T,) mass-weighted radius of gyration (Å) about the centre of mass, standard atomic
    masses of `z` (N,) (`atomray.elements.atomic_masses`)."""
    traj = _trajectory(traj)
    m = _masses(z, traj.shape[1])
    c = np.einsum("n,tnk->tk", m, traj) / m.sum()
    return np.sqrt(np.einsum("n,tn->t", m, ((traj - c[:, None]) ** 2).sum(-1)) / m.sum())


def _masses(z: Any, n: int) -> np.ndarray:
    z = np.asarray(z, dtype=np.int64)
    if z.shape != (n,) or (z.size and z.min() < 1):
        raise StructureError(f"atomic numbers must be (N,) = ({n},) with every Z >= 1, found {z.tolist()}")
    return atomic_masses(z).astype(np.float64)


def bond_deviation_trace(traj: Any, bonds: Any, start: Any = None) -> np.ndarray:
    """(T,) max over bonds of |d(t)/d(start) − 1| per frame (start: frame 0 unless given)."""
    traj = _trajectory(traj)
    top = _topology(bonds, traj.shape[1])
    if len(top.bonds) == 0:
        return np.zeros(len(traj))
    d0 = bond_lengths((traj[0] if start is None else _frame(start, traj.shape[1], "start"))[None], top)[0]
    return np.abs(bond_lengths(traj, top) / d0 - 1).max(1)


# ---------------------------------------------------------------------------------------------
# stability


@dataclass(frozen=True)
class Stability:
    """The stability verdict of one trajectory: `stable`, or the first frame that fails, what
    failed (`kind`: bond_stretched, bond_compressed, close_contact, non_finite), the atom
    `pair` and its distance `distance_a` (Å) there; `frames` = T."""

    stable: bool
    frames: int
    first_failure_frame: int | None = None
    kind: str | None = None
    pair: tuple[int, int] | None = None
    distance_a: float | None = None


HYDROGEN_BOND_DONOR_A = 1.2  # Å: a hydrogen this near an O or N is bonded to it
HYDROGEN_BOND_ACCEPTOR_A = 2.2  # Å: ... and hydrogen-bonded to a second O or N this near


def hydrogen_bond_sites(x: Any, z: Any) -> list[tuple[int, int, int]]:
    """(hydrogen, donor, acceptor) for every hydrogen of frame x (N, 3) Å within
    `HYDROGEN_BOND_DONOR_A` of an O or N (the donor, the nearest) with a second O or N within
    `HYDROGEN_BOND_ACCEPTOR_A` (the acceptor, the nearest such) that closes a ring with it: the
    protons an intramolecular hydrogen bond may transfer (the H-bonded enol of acetylacetone has
    one, O···H 1.6 Å, O–C=C–C=O between its oxygens). An acceptor bonded to the donor or to one
    of the donor's neighbours is not one: a carboxylic acid's hydroxyl hydrogen sits 2.1–2.3 Å
    from its own carbonyl oxygen, and a 1,3 shift between them is no hydrogen bond's transfer
    (its barrier is far higher; bonds as `bonds_from_geometry` perceives them)."""
    z = np.asarray(z)
    x = _frame(x, len(z), "frame")
    polar = np.flatnonzero(np.isin(z, (7, 8)))
    sites: list[tuple[int, int, int]] = []
    if len(polar) < 2 or not (z == 1).any():
        return sites
    near: dict[int, set[int]] = {}
    for i, j in bonds_from_geometry(z, x).bonds:
        near.setdefault(int(i), set()).add(int(j))
        near.setdefault(int(j), set()).add(int(i))
    for h in np.flatnonzero(z == 1):
        d = np.linalg.norm(x[polar] - x[h], axis=-1)
        order = np.argsort(d)
        donor = int(polar[order[0]])
        if d[order[0]] >= HYDROGEN_BOND_DONOR_A:
            continue
        close = near.get(donor, set())
        close = close | set().union(*(near.get(k, set()) for k in close))
        for k in order[1:]:
            if d[k] >= HYDROGEN_BOND_ACCEPTOR_A:
                break
            if int(polar[k]) not in close:
                sites.append((int(h), donor, int(polar[k])))
                break
    return sites


def _transfer_lengths(traj: np.ndarray, top: Topology, sites: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Bond lengths (T, n_b) of traj, each donor–hydrogen bond of `sites` measured to the nearer
    of its donor and acceptor."""
    d = bond_lengths(traj, top)
    for h, donor, acceptor in sites:
        to_acceptor = np.linalg.norm(traj[:, h] - traj[:, acceptor], axis=-1)
        for k in np.flatnonzero(((top.bonds[:, 0] == h) & (top.bonds[:, 1] == donor))
                                | ((top.bonds[:, 0] == donor) & (top.bonds[:, 1] == h))):
            d[:, k] = np.minimum(d[:, k], to_acceptor)
    return d


def stability(traj: Any, bonds: Any, start: Any = None, stretch: float = 0.5, min_distance: float = 0.7,
              chunk: int = 1024, transfers: Sequence[tuple[int, int, int]] | None = None) -> Stability:
    """Stability of a trajectory (T, N, 3) Å: every bond within ±`stretch` of its length at
    `start` (N, 3) (frame 0 unless given) and no non-bonded pair closer than `min_distance` Å,
    in every frame. At the first failing frame the worst violation is reported (a broken bond
    before a close contact). Frames are processed `chunk` at a time (memory T·N²).
    `transfers`: (hydrogen, donor, acceptor) whose proton may sit on either
    (`hydrogen_bond_sites` of the start; default none)."""
    traj = _trajectory(traj)
    t_len, n = traj.shape[:2]
    top = _topology(bonds, n)
    ref = traj[0] if start is None else _frame(start, n, "start")
    transfers = () if transfers is None else transfers
    d0 = _transfer_lengths(ref[None], top, transfers)[0]
    if not (np.isfinite(d0).all() and (d0 > 0).all()):
        raise StructureError(f"stability: the start frame has bonds of length {d0.tolist()} (finite, > 0 expected)")
    bonded = np.zeros((n, n), dtype=bool)
    bonded[top.bonds[:, 0], top.bonds[:, 1]] = True
    i, j = np.triu_indices(n, k=1)
    keep = ~bonded[i, j]
    i, j = i[keep], j[keep]
    for s in range(0, t_len, chunk):
        block = traj[s : s + chunk]
        dev = _transfer_lengths(block, top, transfers) / d0 - 1  # (t, n_b)
        close = np.linalg.norm(block[:, j] - block[:, i], axis=-1)  # (t, n_nb)
        bad = ~(np.abs(dev) <= stretch).all(1) | ~(close >= min_distance).all(1)  # NaN fails
        if not bad.any():
            continue
        t = int(np.argmax(bad))
        frame = s + t
        if not np.isfinite(block[t]).all():
            return Stability(False, t_len, frame, "non_finite")
        if not (np.abs(dev[t]) <= stretch).all():
            k = int(np.argmax(np.abs(dev[t])))
            a, b = top.bonds[k]
            kind = "bond_stretched" if dev[t, k] > 0 else "bond_compressed"
            return Stability(False, t_len, frame, kind, (int(a), int(b)), float(d0[k] * (1 + dev[t, k])))
        k = int(np.argmin(close[t]))
        return Stability(False, t_len, frame, "close_contact", (int(i[k]), int(j[k])), float(close[t, k]))
    return Stability(True, t_len)


@dataclass(frozen=True)
class StabilitySummary:
    """Stability of many trajectories: `coefficient` = n_stable / n (the stability
    coefficient), each trajectory's `results`, and with a frame spacing the time to first
    failure (fs): mean and min over trajectories, a stable one counted with its whole duration
    (T − 1)·dt (it survived at least that long, so the mean is a lower bound)."""

    coefficient: float
    n: int
    n_stable: int
    results: tuple[Stability, ...]
    mean_time_to_failure_fs: float | None = None
    min_time_to_failure_fs: float | None = None


def stability_coefficient(trajectories: Sequence[Any], bonds: Any, dt_fs: float | Sequence[float] | None = None,
                          starts: Sequence[Any] | None = None, stretch: float = 0.5,
                          min_distance: float = 0.7,
                          transfers: Sequence[tuple[int, int, int]] | None = None) -> StabilitySummary:
    """The stability coefficient of `trajectories` (each (T_i, N_i, 3) Å). `bonds` is one
    Topology / bond list for all, or a list of Topology objects or (n_b, 2) arrays, one per
    trajectory (different molecules); `dt_fs` the frame spacing (fs), one for all or one per trajectory; `starts`
    optional reference frames for the bond lengths (default: each trajectory's frame 0);
    `transfers` the protons of one molecule's trajectories that may sit on either of two atoms
    (`stability`)."""
    n = len(trajectories)
    if n == 0:
        raise StructureError("stability_coefficient: no trajectories")
    per = isinstance(bonds, (list, tuple)) and all(isinstance(b, Topology) or (isinstance(b, np.ndarray) and b.ndim == 2)
                                                   for b in bonds)
    if per and len(bonds) != n:
        raise StructureError(f"stability_coefficient: {len(bonds)} bond lists for {n} trajectories")
    dts = None if dt_fs is None else (list(dt_fs) if np.ndim(dt_fs) else [float(dt_fs)] * n)
    if dts is not None and (len(dts) != n or not all(d > 0 for d in dts)):
        raise StructureError(f"stability_coefficient: dt_fs must be positive, one or {n} values, found {dt_fs}")
    if starts is not None and len(starts) != n:
        raise StructureError(f"stability_coefficient: {len(starts)} start frames for {n} trajectories")
    results = tuple(stability(t, bonds[k] if per else bonds, None if starts is None else starts[k], stretch, min_distance,
                              transfers=transfers)
                    for k, t in enumerate(trajectories))
    stable = sum(r.stable for r in results)
    mean = low = None
    if dts is not None:
        times = [(r.frames - 1 if r.stable else r.first_failure_frame) * dt for r, dt in zip(results, dts)]
        mean, low = float(np.mean(times)), float(np.min(times))
    return StabilitySummary(stable / n, n, stable, results, mean, low)


# ---------------------------------------------------------------------------------------------
# distributions and distances


def circular_wasserstein(a_deg: Any, b_deg: Any, period: float = 360.0) -> float:
    """Exact Wasserstein-1 distance (degrees) between two samples of angles on the circle of
    circumference `period` (equal weights per sample; any range, taken modulo the period)."""
    a = np.sort(np.mod(np.ravel(np.asarray(a_deg, np.float64)), period))
    b = np.sort(np.mod(np.ravel(np.asarray(b_deg, np.float64)), period))
    if a.size == 0 or b.size == 0:
        raise StructureError("circular_wasserstein: both samples need at least one angle")
    edges = np.concatenate(([0.0], np.sort(np.concatenate((a, b))), [period]))
    width = np.diff(edges)
    diff = np.searchsorted(a, edges[:-1], "right") / a.size - np.searchsorted(b, edges[:-1], "right") / b.size
    order = np.argsort(diff)
    cum = np.cumsum(width[order])
    alpha = diff[order][np.searchsorted(cum, cum[-1] / 2)]  # weighted median of F − G
    return float((width * np.abs(diff - alpha)).sum())


def _w1(a: np.ndarray, b: np.ndarray, circular: bool) -> float:
    """Mean over columns (bonds, angles, …) of the W1 distance between a[:, k] and b[:, k]."""
    from scipy.stats import wasserstein_distance

    if a.shape[1] == 0:
        return 0.0
    dist = circular_wasserstein if circular else wasserstein_distance
    return float(np.mean([dist(a[:, k], b[:, k]) for k in range(a.shape[1])]))


def structure_distances(traj_a: Any, traj_b: Any, z: Any, bonds: Any = None) -> dict[str, float]:
    """Wasserstein-1 distances between two trajectories (T_a, N, 3), (T_b, N, 3) of the same
    molecule (atoms `z` (N,), same order): bond_length_a (Å), bond_angle_deg, dihedral_deg
    (on the circle), radius_of_gyration_a (Å). Each internal coordinate is compared with
    itself (bond k of a with bond k of b) and the distances are averaged over bonds / angles /
    dihedrals. `bonds` defaults to `bonds_from_geometry(z, traj_a[0])`. All 0 for identical
    trajectories; invariant under rigid motions of either."""
    traj_a, traj_b = _trajectory(traj_a, "traj_a"), _trajectory(traj_b, "traj_b")
    if traj_a.shape[1] != traj_b.shape[1]:
        raise StructureError(f"structure_distances: traj_a has {traj_a.shape[1]} atoms, traj_b {traj_b.shape[1]}")
    top = bonds_from_geometry(z, traj_a[0]) if bonds is None else _topology(bonds, traj_a.shape[1])
    rg_a, rg_b = radius_of_gyration(traj_a, z), radius_of_gyration(traj_b, z)
    return {"bond_length_a": _w1(bond_lengths(traj_a, top), bond_lengths(traj_b, top), False),
            "bond_angle_deg": _w1(bond_angles(traj_a, top), bond_angles(traj_b, top), False),
            "dihedral_deg": _w1(dihedral_angles(traj_a, top), dihedral_angles(traj_b, top), True),
            "radius_of_gyration_a": _w1(rg_a[:, None], rg_b[:, None], False)}


# ---------------------------------------------------------------------------------------------
# temperature


def temperature(v: Any, z: Any, remove_com: bool = True, masses: Any = None) -> np.ndarray:
    """Instantaneous kinetic temperature (T,) K of velocities v (T, N, 3) Å/fs (a single frame
    (N, 3) gives shape (1,)): T = Σ m v² / (f k_B), masses of `z` (u) unless `masses` (N,) is
    given. With `remove_com` the centre-of-mass velocity is subtracted first and f = 3N − 3;
    without, f = 3N. Rotation is not removed: an isolated molecule's rotation is part of its
    thermal motion (the convention of `atomray.tg80.dynamics.temperature`, whose Maxwell–
    Boltzmann draws this reproduces). 1 u·(Å/fs)² / k_B = 1.2027e6 K."""
    v = np.asarray(v, dtype=np.float64)
    v = v[None] if v.ndim == 2 else v
    if v.ndim != 3 or v.shape[-1] != 3:
        raise StructureError(f"temperature: velocities must be (T, N, 3) Å/fs, found shape {v.shape}")
    n = v.shape[1]
    m = _masses(z, n) if masses is None else np.asarray(masses, dtype=np.float64)
    if m.shape != (n,):
        raise StructureError(f"temperature: masses must be (N,) = ({n},), found shape {m.shape}")
    if remove_com:
        v = v - np.einsum("n,tnk->tk", m, v)[:, None] / m.sum()
    dof = 3 * n - 3 if remove_com else 3 * n
    if dof < 1:
        raise StructureError(f"temperature: {n} atom(s) with remove_com={remove_com} leave no degrees of freedom")
    return np.einsum("n,tnk->t", m, v**2) * U_A2_FS2_IN_K / dof


# ---------------------------------------------------------------------------------------------
# the plot


def plot_structure(rollout: Any, reference: Any, z: Any, path: str | Path, bonds: Any = None,
                   dt_fs: float | None = None, reference_dt_fs: float | None = None, title: str = "",
                   stretch: float = 0.5, floor: Any = None) -> Path:
    """One figure per molecule, written atomically to `path` (PNG by its suffix): distributions
    of bond lengths, bond angles, proper dihedrals and the radius of gyration over the rollout
    vs the reference (each panel titled with its W1 distance), and the bond-deviation trace
    max |d(t)/d(0) − 1| of both against time (fs when dt_fs is given, else frames) with the
    ±`stretch` failure line. `floor`: the prior alone rolled out from the same start (same
    time step as the rollout), drawn dashed beside it in every panel, its W1 in the titles.
    Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rollout, reference = _trajectory(rollout, "rollout"), _trajectory(reference, "reference")
    top = bonds_from_geometry(z, reference[0]) if bonds is None else _topology(bonds, reference.shape[1])
    floor = None if floor is None else _trajectory(floor, "floor")
    w1 = structure_distances(rollout, reference, z, top)
    w1_floor = None
    if floor is not None:  # a floor that flew apart has no finite frame to judge
        finite = floor[np.isfinite(floor).all((1, 2))]
        w1_floor = (structure_distances(finite, reference, z, top) if len(finite)
                    else dict.fromkeys(w1, float("nan")))
    panels = [("bond length (A)", bond_lengths, "bond_length_a", "A"),
              ("bond angle (deg)", bond_angles, "bond_angle_deg", "deg"),
              ("dihedral (deg)", dihedral_angles, "dihedral_deg", "deg"),
              ("radius of gyration (A)", lambda t, _: radius_of_gyration(t, z)[:, None], "radius_of_gyration_a", "A")]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (label, fn, key, unit) in zip(axes.flat, panels):
        a, b = fn(rollout, top).ravel(), fn(reference, top).ravel()
        c = fn(floor, top).ravel() if floor is not None else np.zeros(0)
        if a.size and b.size:
            lo, hi = np.nanmin(np.r_[a, b, c]), np.nanmax(np.r_[a, b, c])
            bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 60)
            ax.hist(b[np.isfinite(b)], bins, density=True, histtype="stepfilled", alpha=0.35, color="tab:grey",
                    label="reference")
            if c.size:
                ax.hist(c[np.isfinite(c)], bins, density=True, histtype="step", lw=1.3, ls="--", color="tab:orange",
                        label="prior alone")
            ax.hist(a[np.isfinite(a)], bins, density=True, histtype="step", lw=1.6, color="tab:blue", label="rollout")
        ax.set_xlabel(label)
        ax.set_ylabel("density")
        ax.set_title(f"W1 = {w1[key]:.4g} {unit}" + ("" if w1_floor is None else
                                                     f" (prior alone {w1_floor[key]:.4g})"), fontsize=10)
        ax.legend(fontsize=8)
    axes[1, 1].remove()
    axes[1, 2].remove()
    trace = fig.add_subplot(2, 3, (5, 6))
    lines = [(reference, reference_dt_fs, "tab:grey", "reference"), (rollout, dt_fs, "tab:blue", "rollout")]
    if floor is not None:
        lines.insert(1, (floor, dt_fs, "tab:orange", "prior alone"))
    for traj, dt, colour, name in lines:
        time = np.arange(len(traj)) * (dt if dt else 1.0)
        trace.plot(time, bond_deviation_trace(traj, top), color=colour, lw=1.0, label=name)
    trace.axhline(stretch, color="tab:red", ls="--", lw=1.0, label=f"failure (+-{stretch:.0%})")
    trace.set_xlabel("time (fs)" if dt_fs else "frame")
    trace.set_ylabel("max |d(t)/d(0) - 1| over bonds")
    trace.set_title("bond-deviation trace", fontsize=10)
    trace.grid(True, alpha=0.3)
    trace.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
