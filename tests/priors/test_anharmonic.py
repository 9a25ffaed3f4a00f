"""`atomray.priors.anharmonic`: MMFF94 molecular dynamics from the start state, per molecule
group (paths, ok), and the hand-over `blend_md`. Real RDKit MMFF94 on ethanol at its GFN2-xTB
minimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atomray.elements import atomic_masses
from atomray.priors import anharmonic
from atomray.priors.anharmonic import KCAL_MOL_A_U, TAU_MD_FS, blend_md, md_paths, mmff_acceleration, verlet_path
from atomray.priors.recent import Recent
from priorkit import minimum

torch.set_num_threads(1)


def thermal_velocities(z: np.ndarray, seed: int, scale: float = 1.0) -> np.ndarray:
    """(N, 3) Å/fs, Maxwell–Boltzmann-sized at 300 K (kT/m)."""
    mass = atomic_masses(z).astype(float)
    return np.random.default_rng(seed).normal(0, 1, (len(z), 3)) * np.sqrt(0.0259 * 9.648533e-3 / mass)[:, None] * scale


def test_mmff_forces_are_the_gradient_of_its_energy_away_from_the_perceived_geometry():
    """RDKit's CalcGrad(pos) goes wrong after earlier calls at other positions unless
    CalcEnergy(pos) ran first (MD then blows up within tens of fs): the forces that drive the MD,
    asked at a few geometries in turn, must match finite differences of the energy at a geometry
    the force field was not built at."""
    z, xm = minimum("CCO")
    acceleration = mmff_acceleration(xm, z)
    _, _, field = acceleration.keep_alive
    rng = np.random.default_rng(0)
    for _ in range(3):  # as in an MD run: earlier calls at other positions
        acceleration(xm + rng.normal(0, 0.05, xm.shape))
    x = xm + rng.normal(0, 0.05, xm.shape)
    force = acceleration(x) * atomic_masses(z).astype(float)[:, None] / KCAL_MOL_A_U  # kcal/mol/Å
    h, numeric = 1e-5, np.zeros_like(x)
    for i in range(len(z)):
        for a in range(3):
            plus, minus = x.copy(), x.copy()
            plus[i, a] += h
            minus[i, a] -= h
            numeric[i, a] = -(field.CalcEnergy(plus.ravel().tolist()) - field.CalcEnergy(minus.ravel().tolist())) / (2 * h)
    np.testing.assert_allclose(force, numeric, atol=1e-4)


def test_mmff_dynamics_conserve_energy_and_keep_the_molecule_bonded():
    """Ethanol at 300 K-sized velocities for 400 fs: total energy within 0.5 % of the kinetic
    energy scale, and every bond within 0.3 Å of its start length."""
    z, xm = minimum("CCO")
    mass = atomic_masses(z).astype(float)
    v0 = thermal_velocities(z, 2)
    acceleration = mmff_acceleration(xm, z)
    _, _, field = acceleration.keep_alive
    lags = np.linspace(10.0, 400.0, 40)
    path = verlet_path(xm, v0, lags, acceleration)
    assert np.isfinite(path).all()

    def total(x: np.ndarray, v: np.ndarray) -> float:
        return field.CalcEnergy(x.ravel().tolist()) * KCAL_MOL_A_U + 0.5 * float((mass[:, None] * v * v).sum())

    h = 0.05  # velocities from a central difference: the same 0.5 fs steps up to lag − h
    energies = []
    for k in (0, 20, 39):
        around = verlet_path(xm, v0, np.array([lags[k] - h, lags[k] + h]), acceleration)
        energies.append(total(path[k], (around[1] - around[0]) / (2 * h)))
    kinetic = 0.5 * float((mass[:, None] * v0 * v0).sum())
    assert max(energies) - min(energies) < 0.005 * kinetic, (energies, kinetic)  # measured 0.1 %
    bonds = np.linalg.norm(xm[:, None] - xm[None], axis=-1) < 1.6
    lengths = np.linalg.norm(path[:, :, None] - path[:, None], axis=-1)
    start = np.linalg.norm(xm[:, None] - xm[None], axis=-1)
    assert np.abs(lengths - start)[:, bonds].max() < 0.3
    assert np.abs(path[-1] - xm).max() > 0.1  # and it does move


def test_md_paths_integrate_each_state_of_a_group_on_its_own_lags():
    """`md_paths` for W states of one molecule equals velocity Verlet from each state with a
    force field perceived from that state, at that window's own lags, in any order."""
    z, xm = minimum("CCO")
    rng = np.random.default_rng(4)
    x = np.stack([xm + rng.normal(0, 0.03, xm.shape) for _ in range(3)])
    v = np.stack([thermal_velocities(z, s) for s in range(3)])
    lags = np.array([[5.0, 20.0, 60.0], [60.0, 5.0, 33.3], [1.0, 2.0, 100.0]])  # the second not ascending
    paths, ok = md_paths(x, v, z, lags)
    assert paths.shape == (3, 3, len(z), 3) and paths.dtype == np.float64 and ok.all()
    for i in range(3):
        np.testing.assert_array_equal(paths[i], verlet_path(x[i], v[i], lags[i], mmff_acceleration(x[i], z)))
    alone = verlet_path(x[1], v[1], np.array([5.0]), mmff_acceleration(x[1], z))[0]  # the 5 fs lag on its own
    np.testing.assert_allclose(paths[1, 1], alone, atol=1e-12)
    assert np.abs(paths[1, 0] - x[1]).max() > 0.05  # 60 fs on: the atoms moved


