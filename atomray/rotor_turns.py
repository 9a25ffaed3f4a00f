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
potential energy after less before (tblite, `atomray.proton_hops.gfn2_engine`), samples each
group's turn by its Boltzmann weight on the reference's potential. Each group of a live state
is tried in turn on every `every`-th call: 1 + (its groups) single points per state then.

What it is not: dynamics. `every` sets how often a group may turn, not the rate MD gives.
"""

from __future__ import annotations

import numpy as np

from atomray.tg80.dynamics import KB_EV


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


class RotorTurns:
    """The terminal groups of a batch of rollout states (positions x (B, N, 3) Å, atoms zs[i],
    groups[i] a list of (Y, X, [H, …]) per state), their GFN2-xTB engines and counters; calling
    it tries a turn of every group of every live state, every `every` calls (module docstring)."""

    def __init__(self, x: np.ndarray, zs: list[np.ndarray], groups: list[list[tuple[int, int, list[int]]]],
                 temperature_k: float | np.ndarray = 300.0, seed: int = 0, names: list[str] | None = None,
                 every: int = 10, max_turn_deg: float = 60.0):
        self.zs = [np.asarray(z) for z in zs]
        self.groups = [list(g) for g in groups]
        self.names = names or [f"state {i}" for i in range(len(zs))]
        self.kt = KB_EV * np.broadcast_to(np.asarray(temperature_k, np.float64), (len(zs),))
        self.rng = np.random.default_rng([seed, 2])  # apart from the thermostat's and the hops' draws
        self.every, self.calls = max(int(every), 1), 0
        self.max_turn = np.radians(max_turn_deg)
        self.engines: dict[int, object] = {}
        self.attempts = np.zeros(len(zs), np.int64)
        self.accepted = np.zeros(len(zs), np.int64)

    @property
    def active(self) -> bool:
        return any(self.groups)

    def __call__(self, x: np.ndarray, dead: np.ndarray) -> list[tuple[int, int, float]]:
        """Try a turn of every group of every live state (on every `every`-th call); x (B, N, 3)
        is moved in place. Returns the accepted turns (state, group index, angle in degrees)."""
        from atomray.proton_hops import gfn2_engine
        from atomray.tg80.engines import EngineError

        self.calls += 1
        if self.calls % self.every:
            return []
        turned = []
        for i, groups in enumerate(self.groups):
            if dead[i] or not groups:
                continue
            n = len(self.zs[i])
            if i not in self.engines:
                self.engines[i] = gfn2_engine(self.zs[i], self.names[i])
            engine, before = self.engines[i], None
            for k, (y, c, hydrogens) in enumerate(groups):
                angle = self.rng.uniform(-self.max_turn, self.max_turn)
                draw = self.rng.random()
                moved = turn_group(x[i, :n], y, c, hydrogens, angle)
                try:
                    before = engine.forces(x[i, :n])[0] if before is None else before
                    after = engine.forces(moved)[0]
                except EngineError:  # an SCF that fails on either side refuses the move
                    continue
                self.attempts[i] += 1
                if draw < np.exp(min(0.0, -(after - before) / self.kt[i])):
                    x[i, :n], before = moved, after
                    self.accepted[i] += 1
                    turned.append((i, k, float(np.degrees(angle))))
        return turned
