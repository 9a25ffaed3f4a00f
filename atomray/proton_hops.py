"""Proton hops: a Metropolis move of a hydrogen-bonded molecule to its other tautomer between rollout steps.

    hops = ProtonHops(x, zs, temperature_k=300.0, seed=0)   # x (B, N, 3) Å, the start states
    hopped = hops(x, dead)                                  # moves x in place: [(state, H, donor, acceptor)]

Why: a rollout's prior is the vibration about one tautomer's basin minimum and the operator
predicts the conditional mean of the next state, so a proton in an intramolecular hydrogen bond
never crosses to its acceptor: the H-bonded (Z) enol of acetylacetone transfers its proton 8
times in 100 ps of GFN2-xTB MD at 300 K and 0 times in 500 ps of rollouts (docs/results.md,
"A proton transfer"), and its O–H bond distribution misses the reference's second mode.

The sites: `atomray.structure.hydrogen_bond_sites` of each start (a hydrogen bonded to an O or
N, a second O or N within 2.2 Å). Per site, the two tautomers' basin minima m_D (the proton on
its donor) and m_A (on its acceptor) come from the machine's basin store
(`atomray.priors.minima`: the start with its bond graph, and the start with the proton reflected
through the plane bisecting donor and acceptor, `reflect_proton`, with the proton's bond moved),
m_A superposed on m_D (mass-weighted, over the heavy atoms and the proton) and their difference
s = m_A − m_D, in which every other hydrogen moves with the heavy atom it is bonded to (two
minima turn a methyl differently; that is not the tautomer), made free of any centre-of-mass
shift. The move carries the state's displacement from its own tautomer's minimum over to the
other's: x' = x + R s, R the rotation that superposes m_D on x (the same weights; from the
acceptor side m_A and −s). It moves the proton and the heavy atoms' bond pattern
together, as the transfer does; velocities are kept, so the kinetic energy is. It is accepted
with probability min(1, exp(−ΔU / k_B T)), ΔU the GFN2-xTB potential energy after the move less
before (tblite, neutral closed shell): the Metropolis rule. The move is a shift, so it keeps
volume, and it is its own inverse up to the change of R between x and x' (second order in the
displacement): the hops sample the tautomers' Boltzmann weights to that order. A move by
reflecting the proton alone was measured first and refused every time (0 of 10 000 attempts in
5 × 100 ps of the enol): the proton on the other oxygen with the heavy atoms in its own
tautomer's shape costs ~0.5 eV (20 k_B T at 300 K). The rollout then moves the proton's bond to
the acceptor in the bond graph its prior keeps, so the next step's prior vibrates about the
other tautomer's basin.

What it is not: dynamics. An attempt every `every` steps sets how often the proton may cross,
not the rate MD gives; only the distributions are meant to match (at one attempt per 10 steps of
50 fs the enol's rollouts cross 4–14 times per 100 ps, its MD 8 times). Each attempt costs two
GFN2-xTB single points (~4 ms each for 15 atoms on one core), counted in the rollout's control
time; molecules without a site cost nothing.
"""

from __future__ import annotations

import numpy as np

from atomray.elements import atomic_masses
from atomray.metropolis import MetropolisMoves


def reflect_proton(x: np.ndarray, mass: np.ndarray, h: int, donor: int, acceptor: int) -> np.ndarray:
    """x' of one molecule (N, 3): hydrogen h reflected through the plane bisecting donor–acceptor,
    every atom shifted to keep the centre of mass (masses (N,)). It seeds the other tautomer's
    basin (`tautomer_pair`)."""
    normal = x[acceptor] - x[donor]
    normal = normal / np.linalg.norm(normal)
    mid = 0.5 * (x[acceptor] + x[donor])
    x2 = x.copy()
    x2[h] = x[h] - 2.0 * np.dot(x[h] - mid, normal) * normal
    x2 -= mass[h] * (x2[h] - x[h]) / mass.sum()
    return x2


