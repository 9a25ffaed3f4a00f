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
Each step's states go through the same prior transform as training windows
(`atomray.priors.paths`, basins through the machine's basin store). Atoms the model does not see
(hydrogens of a heavy-atom model) are not rolled out; such a model's rigid-body prior then comes
from its heavy atoms alone after the first step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from atomray.config import RunConfig
from atomray.data.frames import DataError
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
    step_velocities: list[np.ndarray] = field(default_factory=list)  # (S + 1, n_i, 3)
    seconds: float = 0.0  # wall time of the model steps

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


def model_step(model, cfg: RunConfig, states: Sequence[InitialState], x: np.ndarray, v: np.ndarray, step: float,
               dtype, delta: float = DELTA_FS) -> tuple[np.ndarray, np.ndarray]:
    """One rollout step from the states' current model-atom positions x and velocities v
    (B, N, 3), lab frame: (frames (B, F, N, 3) centred on each state's centroid, velocity at ΔT
    (B, N, 3), the centroids (B, 1, 3))."""
    import torch

    from atomray.data.pipeline import to_torch
    from atomray.model.registry import model_inputs
    from atomray.predict import state_windows

    b, p = x.shape[0], cfg.data.num_lags
    rows, frames = step_lags(step, p, delta)
    r = len(rows)  # each state repeated once per row
    mask = np.zeros(x.shape[:2], bool)
    for i, s in enumerate(states):
        mask[i, : len(model_atoms(cfg, s.atomic_numbers))] = True
    origin = (x * mask[..., None]).sum(1, keepdims=True) / mask.sum(1)[:, None, None]  # (B, 1, 3)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    batch = state_windows(cfg, states, np.repeat(np.arange(b), r), np.tile(rows, (b, 1)), origin[:, 0], x, v,
                          dtype=np_dtype)
    with torch.no_grad():
        out = model(**model_inputs(to_torch(batch)))
    out = out.double().numpy().reshape(b, r * p, *out.shape[2:])  # (B, R·P, N, 3)
    flat = rows.ravel()
    at = [int(np.flatnonzero(flat == lag)[0]) for lag in step + delta * np.asarray(DIFFERENCE)]
    with np.errstate(invalid="ignore", over="ignore"):  # a molecule flying apart: handled by the caller
        vel = sum(w * out[:, i] for w, i in zip(WEIGHTS, at)) / (12 * delta)
    return out[:, : len(frames)], vel, origin


def rollout(model, cfg: RunConfig, states: Sequence[InitialState], total_fs: float, step_fs: float | None = None,
            elements: Sequence[int] = (), dtype=None, progress: bool = False, delta_fs: float = DELTA_FS) -> Rollout:
    """Roll every state forward to `total_fs` in steps of `step_fs` (default: the longest
    trained horizon), all states in one batch. `dtype` (default float32) is the precision of
    the model's inputs; pass torch.float64 with a float64 model for exact physics checks.
    Velocities: the centred difference over lags ΔT ± `delta_fs`, ΔT ± 2 `delta_fs`."""
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
        if z.max() > cfg.model.max_atomic_number:
            raise DataError(f"{s.name}: atomic number {int(z.max())} exceeds the model's max_atomic_number "
                            f"{cfg.model.max_atomic_number}")
        check_elements(z, elements, s.name)
    b, n, p = len(states), max(len(z) for z in zs), cfg.data.num_lags
    mask = np.zeros((b, n), bool)
    x = np.zeros((b, n, 3))
    v = np.zeros((b, n, 3))
    for i, (s, k, z) in enumerate(zip(states, keeps, zs)):
        mask[i, : len(z)] = True
        x[i, : len(z)], v[i, : len(z)] = s.positions[k], s.velocities[k]

    n_steps = int(round(total_fs / step))
    if not 0 < delta_fs < step / 2:
        raise DataError(f"rollout: the difference spacing must be in (0, step/2), found {delta_fs} fs")
    frame_lags = step_lags(step, p, delta_fs)[1]
    frames, velocities = [x.copy()], [v.copy()]
    dead = np.zeros(b, bool)
    model = model.eval()
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_steps, desc=f"rollout of {b} molecule(s), {step:g} fs per step", unit="step")
    for _ in range(n_steps):
        out, vel, origin = model_step(model, cfg, states, x, v, step, dtype, delta_fs)
        out = out * mask[:, None, :, None] + origin[:, None]  # (B, F, N, 3)
        x, v = out[:, -1].copy(), vel * mask[..., None]
        # A molecule whose state is no longer finite has flown apart: its frames are NaN from
        # here on (a stability failure) and it rests at the origin, at rest, while the rest go on.
        dead |= ~(np.isfinite(x).all((1, 2)) & np.isfinite(v).all((1, 2)))
        out[dead] = np.nan
        x[dead], v[dead] = 0.0, 0.0
        frames.extend(out.transpose(1, 0, 2, 3))
        velocities.append(np.where(dead[:, None, None], np.nan, v))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    positions = np.stack(frames, 1)  # (B, T + 1, N, 3)
    step_v = np.stack(velocities, 1)  # (B, S + 1, N, 3)
    times = np.concatenate([[0.0], (np.arange(n_steps)[:, None] * step + frame_lags[None]).ravel()])
    return Rollout([s.name for s in states], zs, times, [positions[i, :, : len(z)] for i, z in enumerate(zs)], step,
                   [step_v[i, :, : len(z)] for i, z in enumerate(zs)], seconds)


def write_rollout_extxyz(path: str | Path, traj: Rollout, i: int) -> Path:
    """Molecule i's rollout as an extxyz trajectory (`time_fs` in each frame's info), written
    atomically; `ase.io.read(path, index=":")` reads it back."""
    return write_frames(path, traj.atomic_numbers[i], traj.positions[i],
                        [{"time_fs": float(t), "molecule": traj.names[i]} for t in traj.times_fs])
