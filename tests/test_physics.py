"""The physics floors (no motion, linear, rigid body): exact where physics says they are, and
SE(3)- and permutation-equivariant. float64 throughout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atomray.data.windows import atomic_masses
from atomray.evaluate import FLOORS, floor_errors, floor_predictions
from atomray.metrics import random_rotation
from atomray.physics import procrustes_mean, rigid, rotate, superpose

F64 = torch.float64


def rigid_rotor(seed: int = 0, heavy: int = 6, hydrogens: int = 5, windows: int = 4, lags: int = 8,
                axis: int = 0, spin: float = 0.012):
    """Windows of a rigid molecule (heavy atoms + hydrogens) in free flight: its centre of mass
    drifts at constant velocity u and it spins at constant ω about a principal axis of its
    (all-atom) inertia tensor, which is an exact solution of torque-free rigid-body motion.

        x_i(t) = c + u t + exp([ω]× t)(x_i − c),   v_i = u + ω × (x_i − c)

    Heavy atoms are the model atoms, hydrogens the context atoms. Returns a window batch."""
    g = np.random.default_rng(seed)
    z = np.array([6, 8, 7, 6, 6, 8][:heavy] + [1] * hydrogens)
    x = g.normal(scale=[1.8, 1.2, 0.7], size=(len(z), 3))
    m = atomic_masses(z).astype(np.float64)
    c = (m[:, None] * x).sum(0) / m.sum()
    r = x - c
    inertia = (m * (r * r).sum(1)).sum() * np.eye(3) - np.einsum("n,ni,nj->ij", m, r, r)
    omega = np.linalg.eigh(inertia)[1][:, axis] * spin  # rad/fs along a principal axis
    u = g.normal(size=3) * 0.004  # Å/fs
    t0 = g.uniform(0, 500, size=windows)  # start times: the molecule at different orientations
    dts = np.sort(g.uniform(5, 900, size=(windows, lags)), axis=1)  # fs

    def at(t: np.ndarray) -> np.ndarray:  # (..., N, 3) positions at times t (...)
        tt = torch.as_tensor(t, dtype=F64)
        theta = torch.as_tensor(omega, dtype=F64) * tt.reshape(-1, 1)  # (T, 3)
        rr = torch.as_tensor(r, dtype=F64)[None, None].expand(len(theta), 1, -1, -1)
        moved = rotate(rr, theta[:, None])[:, 0].numpy()
        return (c + u * tt.numpy().reshape(-1, 1)[:, None] + moved).reshape(*np.shape(t), len(z), 3)

    x0 = at(t0)  # (W, N, 3)
    v0 = u + np.cross(omega, x0 - c - u * t0[:, None, None])
    target = at(t0[:, None] + dts)  # (W, P, N, 3)
    h = z > 1
    mass = np.broadcast_to(m, (windows, len(z)))
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=F64)  # noqa: E731
    return {"x0": t(x0[:, h]), "v0": t(v0[:, h]), "target": t(target[:, :, h]), "lags_fs": t(dts),
            "z": torch.as_tensor(np.broadcast_to(z[h], (windows, h.sum())).copy()),
            "mass": t(mass[:, h]), "mask": torch.ones(windows, h.sum(), dtype=torch.bool),
            "score": torch.ones(windows, h.sum(), dtype=torch.bool),
            "ctx_x0": t(x0[:, ~h]), "ctx_v0": t(v0[:, ~h]), "ctx_mass": t(mass[:, ~h])}


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rigid_all_is_exact_for_a_freely_rotating_rigid_molecule(axis):
    batch = rigid_rotor(axis=axis)
    err = floor_errors(batch)
    assert err["rigid_all"].max() < 1e-10, err["rigid_all"].max()  # every window, every lag
    assert err["no_motion"].min() > 1e-3
    # the heavy atoms alone have another inertia tensor: their ω misses the hydrogens' share
    assert err["rigid_heavy"].mean() > 1e3 * err["rigid_all"].mean()


def test_linear_is_exact_for_free_particles():
    g = torch.Generator().manual_seed(1)
    x0, v0 = torch.randn(3, 7, 3, generator=g, dtype=F64), torch.randn(3, 7, 3, generator=g, dtype=F64) * 0.01
    lags = torch.sort(torch.rand(3, 5, generator=g, dtype=F64) * 1000, dim=1).values
    batch = {"x0": x0, "v0": v0, "lags_fs": lags, "target": x0[:, None] + v0[:, None] * lags[..., None, None],
             "z": torch.full((3, 7), 6), "mass": torch.full((3, 7), 12.0, dtype=F64), "mask": torch.ones(3, 7, dtype=torch.bool)}
    err = floor_errors(batch)
    assert err["linear"].max() < 1e-20 and err["no_motion"].min() > 1e-4


def _random_windows(seed: int):
    g = torch.Generator().manual_seed(seed)
    b, n, m, p = 3, 7, 4, 5
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, -2:] = False  # padding: zero mass, zero coordinates
    z = torch.randint(6, 9, (b, n), generator=g) * mask
    batch = {"x0": torch.randn(b, n, 3, generator=g, dtype=F64) * 1.5 * mask[..., None],
             "v0": torch.randn(b, n, 3, generator=g, dtype=F64) * 0.01 * mask[..., None],
             "z": z, "mask": mask, "mass": torch.from_numpy(atomic_masses(z.numpy())).double(),
             "lags_fs": torch.sort(torch.rand(b, p, generator=g, dtype=F64) * 800, dim=1).values,
             "ctx_x0": torch.randn(b, m, 3, generator=g, dtype=F64) * 2, "ctx_v0": torch.randn(b, m, 3, generator=g, dtype=F64) * 0.02,
             "ctx_mass": torch.full((b, m), 1.008, dtype=F64)}
    return batch, g


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
def test_floors_are_euclidean_equivariant(reflect):
    batch, g = _random_windows(2)
    r = random_rotation(g)
    if reflect:
        r = r @ torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=F64))
    t = torch.randn(3, generator=g, dtype=F64) * 4
    m = batch["mask"][..., None].double()
    moved = dict(batch, x0=(batch["x0"] @ r.T + t) * m, v0=batch["v0"] @ r.T,
                 ctx_x0=batch["ctx_x0"] @ r.T + t, ctx_v0=batch["ctx_v0"] @ r.T)
    before, after = floor_predictions(batch), floor_predictions(moved)
    for name in FLOORS:
        expect = (before[name] @ r.T + t) * m[:, None]
        torch.testing.assert_close(after[name] * m[:, None], expect, atol=1e-9, rtol=1e-9, msg=name)


def test_floors_are_permutation_equivariant():
    batch, g = _random_windows(3)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    ctx_perm = torch.tensor([2, 3, 0, 1])
    moved = dict(batch)
    for key in ("x0", "v0", "z", "mask", "mass"):
        moved[key] = batch[key].index_select(1, perm)
    for key in ("ctx_x0", "ctx_v0", "ctx_mass"):
        moved[key] = batch[key].index_select(1, ctx_perm)
    before, after = floor_predictions(batch), floor_predictions(moved)
    for name in FLOORS:
        torch.testing.assert_close(after[name], before[name].index_select(2, perm), atol=1e-9, rtol=1e-9, msg=name)


def test_rigid_of_a_linear_molecule_has_no_spin_about_its_axis():
    """A singular inertia tensor (all atoms on a line): ω is the pseudo-inverse solution,
    finite, and a rotation about the molecular axis does not exist for it."""
    x = torch.tensor([[[-1.2, 0, 0], [0, 0, 0], [1.2, 0, 0]]], dtype=F64)
    v = torch.tensor([[[0, 0.01, 0], [0, 0, 0], [0, -0.01, 0.0]]], dtype=F64)
    out = rigid(x, v, torch.tensor([[12.0, 16.0, 12.0]], dtype=F64), torch.tensor([[0.0, 50.0, 100.0]], dtype=F64))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 0], x)  # Δt = 0 gives x0 back
    lengths = (out[0, :, 2] - out[0, :, 0]).norm(dim=-1)
    torch.testing.assert_close(lengths, torch.full((3,), 2.4, dtype=F64))  # rigid: no stretching


def test_rotor_is_exact_for_a_tumbling_asymmetric_rigid_molecule():
    """Spinning about no principal axis, a free body's ω precesses (Euler's equations): the
    constant-ω `rigid` floor drifts away, the `rotor` floor follows a reference solution of
    the equations of motion integrated independently (scipy DOP853, body frame)."""
    from scipy.integrate import solve_ivp

    g = np.random.default_rng(4)
    z = np.array([6, 8, 7, 6, 6, 8, 1, 1, 1, 1, 1])
    x = g.normal(scale=[1.8, 1.2, 0.7], size=(len(z), 3))
    m = atomic_masses(z).astype(np.float64)
    c = (m[:, None] * x).sum(0) / m.sum()
    r = x - c
    inertia = (m * (r * r).sum(1)).sum() * np.eye(3) - np.einsum("n,ni,nj->ij", m, r, r)
    ang = g.normal(size=3) * 0.6  # u Å²/fs, a general direction
    omega = np.linalg.solve(inertia, ang)
    u = g.normal(size=3) * 0.004
    v = u + np.cross(omega, r)

    def rhs(_, y):  # body frame: q (4, body → lab), L_b (3)
        q, lb = y[:4], y[4:]
        wb = np.linalg.solve(inertia, lb)
        dq = 0.5 * np.array([-q[1:] @ wb, *(q[0] * wb + np.cross(q[1:], wb))])
        return np.concatenate([dq, np.cross(lb, wb)])

    lags = np.array([[10.0, 120.0, 400.0, 700.0, 1000.0, 1500.0]])
    sol = solve_ivp(rhs, (0, lags.max()), np.concatenate([[1.0, 0, 0, 0], ang]), method="DOP853",
                    t_eval=lags[0], rtol=1e-12, atol=1e-14)
    from atomray.physics import quaternion_matrix, rigid, rotor

    rot = quaternion_matrix(torch.as_tensor(sol.y[:4].T))  # (P, 3, 3)
    target = c + u * lags[0][:, None, None] + torch.einsum("pij,nj->pni", rot, torch.as_tensor(r)).numpy()
    t = lambda a: torch.as_tensor(a, dtype=F64)[None]  # noqa: E731
    lag = torch.as_tensor(lags, dtype=F64)
    got = rotor(t(x), t(v), t(m), lag)[0].numpy()
    const = rigid(t(x), t(v), t(m), lag)[0].numpy()
    err = ((got - target) ** 2).mean((1, 2))
    assert err.max() < 1e-10, err
    assert ((const - target) ** 2).mean((1, 2))[-1] > 1e-4  # constant ω is visibly wrong by 1.5 ps


def test_rotor_equals_rigid_for_a_spin_about_a_principal_axis():
    batch = rigid_rotor(axis=1, spin=0.02)
    err = floor_errors(batch)
    assert err["rotor_all"].max() < 1e-10 and err["rigid_all"].max() < 1e-10


def test_floors_take_unpadded_windows_straight_from_cut_windows():
    """`cut_windows` output (no padding, so no `mask`) is what a user scoring one start has
    in hand (the best_checkpoint notebook): the floors accept it and equal the padded path."""
    from atomray.config import DataConfig
    from atomray.data.windows import cut_windows, pad_windows

    batch = rigid_rotor(seed=4, windows=1)
    z = np.concatenate([batch["z"][0].numpy(), np.ones(batch["ctx_mass"].shape[1], np.int64)])
    x = torch.cat([batch["x0"], batch["ctx_x0"]], 1).numpy()
    v = torch.cat([batch["v0"], batch["ctx_v0"]], 1).numpy()
    positions, velocities = np.stack([x[0], x[0] + 10 * v[0]]), np.stack([v[0], v[0]])
    cfg = DataConfig(context_atoms="heavy", score_atoms="heavy", rwpe_k=0)
    window = cut_windows(positions, velocities, z, 10.0, np.array([0]), np.array([[1]]), cfg, "rotor")
    plain = floor_predictions({k: torch.as_tensor(v) for k, v in window.items() if v.dtype != object})
    padded = floor_predictions({k: torch.as_tensor(v) for k, v in pad_windows([window]).items() if v.dtype != object})
    for name in FLOORS:
        torch.testing.assert_close(plain[name], padded[name], msg=name)


def _shape(n: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 3)) * 1.5)


def test_superpose_undoes_a_rotation_and_translation():
    x = _shape()
    moved = torch.stack([x @ random_rotation(torch.Generator().manual_seed(k)).T + k for k in range(4)])
    back = superpose(moved, x.expand_as(moved), torch.ones(4, x.shape[0], dtype=x.dtype))
    assert torch.allclose(back, x.expand_as(moved), atol=1e-10)


def test_superpose_never_reflects_and_fits_only_the_weighted_atoms():
    x = _shape()
    mirror = x * torch.tensor([1.0, 1.0, -1.0], dtype=x.dtype)  # no proper motion maps it onto x
    fit = superpose(mirror, x, torch.ones(x.shape[0], dtype=x.dtype))
    assert torch.linalg.det(torch.linalg.lstsq(mirror - mirror.mean(0), fit - fit.mean(0)).solution) > 0
    bent = x.clone()
    bent[-1] += 5.0  # a far-off atom with weight 0 does not pull the fit of the others
    weight = torch.ones(x.shape[0], dtype=x.dtype)
    weight[-1] = 0
    moved = bent @ random_rotation(torch.Generator().manual_seed(1)).T - 2.0
    assert torch.allclose(superpose(moved, x, weight)[:-1], x[:-1], atol=1e-10)


def test_procrustes_mean_recovers_the_shape_of_jittered_tumbling_copies():
    x = _shape()
    noise = torch.from_numpy(np.random.default_rng(3).normal(size=(400, *x.shape)) * 0.05)
    noise -= noise.mean(0)  # the jitter averages to zero, so the mean shape is x
    copies = torch.stack([(x + noise[k]) @ random_rotation(torch.Generator().manual_seed(k)).T + 0.1 * k
                          for k in range(400)])
    mean = procrustes_mean(copies, torch.ones(400, x.shape[0], dtype=x.dtype))
    fitted = superpose(mean, x, torch.ones(x.shape[0], dtype=x.dtype))
    assert (fitted - x).pow(2).mean() < 1e-4  # 0.05 Å jitter would leave 2.5e-3 per coordinate
