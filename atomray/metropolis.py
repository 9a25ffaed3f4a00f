"""Metropolis moves between rollout steps, accepted on a potential energy (GFN2-xTB's, or for
rotor turns MMFF94's): what proton hops (`atomray.proton_hops`) and rotor turns
(`atomray.rotor_turns`) share.

    class Moves(MetropolisMoves): ...          # proposes; `due` and `attempt` do the rest

Per batch of rollout states: their atoms, k_B T per state, a seeded generator (its own stream
per kind of move, apart from the thermostat's draws), one engine per state, made at its first
attempt (GFN2-xTB through tblite, neutral closed shell; or, with `energy="mmff"`, RDKit's MMFF94
on the state's bond graph, ~1000× cheaper and not the reference's potential) and the attempts
and acceptances per state.
A move x → x' with a symmetric, volume-keeping proposal is accepted with probability
min(1, exp(−ΔU / k_B T)), ΔU = U(x') − U(x): the Metropolis rule, which samples the positions'
Boltzmann weights on that potential. An SCF that fails on either side refuses the move
without counting it.
"""

from __future__ import annotations

import numpy as np

from atomray.tg80.dynamics import KB_EV


def gfn2_engine(z: np.ndarray, name: str):
    """A GFN2-xTB engine (`atomray.tg80.engines.TBLiteEngine`) for the neutral closed-shell molecule of atoms z."""
    from rdkit import Chem

    from atomray.tg80.engines import TBLiteEngine

    rw = Chem.RWMol()
    for number in z:
        rw.AddAtom(Chem.Atom(int(number)))
    return TBLiteEngine(rw.GetMol(), "GFN2-xTB", name)


ENERGIES = ("gfn2", "mmff")


class _MMFF:
    """MMFF94 energies of one molecule on its bond graph (`atomray.priors.minima.mmff_field`),
    with `forces`' signature; EngineError where MMFF94 cannot type it."""

    def __init__(self, x: np.ndarray, z: np.ndarray, bonds: np.ndarray | None):
        from atomray.priors.minima import mmff_field

        self.built = mmff_field(x, z, bonds, nonBondedThresh=100.0)

    def forces(self, x: np.ndarray) -> tuple[float, None]:
        from atomray.tg80.engines import EngineError, KCAL_MOL_EV

        if self.built is None:
            raise EngineError("MMFF94 has no parameters for this molecule")
        return self.built[2].CalcEnergy(np.asarray(x, np.float64).ravel().tolist()) * KCAL_MOL_EV, None


class MetropolisMoves:
    """The shared state of a kind of Metropolis move over a batch of states (atoms zs[i], one
    temperature or one per state, K); `stream` keeps its draws apart from other kinds'."""

    def __init__(self, zs: list[np.ndarray], temperature_k: float | np.ndarray, seed: int, stream: int,
                 names: list[str] | None, every: int, energy: str = "gfn2",
                 bonds: list[np.ndarray | None] | None = None):
        if energy not in ENERGIES:
            raise ValueError(f"Metropolis moves: energy must be one of {', '.join(map(repr, ENERGIES))}, found {energy!r}")
        self.zs = [np.asarray(z) for z in zs]
        self.names = names or [f"state {i}" for i in range(len(zs))]
        self.kt = KB_EV * np.broadcast_to(np.asarray(temperature_k, np.float64), (len(zs),))
        self.rng = np.random.default_rng([seed, stream])
        self.every, self.calls = max(int(every), 1), 0
        self.kind = energy
        self.bonds = list(bonds) if bonds is not None else [None] * len(zs)  # for MMFF94: each state's graph
        self.engines: dict[int, object] = {}
        self.attempts = np.zeros(len(zs), np.int64)
        self.accepted = np.zeros(len(zs), np.int64)

    def due(self) -> bool:
        """Count a call; True on every `every`-th."""
        self.calls += 1
        return self.calls % self.every == 0

    def energy(self, i: int, x: np.ndarray) -> float | None:
        """State i's potential energy (eV) at x (n_i, 3) Å; None where the SCF fails or MMFF94
        has no parameters for the state's graph."""
        from atomray.tg80.engines import EngineError

        if i not in self.engines:
            self.engines[i] = (gfn2_engine(self.zs[i], self.names[i]) if self.kind == "gfn2"
                               else _MMFF(x, self.zs[i], self.bonds[i]))
        try:
            return float(self.engines[i].forces(x)[0])
        except EngineError:
            return None

    def regraph(self, i: int, bonds: np.ndarray | None) -> None:
        """State i's bond graph changed (a proton hop): its MMFF94 field is built afresh."""
        self.bonds[i] = bonds
        if self.kind == "mmff":
            self.engines.pop(i, None)

    def accept(self, i: int, before: float, after: float, draw: float) -> bool:
        """The Metropolis rule for state i with the uniform draw `draw`, counted."""
        self.attempts[i] += 1
        taken = bool(draw < np.exp(min(0.0, -(after - before) / self.kt[i])))
        self.accepted[i] += taken
        return taken

    def attempt(self, i: int, x: np.ndarray, moved: np.ndarray, draw: float, before: float | None
                ) -> tuple[bool, float | None]:
        """Try state i's move x → moved (n_i, 3) Å: (taken, the energy of where the state now
        is). `before` is x's energy when known (None: computed here)."""
        before = self.energy(i, x) if before is None else before
        after = None if before is None else self.energy(i, moved)
        if after is None or not self.accept(i, before, after, draw):
            return False, before
        return True, after
