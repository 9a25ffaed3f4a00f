"""The window sampler: training samples cut from a trajectory, vectorised over many windows.

A window starts at frame t and asks for the positions at P lags inside a horizon ΔT
(paper §4 "Training setups"):

    uniform:  t_p = t + (ΔT * p) // P                      p = 1..P   (in frames)
    tail:     t_p = t + Δ̄ + ((ΔT - Δ̄) * p) // P

ΔT is fixed or drawn per window from LogUniform(Δt_min, ΔT_max) (paper §3.3). Times in the
config are fs; they are turned into whole frames of the trajectory's own time step, and the
returned `lags_fs` are the lags actually realised, so data sets with different time steps
mix correctly.

Everything is pure NumPy on a seeded `np.random.Generator`; no Python loop runs per window.
The EGNO/MD17 protocol (docs/data.md) is reproduced by `egno_start_frames` + `cut_windows`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from atomray.config import DataConfig
from atomray.data.frames import DataError, Trajectory
from atomray.elements import atomic_masses

Windows = dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# horizons and lags


def horizon_frames(cfg: DataConfig, dt_fs: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) horizons ΔT in whole frames: fixed, or LogUniform(horizon_min_fs, horizon_max_fs).

    A horizon is at least P frames so that the P lags are distinct frames.
    """
    if cfg.horizon == "fixed":
        h = np.full(n, cfg.horizon_fs / dt_fs)
    else:
        lo, hi = np.log(cfg.horizon_min_fs), np.log(cfg.horizon_max_fs)
        h = np.exp(rng.uniform(lo, hi, size=n)) / dt_fs
    return np.maximum(np.rint(h).astype(np.int64), cfg.num_lags)


def max_horizon_frames(cfg: DataConfig, dt_fs: float) -> int:
    """The largest horizon (frames) the config can draw at this time step."""
    top = cfg.horizon_fs if cfg.horizon == "fixed" else cfg.horizon_max_fs
    return max(int(np.rint(top / dt_fs)), cfg.num_lags)


def lag_offsets(horizons: np.ndarray, num_lags: int, discretisation: str = "uniform",
                tail_frames: int = 0) -> np.ndarray:
    """(W, P) frame offsets from the start frame: (ΔT*p)//P, or Δ̄ + ((ΔT-Δ̄)*p)//P for tail."""
    p = np.arange(1, num_lags + 1, dtype=np.int64)
    h = np.asarray(horizons, dtype=np.int64)[:, None]
    if discretisation == "uniform":
        return (h * p) // num_lags
    if discretisation == "tail":
        tail = np.minimum(int(tail_frames), h - num_lags)
        return tail + ((h - tail) * p) // num_lags
    raise ValueError(f"discretisation must be 'uniform' or 'tail', found {discretisation!r}")


# ---------------------------------------------------------------------------------------------
# start frames


def draw_starts(rng: np.random.Generator, horizons: np.ndarray, frame_range: tuple[int, int],
                where: str = "trajectory", start_range: tuple[int, int] | None = None) -> np.ndarray:
    """(W,) start frames, uniform over the starts in `start_range` (default: all of
    `frame_range`) whose whole window lies in `frame_range` = [lo, hi)."""
    lo, hi = frame_range
    s_lo, s_hi = start_range if start_range is not None else (lo, hi)
    room = np.minimum(s_hi, hi - np.asarray(horizons)) - s_lo  # valid starts per window
    if (room <= 0).any():
        need = int(np.max(horizons)) + 1
        raise DataError(
            f"{where}: {hi - lo} frames in range [{lo}, {hi}) are too few for the requested "
            f"horizon of {need - 1} frames (need at least {need})"
        )
    return s_lo + np.floor(rng.random(len(room)) * room).astype(np.int64)


def min_horizon_frames(cfg: DataConfig, dt_fs: float) -> int:
    """The smallest horizon (frames) the config can draw at this time step."""
    if cfg.horizon == "fixed":
        return max_horizon_frames(cfg, dt_fs)
    return max(int(np.rint(cfg.horizon_min_fs / dt_fs)), cfg.num_lags)


