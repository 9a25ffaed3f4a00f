"""Rotor turns: a Metropolis move of a terminal group's turn about its bond between rollout steps.

    turns = RotorTurns(x, zs, groups, temperature_k=300.0, seed=0, every=10)
    turned = turns(x, dead)                       # moves x in place: [(state, group index, angle °)]

Why: a methyl (or amino, or hydroxyl) group turns almost freely in MD at 300 K and barely in a
rollout. N-methylacetamide's N-methyl turns a third 145 times in 100 ps of GFN2-xTB MD and 0
times in 5 × 100 ps of rollouts, ATOM's or its prior's alone; each step's prior vibrates about
the basin of the rotamer the state is in, and the operator's conditional mean does not carry a
turn over the barrier. The rollouts' torsions then sit in narrow peaks with unequal weights,
and those torsions are the dihedral misses left (docs/results.md, "Rotor turns").

The move: per terminal group (Y, X, [H, …]) (`atomray.priors.modes.rotor_groups`), its hydrogens
turned about the axis Y→X through X by an angle drawn uniformly in ±`max_turn_deg` (60° by
default) and, with `jumps` (`Control.turn_jumps`, on by default), by k·360°/n more for a group
of n > 1 hydrogens, k drawn from 0..n−1: the group's own symmetry, its hydrogens trading places.
A hydroxyl (n = 1) gets no jump: its half turn is a real barrier crossing. Without the jumps the
velocities are kept (the canonical distribution's velocities are independent of the
positions); with them the group's velocities turn with its hydrogens (`turns_velocities`, given
`v`), as the torsion turns do: a hydrogen carried a third of a turn with the velocity of its old
place ran into its neighbour (N-methylacetamide, one start of five). Why the jumps: a turn of at
most 60° lands a staggered methyl at most on its eclipsed top, where a barrier of ~3 kcal/mol
(hexane's methyls) refuses it; without them hexane's methyls reached another rotamer 0 times
per 100 ps of rollout against GFN2-xTB MD's 23, and their H–C–C–C dihedrals missed by 36–39°
(docs/experiments.md, "Methyls that never turn a third"). The proposal is symmetric
and keeps volume, so accepting it with probability min(1, exp(−ΔU / k_B T)), ΔU the GFN2-xTB
potential energy after less before (tblite, `atomray.metropolis`), samples each
group's turn by its Boltzmann weight on the reference's potential. Each group of a live state
is tried in turn on every `every`-th call: 1 + (its groups) single points per state then.

`energy="mmff"` accepts on MMFF94 (each state's bond graph) instead: ~1000× cheaper per call,
and the turns then sample MMFF94's torsion profile rather than the reference's.

What it is not: dynamics. `every` sets how often a group may turn, not the rate MD gives.

Torsion turns (`TorsionTurns`, `atomray.priors.modes.torsion_groups`): the same move for a heavy-atom torsion. Every
rotatable bond Y–X (single, in no ring, between two heavy atoms each with another heavy
neighbour, not an amide's C–N) turns its smaller side about the axis Y→X by 120°, −120° or 180°,
drawn uniformly (a symmetric proposal: each angle's inverse is in the set with the same weight):
one rotamer to the next (sp3–sp3) or s-cis to s-trans (sp2–sp2); an angle that lands on no
rotamer costs the energy of an eclipsed or twisted torsion and is refused. An amide's C–N turns
once in far longer than the 100 ps a rollout is judged over (its barrier is ~18 kcal/mol), so it
is left out. The turned side's velocities turn with it (given `v`): left as they were, hexane's
rollouts stretched C–H bonds to 1.7 Å. What it does, measured (5 × 100 ps, docs/experiments.md,
"Torsion turns"): on acetylacetone's enol on MMFF94's energy 3–6 % of the turns are taken and the
rollouts switch between s-cis and s-trans 2–18 times, with MMFF94's weights; on GFN2-xTB's a rigid
turn keeps the bond angles of the rotamer it leaves, which clash in the other, and 1 in 1 000 is
taken; on hexane on GFN2-xTB's 23 % are taken, the dihedrals move little and the bonds widen. Off
in the rollout recipe.
"""

from __future__ import annotations

import numpy as np

from atomray.metropolis import MetropolisMoves
from atomray.priors.rigid import rotated