class ProtonHops(MetropolisMoves):
    """The hop sites of a batch of rollout states (start positions x (B, N, 3) Å, each state's
    atoms zs[i] (n_i,), bond graphs `bonds` (default perceived by RDKit)), their tautomers'
    minima, GFN2-xTB engines and counters; calling it attempts one hop per site of every live
    state, every `every` calls (module docstring)."""

    def __init__(self, x: np.ndarray, zs: list[np.ndarray], temperature_k: float | np.ndarray = 300.0,
                 seed: int = 0, names: list[str] | None = None, bonds: list[np.ndarray | None] | None = None,
                 every: int = 1):
        from atomray.structure import hydrogen_bond_sites

        super().__init__(zs, temperature_k, seed, 1, names, every)
        self.sites: list[list[tuple[int, int, int]]] = []
        self.shifts: list[dict[tuple[int, int], tuple[np.ndarray, ...]]] = []  # (H, donor) → (m_D, s, w)
        for i, z in enumerate(self.zs):
            sites, shifts = [], {}
            for h, donor, acceptor in hydrogen_bond_sites(x[i, : len(z)], z):
                pair = tautomer_pair(x[i, : len(z)], z, h, donor, acceptor, None if bonds is None else bonds[i])
                if pair is None:
                    continue
                sites.append((h, donor, acceptor))
                shifts[(h, donor)], shifts[(h, acceptor)] = pair[0], pair[1]
            self.sites.append(sites)
            self.shifts.append(shifts)

    @property
    def active(self) -> bool:
        return any(self.sites)

    def __call__(self, x: np.ndarray, dead: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Attempt a hop at every site of every live state (on every `every`-th call); x (B, N, 3)
        is moved in place (the velocities stay as they are). Returns the accepted hops (state,
        hydrogen, old donor, new donor)."""
        from atomray.priors.rigid import kabsch_np

        if not self.due():
            return []
        hopped = []
        for i, sites in enumerate(self.sites):
            if dead[i] or not sites:
                continue
            n = len(self.zs[i])
            before = None
            for k, (h, donor, acceptor) in enumerate(sites):
                minimum, shift, weight = self.shifts[i][(h, donor)]
                rot, _, _ = kabsch_np(minimum, x[i, :n], weight)
                moved = x[i, :n] + shift @ rot.T
                draw = self.rng.random()
                taken, before = self.attempt(i, x[i, :n], moved, draw, before)
                if taken:
                    x[i, :n] = moved
                    sites[k] = (h, acceptor, donor)
                    hopped.append((i, h, donor, acceptor))
        return hopped


def tautomer_pair(x: np.ndarray, z: np.ndarray, h: int, donor: int, acceptor: int, bonds: np.ndarray | None = None
                  ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
    """((m_D, s, w), (m_A, −s, w)) of one site of state x (N, 3) Å (module docstring): the basin
    minimum with the proton on its donor and on its acceptor, the second superposed on the first
    over the heavy atoms and the proton (weights w (N,): their masses, zero for the other
    hydrogens), and their difference s, each other hydrogen shifted with the heavy atom it is
    bonded to (a methyl's turn differs between two minima and is not the tautomer's) and without
    a centre-of-mass shift; None where MMFF94 cannot type either tautomer. `bonds`: x's bond
    graph (default perceived)."""
    from atomray.priors.minima import machine_finder, molecule_bonds
    from atomray.priors.rigid import kabsch_np

    mass = atomic_masses(z).astype(np.float64)
    graph = molecule_bonds(x, z) if bonds is None else np.asarray(bonds)
    if graph is None:
        return None
    finder = machine_finder(z)
    k_d = finder.assign(x, bonds=graph)
    k_a = finder.assign(reflect_proton(x, mass, h, donor, acceptor), bonds=move_bond(graph, h, donor, acceptor))
    if k_d < 0 or k_a < 0:
        return None
    frame = (np.asarray(z) > 1) | (np.arange(len(z)) == h)
    weight = mass * frame
    m_d, m_a = finder.minimum(k_d)[0], finder.minimum(k_a)[0]
    rot, c_a, c_d = kabsch_np(m_a, m_d, weight)
    shift = (m_a - c_a) @ rot.T + c_d - m_d
    for i in np.flatnonzero(~frame):  # the other hydrogens ride on their heavy atom
        partners = np.concatenate([graph[graph[:, 0] == i, 1], graph[graph[:, 1] == i, 0]])
        partners = partners[np.asarray(z)[partners] > 1]
        shift[i] = shift[partners[0]] if len(partners) else 0.0
    shift -= (mass[:, None] * shift).sum(0) / mass.sum()
    return (m_d, shift, weight), (m_d + shift, -shift, weight)


def move_bond(bonds: np.ndarray, h: int, donor: int, acceptor: int) -> np.ndarray:
    """The bond graph (n_b, 2) with hydrogen h's bond to `donor` moved to `acceptor`."""
    out = np.asarray(bonds).copy()
    row = ((out[:, 0] == h) & (out[:, 1] == donor)) | ((out[:, 0] == donor) & (out[:, 1] == h))
    out[row] = (h, acceptor)
    return out
