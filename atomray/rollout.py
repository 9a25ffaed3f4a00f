"""Long rollouts: chain a trained operator's predictions from a start state to a total time, in
steps of ΔT, for many molecules at once.

    states = [state_from_dataset("data/tg80-mini", "aspirin", frame) for frame in (0, 500, 1000)]
    traj = rollout(model, cfg, states, total_fs=50_000, step_fs=200)
    traj.positions[0]          # (T + 1, N, 3) Å: the start and every predicted frame of molecule 0
    write_rollout_extxyz("aspirin-0.extxyz", traj, 0)

Each step feeds the current state of the model's atoms (centred on their centroid, as the
window sampler does; RWPE of its current radius graph) with P = data.num_lags lags spread
evenly over (0, ΔT]; the P predicted frames join the trajectory and the frame at ΔT starts
the next step.

The next step also needs velocities: the time derivative of the model's own prediction at ΔT,
taken as a fourth-order centred difference over four more lags ΔT ± δ, ΔT ± 2δ (δ = 1 fs),
asked in the same forward pass (T-RoPE takes any lag; no retraining):

    v(ΔT) = [8 (f(ΔT + δ) − f(ΔT − δ)) − (f(ΔT + 2δ) − f(ΔT − 2δ))] / 12δ,

whose error is (ωδ)⁴/30 of the velocity of a motion of angular frequency ω: 10⁻¹³ for a
molecule's rotation (ω ~ 10⁻³ rad/fs), so the rigid / rotor prior with a zero correction moves
a rigid molecule exactly and its rollout is the analytic motion to round-off
(`tests/test_rollout.py`). With P = data.num_lags ≥ 5 a step is one model call (P − 4 recorded
frames); with fewer lags the frames and the difference lags go in two rows of the batch.
`rollout(..., lags=5)` asks ATOM for five lags whatever it trained with: the frame at ΔT and
the difference lags, one recorded frame per step, 1.6× faster at a 50 fs stride with the
`make pretrain` model (docs/results.md).
Each step's states go through the same prior transform as training windows
(`atomray.priors.paths`, basins through the machine's basin store). Atoms the model does not see
(hydrogens of a heavy-atom model) are not rolled out; such a model's rigid-body prior then comes
from its heavy atoms alone after the first step.

A model with a velocity head (`ModelConfig.predict_velocity`) is asked instead for the velocity
at ΔT it predicts beside the positions: no difference lags, so every lag of the call is a
recorded frame, and one lag per step (`lags=1`) suffices.

Between steps a `Control` may act on the state the next step starts from: noise on the
predicted positions (the spread a chained conditional mean loses), momentum
conservation (the rigid-body part of the velocities replaced by the start state's, so linear and
angular momentum are the start's exactly) and a CSVR or Langevin thermostat on the internal
motion (NVT). `Rollout.model_velocities` keeps the velocities the model itself predicted, before any
control, so the model's own temperature can be read beside the controlled one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from atomray.config import RunConfig
from atomray.data.frames import DataError
from atomray.elements import atomic_masses
from atomray.structure import U_A2_FS2_IN_K
from atomray.predict import InitialState, model_atoms, write_frames


@dataclass
class Rollout:
    """Trajectories of a batch of rollouts; per molecule i: atoms (n_i,), positions (T + 1, n_i, 3) Å
    at `times_fs` (0 first), and the velocities (Å/fs) of each step's start state."""

    names: list[str]
    atomic_numbers: list[np.ndarray]
    times_fs: np.ndarray
    positions: list[np.ndarray]
    step_fs: float
    step_velocities: list[np.ndarray] = field(default_factory=list)  # (S + 1, n_i, 3), after any control
    seconds: float = 0.0  # wall time of the model steps (controls included)
    model_velocities: list[np.ndarray] = field(default_factory=list)  # (S, n_i, 3), the model's, before control
    control_seconds: float = 0.0  # of which the velocity control
    hops: np.ndarray | None = None  # (B,) proton hops accepted per rollout (`Control.proton_hops`)
    hop_attempts: np.ndarray | None = None  # (B,) proton hops attempted per rollout
    turns: np.ndarray | None = None  # (B,) rotor turns accepted per rollout (`Control.rotor_turns`)
    turn_attempts: np.ndarray | None = None  # (B,) rotor turns attempted per rollout
    torsions: np.ndarray | None = None  # (B,) torsion turns accepted per rollout (`Control.torsion_turns`)
    torsion_attempts: np.ndarray | None = None  # (B,) torsion turns attempted per rollout

    @property
    def simulated_fs(self) -> float:
        return float(self.times_fs[-1]) * len(self.names)


def state_from_dataset(root: str | Path, molecule_id: str, frame: int) -> InitialState:
    """The state (positions, velocities) of `molecule_id` at `frame` of its trajectory in a
    data set (frames counted over its contiguous pieces in time order)."""
    from atomray.data.pipeline import molecule_files, molecule_segments

    pieces = molecule_segments(root, molecule_id, molecule_files(root, [molecule_id]).get(molecule_id, []))
    total = sum(p.n_frames for p in pieces)
    if not 0 <= frame < total:
        raise DataError(f"{root}: molecule {molecule_id!r} has {total} frames; frame {frame} does not exist")
    name = f"{molecule_id}@{frame}"
    for piece in pieces:
        if frame < piece.n_frames:
            return InitialState(name, piece.atomic_numbers, piece.positions[frame].astype(np.float64),
                                piece.velocities[frame].astype(np.float64), (str(root), molecule_id, piece.segment, frame))
        frame -= piece.n_frames
    raise AssertionError("unreachable")


def default_step_fs(cfg: RunConfig) -> float:
    """The longest horizon the model trained on: its natural rollout step."""
    return float(cfg.data.horizon_fs if cfg.data.horizon == "fixed" else cfg.data.horizon_max_fs)