def turn_group(x: np.ndarray, y: int, c: int, hydrogens: list[int], angle_rad: float) -> np.ndarray:
    """x (N, 3) with `hydrogens` turned by angle_rad about the axis y→c through c (right-handed); a copy."""
    out = x.copy()
    out[hydrogens] = x[c] + rotated(x[hydrogens] - x[c], x[c] - x[y], angle_rad)
    return out


class RotorTurns(MetropolisMoves):
    """The terminal groups of a batch of rollout states (positions x (B, N, 3) Å, atoms zs[i],
    groups[i] a list of (Y, X, [H, …]) per state), their energies' engines and counters; calling
    it tries a turn of every group of every live state, every `every` calls (module docstring)."""

    def __init__(self, x: np.ndarray, zs: list[np.ndarray], groups: list[list[tuple[int, int, list[int]]]],
                 temperature_k: float | np.ndarray = 300.0, seed: int = 0, names: list[str] | None = None,
                 every: int = 10, max_turn_deg: float = 60.0, energy: str = "gfn2",
                 bonds: list[np.ndarray | None] | None = None, stream: int = 2, jumps: bool = False):
        super().__init__(zs, temperature_k, seed, stream, names, every, energy, bonds)
        self.groups = [list(g) for g in groups]
        self.max_turn = np.radians(max_turn_deg)
        self.jumps = jumps
        self.turns_velocities = jumps  # a jumping group's velocities turn with it (module docstring)

    @property
    def active(self) -> bool:
        return any(self.groups)

    def angle(self, hydrogens: int = 1) -> float:
        """A turn's angle (rad), uniform in ±max_turn; with `jumps`, plus k·360°/n for a group of
        n > 1 hydrogens, k drawn uniformly from 0..n−1 (the group's own symmetry: its hydrogens
        trade places). The proposal stays symmetric (k and n − k equally likely)."""
        turn = self.rng.uniform(-self.max_turn, self.max_turn)
        if self.jumps and hydrogens > 1:
            turn += 2.0 * np.pi * int(self.rng.integers(hydrogens)) / hydrogens
        return turn

    def __call__(self, x: np.ndarray, dead: np.ndarray, v: np.ndarray | None = None) -> list[tuple[int, int, float]]:
        """Try a turn of every group of every live state (on every `every`-th call); x (B, N, 3)
        is moved in place. Returns the accepted turns (state, group index, angle in degrees).
        `v` (B, N, 3), given: the turned atoms' velocities turn with them (in place) where `turns_velocities`."""
        if not self.due():
            return []
        turned = []
        for i, groups in enumerate(self.groups):
            if dead[i] or not groups:
                continue
            n, before = len(self.zs[i]), None
            for k, (y, c, atoms) in enumerate(groups):  # a group's hydrogens, or a torsion's side
                angle = self.angle(len(atoms))
                draw = self.rng.random()
                moved = turn_group(x[i, :n], y, c, atoms, angle)
                taken, before = self.attempt(i, x[i, :n], moved, draw, before)
                if taken:
                    if v is not None and self.turns_velocities:
                        v[i, atoms] = rotated(v[i, atoms], x[i, c] - x[i, y], angle)
                    x[i, :n] = moved
                    turned.append((i, k, float(np.degrees(angle))))
        return turned


TORSION_ANGLES = np.radians([120.0, -120.0, 180.0])


class TorsionTurns(RotorTurns):
    """Torsion turns (module docstring) of a batch of rollout states: `RotorTurns` over
    `atomray.priors.modes.torsion_groups`, each turn's angle one of `TORSION_ANGLES`, drawn from its own stream."""

    def __init__(self, x: np.ndarray, zs: list[np.ndarray], groups: list[list[tuple[int, int, list[int]]]],
                 temperature_k: float | np.ndarray = 300.0, seed: int = 0, names: list[str] | None = None,
                 every: int = 10, energy: str = "gfn2", bonds: list[np.ndarray | None] | None = None):
        super().__init__(x, zs, groups, temperature_k, seed, names, every, 180.0, energy, bonds,
                         stream=3)  # max_turn unused: `angle` draws from TORSION_ANGLES
        self.turns_velocities = True  # left as they were, hexane's C–H bonds stretched to 1.7 Å

    def angle(self, hydrogens: int = 1) -> float:
        return float(TORSION_ANGLES[self.rng.integers(len(TORSION_ANGLES))])
