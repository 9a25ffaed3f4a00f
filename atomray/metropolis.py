"""Metropolis moves between rollout steps, accepted on the GFN2-xTB energy: what proton hops
(`atomray.proton_hops`) and rotor turns (`atomray.rotor_turns`) share.

    class Moves(MetropolisMoves): ...          # proposes; `due` and `attempt` do the rest

Per batch of rollout states: their atoms, k_B T per state, a seeded generator (its own stream
per kind of move, apart from the thermostat's draws), one GFN2-xTB engine per state (tblite,
neutral closed shell, made at its first attempt) and the attempts and acceptances per state.
A move x → x' with a symmetric, volume-keeping proposal is accepted with probability
min(1, exp(−ΔU / k_B T)), ΔU = U(x') − U(x): the Metropolis rule, which samples the positions'
Boltzmann weights on the reference's potential. An SCF that fails on either side refuses the move
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


class MetropolisMoves:
    """The shared state of a kind of Metropolis move over a batch of states (atoms zs[i], one
    temperature or one per state, K); `stream` keeps its draws apart from other kinds'."""

    def __init__(self, zs: list[np.ndarray], temperature_k: float | np.ndarray, seed: int, stream: int,
                 names: list[str] | None, every: int):
        self.zs = [np.asarray(z) for z in zs]
        self.names = names or [f"state {i}" for i in range(len(zs))]
        self.kt = KB_EV * np.broadcast_to(np.asarray(temperature_k, np.float64), (len(zs),))
        self.rng = np.random.default_rng([seed, stream])
        self.every, self.calls = max(int(every), 1), 0
        self.engines: dict[int, object] = {}
        self.attempts = np.zeros(len(zs), np.int64)
        self.accepted = np.zeros(len(zs), np.int64)

    def due(self) -> bool:
        """Count a call; True on every `every`-th."""
        self.calls += 1
        return self.calls % self.every == 0

    def energy(self, i: int, x: np.ndarray) -> float | None:
        """State i's GFN2-xTB potential energy (eV) at x (n_i, 3) Å; None where the SCF fails."""
        from atomray.tg80.engines import EngineError

        if i not in self.engines:
            self.engines[i] = gfn2_engine(self.zs[i], self.names[i])
        try:
            return float(self.engines[i].forces(x)[0])
        except EngineError:
            return None

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
