"""The window sampler: the EGNO MD17 protocol reproduced exactly, lags, horizons, centring,
RWPE and padding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from atomray.config import DataConfig
from atomray.data.frames import DataError, Molecule, Trajectory, write_dataset
from atomray.data.dataset import load_trajectories
from atomray.data.windows import (
    cut_windows,
    egno_start_frames,
    horizon_frames,
    lag_offsets,
    pad_windows,
    random_walk_pe,
    radius_adjacency,
    sample_windows,
)

ASPIRIN_Z = np.array([6, 6, 6, 6, 6, 6, 6, 8, 8, 8, 6, 6, 8, 1, 1, 1, 1, 1, 1, 1, 1])


def synthetic_md(n_frames: int, z: np.ndarray, seed: int = 0) -> np.ndarray:
    """(F, N, 3) float32 'trajectory': a molecule-sized random walk with oscillations."""
    rng = np.random.default_rng(seed)
    base = rng.normal(scale=1.5, size=(len(z), 3))
    t = np.arange(n_frames)[:, None, None]
    freq = rng.uniform(0.01, 0.2, size=(1, len(z), 3))
    return (base + 0.1 * np.sin(freq * t) + 0.002 * np.cumsum(rng.normal(size=(n_frames, 1, 3)), 0)).astype(np.float32)


def egno_reference(R: np.ndarray, z: np.ndarray, delta_frame: int, num_timesteps: int,
                   max_samples: tuple[int, int, int]):
    """The EGNO MD17 data protocol, transcribed step by step from docs/reference.md with plain
    loops (deliberately not sharing code with atomray)."""
    x = R
    v = x[1:] - x[:-1]
    x = x[:-1]
    np.random.seed(100)
    _x = x[10000:-10000]
    train_idx = np.random.choice(np.arange(_x.shape[0]), size=int(0.1 * _x.shape[0]), replace=False)
    flag = np.zeros(_x.shape[0])
    for i in train_idx:
        flag[i] = 1
    rest = [i for i in range(_x.shape[0]) if not flag[i]]
    val_idx = np.random.choice(rest, size=int(0.05 * _x.shape[0]), replace=False)
    for i in val_idx:
        flag[i] = 1
    rest = [i for i in range(_x.shape[0]) if not flag[i]]
    test_idx = np.random.choice(rest, size=int(0.05 * _x.shape[0]), replace=False)
    out = {}
    for name, idx, m in zip(("train", "val", "test"), (train_idx, val_idx, test_idx), max_samples):
        st = (idx + 10000)[:m]
        heavy = z > 1
        x0 = x[st][:, heavy]
        v0 = v[st][:, heavy]
        targets = np.stack([x[st + delta_frame * i // num_timesteps][:, heavy] for i in range(1, num_timesteps + 1)], 1)
        out[name] = (st, x0, v0, targets)
    return out


def test_reproduces_egno_md17_protocol(tmp_path):
    dt = 0.5  # MD17 frame spacing, fs
    R = synthetic_md(32001, ASPIRIN_Z)
    ref = egno_reference(R, ASPIRIN_Z, delta_frame=3000, num_timesteps=8, max_samples=(500, 2000, 2000))

    # atomray path: store EGNO-convention positions/velocities (Å/fs) in Parquet, read back.
    pos, vel = R[:-1], (R[1:] - R[:-1]) / dt
    write_dataset(tmp_path, [(Molecule("aspirin", ASPIRIN_Z, dt, 0, source="md17"), pos, vel)])
    (traj,) = load_trajectories(tmp_path)["aspirin"]
    cfg = DataConfig(horizon="fixed", horizon_fs=1500.0, num_lags=8, centre=False, rwpe_k=0, context_atoms="heavy")
    starts = egno_start_frames(traj.n_frames, horizon_frames=3000)
    horizon = horizon_frames(cfg, traj.dt_fs, 1, np.random.default_rng(0))
    assert horizon[0] == 3000
    for split in ("train", "val", "test"):
        st, x0, v0, targets = ref[split]
        np.testing.assert_array_equal(starts[split], st)
        offsets = lag_offsets(np.full(len(st), horizon[0]), cfg.num_lags)
        w = cut_windows(traj.positions, traj.velocities, traj.atomic_numbers, traj.dt_fs,
                        starts[split], offsets, cfg, "aspirin")
        np.testing.assert_array_equal(w["x0"], x0)
        np.testing.assert_allclose(w["v0"] * dt, v0, rtol=0, atol=2e-6)
        np.testing.assert_array_equal(w["target"], targets)
        np.testing.assert_array_equal(w["lags_fs"][0], dt * (3000 * np.arange(1, 9) // 8))
    assert len(starts["train"]) == 500 and len(starts["val"]) == 600 and len(starts["test"]) == 600


def test_egno_protocol_refuses_short_trajectory():
    with pytest.raises(DataError, match="margin"):
        egno_start_frames(15000)


def test_uniform_and_tail_lags():
    h = np.array([3000, 16])
    np.testing.assert_array_equal(lag_offsets(h, 8)[0], 375 * np.arange(1, 9))
    np.testing.assert_array_equal(lag_offsets(h, 8)[1], 2 * np.arange(1, 9))
    tail = lag_offsets(np.array([3000]), 8, "tail", tail_frames=1000)[0]
    np.testing.assert_array_equal(tail, 1000 + 2000 * np.arange(1, 9) // 8)
    assert tail[-1] == 3000


def test_loguniform_horizons_cover_range_in_log_space():
    cfg = DataConfig(horizon="loguniform", horizon_min_fs=8.0, horizon_max_fs=24000.0, context_atoms="heavy")
    h = horizon_frames(cfg, 1.0, 200_000, np.random.default_rng(1))
    assert h.min() >= 8 and h.max() <= 24000
    logs = np.log(h)
    # Uniform in log space: the mean of log ΔT sits halfway between the log bounds, and each
    # decade holds a similar share.
    assert abs(logs.mean() - 0.5 * (np.log(8) + np.log(24000))) < 0.02
    share = np.mean((h >= 100) & (h < 1000))
    assert abs(share - np.log(10) / np.log(3000)) < 0.01


def _traj(n_frames=2000, dt=1.0, z=ASPIRIN_Z):
    pos = synthetic_md(n_frames, z, seed=3)
    return Trajectory("asp", z, dt, 0.0, pos, np.gradient(pos, axis=0) / dt)


def test_windows_stay_inside_frame_range_and_are_centred():
    traj = _traj()
    cfg = DataConfig(horizon="loguniform", horizon_min_fs=8, horizon_max_fs=500, rwpe_k=0, context_atoms="heavy")
    w = sample_windows(traj, 5000, cfg, np.random.default_rng(0), frame_range=(100, 1200))
    last = w["start"] + (w["lags_fs"][:, -1] / traj.dt_fs).astype(int)
    assert w["start"].min() >= 100 and last.max() < 1200
    np.testing.assert_allclose(w["x0"].mean(axis=1), 0, atol=1e-5)
    heavy = ASPIRIN_Z > 1
    i = 7
    origin = traj.positions[w["start"][i]][heavy].mean(0)
    np.testing.assert_allclose(w["origin"][i], origin, atol=1e-5)
    np.testing.assert_allclose(w["target"][i, 0] + origin,
                               traj.positions[w["start"][i] + int(w["lags_fs"][i, 0])][heavy], atol=1e-5)
    assert w["x0"].shape == (5000, heavy.sum(), 3) and (w["z"] > 1).all()


def test_sampling_is_seeded():
    traj = _traj()
    cfg = DataConfig(rwpe_k=4, horizon_max_fs=500, context_atoms="heavy")
    a = sample_windows(traj, 64, cfg, np.random.default_rng(5))
    b = sample_windows(traj, 64, cfg, np.random.default_rng(5))
    c = sample_windows(traj, 64, cfg, np.random.default_rng(6))
    for key in ("x0", "target", "lags_fs", "rwpe"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["start"], c["start"])


def test_all_atoms_are_model_atoms_with_context_all_and_heavy_ones_are_scored():
    traj = _traj()
    cfg = DataConfig(context_atoms="all", rwpe_k=0, horizon_max_fs=500)
    w = sample_windows(traj, 8, cfg, np.random.default_rng(0))
    assert w["x0"].shape[1] == len(ASPIRIN_Z) and w["ctx_x0"].shape == (8, 0, 3)
    np.testing.assert_array_equal(w["score"][0], ASPIRIN_Z > 1)
    w = sample_windows(traj, 8, dataclasses.replace(cfg, score_atoms="all"), np.random.default_rng(0))
    assert w["score"].all()
    with pytest.raises(DataError, match="score_atoms=all needs data.context_atoms=all"):
        sample_windows(traj, 8, dataclasses.replace(cfg, context_atoms="heavy", score_atoms="all"),
                       np.random.default_rng(0))


def test_heavy_atom_windows_carry_the_hydrogens_as_context_in_the_same_frame():
    traj = _traj()
    cfg = DataConfig(rwpe_k=0, horizon_max_fs=500, context_atoms="heavy")
    w = sample_windows(traj, 8, cfg, np.random.default_rng(0))
    heavy, hydrogen = ASPIRIN_Z > 1, ASPIRIN_Z == 1
    assert w["x0"].shape[1] == heavy.sum() and w["ctx_x0"].shape == (8, hydrogen.sum(), 3)
    start = w["start"]
    np.testing.assert_allclose(w["ctx_x0"] + w["origin"][:, None], traj.positions[start][:, hydrogen], atol=1e-5)
    np.testing.assert_array_equal(w["ctx_v0"], traj.velocities[start][:, hydrogen])
    np.testing.assert_allclose(w["mass"][0], [12.011] * 7 + [15.999] * 3 + [12.011] * 2 + [15.999], rtol=1e-4)
    np.testing.assert_allclose(w["ctx_mass"], 1.008, rtol=1e-3)
    assert "ctx_x0" not in sample_windows(traj, 8, cfg, np.random.default_rng(0), with_context=False)


def test_horizon_longer_than_trajectory_is_an_error():
    traj = _traj(n_frames=100)
    cfg = DataConfig(horizon="fixed", horizon_fs=3000.0, context_atoms="heavy")
    with pytest.raises(DataError) as err:
        sample_windows(traj, 4, cfg, np.random.default_rng(0))
    assert "asp" in str(err.value) and "horizon" in str(err.value)


def test_rwpe_of_a_six_ring_and_a_chain():
    # Benzene's carbon ring (1.39 Å bonds) and an isolated atom. A k-step walk on a 6-cycle
    # returns when its net winding is a multiple of 6: probabilities 0, 2/4, 0, 6/16, 0, 22/64
    # at k = 1..6 (22 = C(6,3) + 2 walks once around the ring). The isolated atom gets 0.
    ang = np.arange(6) * np.pi / 3
    ring = np.stack([1.39 * np.cos(ang), 1.39 * np.sin(ang), np.zeros(6)], 1)
    x = np.concatenate([ring, [[10.0, 0, 0]]])[None]
    pe = random_walk_pe(radius_adjacency(x, 1.6), 6)[0]
    np.testing.assert_allclose(pe[:6], np.tile([0, 0.5, 0, 0.375, 0, 22 / 64], (6, 1)), atol=1e-7)
    np.testing.assert_array_equal(pe[6], 0)


def test_rwpe_matches_dense_matrix_powers():
    traj = _traj()
    cfg = DataConfig(rwpe_k=8, horizon_max_fs=500, context_atoms="heavy")
    w = sample_windows(traj, 32, cfg, np.random.default_rng(2))
    for i in (0, 13, 31):
        a = radius_adjacency(w["x0"][i], 1.6).astype(float)
        deg = a.sum(1, keepdims=True)
        m = np.divide(a, deg, out=np.zeros_like(a), where=deg > 0)
        expect = np.stack([np.diag(np.linalg.matrix_power(m, k)) for k in range(1, 9)], 1)
        np.testing.assert_allclose(w["rwpe"][i], expect, atol=1e-6)


def test_pad_windows_masks_padding():
    small = _traj(z=np.array([6, 8, 1, 1]))
    big = _traj()
    cfg = DataConfig(rwpe_k=2, horizon_max_fs=200, context_atoms="heavy")
    rng = np.random.default_rng(0)
    batch = pad_windows([sample_windows(small, 3, cfg, rng), sample_windows(big, 2, cfg, rng)])
    assert batch["x0"].shape == (5, 13, 3) and batch["target"].shape == (5, 8, 13, 3)
    assert batch["mask"][:3].sum(1).tolist() == [2, 2, 2] and batch["mask"][3:].all()
    assert (batch["z"][:3, 2:] == 0).all() and (batch["x0"][:3, 2:] == 0).all()
    assert not batch["score"][:3, 2:].any() and (batch["mass"][:3, 2:] == 0).all()
    # context atoms pad to their own largest count (2 and 8 hydrogens), with mass 0
    assert batch["ctx_x0"].shape == (5, 8, 3) and (batch["ctx_mass"][:3, 2:] == 0).all()
