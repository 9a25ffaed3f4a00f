"""`atomray.priors.modes`: GFN2-xTB normal modes of a basin and the harmonic vibration about its
minimum. Real tblite GFN2-xTB (Hessians and a short molecular dynamics run) on ethanol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atomray.data.augment import random_rotation
from atomray.elements import atomic_masses
from atomray.priors import modes as modes_module
from atomray.priors.minima import BasinFinder, machine_finder
from atomray.priors.modes import (CM_TO_OMEGA, EV_PER_A2_U_IN_FS2, OMEGA_MIN, Basin, basin_modes, modes_suffix,
                                  normal_modes, rigid_basis, vibrate, vibration_paths)
from atomray.priors.rigid import internal_velocity
from priorkit import fresh_store, minimum

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ethanol() -> tuple[np.ndarray, np.ndarray, Basin]:
    """(z, the GFN2-xTB minimum, its Basin with normal modes) of ethanol, from a finder without store."""
    z, xm = minimum("CCO")
    finder = BasinFinder(z)
    basin = basin_modes(finder, finder.assign(xm))
    assert basin.refined
    return z, basin.minimum.copy(), basin


def test_normal_modes_are_the_internal_motions_with_gfn2_frequencies(ethanol):
    z, xm, basin = ethanol
    omega, modes, force = normal_modes(xm, z)
    assert modes.shape == (27, 21) and omega.shape == force.shape == (21,)  # 3N − 6 for ethanol
    np.testing.assert_allclose(modes.T @ modes, np.eye(21), atol=1e-8)
    mass = atomic_masses(z).astype(float)
    assert np.abs(rigid_basis(xm, mass).T @ modes).max() < 1e-6  # no translation or rotation
    wavenumbers = omega / CM_TO_OMEGA  # cm⁻¹
    assert 3300 < wavenumbers.max() < 4000  # the O–H stretch
    assert 2800 < np.sort(wavenumbers)[-2] < 3200  # C–H stretches
    assert omega.min() >= OMEGA_MIN
    np.testing.assert_array_equal(basin.omega, omega)  # the basin's modes are its minimum's


def test_vibrate_damps_toward_the_minimum_and_turns_with_the_body():
    osc = torch.ones(1, 2, 3, 3, dtype=torch.float64)
    d0 = torch.full((1, 3, 3), 2.0, dtype=torch.float64)
    lags = torch.tensor([[0.0, 1e6]], dtype=torch.float64)
    rot = random_rotation(torch.Generator().manual_seed(1)).expand(1, 2, 3, 3)
    out = vibrate(osc, d0, rot, lags, 1000.0)
    torch.testing.assert_close(out[:, 0], ((osc[:, 0] - d0) @ rot[0, 0].T))
    torch.testing.assert_close(out[:, 1], (-d0) @ rot[0, 1].T)  # long after: at the minimum
    half = vibrate(osc, d0, None, torch.tensor([[0.0, 1000.0 * np.log(2)]], dtype=torch.float64), 1000.0)
    torch.testing.assert_close(half[:, 1], 0.5 * osc[:, 1] - d0)  # x0's frame, half-damped at τ ln 2
    tau = torch.tensor(300.0, dtype=torch.float64, requires_grad=True)
    vibrate(osc, d0, rot, torch.tensor([[50.0, 500.0]], dtype=torch.float64), tau).sum().backward()
    assert tau.grad.abs() > 0  # differentiable in τ
    assert EV_PER_A2_U_IN_FS2 == pytest.approx(1.602176634e-19 / (1.66053906660e-27 * 1e-20) * 1e-30, rel=1e-6)


def thermal_state(basin: Basin, mass: np.ndarray, speed: float, reach: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, v) of a state in `basin` with every mode at a random phase: mass-weighted velocity
    speed·sin φ_k and displacement from the mode's own minimum reach·speed·cos φ_k / ω_k, so each
    mode's displacement holds reach² of its share of the kinetic energy (an equilibrium state
    has reach ≈ 1)."""
    sq = np.repeat(np.sqrt(mass), 3)
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, len(basin.omega))
    q = basin.force / basin.omega ** 2 + reach * speed * np.cos(phase) / basin.omega
    x = basin.minimum + ((basin.modes @ q) / sq).reshape(-1, 3)
    v = ((basin.modes @ (speed * np.sin(phase))) / sq).reshape(-1, 3)
    return x, v


