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
default: to the next equivalent position of a methyl, and back), the velocities kept (the
canonical distribution's velocities are independent of the positions). The proposal is symmetric
and keeps volume, so accepting it with probability min(1, exp(−ΔU / k_B T)), ΔU the GFN2-xTB
potential energy after less before (tblite, `atomray.metropolis`), samples each
group's turn by its Boltzmann weight on the reference's potential. Each group of a live state
is tried in turn on every `every`-th call: 1 + (its groups) single points per state then.

`energy="mmff"` accepts on MMFF94 (each state's bond graph) instead: ~1000× cheaper per call,
and the turns then sample MMFF94's torsion profile rather than the reference's.

What it is not: dynamics. `every` sets how often a group may turn, not the rate MD gives.
"""

from __future__ import annotations

import numpy as np

from atomray.metropolis import MetropolisMoves


def turn_group(x: np.ndarray, y: int, c: int, hydrogens: list[int], angle_rad: float) -> np.ndarray:
    """x (N, 3) with `hydrogens` turned by angle_rad about the axis y→c through c (right-handed); a copy."""
    axis = x[c] - x[y]
    axis = axis / np.linalg.norm(axis)
    r = x[hydrogens] - x[c]
    cos, sin = np.cos(angle_rad), np.sin(angle_rad)
    along = (r @ axis)[:, None] * axis
    out = x.copy()
    out[hydrogens] = x[c] + along + cos * (r - along) + sin * np.cross(axis, r)
    return out


class RotorTurns(MetropolisMoves):
    """The terminal groups of a batch of rollout states (positions x (B, N, 3) Å, atoms zs[i],
    groups[i] a list of (Y, X, [H, …]) per state), their energies' engines and counters; calling
    it tries a turn of every group of every live state, every `every` calls (module docstring)."""

    def __init__(self, x: np.ndarray, zs: list[np.ndarray], groups: list[list[tuple[int, int, list[int]]]],
                 temperature_k: float | np.ndarray = 300.0, seed: int = 0, names: list[str] | None = None,
                 every: int = 10, max_turn_deg: float = 60.0, energy: str = "gfn2",
                 bonds: list[np.ndarray | None] | None = None):
        super().__init__(zs, temperature_k, seed, 2, names, every, energy, bonds)
        self.groups = [list(g) for g in groups]
        self.max_turn = np.radians(max_turn_deg)

    @property
    def active(self) -> bool:
        return any(self.groups)

    def __call__(self, x: np.ndarray, dead: np.ndarray) -> list[tuple[int, int, float]]:
        """Try a turn of every group of every live state (on every `every`-th call); x (B, N, 3)
        is moved in place. Returns the accepted turns (state, group index, angle in degrees)."""
        if not self.due():
            return []
        turned = []
        for i, groups in enumerate(self.groups):
            if dead[i] or not groups:
                continue
            n, before = len(self.zs[i]), None
            for k, (y, c, hydrogens) in enumerate(groups):
                angle = self.rng.uniform(-self.max_turn, self.max_turn)
                draw = self.rng.random()
                moved = turn_group(x[i, :n], y, c, hydrogens, angle)
                taken, before = self.attempt(i, x[i, :n], moved, draw, before)
                if taken:
                    x[i, :n] = moved
                    turned.append((i, k, float(np.degrees(angle))))
        return turned