DELTA_FS = 1.0  # default spacing δ of the difference lags
DIFFERENCE = (-2.0, -1.0, 1.0, 2.0)  # difference lags, in units of δ about ΔT
WEIGHTS = (1.0, -8.0, 8.0, -1.0)  # fourth-order centred first derivative, over 12δ


def step_lags(step: float, p: int, delta: float = DELTA_FS) -> tuple[np.ndarray, np.ndarray]:
    """The lag rows of one rollout step: (rows (R, P) fs, frames (F,) their recorded lags). One
    row when P >= 5 (P - 4 frames then the difference lags), else two (P frames; difference
    lags padded with ΔT)."""
    diff = step + delta * np.asarray(DIFFERENCE)
    if p >= len(DIFFERENCE) + 1:
        frames = step * np.arange(1, p - len(DIFFERENCE) + 1) / (p - len(DIFFERENCE))
        return np.concatenate([frames, diff])[None], frames
    frames = step * np.arange(1, p + 1) / p
    return np.stack([frames, np.concatenate([diff, np.full(p - len(DIFFERENCE), step)])]), frames


def head_lags(step: float, p: int) -> tuple[np.ndarray, np.ndarray]:
    """The lag row of a rollout step of a model with a velocity head: P lags spread evenly over
    (0, ΔT], every one a recorded frame (rows (1, P) fs, frames (P,))."""
    frames = step * np.arange(1, p + 1) / p
    return frames[None], frames


def model_step(model, cfg: RunConfig, states: Sequence[InitialState], x: np.ndarray, v: np.ndarray, step: float,
               dtype, delta: float = DELTA_FS, lags: int = 0, head: bool = False,
               bonds: Sequence[np.ndarray | None] | None = None,
               match_torsions: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """One rollout step from the states' current model-atom positions x and velocities v
    (B, N, 3), lab frame, asking the model for `lags` lags per row (0: data.num_lags): (frames
    (B, F, N, 3) centred on each state's centroid, velocity at ΔT (B, N, 3), the centroids (B, 1, 3)).
    `head`: the velocity at ΔT from the model's velocity head (`ModelConfig.predict_velocity`),
    no difference lags. `bonds`: each state's bond graph, which its prior's basin keeps
    (`atomray.predict.state_windows`; None: perceived from x); `match_torsions`:
    `Control.match_torsions_a`."""
    import torch

    from atomray.data.pipeline import to_torch
    from atomray.model.registry import model_inputs
    from atomray.predict import state_windows

    b, p = x.shape[0], lags or cfg.data.num_lags
    rows, frames = head_lags(step, p) if head else step_lags(step, p, delta)
    r = len(rows)  # each state repeated once per row
    mask = np.zeros(x.shape[:2], bool)
    for i, s in enumerate(states):
        mask[i, : len(model_atoms(cfg, s.atomic_numbers))] = True
    origin = (x * mask[..., None]).sum(1, keepdims=True) / mask.sum(1)[:, None, None]  # (B, 1, 3)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    batch = state_windows(cfg, states, np.repeat(np.arange(b), r), np.tile(rows, (b, 1)), origin[:, 0], x, v,
                          dtype=np_dtype, bonds=bonds, match_torsions=match_torsions)
    with torch.no_grad():
        if head:
            out, vel = model(**model_inputs(to_torch(batch)), with_velocity=True)
            return out.double().numpy(), vel[:, -1].double().numpy(), origin
        out = model(**model_inputs(to_torch(batch)))
    out = out.double().numpy().reshape(b, r * p, *out.shape[2:])  # (B, R·P, N, 3)
    flat = rows.ravel()
    at = [int(np.flatnonzero(flat == lag)[0]) for lag in step + delta * np.asarray(DIFFERENCE)]
    with np.errstate(invalid="ignore", over="ignore"):  # a molecule flying apart: handled by the caller
        vel = sum(w * out[:, i] for w, i in zip(WEIGHTS, at)) / (12 * delta)
    return out[:, : len(frames)], vel, origin


KB = 1.0 / U_A2_FS2_IN_K  # Boltzmann's constant, u·(Å/fs)²/K


THERMOSTATS = ("none", "csvr", "langevin")
COUPLING_GROUPS = ("molecule", "hydrogens")
HYDROGEN_NOISE_AXES = ("all", "across")  # the hydrogens' position noise: every axis, or across their bond
VELOCITY_SOURCES = ("auto", "head", "difference")