def test_harmonic_paths_follow_real_gfn2_dynamics_at_small_amplitude(ethanol):
    """Ethanol near its minimum, every mode within its thermal amplitude (a state at ~10 K),
    propagated 60 fs by GFN2-xTB velocity Verlet: the undamped harmonic path stays within a
    fraction of the displacement no motion makes."""
    from ase import Atoms, units
    from ase.md.verlet import VelocityVerlet
    from tblite.ase import TBLite

    z, xm, basin = ethanol
    mass = atomic_masses(z).astype(float)
    x0, v0 = thermal_state(basin, mass, speed=0.004, reach=0.5, seed=3)
    v0 = internal_velocity(torch.from_numpy(x0)[None], torch.from_numpy(v0)[None], torch.from_numpy(mass)[None])[0].numpy()
    atoms = Atoms(numbers=z, positions=x0, masses=mass)
    atoms.set_velocities(v0 / units.fs)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    md, lags, truth = VelocityVerlet(atoms, timestep=0.5 * units.fs), [10.0, 20.0, 40.0, 60.0], []
    for steps in np.diff([0.0] + lags) / 0.5:
        md.run(int(steps))
        truth.append(atoms.get_positions())
    osc, d0 = vibration_paths(x0[None], v0[None], mass, np.array([lags]), basin)
    pred = x0 + osc[0] - d0[0]  # no rigid motion: v0 has none
    truth = np.stack(truth)
    err_harmonic = np.square(pred - truth).mean()
    err_still = np.square(x0 - truth).mean()
    assert err_harmonic < 0.02 * err_still, (err_harmonic, err_still)


def test_each_mode_oscillates_about_its_own_minimum(ethanol):
    """A state displaced along one mode (from the mode's own minimum c_k = f_k/ω_k², where the
    residual force vanishes) swings as a cos ω_k Δt; one pushed along it swings as b sin(ω_k Δt)/ω_k;
    one at the modes' minimum stays there. Every state also moves along a stiff mode j, whose
    velocity sets the states' temperature (the displacement of mode k is within its thermal
    amplitude, so it swings in full)."""
    z, xm, basin = ethanol
    mass = atomic_masses(z).astype(float)
    sq = np.repeat(np.sqrt(mass), 3)
    centre = basin.force / basin.omega ** 2
    order = np.argsort(basin.omega)
    k, j = int(order[5]), int(order[-1])  # a mode of a few hundred cm⁻¹, and the O–H stretch
    w, wj = basin.omega[k], basin.omega[j]
    lags = np.linspace(0.0, 2.5 * 2 * np.pi / w, 9)[None]  # 2.5 periods
    at = lambda q: xm + ((basin.modes @ q) / sq).reshape(-1, 3)  # noqa: E731 minimum + M^-½ E q
    along = lambda m: ((basin.modes @ np.eye(len(centre))[m]) / sq).reshape(-1, 3)  # noqa: E731 M^-½ e_m
    a, b, bj = 0.02, 0.002, 0.1  # Å √u, Å √u / fs, Å √u / fs: √(bj²/K) / ω_k > a, b / ω_k
    x_rest, x_pulled = at(centre), at(centre + a * np.eye(len(centre))[k])
    still = bj * along(j)
    pushed = still + b * along(k)
    osc, d0 = vibration_paths(np.stack([x_rest, x_pulled, x_rest]), np.stack([still, still, pushed]), mass,
                              np.repeat(lags, 3, 0), basin)
    rest = x_rest - xm
    stretch = bj * (np.sin(wj * lags[0]) / wj)[:, None, None] * along(j)  # mode j's own swing
    np.testing.assert_allclose(osc[0], rest + stretch, atol=1e-9)
    np.testing.assert_allclose(osc[1], rest + stretch + a * np.cos(w * lags[0])[:, None, None] * along(k), atol=2e-5)
    np.testing.assert_allclose(osc[2], rest + stretch + b * (np.sin(w * lags[0]) / w)[:, None, None] * along(k), atol=1e-9)
    np.testing.assert_allclose(d0, np.stack([rest, x_pulled - xm, rest]), atol=2e-5)
    assert np.abs(rest).max() > 1e-3  # the residual force's own minimum is not the refined one