def egno_start_frames(n_frames: int, margin: int = 10000, seed: int = 100,
                      fractions: Sequence[float] = (0.1, 0.05, 0.05),
                      max_samples: Sequence[int] = (500, 2000, 2000),
                      horizon_frames: int = 3000, where: str = "trajectory") -> dict[str, np.ndarray]:
    """Train / val / test start frames exactly as the EGNO MD17 code draws them.

    `n_frames` counts frames after the EGNO convention x = x[:-1] (forward-difference
    velocities). Starts come from x[margin:-margin] with NumPy's legacy RNG seeded `seed`:
    10 % train, then 5 % val and 5 % test from the rest, then truncated to `max_samples`.
    """
    pool = n_frames - 2 * margin
    if pool <= 0:
        raise DataError(
            f"{where}: {n_frames} frames leave no start frames after a margin of {margin} at each end"
        )
    rs = np.random.RandomState(seed)
    taken = np.zeros(pool, dtype=bool)
    picks = []
    for frac in fractions:
        size = int(frac * pool)
        if not picks:
            idx = rs.choice(np.arange(pool), size=size, replace=False)
        else:
            rest = np.flatnonzero(~taken)
            idx = rs.choice(rest, size=size, replace=False)
        taken[idx] = True
        picks.append(idx + margin)
    out = {name: p[:m] for name, p, m in zip(("train", "val", "test"), picks, max_samples)}
    last = max(int(v.max()) for v in out.values() if v.size)
    if last + horizon_frames >= n_frames:
        raise DataError(
            f"{where}: start frame {last} + horizon {horizon_frames} frames runs past the end of "
            f"the trajectory ({n_frames} frames)"
        )
    return out


# ---------------------------------------------------------------------------------------------
# random-walk positional encodings (paper App. D.2)


def radius_adjacency(x: np.ndarray, radius: float, mask: np.ndarray | None = None) -> np.ndarray:
    """(..., N, N) bool: atoms closer than `radius` Å, no self loops, padding excluded."""
    diff = x[..., :, None, :] - x[..., None, :, :]
    adj = np.einsum("...ijk,...ijk->...ij", diff, diff) < radius * radius
    n = x.shape[-2]
    adj[..., np.arange(n), np.arange(n)] = False
    if mask is not None:
        adj &= mask[..., :, None] & mask[..., None, :]
    return adj


def random_walk_pe(adjacency: np.ndarray, k: int) -> np.ndarray:
    """(G, N, K) self-return probabilities (M^k)_ii, k = 1..K, of M = D⁻¹A.

    Isolated atoms (degree 0) get zeros. float64 internally, float32 out.
    """
    a = adjacency.astype(np.float64)
    deg = a.sum(-1, keepdims=True)
    m = np.divide(a, deg, out=np.zeros_like(a), where=deg > 0)  # (G, N, N)
    out = np.empty(a.shape[:-1] + (k,), dtype=np.float64)
    power = m
    for i in range(k):
        out[..., i] = np.diagonal(power, axis1=-2, axis2=-1)
        if i + 1 < k:
            power = power @ m
    return out.astype(np.float32)


def rwpe_of_frames(x: np.ndarray, k: int, radius: float) -> np.ndarray:
    """(W, N, K) RWPE of each frame's radius graph, computing each distinct graph once.

    Bonded graphs of one molecule rarely change between frames, so the W adjacency matrices
    are deduplicated (bit-packed) before the matrix powers.
    """
    adj = radius_adjacency(x, radius)  # (W, N, N)
    w = adj.shape[0]
    packed = np.packbits(adj.reshape(w, -1), axis=1)
    keys = np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return random_walk_pe(adj[first], k)[inverse.ravel()]


# ---------------------------------------------------------------------------------------------
# cutting windows


def atom_selection(atomic_numbers: np.ndarray, context_atoms: str = "heavy", where: str = "molecule") -> np.ndarray:
    """Indices of the atoms the model sees and predicts: heavy atoms (Z > 1) or all atoms."""
    z = np.asarray(atomic_numbers)
    if context_atoms not in ("heavy", "all"):
        raise ValueError(f"context_atoms must be 'heavy' or 'all', found {context_atoms!r}")
    keep = np.flatnonzero(z > 1) if context_atoms == "heavy" else np.arange(len(z))
    if keep.size == 0:
        raise DataError(f"{where}: no heavy atoms (Z > 1); set data.context_atoms=all")
    return keep