@dataclass(frozen=True)
class Control:
    """What `rollout` does to each step's velocities before the next step starts from them.

    `momentum`: the velocities the model predicts are split into the rigid-body part
    u + ω × (x − c) (`atomray.priors.rigid.rigid_motion`: c the centre of mass, u its velocity,
    ω = I⁻¹L) and the internal rest, and the rigid part is replaced by u₀ + I⁻¹L₀ × (x − c), with
    u₀ and L₀ of the start state. Total linear momentum and angular momentum about the centre of
    mass then equal the start's exactly at every step, as in the reference NVE MD of an isolated
    molecule. The internal velocities are untouched.

    `thermostat="csvr"` (needs `momentum`, whose split it uses): canonical sampling through
    velocity rescaling (Bussi, Donadio & Parrinello, J. Chem. Phys. 126, 014101, 2007) of the
    internal kinetic energy K, with f = 3N − 3 − rank(I) degrees of freedom (3N − 6 for a
    non-linear molecule), target K̄ = f k_B T / 2 at `temperature_k` and relaxation time
    `tau_fs`. One update per rollout step of length ΔT, c = exp(−ΔT/τ):

        K' = c K + (1 − c) K̄ (R₁² + S) / f + 2 R₁ √(c (1 − c) K K̄ / f),

    R₁ a standard normal and S a χ² draw with f − 1 degrees of freedom; the internal velocities
    are scaled by √(K'/K). The rigid-body part stays the start's, so NVT keeps the momenta too.
    Draws come from one generator seeded with `seed`, in the batch's order.

    `temperature_k` is one temperature for every rollout, or a tuple of one per start state in
    the batch's order (e.g. each molecule's reference MD temperature, so that the rollout is
    compared with a reference at its own temperature).

    `groups` (CSVR only): "molecule" couples the whole internal motion as one group, as above;
    "hydrogens" couples the hydrogens and the heavy atoms as two groups (GROMACS's separate
    temperature-coupling groups), each with its share of the f degrees of freedom, f·n_g/n, its
    own target and its own draws, after which the rigid-body part the unequal scaling left is
    projected out again. A model that runs its heavy atoms cold and its hydrogens hot
    (docs/experiments.md) keeps that split under one group; two groups undo it and keep the
    direction of every atom's velocity, which Langevin's fresh draws do not.

    `position_noise_a` (needs `momentum`; default off): Gaussian noise of (heavy atoms, hydrogens)
    Å per axis added to each step's predicted positions, less its rigid-body part (the
    mass-weighted projection, as for Langevin's draws, so the centre of mass stays and no net
    rotation is added), drawn from the same generator. A one-shot operator predicts the
    conditional mean of x(t + ΔT); chained, the heavy atoms' bond-length widths fall to
    0.7–0.9 of the reference's over eight 50-fs steps (0.93–0.99 after one,
    `benchmarks/rollout_bond_bias.py`), and noise puts back some of the spread a sample of the
    next state would have. 0.005 Å on the heavy atoms at 50 fs is the measured choice
    (docs/experiments.md, "Where the bonds go wrong"); the hydrogens' X–H widths are already
    too wide, so noise on every axis of a hydrogen costs its bond. `hydrogen_noise_axes="across"`
    keeps a hydrogen's draw off its bond: the part along the line to its nearest heavy atom is
    removed, so the noise widens its angles (X–X–H bends) and not its X–H length. The recipe
    (`jobs/rollout.py --recipe`) takes (0.005, 0.02) across, with `group_hydrogen_noise=False`:
    the chained correction narrows the angles with a hydrogen to two thirds of the reference's
    width, and this noise brings ATOM's angles down on ten of eleven molecules
    (docs/experiments.md, "Why the prior alone is as close"). `group_hydrogen_noise=False`
    gives no noise to the hydrogens of a terminal group of two or more (a methyl, amino or =CH2
    group, `atomray.priors.modes.rotor_groups`): drawn apart, two of them can meet on their
    circle (N-methylacetamide's methyl hydrogens 0.41 Å apart after 63 ps under 0.02 Å across).

    `rotor_radii` (default off): after every step each terminal group's hydrogens (a methyl,
    hydroxyl or amino group, `atomray.priors.modes.rotor_groups`) are put back on their circles
    about the group's axis, at their distance from it in the start's basin minimum, and their
    velocities lose the part off the circle (`atomray.priors.modes.onto_circles`): a constraint
    on the one coordinate the one-shot model gets wrong there. A turn of uncertain phase averages
    inside its circle, so the conditional mean a one-shot operator predicts puts a fast methyl's
    hydrogens nearer its axis: one 50-fs step of the circles-trained fine-tuned head from
    N-methylacetamide's reference states shortens its acetyl C–H to 1.033 Å against the
    reference's 1.092 and its prior's 1.078 (docs/experiments.md, "Why the methyls shrink").
    `rotor_heights` (with `rotor_radii`) also puts each of them at the minimum's height along the
    axis (the circle's plane), and takes its velocity's part along the axis out.
    `height_feedback_fs` (with `rotor_radii`; 0 = off) instead steers only each group's mean
    height towards the minimum's, with time constant `height_feedback_fs`: every step the
    group's hydrogens move along the axis by a lift that integrates the gap between the two
    means (`atomray.priors.modes.steer_heights`), so each hydrogen keeps its own motion along
    the axis and only a steady drift of the mean is taken out (the fine-tuned head shortens
    methyl C–H by lowering their height: docs/experiments.md, "Methyl heights steered").

    `proton_hops` (default off): after every `hop_every` steps (default 10), a Metropolis move of each
    molecule with a proton in an intramolecular hydrogen bond to its other tautomer (the proton
    on the acceptor, the heavy atoms' bond pattern with it), accepted on the GFN2-xTB energy at
    the temperature `temperature_k` (`atomray.proton_hops`); an accepted hop moves the proton's
    bond in the graph the prior keeps. The chained conditional mean of one tautomer's prior
    never crosses the barrier (docs/results.md, "A proton transfer").

    `rotor_turns` (default off): after every `turn_every` steps (default 10), a Metropolis turn of
    each terminal group's hydrogens about its bond by an angle drawn in ±60°, plus with
    `turn_jumps` (default on) a jump by the group's symmetry (k·120° for a methyl) and the
    group's velocities turned with it, accepted on the
    GFN2-xTB energy at `temperature_k` (`turn_energy="mmff"`: on MMFF94's, far cheaper;
    `atomray.rotor_turns`): a rollout's methyls otherwise barely turn (N-methylacetamide's
    N-methyl: 0 turns in 5 × 100 ps against MD's 145 per 100 ps).

    `torsion_turns` (default off, not in the recipe): the same Metropolis move, on the rotor
    turns' steps, for each rotatable heavy-atom bond: its smaller side turned rigidly by 120°,
    −120° or 180° (`atomray.rotor_turns.TorsionTurns`), accepted on `torsion_energy` (default
    GFN2-xTB's, on which a rigid turn of a conjugated torsion is rarely taken; MMFF94's weighs the
    rotamers its own way). A rollout's chained conditional mean otherwise never crosses a
    heavy-atom torsion barrier (docs/experiments.md, "Torsion turns").

    `match_torsions_a` (Å; default inf, never; measured and off in the recipe): a state whose RMS
    displacement from its basin's superposed minimum is more than this vibrates, in its step's
    prior, about the minimum with each saturated rotatable bond (sp3–sp3) turned to the state's
    dihedral, the modes turned with it (`atomray.priors.modes.torsion_matched`). About the minimum
    itself the modes draw a torsion far from it as straight chords: a hexane state caught
    mid-transition, 1.28 Å from its basin's minimum, had a C–H shortened from 1.07 to 0.78 Å
    within 50 fs (docs/experiments.md, "A prior far from its minimum"). Training keeps the minimum
    itself (at 400–1000 fs the pull toward it is worth more than the chords cost).

    `thermostat="langevin"` (needs `momentum`): a Langevin (Ornstein–Uhlenbeck) update of every
    atom's internal velocity once per step, v' = c v + √((1 − c²) k_B T / m) ξ with ξ standard
    normal per atom and axis, then the rigid-body part of v' removed again (the mass-weighted
    projection onto the internal motion, so the momenta stay the start's). CSVR scales every
    atom by one factor and keeps how the model shared the kinetic energy among them; Langevin
    gives each atom its own, so hot hydrogens cool and cold heavy atoms warm (equipartition).
    """

    momentum: bool = False
    thermostat: str = "none"  # none | csvr | langevin
    temperature_k: float | tuple[float, ...] = 300.0  # K: one, or one per start state
    tau_fs: float = 100.0
    seed: int = 0
    groups: str = "molecule"  # molecule | hydrogens (CSVR's coupling groups)
    position_noise_a: tuple[float, float] = (0.0, 0.0)  # Å: (heavy atoms, hydrogens)
    hydrogen_noise_axes: str = "all"  # all | across (their bond)
    group_hydrogen_noise: bool = True  # False: no noise on the hydrogens of terminal groups of two or more
    rotor_radii: bool = False  # terminal groups' hydrogens back on their circles after every step
    rotor_heights: bool = False  # ... and at their minimum's height along the axis
    height_feedback_fs: float = 0.0  # fs: time constant steering each group's mean height to the minimum's (0: off)
    proton_hops: bool = False  # Metropolis hops of hydrogen-bonded molecules to their other tautomer (GFN2-xTB)
    hop_every: int = 10  # steps between hop attempts (10: the measured choice at 50 fs, docs/experiments.md)
    rotor_turns: bool = False  # Metropolis turns of terminal groups about their bond (GFN2-xTB)
    turn_every: int = 10  # steps between turn attempts
    turn_energy: str = "gfn2"  # gfn2 | mmff: the energy the turns are accepted on
    turn_jumps: bool = True  # a turn may also jump by the group's symmetry (120° for a methyl), velocities turned too
    torsion_turns: bool = False  # Metropolis turns about rotatable heavy-atom bonds (with the rotor turns' steps)
    torsion_energy: str = "gfn2"  # gfn2 | mmff: the energy the torsion turns are accepted on
    match_torsions_a: float = math.inf  # Å: farther from its basin's minimum, a state's prior keeps its torsions

    def __post_init__(self):
        if self.thermostat not in THERMOSTATS:
            raise DataError(f"rollout: thermostat must be one of {', '.join(map(repr, THERMOSTATS))}, "
                            f"found {self.thermostat!r}")
        if self.groups not in COUPLING_GROUPS:
            raise DataError(f"rollout: coupling groups must be one of {', '.join(map(repr, COUPLING_GROUPS))}, "
                            f"found {self.groups!r}")
        if self.groups != "molecule" and self.thermostat != "csvr":
            raise DataError(f"rollout: coupling groups {self.groups!r} are CSVR's; the {self.thermostat!r} "
                            "thermostat has none")
        if self.hydrogen_noise_axes not in HYDROGEN_NOISE_AXES:
            raise DataError(f"rollout: the hydrogens' noise axes must be one of "
                            f"{', '.join(map(repr, HYDROGEN_NOISE_AXES))}, found {self.hydrogen_noise_axes!r}")
        noise = np.asarray(self.position_noise_a, float)
        if noise.shape != (2,) or not np.all(noise >= 0):
            raise DataError(f"rollout: position noise is two widths >= 0 Å (heavy atoms, hydrogens), "
                            f"found {self.position_noise_a}")
        if self.rotor_heights and not self.rotor_radii:
            raise DataError("rollout: rotor heights place the hydrogens on the circles of rotor radii; they need "
                            "rotor_radii")
        if not self.height_feedback_fs >= 0:
            raise DataError(f"rollout: the height feedback's time constant is >= 0 fs (0: off), "
                            f"found {self.height_feedback_fs}")
        if self.height_feedback_fs and not self.rotor_radii:
            raise DataError("rollout: the height feedback steers the hydrogens on the circles of rotor radii; it "
                            "needs rotor_radii")
        if self.height_feedback_fs and self.rotor_heights:
            raise DataError("rollout: rotor heights fix every hydrogen's height; the height feedback steers only "
                            "their mean: choose one")
        if self.rotor_radii and not self.momentum:
            raise DataError("rollout: rotor radii turn the hydrogens' velocities onto their circles, which moves the "
                            "momenta; they need momentum control")
        if noise.any() and not self.momentum:
            raise DataError("rollout: position noise has its rigid-body part removed with the momenta's split; "
                            "it needs momentum control")
        name = {"csvr": "CSVR", "langevin": "Langevin"}.get(self.thermostat)
        if name and not self.momentum:
            raise DataError(f"rollout: the {name} thermostat acts on the internal velocities; it needs momentum control")
        if self.proton_hops and not self.momentum:
            raise DataError("rollout: a proton hop moves the atoms, which changes the angular momentum; proton hops "
                            "need momentum control")
        if self.rotor_turns and not self.momentum:
            raise DataError("rollout: a rotor turn moves atoms, which changes the angular momentum; rotor turns "
                            "need momentum control")
        if self.torsion_turns and not self.momentum:
            raise DataError("rollout: a torsion turn moves atoms, which changes the angular momentum; torsion turns "
                            "need momentum control")
        if self.torsion_turns and not np.all(np.asarray(self.temperature_k, float) > 0):
            raise DataError(f"rollout: torsion turns are accepted at a temperature > 0 K, found {self.temperature_k} K")
        for moves, energy in (("torsion", self.torsion_energy), ("rotor", self.turn_energy)):
            if energy not in ("gfn2", "mmff"):
                raise DataError(f"rollout: {moves} turns are accepted on 'gfn2' or 'mmff' energies, found {energy!r}")
        if not self.match_torsions_a > 0:
            raise DataError(f"rollout: torsions are matched beyond an RMS displacement > 0 Å from the minimum "
                            f"(inf: never), found {self.match_torsions_a}")
        if self.turn_every < 1:
            raise DataError(f"rollout: rotor turns are attempted every >= 1 steps, found {self.turn_every}")
        if self.rotor_turns and not np.all(np.asarray(self.temperature_k, float) > 0):
            raise DataError(f"rollout: rotor turns are accepted at a temperature > 0 K, found {self.temperature_k} K")
        if self.hop_every < 1:
            raise DataError(f"rollout: proton hops are attempted every >= 1 steps, found {self.hop_every}")
        if self.proton_hops and not np.all(np.asarray(self.temperature_k, float) > 0):
            raise DataError(f"rollout: proton hops are accepted at a temperature > 0 K, found {self.temperature_k} K")
        if name and not (np.all(np.asarray(self.temperature_k, float) > 0) and self.tau_fs > 0):
            raise DataError(f"rollout: the {name} thermostat needs a temperature > 0 K and tau > 0 fs, "
                            f"found {self.temperature_k} K and {self.tau_fs} fs")

    @property
    def active(self) -> bool:
        return (self.momentum or self.thermostat != "none" or any(self.position_noise_a) or self.rotor_radii
                or self.proton_hops or self.rotor_turns or self.torsion_turns)