def test_a_mode_displaced_far_beyond_its_thermal_amplitude_does_not_swing_through_its_minimum(ethanol):
    """A large Cartesian displacement (a torsion of a flexible molecule, say) projects onto stiff
    modes with many kT of energy that no real vibration holds: in a state whose modes hold far
    more potential than kinetic energy, a mode swings only by its thermal amplitude √(kT)/ω (kT
    from the state's own internal velocities, ⟨q̇²⟩ per mode) about the point nearest the start,
    instead of through its minimum and back. A state in equilibrium swings in full. At lag 0 the
    path starts at the start."""
    z, xm, basin = ethanol
    mass = atomic_masses(z).astype(float)
    sq = np.repeat(np.sqrt(mass), 3)
    x0, v0 = thermal_state(basin, mass, speed=0.0158, reach=0.5, seed=9)  # ~300 K
    kt = np.mean(((v0.reshape(-1) * sq) @ basin.modes) ** 2)
    k = int(np.argsort(basin.omega)[-3])  # a C–H stretch
    thermal = np.sqrt(kt) / basin.omega[k]
    x_far = x0 + 10 * thermal * ((basin.modes[:, k]) / sq).reshape(-1, 3)  # 100 kT of potential energy
    half = np.pi / basin.omega[k]
    osc, d0 = vibration_paths(np.stack([x0, x_far]), np.stack([v0, v0]), mass, np.array([[0.0, half]] * 2), basin)
    np.testing.assert_allclose(osc[:, 0], d0, atol=1e-9)  # continuous at the start
    q = lambda d: ((d.reshape(-1) * sq) @ basin.modes)[k]  # noqa: E731 mode k's coordinate
    moved_far = abs(q(osc[1, 1]) - q(d0[1]))
    assert moved_far < 2.5 * thermal, (moved_far, thermal)  # uncapped: 20 thermal amplitudes
    centre = basin.force[k] / basin.omega[k] ** 2
    np.testing.assert_allclose(q(osc[0, 1]), 2 * centre - q(d0[0]), atol=1e-9)  # in equilibrium: the full swing


def test_paths_are_vectorised_over_windows_and_turn_with_the_state(ethanol):
    """Many windows of one basin (other lags each) at once equal one at a time; a turned and
    shifted state gives the turned paths (the minimum is superposed on each state)."""
    z, xm, basin = ethanol
    mass = atomic_masses(z).astype(float)
    g = np.random.default_rng(5)
    x = xm + g.normal(0, 0.03, (4, *xm.shape))
    v = internal_velocity(torch.from_numpy(x), torch.from_numpy(g.normal(0, 0.005, x.shape)),
                          torch.from_numpy(np.broadcast_to(mass, (4, len(z))).copy())).numpy()
    lags = np.sort(g.uniform(1, 800, (4, 5)), axis=1)
    osc, d0 = vibration_paths(x, v, mass, lags, basin)
    for i in range(4):
        one = vibration_paths(x[i:i + 1], v[i:i + 1], mass, lags[i:i + 1], basin)
        np.testing.assert_allclose(osc[i], one[0][0], atol=1e-12)
        np.testing.assert_allclose(d0[i], one[1][0], atol=1e-12)
    r = random_rotation(torch.Generator().manual_seed(4)).numpy()
    turned = vibration_paths(x @ r.T - 3.0, v @ r.T, mass, lags, basin)
    np.testing.assert_allclose(turned[0], osc @ r.T, atol=1e-9)
    np.testing.assert_allclose(turned[1], d0 @ r.T, atol=1e-9)
    assert np.abs(osc - d0[:, None]).max() > 0.01  # the atoms do vibrate


def test_a_permuted_basin_gives_the_permuted_paths(ethanol):
    z, xm, basin = ethanol
    mass = atomic_masses(z).astype(float)
    order = np.array([2, 0, 8, 1, 5, 3, 7, 4, 6])
    g = np.random.default_rng(6)
    x = xm + g.normal(0, 0.03, (2, *xm.shape))
    v = g.normal(0, 0.003, x.shape)
    lags = np.array([[5.0, 50.0, 500.0]] * 2)
    osc, d0 = vibration_paths(x, v, mass, lags, basin)
    moved = basin.permuted(order)
    np.testing.assert_array_equal(moved.z, z[order])
    p_osc, p_d0 = vibration_paths(x[:, order], v[:, order], mass[order], lags, moved)
    np.testing.assert_allclose(p_osc, osc[:, :, order], atol=1e-12)
    np.testing.assert_allclose(p_d0, d0[:, order], atol=1e-12)