def cut_windows(positions: np.ndarray, velocities: np.ndarray, atomic_numbers: np.ndarray,
                dt_fs: float, starts: np.ndarray, offsets: np.ndarray, cfg: DataConfig,
                molecule_id: str = "", with_context: bool = True, segment: int = 0, first_frame: int = 0) -> Windows:
    """Cut windows at `starts` (W,) with lag `offsets` (W, P) frames from one trajectory.

    Returns a dict of arrays with leading dimension W, for the N atoms the model sees
    (`cfg.context_atoms`):
      x0 (W,N,3), v0 (W,N,3) Å/fs, target (W,P,N,3) Å, target_v (W,P,N,3) Å/fs the velocities
      at the lags (what a velocity head trains on, `ModelConfig.predict_velocity`) — centred on the start frame's centroid
      of those atoms when `cfg.centre` (the subtracted `origin` (W,3) is returned too);
      z (W,N) int64; mass (W,N) u; score (W,N) bool, the atoms the metrics score
      (`cfg.score_atoms`); lags_fs (W,P) float32; start (W,) int64; rwpe (W,N,K) float32 when
      cfg.rwpe_k > 0; molecule_id (W,) str; segment (W,) and frame (W,) int64, the frames row
      and the frame of it each window starts at (`first_frame` + start: the key of the start
      frame's stored physics, `atomray.priors.frames`).
    With `with_context`, also the molecule's other atoms (the hydrogens when only heavy atoms
    are model atoms; M = 0 otherwise) in the same frame: ctx_x0 (W,M,3), ctx_v0 (W,M,3),
    ctx_mass (W,M). They take part in the physics floors (the rigid body "from all atoms"),
    never in the model.
    """
    where = f"molecule {molecule_id!r}" if molecule_id else "trajectory"
    if cfg.score_atoms == "all" and cfg.context_atoms != "all":
        raise DataError(f"{where}: data.score_atoms=all needs data.context_atoms=all (the model predicts "
                        f"only the atoms it sees)")
    z_all = np.asarray(atomic_numbers, np.int64)
    keep = atom_selection(z_all, cfg.context_atoms, where)
    starts = np.asarray(starts, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    last = int((starts[:, None] + offsets).max(initial=0))
    if starts.size and (starts.min() < 0 or last >= positions.shape[0]):
        raise DataError(
            f"{where}: a window reaches frame {last} but the trajectory has {positions.shape[0]} frames"
        )
    # Gather only the frames and atoms needed (never copy the whole trajectory per call).
    x0 = positions[starts[:, None], keep[None, :]]  # (W, N, 3)
    v0 = velocities[starts[:, None], keep[None, :]]  # (W, N, 3)
    at = (starts[:, None] + offsets)[:, :, None], keep[None, None, :]
    target, target_v = positions[at], velocities[at]  # (W, P, N, 3) each
    w, n = x0.shape[0], x0.shape[1]
    if cfg.centre:
        origin = x0.mean(axis=1)  # (W, 3)
        x0 = x0 - origin[:, None, :]
        target = target - origin[:, None, None, :]
    else:
        origin = np.zeros((w, 3), dtype=np.float32)
    z = z_all[keep]
    scored = z > 1 if cfg.score_atoms == "heavy" else np.ones(n, bool)
    out: Windows = {
        "x0": x0.astype(np.float32, copy=False),
        "v0": v0.astype(np.float32, copy=False),
        "target": target.astype(np.float32, copy=False),
        "target_v": target_v.astype(np.float32, copy=False),
        "z": np.broadcast_to(z, (w, n)).copy(),
        "mass": np.broadcast_to(atomic_masses(z), (w, n)).copy(),
        "score": np.broadcast_to(scored, (w, n)).copy(),
        "lags_fs": (offsets * dt_fs).astype(np.float32),
        "start": starts,
        "origin": origin.astype(np.float32, copy=False),
        "molecule_id": np.full(w, molecule_id, dtype=object),
        "segment": np.full(w, segment, dtype=np.int64),
        "frame": starts + first_frame,
    }
    if with_context:
        other = np.setdiff1d(np.arange(len(z_all)), keep)
        out["ctx_x0"] = (positions[starts[:, None], other[None, :]] - origin[:, None, :]).astype(np.float32)
        out["ctx_v0"] = velocities[starts[:, None], other[None, :]].astype(np.float32)
        out["ctx_mass"] = np.broadcast_to(atomic_masses(z_all[other]), (w, len(other))).copy()
    if cfg.rwpe_k > 0:
        out["rwpe"] = rwpe_of_frames(out["x0"], cfg.rwpe_k, cfg.radius)
    return out


def sample_windows(traj: Trajectory, n: int, cfg: DataConfig, rng: np.random.Generator,
                   frame_range: tuple[int, int] | None = None,
                   start_range: tuple[int, int] | None = None, with_context: bool = True) -> Windows:
    """Draw `n` windows from a trajectory: horizons, lags, then starts, then `cut_windows`.

    Every window lies inside `frame_range` (default: the whole trajectory) and starts inside
    `start_range` (default: anywhere it fits). With log-uniform horizons, a horizon too long
    to fit is redrawn (a few times, then shortened to the longest that fits), so short
    trajectory pieces still yield windows; a fixed horizon that does not fit is an error.
    `with_context`: see `cut_windows` (training batches leave the context atoms out).
    """
    where = f"molecule {traj.molecule_id!r}"
    lo, hi = frame_range if frame_range is not None else (0, traj.n_frames)
    s_lo = start_range[0] if start_range is not None else lo
    s_hi = start_range[1] if start_range is not None else hi
    horizons = horizon_frames(cfg, traj.dt_fs, n, rng)
    if cfg.horizon == "loguniform":
        for _ in range(8):
            bad = hi - horizons <= s_lo
            if not bad.any():
                break
            horizons[bad] = horizon_frames(cfg, traj.dt_fs, int(bad.sum()), rng)
        longest = hi - s_lo - 1
        if longest >= cfg.num_lags:
            horizons = np.minimum(horizons, longest)
    tail = int(np.rint(cfg.tail_offset_fs / traj.dt_fs))
    offsets = lag_offsets(horizons, cfg.num_lags, cfg.discretisation, tail)
    starts = draw_starts(rng, offsets[:, -1], (lo, hi), where, (s_lo, s_hi))
    return cut_windows(traj.positions, traj.velocities, traj.atomic_numbers, traj.dt_fs,
                       starts, offsets, cfg, traj.molecule_id, with_context, traj.segment, traj.first_frame)


# ---------------------------------------------------------------------------------------------
# padding many molecules into one batch


# Which axis of each array counts atoms, and which atom set it belongs to: the model's atoms,
# or the context atoms that only the physics floors use.
ATOM_AXES = {"x0": (1, "model"), "v0": (1, "model"), "z": (1, "model"), "rwpe": (1, "model"),
             "mask": (1, "model"), "mass": (1, "model"), "score": (1, "model"), "target": (2, "model"),
             "target_v": (2, "model"),
             "ctx_x0": (1, "context"), "ctx_v0": (1, "context"), "ctx_mass": (1, "context")}


def pad_windows(groups: Sequence[Windows]) -> dict[str, Any]:
    """Concatenate window groups of different atom counts, padding atoms to the largest N
    (and context atoms to the largest M).

    Returns the same keys plus `mask` (B, N) bool, True for real atoms. Padded atoms have
    zero coordinates, mass and z, and are never scored. Groups may themselves be padded
    batches (with a `mask`).
    """
    groups = [g for g in groups if len(g["x0"])]
    if not groups:
        raise ValueError("pad_windows: no windows")
    keys = [k for k in groups[0] if k != "mask"] + ["mask"]
    missing = {k for g in groups for k in keys if k != "mask" and k not in g}
    if missing:
        raise ValueError(f"pad_windows: groups differ in their keys (some lack {sorted(missing)})")
    sizes = {"model": max(g["x0"].shape[1] for g in groups),
             "context": max((g["ctx_x0"].shape[1] for g in groups if "ctx_x0" in g), default=0)}
    out: dict[str, Any] = {}
    for key in keys:
        parts = []
        for g in groups:
            arr = g[key] if key in g else np.ones(g["x0"].shape[:2], dtype=bool)
            axis, atoms = ATOM_AXES.get(key, (None, ""))
            if axis is not None and arr.shape[axis] < sizes[atoms]:
                pad = [(0, 0)] * arr.ndim
                pad[axis] = (0, sizes[atoms] - arr.shape[axis])
                arr = np.pad(arr, pad)
            parts.append(arr)
        out[key] = np.concatenate(parts)
    return out