def csvr_kinetic_energy(k: np.ndarray, k_target: np.ndarray, dof: np.ndarray, c: float,
                        rng: np.random.Generator) -> np.ndarray:
    """One CSVR update K → K' of kinetic energies k (B,) towards k_target (B,) with dof (B,)
    degrees of freedom and c = exp(−Δt/τ) (formula in `Control`); K' = K where dof = 0."""
    f = np.maximum(dof, 1).astype(np.float64)
    r1 = rng.standard_normal(len(k))
    s = np.where(f > 1, rng.chisquare(np.maximum(f - 1, 1)), 0.0)
    new = c * k + (1 - c) * k_target * (r1 * r1 + s) / f + 2 * r1 * np.sqrt(c * (1 - c) * k * k_target / f)
    return np.where(dof > 0, new, k)


class _Controller:
    """The `Control` of one batch of rollouts: the start's rigid-body motion, masses, generator."""

    def __init__(self, control: Control, x: np.ndarray, v: np.ndarray, mass: np.ndarray, step_fs: float,
                 hydrogen: np.ndarray | None = None):
        from atomray.priors.rigid import internal_dof, rigid_motion

        self.control, self.mass = control, _float64(mass)
        _, self.u0, _, self.ang0, inertia_inv = rigid_motion(_float64(x), _float64(v), self.mass)
        real = mass > 0
        self.dof = internal_dof(self.mass, inertia_inv)
        # CSVR's coupling groups (G, B, N): one, or the hydrogens and the heavy atoms
        if control.groups == "hydrogens":
            if hydrogen is None:
                raise DataError("rollout: coupling groups 'hydrogens' need to know which atoms are hydrogens")
            h = np.asarray(hydrogen, bool) & real
            self.group_masks = np.stack([h, real & ~h])
        else:
            self.group_masks = real[None]
        share = self.group_masks.sum(2) / np.maximum(real.sum(1), 1)  # (G, B)
        self.group_dof = self.dof[None] * share
        self.temperature = np.asarray(control.temperature_k, np.float64)
        if self.temperature.ndim and self.temperature.shape != (len(mass),):
            raise DataError(f"rollout: expected one thermostat temperature or one per start state ({len(mass)}), "
                            f"found {self.temperature.shape[0]}")
        self.temperature = np.broadcast_to(self.temperature, (len(mass),))
        self.group_target = 0.5 * self.group_dof * KB * self.temperature[None]
        self.c = float(np.exp(-step_fs / control.tau_fs))
        self.rng = np.random.default_rng(control.seed)

    def displace(self, x: np.ndarray, hydrogen: np.ndarray, quiet: np.ndarray | None = None) -> np.ndarray:
        """x with Gaussian noise of `position_noise_a` per axis (heavy atoms, hydrogens), less its
        rigid-body part; atoms in the (B, N) mask `quiet` get none."""
        from atomray.priors.rigid import internal_velocity

        heavy_a, hydrogen_a = self.control.position_noise_a
        real = self.mass.numpy() > 0
        sigma = np.where(hydrogen, hydrogen_a, heavy_a) * real
        if quiet is not None:
            sigma = np.where(quiet, 0.0, sigma)
        draw = self.rng.standard_normal(x.shape) * sigma[..., None]
        if self.control.hydrogen_noise_axes == "across":
            draw = _across_bonds(x, draw, hydrogen & real, real & ~hydrogen)
        return x + internal_velocity(_float64(x), _float64(draw), self.mass).numpy()  # a displacement's internal part

    def __call__(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The next step's velocities (B, N, 3) from positions x and the model's velocities v."""
        import torch

        from atomray.priors.rigid import rigid_motion, rigid_velocity

        xt, vt = _float64(x), _float64(v)
        c, u, omega, _, inertia_inv = rigid_motion(xt, vt, self.mass)
        internal = (vt - rigid_velocity(xt, c, u, omega)) * (self.mass > 0)[..., None]
        if self.control.thermostat == "csvr":
            per_atom = 0.5 * (self.mass[..., None] * internal * internal).sum(2).numpy()  # (B, N)
            scale = np.ones(per_atom.shape)
            for sel, dof, target in zip(self.group_masks, self.group_dof, self.group_target):
                k = (per_atom * sel).sum(1)
                new = csvr_kinetic_energy(k, target, dof, self.c, self.rng)
                scale = np.where(sel, np.sqrt(np.divide(new, k, out=np.ones_like(k), where=k > 0))[:, None], scale)
            internal = internal * torch.from_numpy(scale)[..., None]
            if len(self.group_masks) > 1:  # unequal scales leave some rigid-body motion: remove it
                _, u_left, omega_left, _, _ = rigid_motion(xt, internal, self.mass)
                internal = (internal - rigid_velocity(xt, c, u_left, omega_left)) * (self.mass > 0)[..., None]
        elif self.control.thermostat == "langevin":
            mass = self.mass.numpy()
            kt_over_m = np.divide(KB * self.temperature[:, None], mass, out=np.zeros_like(mass), where=mass > 0)
            noise = self.rng.standard_normal(internal.shape) * np.sqrt((1 - self.c**2) * kt_over_m)[..., None]
            internal = self.c * internal + torch.from_numpy(noise)  # (B, N, 3) Å/fs
            _, u_noise, omega_noise, _, _ = rigid_motion(xt, internal, self.mass)
            internal = (internal - rigid_velocity(xt, c, u_noise, omega_noise)) * (self.mass > 0)[..., None]
        rigid = rigid_velocity(xt, c, self.u0, (inertia_inv @ self.ang0[..., None])[..., 0])  # the start's P and L
        return ((rigid + internal) * (self.mass > 0)[..., None]).numpy()


def _across_bonds(x: np.ndarray, draw: np.ndarray, hydrogen: np.ndarray, heavy: np.ndarray) -> np.ndarray:
    """draw (B, N, 3) with each hydrogen's part along the line to its nearest heavy atom removed
    (hydrogen, heavy: (B, N) masks; a molecule without heavy atoms keeps its draw)."""
    dist = np.linalg.norm(x[:, :, None] - x[:, None], axis=-1)  # (B, N, N)
    dist = np.where(heavy[:, None, :], dist, np.inf)
    partner = np.take_along_axis(x, dist.argmin(-1)[..., None].repeat(3, -1), 1)  # (B, N, 3)
    axis = x - partner
    norm = np.linalg.norm(axis, axis=-1, keepdims=True)
    axis = np.divide(axis, norm, out=np.zeros_like(axis), where=norm > 0)
    along = (draw * axis).sum(-1, keepdims=True) * axis
    return np.where((hydrogen & heavy.any(1, keepdims=True))[..., None], draw - along, draw)


def state_groups(x: np.ndarray, z: np.ndarray, bonds: np.ndarray | None = None) -> list[tuple[int, int, list[int]]]:
    """The terminal groups (Y, X, [H, …]) of a state x (N, 3) Å with atoms z
    (`atomray.priors.modes.rotor_groups` over `bonds`, or over the graph RDKit perceives from x;
    none where that fails)."""
    from atomray.priors.minima import molecule_bonds
    from atomray.priors.modes import rotor_groups

    graph = bonds if bonds is not None else molecule_bonds(x, z)
    return [] if graph is None else rotor_groups(z, graph)


def group_hydrogens(x: np.ndarray, zs: Sequence[np.ndarray], graphs: Sequence[np.ndarray | None] | None = None
                    ) -> np.ndarray:
    """(B, N) mask of the hydrogens in terminal groups of two or more (a methyl, amino or =CH2
    group, `state_groups`) of states x (B, N, 3) with atoms zs, over each state's bond graph
    (None: perceived from x); a lone hydroxyl or N–H hydrogen is not one."""
    mask = np.zeros(x.shape[:2], bool)
    for i, z in enumerate(zs):
        for _, _, hs in state_groups(x[i, : len(z)], z, None if graphs is None else graphs[i]):
            mask[i, hs] = len(hs) > 1
    return mask


def start_circles(x: np.ndarray, z: np.ndarray, bonds: np.ndarray | None) -> tuple[list, list[np.ndarray], list[np.ndarray]]:
    """(groups, radii, heights) of `Control.rotor_radii` for a start state x (N, 3) Å: its
    terminal groups (`atomray.priors.modes.rotor_groups` over `bonds`, or the bonds RDKit
    perceives) and each hydrogen's distance from its group's axis and height along it (H, 1) Å
    in the state's basin minimum (the machine's basin store, `atomray.priors.minima`), or in x
    itself where MMFF94 has no basin."""
    from atomray.priors.minima import machine_finder, molecule_bonds
    from atomray.priors.modes import rotor_groups, rotor_heights, rotor_radii

    graph = bonds if bonds is not None else molecule_bonds(x, z)
    if graph is None or not (np.asarray(z) == 1).any():
        return [], [], []
    groups = rotor_groups(z, graph)
    finder = machine_finder(z)
    k = finder.assign(x, bonds=graph)
    minimum = np.asarray(finder.minimum(k)[0] if k >= 0 else x, np.float64)[None]
    return groups, [r[0] for r in rotor_radii(minimum, groups)], [h[0] for h in rotor_heights(minimum, groups)]


def circle_batches(per_state: list[tuple[list, list[np.ndarray], list[np.ndarray]]]
                   ) -> list[tuple[np.ndarray, list, list[np.ndarray], list[np.ndarray]]]:
    """`start_circles` of every state, batched: (rows, groups, radii, heights) per set of states
    with the same terminal groups, each radius and height array (B, H, 1) indexed by state (zero
    for other states), so a step moves each set's hydrogens in one call."""
    sets: dict[str, list[int]] = {}
    for i, (groups, _, _) in enumerate(per_state):
        if groups:
            sets.setdefault(repr(groups), []).append(i)
    out = []
    for rows in sets.values():
        groups = per_state[rows[0]][0]
        radii = [np.zeros((len(per_state), len(h), 1)) for _, _, h in groups]
        heights = [np.zeros((len(per_state), len(h), 1)) for _, _, h in groups]
        for i in rows:
            for k, (r, h) in enumerate(zip(per_state[i][1], per_state[i][2])):
                radii[k][i], heights[k][i] = r, h
        out.append((np.asarray(rows), groups, radii, heights))
    return out