def test_an_unrefined_basin_has_no_modes_and_moves_straight_to_its_minimum(ethanol):
    """Without a refined minimum there are no modes: osc = d0 at every lag (so the vibration
    prior is the undamped part of a move toward the minimum)."""
    z, xm, _ = ethanol
    mass = atomic_masses(z).astype(float)
    basin = Basin.unrefined(z, xm)
    assert not basin.refined and basin.modes.shape == (27, 0)
    g = np.random.default_rng(7)
    r = random_rotation(torch.Generator().manual_seed(7)).numpy()
    x = (xm + g.normal(0, 0.03, xm.shape)) @ r.T + 1.0
    osc, d0 = vibration_paths(x[None], g.normal(0, 0.005, (1, *xm.shape)), mass, np.array([[5.0, 500.0]]), basin)
    np.testing.assert_array_equal(osc[0], np.stack([d0[0], d0[0]]))
    w = mass / mass.sum()  # d0 = x − the minimum superposed on x (mass-weighted)
    fitted = x - d0[0]
    assert np.abs((w[:, None] * d0[0]).sum(0)).max() < 1e-10
    assert abs(np.linalg.norm(fitted[0] - fitted[1]) - np.linalg.norm(xm[0] - xm[1])) < 1e-10  # a rigid copy
    assert 0.02 < np.sqrt((d0 ** 2).sum(-1).mean()) < 0.1


def test_basin_modes_are_computed_once_and_stored_beside_the_basin(tmp_path, monkeypatch, ethanol):
    """The first finder of the machine computes a basin's Hessian and writes the modes beside
    its minimum (the name carries the Hessian's settings); a second finder reading that basin
    (another process) reads the modes instead of computing them, bit for bit."""
    z, xm, _ = ethanol
    fresh_store(monkeypatch, tmp_path)
    calls = []
    real = modes_module.normal_modes
    monkeypatch.setattr(modes_module, "normal_modes", lambda *a: calls.append(1) or real(*a))
    first = machine_finder(z)
    k = first.assign(xm)
    basin = basin_modes(first, k)
    assert basin_modes(first, k) is basin and len(calls) == 1
    assert first.files[k].with_suffix(modes_suffix()).exists()
    monkeypatch.setattr("atomray.priors.minima._MACHINE", {})
    second = machine_finder(z)
    assert second is not first and second.assign(xm) == k
    again = basin_modes(second, k)
    assert len(calls) == 1  # read, not recomputed
    for key in ("minimum", "omega", "modes", "force"):
        np.testing.assert_array_equal(getattr(again, key), getattr(basin, key), err_msg=key)


def test_a_new_finder_never_gets_the_basins_of_a_finder_that_is_gone():
    """Basins are kept per finder: a finder made after another was freed (CPython may give it
    the same address) gets its own basins, never the old finder's (regression: keyed by id(),
    toluene's per-frame physics once held ethanol's first basins)."""
    g = np.random.default_rng(8)
    for n in range(2, 20):  # each finder's molecule has another atom count
        finder = BasinFinder(np.full(n, 6))
        finder._add(g.normal(size=(n, 3)), None)  # an unrefined basin: no Hessian needed
        basin = basin_modes(finder, 0)
        assert len(basin.z) == n and basin.minimum is finder.minimum(0)[0]
        del finder, basin  # freed at once (no reference cycles): the next finder may reuse its address


