"""`atomray.priors.rigid`: the rigid-body floors (no motion, linear, rigid, rotor) are exact where
physics says they are, SE(3)- and permutation-equivariant, and the superposition helpers fit
what they should. float64 throughout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from atomray.data.augment import random_rotation
from atomray.elements import atomic_masses
from atomray.evaluate import floor_errors
from atomray.priors.compose import floor_predictions
from atomray.priors.paths import PriorPaths
from atomray.priors.rigid import (internal_velocity, kabsch, kabsch_np, procrustes_mean, quaternion_matrix, rigid,
                                  rotor, superpose)

F64 = torch.float64
RIGID_FLOORS = ("no_motion", "linear", "rigid_heavy", "rigid_all", "rotor_all")  # no basin needed


def with_rotor(batch: dict) -> dict:
    """The batch (torch, float64) with the rotor keys the data path attaches (`PriorPaths`)."""
    arrays = {k: v.numpy() for k, v in batch.items()}
    out = PriorPaths({"rotor"}, dtype=np.float64)(arrays)
    return {**batch, "rotor_path": torch.from_numpy(out["rotor_path"]), "rotor_rot": torch.from_numpy(out["rotor_rot"])}


def rigid_rotor(seed: int = 0, heavy: int = 6, hydrogens: int = 5, windows: int = 4, lags: int = 8,
                axis: int = 0, spin: float = 0.012):
    """Windows of a rigid molecule (heavy atoms + hydrogens) in free flight: its centre of mass
    drifts at constant velocity u and it spins at constant ω about a principal axis of its
    (all-atom) inertia tensor, which is an exact solution of torque-free rigid-body motion
    (positions turned by scipy, independently of the code under test).

        x_i(t) = c + u t + exp([ω]× t)(x_i − c),   v_i = u + ω × (x_i − c)

    Heavy atoms are the model atoms, hydrogens the context atoms. Returns a window batch with
    the rotor keys attached."""
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

    def at(t: np.ndarray) -> np.ndarray:  # (..., N, 3) positions at times t (...), by scipy's rotations
        flat = np.reshape(t, -1)
        moved = np.stack([Rotation.from_rotvec(omega * s).apply(r) for s in flat])  # (T, N, 3)
        return (c + u * flat[:, None, None] + moved).reshape(*np.shape(t), len(z), 3)

    x0 = at(t0)  # (W, N, 3)
    v0 = u + np.cross(omega, x0 - c - u * t0[:, None, None])
    target = at(t0[:, None] + dts)  # (W, P, N, 3)
    h = z > 1
    mass = np.broadcast_to(m, (windows, len(z)))
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=F64)  # noqa: E731
    batch = {"x0": t(x0[:, h]), "v0": t(v0[:, h]), "target": t(target[:, :, h]), "lags_fs": t(dts),
             "z": torch.as_tensor(np.broadcast_to(z[h], (windows, h.sum())).copy()),
             "mass": t(mass[:, h]), "mask": torch.ones(windows, h.sum(), dtype=torch.bool),
             "score": torch.ones(windows, h.sum(), dtype=torch.bool),
             "ctx_x0": t(x0[:, ~h]), "ctx_v0": t(v0[:, ~h]), "ctx_mass": t(mass[:, ~h])}
    return with_rotor(batch)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rigid_all_is_exact_for_a_freely_rotating_rigid_molecule(axis):
    batch = rigid_rotor(axis=axis)
    err = floor_errors(batch, RIGID_FLOORS)
    assert err["rigid_all"].max() < 1e-10, err["rigid_all"].max()  # every window, every lag
    assert err["rotor_all"].max() < 1e-10, err["rotor_all"].max()  # a principal-axis spin: ω does not precess
    assert err["no_motion"].min() > 1e-3
    # the heavy atoms alone have another inertia tensor: their ω misses the hydrogens' share
    assert err["rigid_heavy"].mean() > 1e3 * err["rigid_all"].mean()


def test_linear_is_exact_for_free_particles():
    g = torch.Generator().manual_seed(1)
    x0, v0 = torch.randn(3, 7, 3, generator=g, dtype=F64), torch.randn(3, 7, 3, generator=g, dtype=F64) * 0.01
    lags = torch.sort(torch.rand(3, 5, generator=g, dtype=F64) * 1000, dim=1).values
    batch = {"x0": x0, "v0": v0, "lags_fs": lags, "target": x0[:, None] + v0[:, None] * lags[..., None, None],
             "z": torch.full((3, 7), 6), "mass": torch.full((3, 7), 12.0, dtype=F64), "mask": torch.ones(3, 7, dtype=torch.bool)}
    err = floor_errors(batch, ("no_motion", "linear"))
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
    """Moving the windows (x0 R^T + t, v0 R^T, context too) and computing the floors — the rotor
    path computed afresh on the moved windows — moves the floors the same way."""
    batch, g = _random_windows(2)
    r = random_rotation(g)
    if reflect:
        r = r @ torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=F64))
    t = torch.randn(3, generator=g, dtype=F64) * 4
    m = batch["mask"][..., None].double()
    moved = dict(batch, x0=(batch["x0"] @ r.T + t) * m, v0=batch["v0"] @ r.T,
                 ctx_x0=batch["ctx_x0"] @ r.T + t, ctx_v0=batch["ctx_v0"] @ r.T)
    before, after = floor_predictions(with_rotor(batch), RIGID_FLOORS), floor_predictions(with_rotor(moved), RIGID_FLOORS)
    for name in RIGID_FLOORS:
        expect = (before[name] @ r.T + t) * m[:, None]
        torch.testing.assert_close(after[name] * m[:, None], expect, atol=1e-9, rtol=1e-9, msg=name)
        assert (before[name] - expect).abs().max() > 0.1, name  # the motion is not trivial
    # the functions themselves, context included
    args = lambda b: (b["x0"], b["v0"], b["mass"] * b["mask"], b["lags_fs"], (b["ctx_x0"], b["ctx_v0"], b["ctx_mass"]))  # noqa: E731
    for fn in (rigid, rotor):
        torch.testing.assert_close(fn(*args(moved)) * m[:, None], (fn(*args(batch)) @ r.T + t) * m[:, None],
                                   atol=1e-9, rtol=1e-9)


def test_floors_are_permutation_equivariant():
    batch, g = _random_windows(3)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    ctx_perm = torch.tensor([2, 3, 0, 1])
    moved = dict(batch)
    for key in ("x0", "v0", "z", "mask", "mass"):
        moved[key] = batch[key].index_select(1, perm)
    for key in ("ctx_x0", "ctx_v0", "ctx_mass"):
        moved[key] = batch[key].index_select(1, ctx_perm)
    before, after = floor_predictions(with_rotor(batch), RIGID_FLOORS), floor_predictions(with_rotor(moved), RIGID_FLOORS)
    for name in RIGID_FLOORS:
        torch.testing.assert_close(after[name], before[name].index_select(2, perm), atol=1e-9, rtol=1e-9, msg=name)


def test_rigid_of_a_linear_molecule_has_no_spin_about_its_axis():
    """A singular inertia tensor (all atoms on a line): ω is the pseudo-inverse solution,
    finite, and a rotation about the molecular axis does not exist for it."""
    x = torch.tensor([[[-1.2, 0, 0], [0, 0, 0], [1.2, 0, 0]]], dtype=F64)
    v = torch.tensor([[[0, 0.01, 0], [0, 0, 0], [0, -0.01, 0.0]]], dtype=F64)
    mass, lags = torch.tensor([[12.0, 16.0, 12.0]], dtype=F64), torch.tensor([[0.0, 50.0, 100.0]], dtype=F64)
    for fn in (rigid, rotor):
        out = fn(x, v, mass, lags)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[:, 0], x)  # Δt = 0 gives x0 back
        lengths = (out[0, :, 2] - out[0, :, 0]).norm(dim=-1)
        torch.testing.assert_close(lengths, torch.full((3,), 2.4, dtype=F64))  # rigid: no stretching
        assert (out[0, -1] - x[0]).norm(dim=-1).max() > 0.5  # it does turn about the perpendicular axis


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
    err = floor_errors(batch, ("rotor_all", "rigid_all"))
    assert err["rotor_all"].max() < 1e-10 and err["rigid_all"].max() < 1e-10


def test_the_data_paths_rigid_keys_are_the_rigid_motion_of_every_atom():
    """`PriorPaths` computes rigid_path/rotor_path from the model atoms plus the context atoms, and
    rigid_rot/rotor_rot carry them: x0 moved by (c, u, R) is the path."""
    batch, _ = _random_windows(5)
    batch["v0"] = batch["v0"] * 5  # a visible turn
    arrays = {k: v.numpy() for k, v in batch.items()}
    out = {k: torch.from_numpy(v) for k, v in PriorPaths({"rigid", "rotor"}, dtype=np.float64)(arrays).items()
           if k.endswith(("_path", "_rot"))}
    mass = batch["mass"] * batch["mask"]
    ctx = (batch["ctx_x0"], batch["ctx_v0"], batch["ctx_mass"])
    m = batch["mask"][:, None, :, None]
    lags = batch["lags_fs"]
    for key, fn in (("rigid_path", rigid), ("rotor_path", rotor)):
        torch.testing.assert_close(out[key] * m, fn(batch["x0"], batch["v0"], mass, lags, ctx) * m, atol=1e-10, rtol=0)
    without = rotor(batch["x0"], batch["v0"], mass, lags)  # the model atoms alone move otherwise
    assert ((out["rotor_path"] - without) * m).abs().max() > 1e-3
    for key in ("rigid_rot", "rotor_rot"):
        rot = out[key]
        eye = torch.eye(3, dtype=F64).expand_as(rot)
        torch.testing.assert_close(rot @ rot.transpose(-1, -2), eye, atol=1e-12, rtol=0)
        assert (torch.linalg.det(rot) > 0).all()
    # the rotation is the one of the path: path(Δt) − path(Δt)'s centre = R(Δt) (x − c) for the rotor
    allx = torch.cat([batch["x0"], batch["ctx_x0"]], 1)
    allm = torch.cat([mass, batch["ctx_mass"]], 1)
    c = (allm[..., None] * allx).sum(1) / allm.sum(1)[:, None]
    path_all = rotor(batch["x0"], batch["v0"], mass, lags, ctx)
    c_t = path_all - torch.einsum("bpij,bnj->bpni", out["rotor_rot"], batch["x0"] - c[:, None])
    assert (c_t - c_t[:, :, :1]).mul(m).abs().max() < 1e-10  # every atom: the same translation


def test_internal_velocity_removes_the_rigid_motion_and_turns_with_the_molecule():
    batch = rigid_rotor(seed=1, heavy=6, hydrogens=0)
    v_int = internal_velocity(batch["x0"], batch["v0"], batch["mass"])
    assert v_int.abs().max() < 1e-12  # a rigid molecule in free flight has none
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(2, 6, 3, generator=g, dtype=F64), torch.randn(2, 6, 3, generator=g, dtype=F64) * 0.01
    mass = torch.tensor([[12.0, 16.0, 14.0, 1.0, 1.0, 0.0]], dtype=F64).expand(2, 6)  # the last atom is padding
    r = random_rotation(g)
    got = internal_velocity(x @ r.T + 3.0, v @ r.T + 0.02, mass)  # plus a translation and a drift
    torch.testing.assert_close(got, internal_velocity(x, v, mass) @ r.T, atol=1e-12, rtol=0)
    assert got[:, -1].abs().max() == 0
    assert got.abs().max() > 1e-3


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


def test_kabsch_np_is_kabsch_and_proper():
    """The NumPy superposition the basin matching uses gives torch's `kabsch` result, det +1,
    also for a mirror image (where the best improper fit would be exact)."""
    g = np.random.default_rng(5)
    p = g.normal(size=(5, 8, 3))
    p[-1] = p[0] * np.array([1.0, -1.0, 1.0])  # a mirror image of window 0
    q = np.broadcast_to(p[0], p.shape)
    w = g.uniform(0.5, 2.0, size=(5, 8))
    rot, cp, cq = kabsch_np(p, q, w)
    trot, tcp, tcq = kabsch(torch.from_numpy(p), torch.from_numpy(np.ascontiguousarray(q)), torch.from_numpy(w))
    np.testing.assert_allclose(rot, trot.numpy(), atol=1e-10)
    np.testing.assert_allclose(cp, tcp.numpy(), atol=1e-12)
    np.testing.assert_allclose(cq, tcq.numpy(), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    turned = p[0] @ random_rotation(torch.Generator().manual_seed(3)).numpy().T + 1.5
    rot, cp, cq = kabsch_np(turned, p[0], np.ones(8))
    np.testing.assert_allclose((turned - cp) @ rot.T + cq, p[0], atol=1e-10)


def test_procrustes_mean_recovers_the_shape_of_jittered_tumbling_copies():
    x = _shape()
    noise = torch.from_numpy(np.random.default_rng(3).normal(size=(400, *x.shape)) * 0.05)
    noise -= noise.mean(0)  # the jitter averages to zero, so the mean shape is x
    copies = torch.stack([(x + noise[k]) @ random_rotation(torch.Generator().manual_seed(k)).T + 0.1 * k
                          for k in range(400)])
    mean = procrustes_mean(copies, torch.ones(400, x.shape[0], dtype=x.dtype))
    fitted = superpose(mean, x, torch.ones(x.shape[0], dtype=x.dtype))
    assert (fitted - x).pow(2).mean() < 1e-4  # 0.05 Å jitter would leave 2.5e-3 per coordinate


def test_floors_take_unpadded_windows_straight_from_cut_windows():
    """`cut_windows` output (no padding, so no `mask`) is what a user scoring one start has
    in hand (the best_checkpoint notebook): the data path and the floors accept it and equal
    the padded path."""
    from atomray.config import DataConfig
    from atomray.data.windows import cut_windows, pad_windows

    batch = rigid_rotor(seed=4, windows=1)
    z = np.concatenate([batch["z"][0].numpy(), np.ones(batch["ctx_mass"].shape[1], np.int64)])
    x = torch.cat([batch["x0"], batch["ctx_x0"]], 1).numpy()
    v = torch.cat([batch["v0"], batch["ctx_v0"]], 1).numpy()
    positions, velocities = np.stack([x[0], x[0] + 10 * v[0]]), np.stack([v[0], v[0]])
    cfg = DataConfig(context_atoms="heavy", score_atoms="heavy", rwpe_k=0)
    window = cut_windows(positions, velocities, z, 10.0, np.array([0]), np.array([[1]]), cfg, "rotor")
    transform = PriorPaths({"rotor"}, dtype=np.float64)
    as_t = lambda w: {k: torch.as_tensor(v) for k, v in transform(w).items() if v.dtype != object}  # noqa: E731
    plain = floor_predictions(as_t(window), RIGID_FLOORS)
    padded = floor_predictions(as_t(pad_windows([window])), RIGID_FLOORS)
    for name in RIGID_FLOORS:
        torch.testing.assert_close(plain[name], padded[name], msg=name)