def _float64(a: np.ndarray):
    """a as a float64 torch tensor (what `rigid_motion` solves in)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def rollout(model, cfg: RunConfig, states: Sequence[InitialState], total_fs: float, step_fs: float | None = None,
            elements: Sequence[int] = (), dtype=None, progress: bool = False, delta_fs: float = DELTA_FS,
            control: Control = Control(), lags: int = 0, velocity: str = "auto", keep_bonds: bool = True) -> Rollout:
    """Roll every state forward to `total_fs` in steps of `step_fs` (default: the longest
    trained horizon), all states in one batch. `dtype` (default float32) is the precision of
    the model's inputs; pass torch.float64 with a float64 model for exact physics checks.
    Velocities: the centred difference over lags ΔT ± `delta_fs`, ΔT ± 2 `delta_fs`, then
    `control` (momentum conservation, thermostat; default none). `lags`: lags per model call
    (0: data.num_lags, as trained; 5: the frame at ΔT and the four difference lags only, one
    recorded frame per step; ATOM takes any number, EGNO / EGNN only their own). `velocity`:
    where each step's velocity at ΔT comes from — "head" (the model's velocity head,
    `ModelConfig.predict_velocity`: P lags over (0, ΔT], all recorded; lags=1 asks for ΔT alone),
    "difference" (the centred difference above), or "auto" (the head when the model has one).
    `keep_bonds`: every step's prior finds its basin with the start state's bond graph (RDKit's,
    `atomray.priors.minima.molecule_bonds`) instead of perceiving bonds afresh from the state the
    model predicted; without it a distorted state can be perceived as another molecule (a
    squeezed benzene ring as Dewar benzene) and the prior would pull the rollout there."""
    import time

    import torch

    from atomray.evaluate import check_elements

    if not states:
        raise DataError("rollout: no start states")
    step = float(step_fs or default_step_fs(cfg))
    if not (step > 0 and total_fs >= step):
        raise DataError(f"rollout: expected 0 < step ({step} fs) <= total time ({total_fs} fs)")
    dtype = dtype or torch.float32
    keeps = [model_atoms(cfg, s.atomic_numbers) for s in states]
    zs = [s.atomic_numbers[k] for s, k in zip(states, keeps)]
    for s, z in zip(states, zs):
        check_elements(z, elements, s.name, cfg.model.max_atomic_number)
    b, n, p = len(states), max(len(z) for z in zs), lags or cfg.data.num_lags
    if p < 1:
        raise DataError(f"rollout: lags per step must be >= 1 (0: the model's {cfg.data.num_lags}), found {lags}")
    if p != cfg.data.num_lags and cfg.model.name != "atom":
        raise DataError(f"rollout: {cfg.model.name} predicts only the {cfg.data.num_lags} lags it was built for, "
                        f"not {p}; other numbers of lags need ATOM")
    if velocity not in VELOCITY_SOURCES:
        raise DataError(f"rollout: velocity must be one of {', '.join(map(repr, VELOCITY_SOURCES))}, found {velocity!r}")
    has_head = cfg.model.predict_velocity
    if velocity == "head" and not has_head:
        raise DataError("rollout: velocity='head' needs a model trained with model.predict_velocity=true")
    head = has_head and velocity != "difference"
    if not head and p < len(DIFFERENCE):
        raise DataError(f"rollout: velocities from the difference lags need >= {len(DIFFERENCE)} lags per step, "
                        f"found {p}; fewer need a velocity head (model.predict_velocity=true)")
    mask = np.zeros((b, n), bool)
    x = np.zeros((b, n, 3))
    v = np.zeros((b, n, 3))
    for i, (s, k, z) in enumerate(zip(states, keeps, zs)):
        mask[i, : len(z)] = True
        x[i, : len(z)], v[i, : len(z)] = s.positions[k], s.velocities[k]

    n_steps = int(round(total_fs / step))
    if not 0 < delta_fs < step / 2:
        raise DataError(f"rollout: the difference spacing must be in (0, step/2), found {delta_fs} fs")
    frame_lags = (head_lags(step, p) if head else step_lags(step, p, delta_fs))[1]
    frames, velocities, predicted = [x.copy()], [v.copy()], []
    dead = np.zeros(b, bool)
    mass, hydrogen = np.zeros((b, n)), np.zeros((b, n), bool)
    for i, z in enumerate(zs):
        mass[i, : len(z)], hydrogen[i, : len(z)] = atomic_masses(z), z == 1
    controller = _Controller(control, x, v, mass, step, hydrogen) if control.active else None
    graphs = None
    if keep_bonds:
        from atomray.priors.minima import molecule_bonds

        graphs = [molecule_bonds(x[i, : len(z)], z) for i, z in enumerate(zs)]
    circles = None
    if control.rotor_radii:
        from atomray.priors.modes import onto_circles, steer_heights

        per_state = [start_circles(x[i, : len(z)], z, None if graphs is None else graphs[i]) for i, z in enumerate(zs)]
        circles = circle_batches(per_state)
    lift = np.zeros((b, n))  # Å along each terminal hydrogen's axis (Control.height_feedback_fs)
    hops = None
    if control.proton_hops:
        from atomray.proton_hops import ProtonHops, move_bond

        hops = ProtonHops(x, zs, control.temperature_k, control.seed, [s.name for s in states], graphs,
                          control.hop_every)
    turns = None
    if control.rotor_turns:
        from atomray.rotor_turns import RotorTurns

        def terminal_groups(i: int) -> list:  # state i's groups now (x as the loop has it)
            return state_groups(x[i, : len(zs[i])], zs[i], None if graphs is None else graphs[i])

        turns = RotorTurns(x, zs, [terminal_groups(i) for i in range(b)], control.temperature_k, control.seed,
                           [s.name for s in states], control.turn_every, energy=control.turn_energy, bonds=graphs,
                           jumps=control.turn_jumps)
    torsions = None
    if control.torsion_turns:
        from atomray.priors.modes import torsion_groups
        from atomray.rotor_turns import TorsionTurns

        torsions = TorsionTurns(x, zs, [torsion_groups(x[i, : len(z)], z, None if graphs is None else graphs[i])
                                        for i, z in enumerate(zs)], control.temperature_k, control.seed,
                                [s.name for s in states], control.turn_every, control.torsion_energy, graphs)
    quiet = None  # Control.group_hydrogen_noise
    if any(control.position_noise_a) and not control.group_hydrogen_noise:
        quiet = group_hydrogens(x, zs, graphs)
    control_seconds = 0.0
    model = model.eval()
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_steps, desc=f"rollout of {b} molecule(s), {step:g} fs per step", unit="step")
    for _ in range(n_steps):
        out, vel, origin = model_step(model, cfg, states, x, v, step, dtype, delta_fs, p, head, graphs,
                                      control.match_torsions_a)
        out = out * mask[:, None, :, None] + origin[:, None]  # (B, F, N, 3)
        x, v = out[:, -1].copy(), vel * mask[..., None]
        # A molecule whose state is no longer finite has flown apart: its frames are NaN from
        # here on (a stability failure) and it rests at the origin, at rest, while the rest go on.
        dead |= ~(np.isfinite(x).all((1, 2)) & np.isfinite(v).all((1, 2)))
        out[dead] = np.nan
        x[dead], v[dead] = 0.0, 0.0
        predicted.append(np.where(dead[:, None, None], np.nan, v))
        if controller is not None:
            t1 = time.perf_counter()
            if circles is not None:
                for rows, groups, radii, heights in circles:
                    rows = rows[~dead[rows]]
                    if len(rows):
                        x[rows], v[rows] = onto_circles(x[rows], groups, [r[rows] for r in radii], v[rows],
                                                        [h[rows] for h in heights] if control.rotor_heights else None)
                        if control.height_feedback_fs:
                            x[rows], lift[rows] = steer_heights(x[rows], groups, [h[rows] for h in heights],
                                                                lift[rows], step / control.height_feedback_fs)
                out[:, -1] = np.where(dead[:, None, None], np.nan, x)
            if any(control.position_noise_a):
                x = np.where(dead[:, None, None], 0.0, controller.displace(x, hydrogen, quiet))
                out[:, -1] = np.where(dead[:, None, None], np.nan, x)
            if hops is not None and hops.active:
                hopped = hops(x, dead)
                for i, h, donor, acceptor in hopped:  # the proton's bond moves; its hydroxyl's circle too
                    lift[i, h] = 0.0
                    if graphs is not None:
                        graphs[i] = move_bond(graphs[i], h, donor, acceptor)
                    if circles is not None:
                        per_state[i] = start_circles(x[i, : len(zs[i])], zs[i], None if graphs is None else graphs[i])
                if hopped:
                    out[:, -1] = np.where(dead[:, None, None], np.nan, x)
                    if circles is not None:
                        circles = circle_batches(per_state)
                    if turns is not None:  # the hydroxyl turns on its new oxygen
                        for i in {i for i, *_ in hopped}:
                            turns.groups[i] = terminal_groups(i)
                            turns.regraph(i, None if graphs is None else graphs[i])
                    if torsions is not None:  # the proton changes sides
                        for i in {i for i, *_ in hopped}:
                            graph = None if graphs is None else graphs[i]
                            torsions.groups[i] = torsion_groups(x[i, : len(zs[i])], zs[i], graph)
                            torsions.regraph(i, graph)
            if turns is not None and turns.active and turns(x, dead, v):
                out[:, -1] = np.where(dead[:, None, None], np.nan, x)
            if torsions is not None and torsions.active and torsions(x, dead, v):
                out[:, -1] = np.where(dead[:, None, None], np.nan, x)
            v = np.where(dead[:, None, None], 0.0, controller(x, v))
            control_seconds += time.perf_counter() - t1
        frames.extend(out.transpose(1, 0, 2, 3))
        velocities.append(np.where(dead[:, None, None], np.nan, v))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    positions = np.stack(frames, 1)  # (B, T + 1, N, 3)
    step_v = np.stack(velocities, 1)  # (B, S + 1, N, 3)
    model_v = np.stack(predicted, 1)  # (B, S, N, 3)
    times = np.concatenate([[0.0], (np.arange(n_steps)[:, None] * step + frame_lags[None]).ravel()])
    return Rollout([s.name for s in states], zs, times, [positions[i, :, : len(z)] for i, z in enumerate(zs)], step,
                   [step_v[i, :, : len(z)] for i, z in enumerate(zs)], seconds,
                   [model_v[i, :, : len(z)] for i, z in enumerate(zs)], control_seconds,
                   None if hops is None else hops.accepted.copy(), None if hops is None else hops.attempts.copy(),
                   None if turns is None else turns.accepted.copy(), None if turns is None else turns.attempts.copy(),
                   None if torsions is None else torsions.accepted.copy(),
                   None if torsions is None else torsions.attempts.copy())


def write_rollout_extxyz(path: str | Path, traj: Rollout, i: int) -> Path:
    """Molecule i's rollout as an extxyz trajectory (`time_fs` in each frame's info), written
    atomically; `ase.io.read(path, index=":")` reads it back."""
    return write_frames(path, traj.atomic_numbers[i], traj.positions[i],
                        [{"time_fs": float(t), "molecule": traj.names[i]} for t in traj.times_fs])
