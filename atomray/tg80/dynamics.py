"""Molecular dynamics in NumPy: FIRE relaxation, Maxwell–Boltzmann velocities, velocity
Verlet (NVE) and BAOAB Langevin (NVT) integrators, and the resumable state between segments.

Units: positions Å, velocities Å/fs, time fs, masses amu, energies eV, forces eV/Å.
Then F/m is in eV/(Å·amu) = 0.0096485 Å/fs², and ½mv² in amu·Å²/fs² = 103.64 eV.

Protocol (paper §3.3: 1 fs, 300 K, vacuum): relax → Maxwell–Boltzmann velocities at T →
Langevin equilibration → production, NVE by default (a deterministic propagator for the
operator to learn) or Langevin NVT. Every production step is stored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np

from atomray.tg80.engines import Engine

ACCEL = 0.009648533212331  # (eV/Å)/amu in Å/fs²
KINETIC_EV = 1.0 / ACCEL  # amu·Å²/fs² in eV
KB_EV = 8.617333262e-5  # Boltzmann constant, eV/K


@dataclass(frozen=True)
class MDConfig:
    """The simulation protocol. Times in fs, temperature in K, friction in 1/fs.

    `equilibration_fs` of Langevin dynamics (friction `equilibration_friction_per_fs`, strong
    so the molecule reaches T in a few 1/γ) precede
    `production_fs` of stored dynamics, written in segments of `segment_fs`. The stored
    frames of a segment are the states at t0, t0 + dt, ... (t0 = segment * segment_fs).
    NVT production uses the gentler `friction_per_fs`. Relaxation (FIRE) stops at max |F| < `relax_fmax` eV/Å or after `relax_steps` steps.
    """

    temperature_k: float = 300.0
    dt_fs: float = 1.0
    ensemble: Literal["nve", "nvt"] = "nve"
    friction_per_fs: float = 0.01
    equilibration_friction_per_fs: float = 0.05
    equilibration_fs: float = 1000.0
    production_fs: float = 31000.0
    segment_fs: float = 1000.0
    relax_fmax: float = 0.05
    relax_steps: int = 1000

    def steps(self, fs: float) -> int:
        """Number of time steps in `fs` femtoseconds (must be a whole number)."""
        n = fs / self.dt_fs
        if abs(n - round(n)) > 1e-9:
            raise ValueError(f"md: {fs} fs is not a whole number of {self.dt_fs} fs steps")
        return int(round(n))

    @property
    def n_segments(self) -> int:
        per, total = self.steps(self.segment_fs), self.steps(self.production_fs)
        if per <= 0 or total <= 0 or total % per:
            raise ValueError(
                f"md: production_fs ({self.production_fs}) must be a positive multiple of "
                f"segment_fs ({self.segment_fs})"
            )
        return total // per


@dataclass
class MDState:
    """Full-precision state between steps: enough to continue bit-for-bit.

    positions, velocities, forces: (N, 3) float64; energy: potential energy (eV) at
    `positions`; step: production steps done; rng_state: the Langevin generator's state.
    """

    positions: np.ndarray
    velocities: np.ndarray
    forces: np.ndarray
    energy: float
    step: int
    rng_state: dict

    def arrays(self) -> dict[str, np.ndarray]:
        """As named arrays (for an .npz checkpoint)."""
        return dict(
            positions=self.positions, velocities=self.velocities, forces=self.forces,
            energy=np.float64(self.energy), step=np.int64(self.step),
            rng_state=np.array(json.dumps(self.rng_state)),
        )

    @classmethod
    def from_arrays(cls, arrays: dict) -> "MDState":
        return cls(
            np.array(arrays["positions"], np.float64), np.array(arrays["velocities"], np.float64),
            np.array(arrays["forces"], np.float64), float(arrays["energy"]), int(arrays["step"]),
            json.loads(str(arrays["rng_state"])),
        )


def kinetic_energy(masses: np.ndarray, velocities: np.ndarray) -> float:
    """½ Σ m v² in eV (masses amu, velocities Å/fs)."""
    return 0.5 * float(np.sum(masses[:, None] * velocities**2)) * KINETIC_EV


def temperature(masses: np.ndarray, velocities: np.ndarray, dof: int | None = None) -> float:
    """Instantaneous temperature (K) = 2 KE / (dof k_B); dof defaults to 3N − 3."""
    dof = dof if dof is not None else 3 * len(masses) - 3
    return 2.0 * kinetic_energy(masses, velocities) / (dof * KB_EV)


def remove_com_velocity(masses: np.ndarray, velocities: np.ndarray) -> np.ndarray:
    """Velocities with the centre-of-mass velocity subtracted (zero total momentum)."""
    return velocities - (masses @ velocities) / masses.sum()


def maxwell_boltzmann(masses: np.ndarray, temperature_k: float, rng: np.random.Generator) -> np.ndarray:
    """Velocities (N, 3) Å/fs drawn at `temperature_k`, zero total momentum, rescaled so the
    instantaneous temperature (3N − 3 degrees of freedom) is exactly `temperature_k`."""
    sigma = np.sqrt(KB_EV * temperature_k / masses * ACCEL)  # Å/fs
    v = remove_com_velocity(masses, rng.standard_normal((len(masses), 3)) * sigma[:, None])
    t_now = temperature(masses, v)
    return v * np.sqrt(temperature_k / t_now) if t_now > 0 else v


def relax(engine: Engine, positions: np.ndarray, fmax: float, max_steps: int) -> np.ndarray:
    """FIRE minimisation (Bitzek et al. 2006, ASE's parameters: unit masses, dt 0.1, at most
    0.2 Å per step) until max |F| < fmax eV/Å or max_steps. Returns positions (N, 3) Å."""
    x = np.array(positions, np.float64)
    v = np.zeros_like(x)
    dt, dt_max, alpha, n_pos = 0.1, 1.0, 0.1, 0
    _, f = engine.forces(x)
    for _ in range(max_steps):
        if np.sqrt((f**2).sum(axis=1)).max() < fmax:
            break
        if float(np.vdot(f, v)) > 0:
            v = (1 - alpha) * v + alpha * f / max(np.linalg.norm(f), 1e-12) * np.linalg.norm(v)
            if n_pos > 5:
                dt, alpha = min(dt * 1.1, dt_max), alpha * 0.99
            n_pos += 1
        else:
            v[:], dt, alpha, n_pos = 0.0, dt * 0.5, 0.1, 0
        v = v + dt * f
        step = dt * v
        norm = np.linalg.norm(step)
        if norm > 0.2:
            step *= 0.2 / norm
        x = x + step
        _, f = engine.forces(x)
    return x


def verlet_step(state: MDState, engine: Engine, masses: np.ndarray, dt: float) -> None:
    """One velocity-Verlet step (NVE), in place."""
    inv_m = ACCEL / masses[:, None]
    v_half = state.velocities + 0.5 * dt * state.forces * inv_m
    state.positions = state.positions + dt * v_half
    state.energy, state.forces = engine.forces(state.positions)
    state.velocities = v_half + 0.5 * dt * state.forces * inv_m
    state.step += 1


def baoab_step(
    state: MDState, engine: Engine, masses: np.ndarray, dt: float, friction: float,
    temperature_k: float, rng: np.random.Generator,
) -> None:
    """One BAOAB Langevin step (Leimkuhler & Matthews 2013), in place; friction in 1/fs."""
    inv_m = ACCEL / masses[:, None]
    c1 = np.exp(-friction * dt)
    sigma = np.sqrt((1.0 - c1 * c1) * KB_EV * temperature_k * inv_m)  # (N, 1) Å/fs
    v = state.velocities + 0.5 * dt * state.forces * inv_m  # B
    x = state.positions + 0.5 * dt * v  # A
    v = c1 * v + sigma * rng.standard_normal(v.shape)  # O
    x = x + 0.5 * dt * v  # A
    state.energy, state.forces = engine.forces(x)
    state.positions = x
    state.velocities = v + 0.5 * dt * state.forces * inv_m  # B
    state.step += 1


def run_steps(
    state: MDState, engine: Engine, masses: np.ndarray, cfg: MDConfig, n_steps: int,
    ensemble: str, record: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Advance `state` n_steps in `ensemble` ("nve" / "nvt"), recording each state *before*
    its step. Returns positions (n, N, 3) Å, velocities (n, N, 3) Å/fs and total energy (n,)
    eV of the recorded frames (empty arrays when record is False)."""
    n_atoms = len(masses)
    shape = (n_steps if record else 0, n_atoms, 3)
    pos, vel, e_tot = np.empty(shape), np.empty(shape), np.empty(shape[0])
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state.rng_state
    for i in range(n_steps):
        if record:
            pos[i], vel[i] = state.positions, state.velocities
            e_tot[i] = state.energy + kinetic_energy(masses, state.velocities)
        if ensemble == "nve":
            verlet_step(state, engine, masses, cfg.dt_fs)
        elif ensemble == "nvt":
            baoab_step(state, engine, masses, cfg.dt_fs, cfg.friction_per_fs, cfg.temperature_k, rng)
        else:
            raise ValueError(f"md.ensemble: expected 'nve' or 'nvt', found {ensemble!r}")
    state.rng_state = rng.bit_generator.state
    return pos, vel, e_tot