def test_a_state_mmff94_cannot_type_has_no_md_path_and_keeps_the_harmonic_one(monkeypatch):
    """Two carbon atoms 4 Å apart: no bonds MMFF94 can type. ok is False, the path 0, one
    warning per formula; the hand-over leaves the harmonic path as it is for that state."""
    monkeypatch.setattr(anharmonic, "_WARNED", set())
    x = np.array([[[0.0, 0.0, 0.0], [4.0, 0.0, 0.0]]] * 2)
    lags = np.array([[5.0, 50.0]] * 2)
    with pytest.warns(UserWarning, match="MMFF94 cannot type C2"):
        md, ok = md_paths(x, np.zeros_like(x), np.array([6, 6]), lags)
    assert not ok.any() and np.all(md == 0)
    harmonic = torch.from_numpy(x)[:, None].expand(2, 2, 2, 3) + 0.1
    torch.testing.assert_close(blend_md(harmonic, torch.from_numpy(md), torch.from_numpy(ok), torch.from_numpy(lags)),
                               harmonic)


def test_blend_md_hands_over_from_md_to_the_harmonic_path():
    """harmonic + exp(−Δt/τ) (md − harmonic) where ok, the harmonic path where not; τ learnable."""
    g = torch.Generator().manual_seed(0)
    harmonic = torch.randn(3, 4, 5, 3, generator=g, dtype=torch.float64)
    md = torch.randn(3, 4, 5, 3, generator=g, dtype=torch.float64)
    ok = torch.tensor([True, False, True])
    lags = torch.tensor([[0.0, 50.0, 150.0, 1e5]] * 3, dtype=torch.float64)
    out = blend_md(harmonic, md, ok, lags)
    weight = torch.exp(-lags / TAU_MD_FS)[..., None, None]
    torch.testing.assert_close(out[0], (harmonic + weight * (md - harmonic))[0])
    torch.testing.assert_close(out[0, 0], md[0, 0])  # Δt = 0: MD
    torch.testing.assert_close(out[2, 3], harmonic[2, 3])  # long after: harmonic
    torch.testing.assert_close(out[1], harmonic[1])
    tau = torch.tensor(100.0, dtype=torch.float64, requires_grad=True)
    blend_md(harmonic, md, ok, lags, tau).sum().backward()
    assert tau.grad.abs() > 0


def test_md_results_are_kept_within_the_byte_budget(monkeypatch):
    """The same inputs integrate once while they fit the budget (fixed evaluation batches,
    every epoch); the least recently used results leave first when it is exceeded."""
    z, xm = minimum("CCO")
    runs = []
    real = anharmonic.mmff_acceleration
    monkeypatch.setattr(anharmonic, "mmff_acceleration", lambda *a: runs.append(1) or real(*a))
    monkeypatch.setattr(anharmonic, "_RECENT", Recent(max_bytes=anharmonic.CACHE_BYTES))
    x = xm[None]
    one = lambda lag: md_paths(x, np.zeros_like(x), z, np.array([[lag]]))[0]  # noqa: E731
    first = one(20.0)
    np.testing.assert_array_equal(one(20.0), first)
    assert len(runs) == 1
    monkeypatch.setattr(anharmonic._RECENT, "max_bytes", 2 * first.nbytes)  # room for two results
    one(30.0), one(40.0)  # 20 fs is now the least recently used: it leaves
    one(40.0)
    assert len(runs) == 3
    one(20.0)
    assert len(runs) == 4