def test_first_order_bonds_keep_a_turning_bond_at_its_length_and_the_start_as_it_is():
    """A hydroxyl hydrogen swung along its tangent by 0.3 Å (what a linear normal mode does to a
    turning group) lengthens the O–H bond by ~|Δ⊥|²/2L in Cartesian coordinates; held to first
    order it keeps its start length (the tangent has no first-order part), the lag where nothing
    moved (osc = d0) is left as it is, and the centre of mass does not move."""
    from atomray.priors.modes import first_order_bonds

    z = np.array([6, 8, 1])
    s = np.array([[[0.0, 0.0, 0.0], [1.43, 0.0, 0.0], [1.43 + 0.97 * np.cos(1.9), 0.97 * np.sin(1.9), 0.0]]])
    d0 = np.zeros_like(s)
    oh = s[0, 2] - s[0, 1]
    tangent = np.cross([0.0, 0.0, 1.0], oh / np.linalg.norm(oh))
    osc = np.zeros((1, 2, 3, 3))
    osc[0, 1, 2] = 0.3 * tangent  # lag 0: nothing moves; lag 1: the hydrogen swings
    mass = atomic_masses(z).astype(np.float64)
    bonds = np.array([[0, 1], [1, 2]])
    out = first_order_bonds(s, osc, d0, mass, bonds)
    length = lambda p: np.linalg.norm(p[2] - p[1])  # noqa: E731
    assert length(s[0] + osc[0, 1]) - 0.97 > 0.04  # the linear swing stretches O–H by ~0.045 Å
    assert length(s[0] + out[0, 1]) == pytest.approx(0.97, abs=1e-5)
    assert np.linalg.norm((s[0] + out[0, 1])[1] - (s[0] + out[0, 1])[0]) == pytest.approx(1.43, abs=1e-5)
    assert np.array_equal(out[0, 0], osc[0, 0])
    com = lambda p: (mass[:, None] * p).sum(0) / mass.sum()  # noqa: E731
    assert np.allclose(com(s[0] + out[0, 1]), com(s[0] + osc[0, 1]), atol=1e-12)


def test_rotor_circles_turn_a_methyl_that_straight_modes_would_stretch(ethanol):
    """Ethanol's methyl and hydroxyl are its terminal groups. A methyl turned by 40° on straight
    tangent lines (as a normal mode draws a rotation) stretches its C–H bonds by a quarter; on its
    circles it is the exact turn (bond lengths and C–C–H angles of the start), and the rest of the
    molecule is left alone."""
    from atomray.priors.modes import bond_pairs, rotor_circles, rotor_groups

    z, xm, basin = ethanol
    groups = rotor_groups(z, bond_pairs(basin))
    kinds = sorted((int(z[y]), int(z[x]), len(h)) for y, x, h in groups)
    assert kinds == [(6, 6, 3), (6, 8, 1)]  # the methyl about C–C, the hydroxyl about C–O
    y, x, hydrogens = next(g for g in groups if len(g[2]) == 3)
    axis = (xm[x] - xm[y]) / np.linalg.norm(xm[x] - xm[y])
    phi = np.radians(40.0)
    turned, lines = xm.copy(), xm.copy()
    for h in hydrogens:
        r = xm[h] - xm[x]
        along = (r @ axis) * axis
        radial = r - along
        tangent = np.cross(axis, radial)
        turned[h] = xm[x] + along + radial * np.cos(phi) + tangent * np.sin(phi)
        lines[h] = xm[x] + along + radial + tangent * np.tan(phi)  # the same turn on the tangent line
    osc = (lines - xm)[None, None]  # (1, 1, N, 3): one lag
    length = lambda p, h: np.linalg.norm(p[h] - p[x])
    assert length(lines, hydrogens[0]) > 1.2 * length(xm, hydrogens[0])
    out = xm + rotor_circles(xm[None], osc, groups)[0, 0]
    for h in hydrogens:
        assert length(out, h) == pytest.approx(length(xm, h), abs=1e-9)
    np.testing.assert_allclose(out, turned, atol=1e-9)  # on the circle: the exact turn
    still = rotor_circles(xm[None], np.zeros_like(osc), groups)
    np.testing.assert_allclose(still, 0.0, atol=1e-12)  # no motion stays no motion
    # velocities: a hydrogen's motion off its circle (along its offset from the axis) is taken out,
    # its motion along the circle and along the axis kept; other atoms' velocities untouched
    h = hydrogens[0]
    radial = xm[h] - xm[x] - ((xm[h] - xm[x]) @ axis) * axis
    out_dir = radial / np.linalg.norm(radial)
    v = np.zeros((1, 1, len(z), 3))
    v[0, 0, h] = 0.01 * out_dir + 0.02 * np.cross(axis, out_dir) + 0.003 * axis
    v[0, 0, y] = [0.001, -0.002, 0.0005]
    _, v_out = rotor_circles(xm[None], np.zeros_like(osc), groups, v)
    np.testing.assert_allclose(v_out[0, 0, h], 0.02 * np.cross(axis, out_dir) + 0.003 * axis, atol=1e-12)
    np.testing.assert_allclose(v_out[0, 0, y], v[0, 0, y])