def prepare_state(
    engine: Engine, positions: np.ndarray, masses: np.ndarray, cfg: MDConfig, seed: int,
) -> MDState:
    """Relax, draw Maxwell–Boltzmann velocities, equilibrate with Langevin dynamics.

    Returns the state at production step 0. For NVE production the centre-of-mass velocity
    is removed after equilibration (Langevin noise gives the molecule a small drift).
    """
    x = relax(engine, positions, cfg.relax_fmax, cfg.relax_steps)
    rng = np.random.Generator(np.random.PCG64(seed))
    v = maxwell_boltzmann(masses, cfg.temperature_k, rng)
    energy, forces = engine.forces(x)
    state = MDState(x, v, forces, energy, 0, rng.bit_generator.state)
    equilibration = replace(cfg, friction_per_fs=cfg.equilibration_friction_per_fs)
    run_steps(state, engine, masses, equilibration, cfg.steps(cfg.equilibration_fs), "nvt", record=False)
    if cfg.ensemble == "nve":
        state.velocities = remove_com_velocity(masses, state.velocities)
    state.step = 0
    return state


def config_json(cfg: MDConfig) -> str:
    """The MD settings as canonical JSON (stored in checkpoints and provenance)."""
    return json.dumps(asdict(cfg), sort_keys=True)