@pytest.fixture(scope="module")
def butane() -> tuple[np.ndarray, Basin]:
    """(z, the Basin with normal modes) of butane's GFN2-xTB minimum, from a finder without store."""
    z, xm = minimum("CCCC")
    finder = BasinFinder(z)
    basin = basin_modes(finder, finder.assign(xm))
    assert basin.refined
    return z, basin


def test_a_state_turned_about_a_rotatable_bond_vibrates_about_the_minimum_with_its_torsion(butane):
    """Butane's C–C–C–C torsion: thermal states of the anti minimum, and the same states with one
    end turned 120° about the middle bond (gauche-like states ~1 Å from the anti minimum). The
    basin matched to a turned state (`torsion_matched`) has its dihedral, the minimum's bond
    lengths and orthonormal modes. Vibrating about it, a turned state's bonds over 100 fs stretch
    and shrink as the unturned state's do; about the anti minimum, the modes drag the turned atoms
    along straight chords and a bond shrinks by 5 % more than the unturned state's. Only saturated
    bonds are matched: acetylacetone's enol turns about one single bond, next to its C=C and C=O."""
    from atomray.predict import state_from_smiles
    from atomray.priors.modes import bond_pairs, dihedral, torsion_groups, torsion_matched
    from atomray.priors.rigid import rotated

    enol = state_from_smiles("CC(O)=CC(C)=O", 300.0, 0)
    assert len(torsion_groups(enol.positions, enol.atomic_numbers, None)) == 1
    assert torsion_groups(enol.positions, enol.atomic_numbers, None, saturated=True) == []

    z, basin = butane
    (a, y, c, d, side), = basin.torsions  # one rotatable bond: the middle C–C
    assert sorted(int(z[k]) for k in (a, y, c, d)) == [6, 6, 6, 6]
    mass = atomic_masses(z)
    speed = np.sqrt(300.0 * 8.314462618e-7)  # √(kT) in √u Å/fs at 300 K
    bonds = bond_pairs(basin)
    length = lambda p: np.linalg.norm(p[..., bonds[:, 0], :] - p[..., bonds[:, 1], :], axis=-1)
    lags = np.linspace(10.0, 100.0, 10)[None]

    def shortest(x: np.ndarray, v: np.ndarray, match: float) -> tuple[float, float]:
        """The shortest bond along the paths over its start length, and the RMS of d0 (Å)."""
        v_int = internal_velocity(torch.tensor(x)[None], torch.tensor(v)[None], torch.tensor(mass)[None]).numpy()
        osc, d0 = vibration_paths(x[None], v_int, mass, lags, basin, circles=True, match_torsions=match)
        path = (x - d0[0])[None] + osc[0]  # (P, N, 3)
        return float((length(path) / length(x)).min()), float(np.sqrt((d0[0] ** 2).sum(-1).mean()))

    for seed in (0, 3, 4):
        x, v = thermal_state(basin, mass, speed, 1.0, seed=seed)
        unturned, _ = shortest(x, v, np.inf)
        turn = rotated(np.eye(3), x[c] - x[y], np.radians(120.0)).T  # as a matrix: turn @ u
        x[side] = x[c] + (x[side] - x[c]) @ turn.T
        v[side] = v[side] @ turn.T

        matched = torsion_matched(basin, x)
        assert dihedral(matched.minimum, a, y, c, d) == pytest.approx(dihedral(x, a, y, c, d), abs=1e-9)
        np.testing.assert_allclose(length(matched.minimum), length(basin.minimum), atol=1e-9)
        np.testing.assert_allclose(matched.modes.T @ matched.modes, np.eye(matched.modes.shape[1]), atol=1e-9)

        straight, far = shortest(x, v, np.inf)
        about_matched, near = shortest(x, v, 0.5)
        assert far > 0.5 > near, (far, near)
        assert straight < unturned - 0.05, (seed, straight, unturned)
        assert about_matched > unturned - 0.02, (seed, about_matched, unturned)
