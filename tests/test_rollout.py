"""Rollouts chain predictions exactly: with the rigid prior and a zero correction, a freely
rotating rigid molecule follows its analytic motion for 100 steps (float64, < 1e-8 Å), with
velocities from the difference lags or from a velocity head. The
velocity controls keep the start's momenta exactly, and the CSVR thermostat samples the
canonical kinetic energy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from atomray.config import RunConfig
from atomray.data.frames import DataError
from atomray.elements import atomic_masses
from atomray.model import build_model
from atomray.predict import InitialState
from atomray.rollout import Control, csvr_kinetic_energy, rollout, write_rollout_extxyz

Z = np.array([6, 6, 8, 7, 6, 1, 1, 1])


def spinning_molecule(omega: float = 2e-3, drift=(1e-3, -5e-4, 2e-4), seed: int = 0):
    """Atoms in their principal-axes frame spinning about the third principal axis (a torque-free
    rigid body then keeps ω constant) while the centre of mass drifts: (state, x(t) function)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=1.2, size=(len(Z), 3))
    m = atomic_masses(Z).astype(np.float64)
    com = (m[:, None] * x).sum(0) / m.sum()
    r = x - com
    inertia = (m[:, None, None] * ((r * r).sum(1)[:, None, None] * np.eye(3) - r[:, :, None] * r[:, None, :])).sum(0)
    _, axes = np.linalg.eigh(inertia)
    r = r @ axes  # principal frame: the inertia tensor is diagonal
    w, u = np.array([0.0, 0.0, omega]), np.asarray(drift)
    state = InitialState("spinner", Z, r + 3.0, u + np.cross(w, r))

    def exact(t: float) -> np.ndarray:
        c, s = np.cos(omega * t), np.sin(omega * t)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return 3.0 + u * t + r @ rot.T

    return state, exact


RIGID = dict(prior="rigid", relaxed_input=False, prior_input=False)  # the inputs read the harmonic prior


@pytest.mark.parametrize("name, num_lags, lags, frames, head", [
    ("atom", 8, 0, [12.5, 25.0, 37.5, 50.0], False),  # frames and difference lags in one call
    ("atom", 4, 0, [12.5, 25.0, 37.5, 50.0], False),  # two rows per state
    ("atom", 8, 5, [50.0], False),  # fewer lags than trained: the frame at ΔT and the difference lags
    ("egno", 8, 0, [12.5, 25.0, 37.5, 50.0], False),
    ("atom", 4, 0, [12.5, 25.0, 37.5, 50.0], True),  # the velocity head: every lag a frame
    ("atom", 4, 1, [50.0], True),  # the velocity head, one lag per step
])
def test_rigid_prior_rollout_reproduces_the_analytic_rigid_motion(name, num_lags, lags, frames, head):
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=name, embed_dim=16, num_layers=1,
                                                             num_heads=2, gnn_hidden_dim=16, predict_velocity=head,
                                                             **RIGID),
                              data=dataclasses.replace(cfg.data, context_atoms="all", num_lags=num_lags, rwpe_k=4))
    torch.manual_seed(0)
    model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k).double()
    state, exact = spinning_molecule()
    traj = rollout(model, cfg, [state, state], total_fs=100 * 50.0, step_fs=50.0, dtype=torch.float64, lags=lags,
                   velocity="head" if head else "difference")
    assert traj.positions[0].shape == (100 * len(frames) + 1, len(Z), 3)
    assert np.allclose(traj.times_fs[1 : len(frames) + 1], frames) and traj.times_fs[-1] == pytest.approx(5000.0)
    expected = np.stack([exact(t) for t in traj.times_fs])
    error = np.abs(traj.positions[0] - expected).max()
    assert error < 1e-8, f"{name}: {error:.3g} Å from the analytic rigid motion after 100 steps"
    assert np.array_equal(traj.positions[0], traj.positions[1])  # batched molecules do not mix


def test_rollout_extxyz_reads_back_with_every_atom(tmp_path):
    import ase.io

    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, embed_dim=16, num_layers=1, num_heads=2,
                                                             **RIGID),
                              data=dataclasses.replace(cfg.data, context_atoms="all", num_lags=4, rwpe_k=4))
    model = build_model(cfg.model, num_lags=4, rwpe_dim=4)
    state, _ = spinning_molecule()
    traj = rollout(model, cfg, [state], total_fs=200.0, step_fs=50.0)
    path = write_rollout_extxyz(tmp_path / "spinner.extxyz", traj, 0)
    images = ase.io.read(path, index=":")
    assert len(images) == len(traj.times_fs) and all(list(a.numbers) == list(Z) for a in images)
    assert images[-1].info["time_fs"] == pytest.approx(200.0)


class Exploding(torch.nn.Module):
    """A real model whose prediction for the second molecule of the batch overflows."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x0, v0, z, lags_fs, mask, rwpe=None, paths=None):
        out = self.model(x0, v0, z, lags_fs, mask, rwpe, paths)
        return torch.cat([out[:1], out[1:2] * float("inf"), out[2:]])


def test_a_molecule_that_flies_apart_is_marked_and_the_others_go_on():
    from atomray import structure

    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, embed_dim=16, num_layers=1, num_heads=2,
                                                             **RIGID),
                              data=dataclasses.replace(cfg.data, context_atoms="all", num_lags=8, rwpe_k=4))
    model = Exploding(build_model(cfg.model, num_lags=8, rwpe_dim=4))
    state, exact = spinning_molecule()
    traj = rollout(model, cfg, [state, state], total_fs=200.0, step_fs=50.0)
    assert np.isfinite(traj.positions[0]).all() and np.isnan(traj.positions[1][1:]).all()
    bonds = structure.bonds_from_geometry(Z, state.positions)
    assert structure.stability_coefficient([traj.positions[0], traj.positions[1]], bonds).coefficient == 0.5


def test_fresh_reference_md_from_a_structure_file_perceives_its_bonds(tmp_path):
    import ase.io
    from ase import Atoms

    from atomray.predict import state_from_file, state_from_smiles
    from atomray.rollout_check import fresh_reference

    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, context_atoms="all"))
    start = state_from_smiles("CCO", seed=0)
    ase.io.write(tmp_path / "ethanol.xyz", Atoms(numbers=start.atomic_numbers, positions=start.positions))
    state = state_from_file(tmp_path / "ethanol.xyz", seed=0)
    ref = fresh_reference(state, "", cfg, total_fs=100.0, engine="mmff", every=10)
    assert ref.positions.shape == (11, 9, 3) and ref.dt_fs == 10.0
    assert np.allclose(ref.positions[0], state.positions)  # MD from exactly the start state
    assert np.isfinite(ref.velocities).all() and np.abs(ref.positions[-1] - ref.positions[0]).max() > 1e-3


def momenta(x: np.ndarray, v: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear momentum (3,) and angular momentum about the centre of mass (3,) of one state."""
    m = atomic_masses(z).astype(np.float64)[:, None]
    c = (m * x).sum(0) / m.sum()
    return (m * v).sum(0), (m * np.cross(x - c, v)).sum(0)


def scrambling_model(cfg):
    """A real ATOM with random weights: its predictions change the momenta from step to step."""
    from model.symmetry import randomise_parameters

    return randomise_parameters(build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k).double(),
                                scale=0.5)


def small_cfg(num_lags: int = 8):
    cfg = RunConfig()
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, embed_dim=16, num_layers=1, num_heads=2,
                                                              **RIGID),
                               data=dataclasses.replace(cfg.data, context_atoms="all", num_lags=num_lags, rwpe_k=4))


@pytest.mark.parametrize("thermostat", ["none", "csvr", "langevin"])
def test_momentum_control_keeps_the_starts_linear_and_angular_momentum(thermostat):
    cfg = small_cfg()
    model = scrambling_model(cfg)
    state, _ = spinning_molecule(omega=4e-3)
    p0, l0 = momenta(state.positions, state.velocities, Z)
    free = rollout(model, cfg, [state], total_fs=400.0, step_fs=50.0, dtype=torch.float64)
    p_free, l_free = momenta(free.positions[0][-1], free.step_velocities[0][-1], Z)
    assert np.abs(l_free - l0).max() > 1e-2 * np.abs(l0).max()  # the model alone does not keep them
    ctrl = Control(momentum=True, thermostat=thermostat, temperature_k=300.0, tau_fs=50.0)
    traj = rollout(model, cfg, [state], total_fs=400.0, step_fs=50.0, dtype=torch.float64, control=ctrl)
    for k in range(1, 9):
        x = traj.positions[0][4 * k]  # the frame each step's velocities belong to
        p, ang = momenta(x, traj.step_velocities[0][k], Z)
        assert np.abs(p - p0).max() < 1e-12 and np.abs(ang - l0).max() < 1e-9 * np.abs(l0).max(), (k, p - p0, ang - l0)
    assert len(traj.model_velocities[0]) == 8 and not np.allclose(traj.model_velocities[0], traj.step_velocities[0][1:])


def test_momentum_control_leaves_the_internal_velocities_alone():
    from atomray.priors.rigid import internal_velocity

    cfg = small_cfg()
    state, _ = spinning_molecule(omega=4e-3)
    traj = rollout(scrambling_model(cfg), cfg, [state], total_fs=200.0, step_fs=50.0, dtype=torch.float64,
                   control=Control(momentum=True))
    x = torch.from_numpy(np.stack([traj.positions[0][4 * k] for k in range(1, 5)]))
    mass = torch.from_numpy(atomic_masses(Z).astype(np.float64)).expand(4, -1)
    before = internal_velocity(x, torch.from_numpy(traj.model_velocities[0]), mass)
    after = internal_velocity(x, torch.from_numpy(traj.step_velocities[0][1:]), mass)
    assert torch.allclose(before, after, atol=1e-12)


def test_csvr_samples_the_canonical_kinetic_energy():
    """With c = exp(-Δt/τ), repeated updates of one K converge to the gamma distribution of a
    canonical kinetic energy with f degrees of freedom: mean f k T / 2, variance (k T)² f / 2."""
    rng = np.random.default_rng(0)
    f, kt, n = np.array([12]), 0.5, 40_000
    k, samples = np.array([5.0]), []
    for _ in range(n):
        k = csvr_kinetic_energy(k, 0.5 * f * kt, f, np.exp(-0.5), rng)
        samples.append(k[0])
    samples = np.array(samples[1000:])
    assert samples.mean() == pytest.approx(0.5 * f[0] * kt, rel=0.02)
    assert samples.var() == pytest.approx(kt * kt * f[0] / 2, rel=0.06)


def test_csvr_rollout_holds_the_target_temperature_of_the_internal_motion():
    """Strong coupling (τ = ΔT / 10): whatever the model does to the kinetic energy in a step,
    the next step starts at the target temperature on average. (With τ ≥ ΔT the thermostat only
    partly undoes a model that cools its state, as every step of this random model does.)"""
    from atomray.rollout_check import internal_temperature, step_positions

    cfg = small_cfg()
    state, _ = spinning_molecule(omega=4e-3)
    states = [dataclasses.replace(state, name=f"s{i}") for i in range(4)]
    traj = rollout(scrambling_model(cfg), cfg, states, total_fs=2000.0, step_fs=50.0, dtype=torch.float64,
                   control=Control(momentum=True, thermostat="csvr", temperature_k=500.0, tau_fs=5.0))
    temps = [internal_temperature(step_positions(traj, i)[1:], traj.step_velocities[i][1:], Z) for i in range(4)]
    assert np.mean(temps) == pytest.approx(500.0, rel=0.1)


def test_the_internal_temperature_leaves_out_the_rigid_body_motion():
    """A rigidly spinning, drifting molecule has no internal temperature (its temperature with
    the rotation is not 0); internal velocities added to it give Σ m w² / (f k_B) with f = 3N − 6,
    and f = 3N − 5 for a linear molecule."""
    from atomray import structure
    from atomray.priors.rigid import internal_velocity
    from atomray.rollout_check import internal_temperature

    state, _ = spinning_molecule(omega=4e-3)
    x, v = state.positions, state.velocities
    assert structure.temperature(v, Z)[0] > 50.0 and internal_temperature(x, v, Z)[0] < 1e-9
    for z, pos in [(Z, x), (np.array([8, 6, 8]), np.array([[-1.16, 0.0, 0.0], [0.0, 0.0, 0.0], [1.16, 0.0, 0.0]]))]:
        m = atomic_masses(z).astype(np.float64)
        draw = np.random.default_rng(1).normal(scale=5e-3, size=pos.shape)
        w = internal_velocity(torch.from_numpy(pos[None]), torch.from_numpy(draw[None]), torch.from_numpy(m[None]))[0].numpy()
        f = 3 * len(z) - 5 if len(z) == 3 else 3 * len(z) - 6
        expected = (m[:, None] * w * w).sum() * structure.U_A2_FS2_IN_K / f
        base = v if len(z) == len(Z) else np.zeros_like(pos)
        assert internal_temperature(pos, base + w, z)[0] == pytest.approx(expected, rel=1e-9)


def test_the_verdict_judges_the_internal_temperature_a_thermostat_holds():
    """A fast-spinning start under CSVR at 300 K: the internal motion is held at 300 K and the
    verdict passes it, while the temperature with the start's rotation, which momentum control
    keeps, reads far above 330 K."""
    from atomray.rollout_check import Reference, check_rollouts, holds, step_positions

    cfg = small_cfg()
    state, _ = spinning_molecule(omega=1.5e-2)
    states = [dataclasses.replace(state, name=f"s{i}") for i in range(4)]
    traj = rollout(scrambling_model(cfg), cfg, states, total_fs=2000.0, step_fs=50.0, dtype=torch.float64,
                   control=Control(momentum=True, thermostat="csvr", temperature_k=300.0, tau_fs=5.0))
    ref = Reference("itself", step_positions(traj, 0)[1:], traj.step_velocities[0][1:], 50.0)
    row = check_rollouts(traj, {"spinner": ref}, ["spinner"] * 4)[0]
    assert row["internal_temperature_k"] == pytest.approx(300.0, rel=0.1)
    assert row["temperature_k"] > 1.1 * 300.0
    assert not any("temperature" in miss for miss in holds(row, target_k=300.0)), holds(row, target_k=300.0)
    assert any("temperature" in miss for miss in holds(row, target_k=400.0))


def test_csvr_holds_each_start_at_its_own_temperature():
    """One thermostat temperature per start state (`--thermostat-target reference`): two copies
    of the same molecule held at 200 K and two at 600 K each end up at their own."""
    from atomray.rollout_check import internal_temperature, step_positions

    cfg = small_cfg()
    state, _ = spinning_molecule(omega=4e-3)
    states = [dataclasses.replace(state, name=f"s{i}") for i in range(4)]
    targets = (200.0, 200.0, 600.0, 600.0)
    traj = rollout(scrambling_model(cfg), cfg, states, total_fs=2000.0, step_fs=50.0, dtype=torch.float64,
                   control=Control(momentum=True, thermostat="csvr", temperature_k=targets, tau_fs=5.0))
    for i, target in enumerate(targets):
        t = internal_temperature(step_positions(traj, i)[1:], traj.step_velocities[i][1:], Z)
        assert t.mean() == pytest.approx(target, rel=0.15), (i, t.mean())
    with pytest.raises(DataError, match="one per start state \\(4\\), found 3"):
        rollout(scrambling_model(cfg), cfg, states, total_fs=100.0, step_fs=50.0, dtype=torch.float64,
                control=Control(momentum=True, thermostat="csvr", temperature_k=(300.0,) * 3, tau_fs=5.0))


def test_langevin_and_two_csvr_groups_give_hydrogens_and_heavy_atoms_the_same_temperature():
    """Velocities with hot hydrogens (3 000 K) and cold heavy atoms (30 K), a model that returns
    its input velocities, c = exp(-1) per step: Langevin brings both groups to the target (each
    atom has its own noise and friction), and so does CSVR with the hydrogens and the heavy atoms
    as two coupling groups; both keep the momenta. CSVR with one group, which scales every atom
    by one factor, keeps them apart."""
    from atomray.rollout import _Controller
    from atomray.priors.rigid import internal_velocity

    b, z = 64, np.tile(Z, 4)  # a 32-atom molecule, 64 copies
    rng = np.random.default_rng(1)
    x = np.broadcast_to(rng.normal(scale=2.0, size=(len(z), 3)), (b, len(z), 3)).copy()
    mass = np.broadcast_to(atomic_masses(z).astype(np.float64), (b, len(z))).copy()
    hydrogen = z == 1
    temp0 = np.where(hydrogen, 3000.0, 30.0)
    v0 = rng.standard_normal((b, len(z), 3)) * np.sqrt(temp0 / (1.2027e6 * mass))[..., None]
    for thermostat, groups, apart in (("langevin", "molecule", False), ("csvr", "molecule", True),
                                      ("csvr", "hydrogens", False)):
        control = Control(momentum=True, thermostat=thermostat, temperature_k=300.0, tau_fs=50.0, groups=groups)
        step = _Controller(control, x, v0, mass, 50.0, np.broadcast_to(hydrogen, mass.shape))
        v, temps = v0, []
        for k in range(60):
            v = step(x, v)
            w = internal_velocity(torch.from_numpy(x), torch.from_numpy(v), torch.from_numpy(mass)).numpy()
            if k >= 20:
                per_atom = (mass[..., None] * w * w).sum(-1).mean(0) * 1.2027e6 / 3  # (N,) K
                temps.append([per_atom[hydrogen].mean(), per_atom[~hydrogen].mean()])
            p, ang = momenta(x[0], v[0], z)
            p0, l0 = momenta(x[0], v0[0], z)
            assert np.abs(p - p0).max() < 1e-12 and np.abs(ang - l0).max() < 1e-9
        t_h, t_heavy = np.mean(temps, axis=0)
        if apart:
            assert t_h > 5 * t_heavy, (thermostat, t_h, t_heavy)
        else:
            assert t_h == pytest.approx(300.0, rel=0.1) and t_heavy == pytest.approx(300.0, rel=0.1), (t_h, t_heavy)


def test_only_atom_rolls_out_with_a_number_of_lags_it_did_not_train_with():

    cfg = small_cfg()
    egno = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name="egno"))
    state, _ = spinning_molecule()
    with pytest.raises(DataError, match="egno predicts only the 8 lags"):
        rollout(build_model(egno.model, num_lags=8, rwpe_dim=egno.data.rwpe_k), egno, [state], 100.0, 50.0, lags=5)
    with pytest.raises(DataError, match="lags per step must be >= 1"):
        rollout(scrambling_model(cfg), cfg, [state], 100.0, 50.0, lags=-1)


def test_the_thermostat_needs_momentum_control_and_a_temperature():
    from atomray.data.frames import DataError

    with pytest.raises(DataError, match="needs momentum control"):
        Control(thermostat="csvr")
    with pytest.raises(DataError, match="temperature > 0 K"):
        Control(momentum=True, thermostat="csvr", temperature_k=0.0)
    with pytest.raises(DataError, match="needs momentum control"):
        Control(thermostat="langevin")
    with pytest.raises(DataError, match="'none', 'csvr', 'langevin'"):
        Control(thermostat="berendsen")
    with pytest.raises(DataError, match="are CSVR's; the 'langevin' thermostat has none"):
        Control(momentum=True, thermostat="langevin", groups="hydrogens")
    with pytest.raises(DataError, match="'molecule', 'hydrogens'"):
        Control(momentum=True, thermostat="csvr", groups="atoms")


def test_a_rollout_holds_only_when_every_target_is_met():
    from atomray.rollout_check import holds

    good = {"stability": 1.0, "w1_bond_length_a": 0.008, "w1_bond_angle_deg": 1.5, "w1_dihedral_deg": 9.0,
            "temperature_k": 360.0, "reference_temperature_k": 300.0,  # with the rotation: not judged
            "internal_temperature_k": 310.0, "reference_internal_temperature_k": 300.0}
    assert holds(good) == [] and holds(good, target_k=290.0) == []
    for key, value, named in [("stability", 0.8, "stability"), ("w1_bond_length_a", 0.02, "w1_bond_length_a"),
                              ("w1_bond_angle_deg", 2.5, "w1_bond_angle_deg"), ("w1_dihedral_deg", float("nan"), "dihedral"),
                              ("internal_temperature_k", 340.0, "internal temperature"),
                              ("reference_internal_temperature_k", 350.0, "internal temperature")]:
        misses = holds({**good, key: value})
        assert len(misses) == 1 and named in misses[0], (key, misses)
    assert holds(good, target_k=250.0) == ["internal temperature 310 K vs 250 K"]
    # a reference that differs from itself by more than the target: still a miss, and said so
    noisy = {**good, "w1_dihedral_deg": 25.0, "reference_halves_w1_dihedral_deg": 43.0,
             "reference_halves_w1_bond_length_a": 0.005}
    assert holds(noisy) == ["w1_dihedral_deg 25 > 10 (the reference's halves differ by 43)"]
    assert holds({**noisy, "reference_halves_w1_dihedral_deg": 4.0}) == ["w1_dihedral_deg 25 > 10"]


def test_the_reference_halves_measure_how_much_the_reference_differs_from_itself():
    """Rollouts scored against a reference whose two halves sample different conformers: the
    reference_halves_w1 columns show it; against a reference that repeats itself they are 0."""
    from atomray.rollout import Rollout
    from atomray.rollout_check import Reference, check_rollouts

    state, _ = spinning_molecule()
    x0 = state.positions
    frames = np.stack([x0 + 0.01 * np.sin(0.3 * t) for t in range(40)])
    traj = Rollout(["m"], [Z], np.arange(41) * 10.0, [np.concatenate([x0[None], frames])], 10.0,
                   [np.zeros((41, len(Z), 3))], 1.0, [np.zeros((40, len(Z), 3))])
    same = Reference("repeating", np.concatenate([frames, frames]), np.zeros((80, len(Z), 3)), 10.0)
    row = check_rollouts(traj, {"m": same}, ["m"])[0]
    assert row["reference_halves_w1_bond_length_a"] == 0.0 and row["reference_halves_w1_dihedral_deg"] == 0.0
    c = x0.mean(0)
    stretched = np.concatenate([frames, c + 1.05 * (frames - c)])  # the second half 5 % larger
    row = check_rollouts(traj, {"m": Reference("two halves", stretched, np.zeros((80, len(Z), 3)), 10.0)}, ["m"])[0]
    assert row["reference_halves_w1_bond_length_a"] > 0.03


def test_the_prior_alone_rolled_out_beside_the_model_is_judged_against_the_same_reference():
    """`check_rollouts(floor=)`: the prior's rollouts of the same starts get the same figures,
    `prior_*`, by the same bonds and reference. A floor that is the model's own rollout scores
    the same to the digit; a floor that vibrates like the reference scores closer, and
    `behind_prior` names the figures; a floor that flies apart is less stable."""
    from atomray.rollout import Rollout
    from atomray.rollout_check import Reference, behind_prior, check_rollouts

    state, _ = spinning_molecule()
    x0 = state.positions
    wide = np.stack([x0 * (1 + 0.03 * np.sin(0.3 * t)) for t in range(40)])  # the model: too wide a breathing
    near = np.stack([x0 * (1 + 0.01 * np.sin(0.3 * t)) for t in range(40)])  # the reference's own breathing

    def traj(frames):
        return Rollout(["m"], [Z], np.arange(41) * 10.0, [np.concatenate([x0[None], frames])], 10.0,
                       [np.zeros((41, len(Z), 3))], 1.0, [np.zeros((40, len(Z), 3))])

    ref = {"m": Reference("breathing", np.concatenate([near, near]), np.zeros((80, len(Z), 3)), 10.0)}
    assert "prior_stability" not in check_rollouts(traj(wide), ref, ["m"])[0]  # no floor, no columns
    row = check_rollouts(traj(wide), ref, ["m"], floor=traj(wide))[0]
    for key in ("stability", "w1_bond_length_a", "w1_bond_angle_deg", "w1_dihedral_deg"):
        assert row[f"prior_{key}"] == row[key], key
    assert behind_prior(row) == ["bonds", "angles", "dihedrals"]  # as close: the model adds nothing
    row = check_rollouts(traj(wide), ref, ["m"], floor=traj(near))[0]
    assert row["prior_w1_bond_length_a"] < 0.2 * row["w1_bond_length_a"] and "bonds" in behind_prior(row)
    assert list(row)[-1] == "reference"  # the columns before it are the figures
    row = check_rollouts(traj(near), ref, ["m"], floor=traj(wide))[0]
    assert behind_prior(row) == []  # the model is closer in every figure and as stable
    apart = wide.copy()
    apart[20:, 0] += 5.0  # the floor's first atom leaves at step 20
    row = check_rollouts(traj(near), ref, ["m"], floor=traj(apart))[0]
    assert row["prior_stability"] < row["stability"] == 1.0 and behind_prior(row) == []


def test_behind_prior_names_each_figure_the_prior_alone_does_as_well_or_better():
    from atomray.rollout_check import behind_prior

    model = {"stability": 1.0, "w1_bond_length_a": 0.004, "w1_bond_angle_deg": 0.8, "w1_dihedral_deg": 2.6}
    better = {"prior_stability": 1.0, "prior_w1_bond_length_a": 0.005, "prior_w1_bond_angle_deg": 0.9,
              "prior_w1_dihedral_deg": 3.0}
    assert behind_prior({**model, **better}) == []
    assert behind_prior({**model, **better, "prior_w1_bond_angle_deg": 0.5}) == ["angles"]
    assert behind_prior({**model, **better, "prior_w1_dihedral_deg": 2.6}) == ["dihedrals"]  # a tie adds nothing
    assert behind_prior({**model, "stability": 0.8, **better}) == ["stability"]
    nan = float("nan")  # every model rollout flew apart: the prior's finite figures are the closer
    assert behind_prior({**model, "stability": 0.0, "w1_bond_length_a": nan, **better}) == ["stability", "bonds"]
    assert behind_prior({**model, **better, "prior_w1_dihedral_deg": nan}) == []  # nor the other way


def test_the_verdict_against_the_prior_agrees_with_the_figures():
    """`prior_verdict`: no defect only where the model is closer in every figure on every
    molecule; otherwise each molecule and figure with both values, and the reference's halves
    where the two differ by less than the reference differs from itself."""
    from atomray.rollout_check import prior_verdict

    ahead = {"molecule": "phenol", "stability": 1.0, "w1_bond_length_a": 0.0033, "w1_bond_angle_deg": 0.5,
             "w1_dihedral_deg": 1.0, "prior_stability": 1.0, "prior_w1_bond_length_a": 0.0061,
             "prior_w1_bond_angle_deg": 0.57, "prior_w1_dihedral_deg": 1.3, "reference_halves_w1_dihedral_deg": 0.2}
    assert prior_verdict([ahead], "atom") == ("verdict against the prior alone: atom is closer in bonds, angles and "
                                              "dihedrals and no less stable on every molecule")
    behind = {**ahead, "molecule": "nma", "w1_dihedral_deg": 4.5, "prior_w1_dihedral_deg": 3.8,
              "reference_halves_w1_dihedral_deg": 9.4}
    assert prior_verdict([ahead, behind], "atom") == (
        "verdict against the prior alone: a defect: the prior alone is as close or closer on nma "
        "(dihedrals 4.5 vs 3.8, the reference's halves differ by 9.4)")
    far = {**behind, "reference_halves_w1_dihedral_deg": 0.3, "w1_bond_angle_deg": 0.8}
    assert prior_verdict([far]).endswith("nma (angles 0.8 vs 0.57; dihedrals 4.5 vs 3.8)")


def test_rotamer_transitions_per_100_ps_of_rollouts_and_reference_and_not_at_the_join_of_two_runs():
    """Butane rolled out anti → gauche+ in 40 steps of 10 fs: one transition in 400 fs, 250 per
    100 ps. Its reference, two runs joined (one all anti, one all gauche+, read every 5 fs):
    none, though the join is a change of rotamer; the same frames as one run: one."""
    from atomray.rollout import Rollout
    from atomray.rollout_check import Reference, check_rollouts

    from test_structure import butane_turned_to

    z, frames, _ = butane_turned_to(list(np.linspace(180, 60, 41)))
    traj = Rollout(["m"], [z], np.arange(41) * 10.0, [frames], 10.0, [np.zeros((41, 14, 3))], 1.0,
                   [np.zeros((40, 14, 3))])
    _, anti, _ = butane_turned_to([180.0] * 40)
    _, gauche, _ = butane_turned_to([60.0] * 40)
    joined = np.concatenate([anti, gauche])
    two_runs = Reference("two runs", joined, np.zeros_like(joined), 5.0, (0, 40))
    row = check_rollouts(traj, {"m": two_runs}, ["m"])[0]
    assert row["rotamer_transitions_per_100ps"] == pytest.approx(250.0)
    assert row["reference_rotamer_transitions_per_100ps"] == 0.0
    one_run = Reference("one run", joined, np.zeros_like(joined), 5.0)
    row = check_rollouts(traj, {"m": one_run}, ["m"])[0]
    assert row["reference_rotamer_transitions_per_100ps"] == pytest.approx(1e5 / (39 * 10.0))  # read every 10 fs


def test_each_broken_rollout_names_when_it_broke_and_which_two_atoms():
    """`rollout_failures`: a water molecule held still holds; one whose first O–H bond is pulled
    from 0.96 to 1.60 Å at frame 4 breaks there, named O0-H1 with both distances; one that turns
    to NaN at frame 3 breaks there as non_finite, with no atoms to name."""
    from atomray.rollout import Rollout
    from atomray.rollout_check import describe_failures, rollout_failures

    z = np.array([8, 1, 1])
    x0 = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    still = np.repeat(x0[None], 9, 0)
    pulled = still.copy()
    pulled[4:, 1, 0] = 1.60
    gone = still.copy()
    gone[3:] = np.nan
    times = np.arange(9) * 50.0
    traj = Rollout(["w@0", "w@1", "w@2"], [z] * 3, times, [still, pulled, gone], 50.0)
    rows = rollout_failures(traj, ["w"] * 3)
    assert [r["stable"] for r in rows] == [True, False, False]
    assert rows[1]["first_failure_ps"] == pytest.approx(0.2) and rows[1]["kind"] == "bond_stretched"
    assert rows[1]["atoms"] == "O0-H1"
    assert rows[1]["distance_a"] == pytest.approx(1.60) and rows[1]["start_distance_a"] == pytest.approx(0.96)
    assert rows[2]["first_failure_ps"] == pytest.approx(0.15) and rows[2]["kind"] == "non_finite"
    assert rows[2]["atoms"] == ""
    lines = describe_failures(rows)
    assert len(lines) == 2 and "w@1 breaks at 0.20 ps: bond_stretched O0-H1, 1.60 Å (0.96 Å at the start)" == lines[0]


def test_energy_drift_is_flat_for_nve_md_and_positive_for_a_heating_trajectory():
    from atomray.predict import state_from_smiles
    from atomray.rollout import Rollout
    from atomray.rollout_check import energy_drift, fresh_reference, molecule_of_state

    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, context_atoms="all"))
    start = state_from_smiles("CCO", seed=0)
    ref = fresh_reference(start, "CCO", cfg, total_fs=200.0, engine="mmff", dt_fs=0.5, every=10)
    heat = np.linspace(1.0, 1.5, len(ref.velocities))[:, None, None]
    z, times = start.atomic_numbers, np.arange(len(ref.positions)) * ref.dt_fs
    traj = Rollout(["nve", "heating"], [z, z], times, [ref.positions, ref.positions], ref.dt_fs,
                   [ref.velocities, ref.velocities * heat])
    drift = energy_drift(traj, [0, 1], molecule_of_state(start, "CCO"), engine="mmff")
    assert drift.calls == 2 * len(times) and len(drift.energies[0]) == len(times)
    kinetic = drift.energies[1][-1] - drift.energies[0][-1]  # the extra kinetic energy at the end, eV
    assert abs(drift.drift_ev_per_ps[0]) < 0.02 * kinetic / 0.2  # NVE: flat against the heating's slope
    assert drift.drift_ev_per_ps[1] > 0.5 * kinetic / 0.2


@pytest.mark.parametrize("smiles", ["CCCCCC", "CC(O)=CC(C)=O"])
def test_an_equilibrated_fresh_reference_runs_near_the_target_temperature(smiles):
    """From a relaxed structure with velocities drawn at T, NVE MD equilibrates near T/2; after
    the builder's Langevin equilibration it runs near T (one canonical sample: ±25 %)."""
    from atomray import structure
    from atomray.predict import state_from_smiles
    from atomray.rollout_check import fresh_md, states_from_md

    start = state_from_smiles(smiles, 300.0, seed=0)
    cold = fresh_md(start, smiles, 2000.0, "mmff", equilibrate_fs=0.0, temperature_k=300.0)
    warm = fresh_md(start, smiles, 2000.0, "mmff", equilibrate_fs=1000.0, temperature_k=300.0)
    assert structure.temperature(cold.velocities, start.atomic_numbers).mean() < 0.6 * 300.0
    assert structure.temperature(warm.velocities, start.atomic_numbers).mean() == pytest.approx(300.0, rel=0.25)
    assert np.array_equal(cold.positions[0], start.positions)  # without equilibration: exactly the start
    starts = states_from_md(warm, start.atomic_numbers, "smiles", 4)
    assert [s.name for s in starts] == ["smiles@0fs", "smiles@500fs", "smiles@1000fs", "smiles@1500fs"]
    assert np.array_equal(starts[1].positions, warm.positions[50])


def test_the_lowest_conformer_start_is_the_enols_s_cis_minimum_of_the_same_stereoisomer():
    """Acetylacetone's enol from SMILES: the first embedding is s-trans about C3–C4 (the
    C1–C3–C4–O6 dihedral ~150°); of ten embeddings the lowest GFN2-xTB minimum is s-cis, kcal/mol
    lower, and keeps the first embedding's E double bond (the lowest of all ten, the other
    stereoisomer's H-bonded Z-enol, is a different molecule)."""
    from atomray.predict import state_from_smiles
    from atomray.priors.minima import gfn2_minimum
    from atomray.tg80.engines import TBLiteEngine, molecule_with_hydrogens

    def dihedral(x, a, b, c, d):
        b0, b1, b2 = x[a] - x[b], x[c] - x[b], x[d] - x[c]
        b1 = b1 / np.linalg.norm(b1)
        v, w = b0 - (b0 @ b1) * b1, b2 - (b2 @ b1) * b1
        return abs(float(np.degrees(np.arctan2(np.cross(b1, v) @ w, v @ w))))

    first = state_from_smiles("CC(O)=CC(C)=O", 300.0, seed=0)
    lowest = state_from_smiles("CC(O)=CC(C)=O", 300.0, seed=0, conformers=10)
    assert dihedral(first.positions, 1, 3, 4, 6) > 120 and dihedral(lowest.positions, 1, 3, 4, 6) < 30
    assert dihedral(first.positions, 0, 1, 3, 4) < 30 and dihedral(lowest.positions, 0, 1, 3, 4) < 30  # both E
    engine = TBLiteEngine(molecule_with_hydrogens("CC(O)=CC(C)=O", "test"), "GFN2-xTB", "test")
    gap_ev = engine.forces(gfn2_minimum(first.positions, first.atomic_numbers))[0] - engine.forces(lowest.positions)[0]
    assert gap_ev > 0.05  # > 1.2 kcal/mol
    np.testing.assert_array_equal(lowest.velocities, first.velocities)  # the seed's draw


def test_an_nvt_reference_holds_the_temperature_an_nve_reference_drifts_from(tmp_path):
    """From a relaxed structure with velocities drawn at 300 K, NVE MD runs near 150 K (half the
    kinetic energy goes into the potential); NVT MD (`ensemble="nvt"`, Langevin) returns to 300 K
    within a few hundred fs. Both are cached apart, and NVE under the key it always had."""
    from atomray.predict import state_from_smiles
    from atomray.rollout_check import _cached_reference_path, fresh_md, internal_temperature

    start = state_from_smiles("CCCCCC", 300.0, seed=0)
    z = start.atomic_numbers
    nve = fresh_md(start, "CCCCCC", 3000.0, "mmff", cache_dir=tmp_path)
    nvt = fresh_md(start, "CCCCCC", 3000.0, "mmff", cache_dir=tmp_path, ensemble="nvt")
    half = len(nvt.positions) // 2
    assert internal_temperature(nve.positions, nve.velocities, z).mean() < 0.6 * 300.0
    assert internal_temperature(nvt.positions[half:], nvt.velocities[half:], z).mean() == pytest.approx(300.0, rel=0.15)
    assert "NVT (300 K, Langevin" in nvt.source and "NVE" in nve.source
    old_key = _cached_reference_path(tmp_path, start, smiles="CCCCCC", engine="mmff", total_fs=3000.0, dt_fs=1.0,
                                     every=10, equilibrate_fs=0.0, temperature_k=300.0)
    assert old_key.exists() and len(list(tmp_path.glob("reference-*.npz"))) == 2
    with pytest.raises(ValueError, match="'nve' or 'nvt', found 'npt'"):
        fresh_md(start, "CCCCCC", 100.0, "mmff", ensemble="npt")


def test_a_cached_fresh_reference_is_read_back_instead_of_rerun(tmp_path, monkeypatch):
    """`cache_dir`: the first call runs the MD and keeps it; a second call with the same inputs
    returns the same frames without running MD; other inputs (length, start) run afresh."""
    import atomray.tg80.dynamics as dynamics
    from atomray.predict import state_from_smiles
    from atomray.rollout_check import fresh_md

    start = state_from_smiles("CCO", 300.0, seed=0)
    first = fresh_md(start, "CCO", 200.0, "mmff", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("reference-*.npz"))) == 1 and not list(tmp_path.glob("*.tmp"))
    ran = []
    real = dynamics.run_steps
    monkeypatch.setattr(dynamics, "run_steps", lambda *a, **k: ran.append(1) or real(*a, **k))
    again = fresh_md(start, "CCO", 200.0, "mmff", cache_dir=tmp_path)
    assert not ran and again.source == first.source and again.dt_fs == first.dt_fs
    assert np.array_equal(again.positions, first.positions) and np.array_equal(again.velocities, first.velocities)
    fresh_md(start, "CCO", 300.0, "mmff", cache_dir=tmp_path)
    fresh_md(state_from_smiles("CCO", 300.0, seed=1), "CCO", 200.0, "mmff", cache_dir=tmp_path)
    assert len(ran) == 2 and len(list(tmp_path.glob("reference-*.npz"))) == 3


def test_pooled_reference_joins_independent_runs_and_keeps_seed_zeros_cache_key(tmp_path):
    """`pooled_md` joins `runs` runs of the same length, seed 0 first and identical to `fresh_md`'s
    own run (cached under the key it had before seeds existed), the others equilibrated from their
    own seeds and so apart from it; without an equilibration there is nothing to set them apart."""
    from atomray.predict import state_from_smiles
    from atomray.rollout_check import fresh_md, pooled_md

    start = state_from_smiles("CCO", 300.0, seed=0)
    kw = dict(equilibrate_fs=50.0, temperature_k=300.0, ensemble="nvt")
    alone = fresh_md(start, "CCO", 200.0, "mmff", cache_dir=tmp_path, **kw)
    pooled = pooled_md(start, "CCO", 200.0, 3, "mmff", cache_dir=tmp_path, **kw)
    n = len(alone.positions)
    assert pooled.positions.shape == (3 * n, *alone.positions.shape[1:]) and pooled.dt_fs == alone.dt_fs
    assert np.array_equal(pooled.positions[:n], alone.positions)
    assert np.array_equal(pooled.velocities[:n], alone.velocities)
    for k in (1, 2):  # another seed: another run, already apart at its first frame
        assert np.abs(pooled.positions[k * n] - alone.positions[0]).max() > 1e-3
    assert not np.allclose(pooled.positions[n:2 * n], pooled.positions[2 * n:])
    assert len(list(tmp_path.glob("reference-*.npz"))) == 3 and "seeds 1-2" in pooled.source
    assert pooled_md(start, "CCO", 200.0, 1, "mmff", cache_dir=tmp_path, **kw).source == alone.source
    with pytest.raises(ValueError, match="equilibrat"):
        pooled_md(start, "CCO", 200.0, 2, "mmff", ensemble="nvt")
    with pytest.raises(ValueError, match="runs must be >= 1"):
        pooled_md(start, "CCO", 200.0, 0, "mmff", **kw)
    assert pooled.run_starts == (0, n, 2 * n)
    assert [len(r) for r in pooled.runs()] == [n, n, n]


def test_reference_runs_in_parallel_workers_are_the_serial_runs(tmp_path, capsys):
    """Three runs in two spawned processes (the progress bar says so): the same frames as one
    after another, in seed order, each run cached by its worker; workers < 1 is refused."""
    from atomray.predict import state_from_smiles
    from atomray.rollout_check import pooled_md

    start = state_from_smiles("CCO", 300.0, seed=0)
    kw = dict(equilibrate_fs=50.0, temperature_k=300.0, ensemble="nvt")
    serial = pooled_md(start, "CCO", 200.0, 3, "mmff", **kw)
    capsys.readouterr()
    parallel = pooled_md(start, "CCO", 200.0, 3, "mmff", workers=2, cache_dir=tmp_path, progress=True, **kw)
    assert "2 runs at once" in capsys.readouterr().err
    assert np.array_equal(parallel.positions, serial.positions)
    assert np.array_equal(parallel.velocities, serial.velocities)
    assert parallel.run_starts == serial.run_starts and parallel.source == serial.source
    assert len(list(tmp_path.glob("reference-*.npz"))) == 3
    again = pooled_md(start, "CCO", 200.0, 3, "mmff", workers=2, cache_dir=tmp_path, progress=True, **kw)
    assert np.array_equal(again.positions, serial.positions)
    assert "runs at once" not in capsys.readouterr().err  # every run cached: read here, no process started
    with pytest.raises(ValueError, match="workers must be >= 1"):
        pooled_md(start, "CCO", 200.0, 3, "mmff", workers=0, **kw)


def test_a_velocity_head_is_used_when_present_and_asked_for_only_then():
    cfg = RunConfig()
    small = dict(embed_dim=16, num_layers=1, num_heads=2, **RIGID)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, context_atoms="all", num_lags=4, rwpe_k=4))
    state, _ = spinning_molecule()
    plain = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **small))
    model = build_model(plain.model, num_lags=4, rwpe_dim=4)
    with pytest.raises(DataError, match="predict_velocity"):
        rollout(model, plain, [state], total_fs=100.0, step_fs=50.0, velocity="head")
    with pytest.raises(DataError, match="velocity must be"):
        rollout(model, plain, [state], total_fs=100.0, step_fs=50.0, velocity="fd")
    headed = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, predict_velocity=True, **small))
    model = build_model(headed.model, num_lags=4, rwpe_dim=4)
    with torch.no_grad():  # an internal velocity the rigid prior does not have
        for prm in model.velocity_head.parameters():
            prm.normal_(0.0, 0.5)
    auto = rollout(model, headed, [state], total_fs=100.0, step_fs=50.0)
    diff = rollout(model, headed, [state], total_fs=100.0, step_fs=50.0, velocity="difference")
    assert len(auto.times_fs) == 9 and len(diff.times_fs) == 9  # 4 recorded frames per step either way
    head = rollout(model, headed, [state], total_fs=100.0, step_fs=50.0, velocity="head")
    assert np.array_equal(auto.step_velocities[0], head.step_velocities[0])
    assert np.abs(auto.step_velocities[0][1] - diff.step_velocities[0][1]).max() > 1e-4  # the head's velocity


def assert_rigid_displacement(x: np.ndarray, dx: np.ndarray, atoms: np.ndarray) -> None:
    """The displacements dx (N, 3) of `atoms` of positions x are one rigid motion u + ω × x
    (solved by least squares; ω × r = -[r]× ω)."""
    xs = x[atoms]
    skew = np.zeros((len(atoms), 3, 3))
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = xs[:, 2], -xs[:, 1], xs[:, 0]
    skew = skew - skew.transpose(0, 2, 1)
    design = np.concatenate([np.broadcast_to(np.eye(3), (len(atoms), 3, 3)), skew], 2).reshape(-1, 6)
    fit, *_ = np.linalg.lstsq(design, dx[atoms].ravel(), rcond=None)
    assert np.abs(design @ fit - dx[atoms].ravel()).max() < 1e-12


def test_position_noise_has_its_width_and_no_rigid_body_part():
    """Position noise on the heavy atoms alone: the heavy atoms move by the asked width per axis,
    the hydrogens only by the rigid-body motion removed from the draw (δx = u + ω × x, no
    internal part), and the centre of mass and the mass-weighted angular displacement
    Σ m (x − c) × δx stay zero (the noise adds no net translation or rotation)."""
    from atomray.rollout import _Controller

    b, z = 256, np.tile(Z, 2)
    rng = np.random.default_rng(2)
    x = np.broadcast_to(rng.normal(scale=2.0, size=(len(z), 3)), (b, len(z), 3)).copy()
    mass = np.broadcast_to(atomic_masses(z).astype(np.float64), (b, len(z))).copy()
    hydrogen = np.broadcast_to(z == 1, mass.shape)
    control = Control(momentum=True, position_noise_a=(0.01, 0.0))
    moved = _Controller(control, x, np.zeros_like(x), mass, 50.0, hydrogen).displace(x, hydrogen)
    dx = moved - x
    for i in range(4):  # the hydrogens move only by the rigid-body part taken out of the draw
        assert_rigid_displacement(x[i], dx[i], np.flatnonzero(z == 1))
    heavy = dx[~hydrogen]  # (b · n_heavy, 3)
    assert heavy.std() == pytest.approx(0.01, rel=0.15)  # the rigid-body part removed takes 6 of 3n dof
    m = mass[..., None]
    com = (m * x).sum(1) / m.sum(1)
    assert np.abs((m * dx).sum(1)).max() < 1e-12
    assert np.abs((m * np.cross(x - com[:, None], dx)).sum(1)).max() < 1e-12


def test_hydrogen_noise_across_bonds_moves_the_bends_and_not_the_bond_lengths():
    """`hydrogen_noise_axes="across"`: noise on the hydrogens alone changes each X–H length only
    to second order (|δ|²/2L), where noise on every axis changes it by about the width, while the
    X–X–H angles move as much either way (two of a hydrogen's three axes are across)."""
    from atomray import structure
    from atomray.predict import state_from_smiles
    from atomray.rollout import _Controller

    state = state_from_smiles("CC(=O)Nc1ccc(O)cc1", 300.0, seed=0)
    z, b = state.atomic_numbers, 128
    x = np.broadcast_to(state.positions, (b, len(z), 3)).copy()
    mass = np.broadcast_to(atomic_masses(z).astype(np.float64), (b, len(z))).copy()
    hydrogen = np.broadcast_to(z == 1, mass.shape)
    top = structure.bonds_from_geometry(z, state.positions)
    xh = np.array([min(z[i], z[j]) == 1 for i, j in top.bonds])
    bends = np.array([min(z[i], z[k]) == 1 for i, _, k in top.angles])
    moved = {}
    for axes in ("all", "across"):
        control = Control(momentum=True, position_noise_a=(0.0, 0.02), hydrogen_noise_axes=axes)
        y = _Controller(control, x, np.zeros_like(x), mass, 50.0, hydrogen).displace(x, hydrogen)
        moved[axes] = (np.abs(structure.bond_lengths(y, top) - structure.bond_lengths(x, top))[:, xh].mean(),
                       np.abs(structure.bond_angles(y, top) - structure.bond_angles(x, top))[:, bends].mean())
    assert moved["all"][0] > 0.01 and moved["across"][0] < 0.05 * moved["all"][0], moved
    assert moved["across"][1] == pytest.approx(moved["all"][1], rel=0.2), moved
    with pytest.raises(DataError, match="'all', 'across'"):
        Control(momentum=True, position_noise_a=(0.0, 0.01), hydrogen_noise_axes="along")


def test_group_hydrogens_get_no_noise_when_asked_and_lone_hydrogens_keep_theirs():
    """`group_hydrogen_noise=False`: the hydrogens of N-methylacetamide's two methyls are the
    group hydrogens (its N–H, a lone hydrogen, is not), and noise on the hydrogens then moves
    them only by the rigid-body part taken out of the draw (δx = u + ω × x, no internal part),
    while the N–H moves by the asked width."""
    from atomray.predict import state_from_smiles
    from atomray.rollout import _Controller, group_hydrogens

    state = state_from_smiles("CC(=O)NC", 300.0, seed=0)
    z, b = state.atomic_numbers, 64
    x = np.broadcast_to(state.positions, (b, len(z), 3)).copy()
    quiet = group_hydrogens(x, [z] * b)
    nh = [i for i in np.flatnonzero(z == 1) if z[np.argsort(np.linalg.norm(state.positions - state.positions[i],
                                                                           axis=1))[1]] == 7]
    assert quiet[0].sum() == 6 and len(nh) == 1 and not quiet[0, nh[0]] and (quiet[0] <= (z == 1)).all()
    phenol = state_from_smiles("Oc1ccccc1", 300.0, seed=0)
    assert not group_hydrogens(phenol.positions[None], [phenol.atomic_numbers]).any()  # a lone O–H
    mass = np.broadcast_to(atomic_masses(z).astype(np.float64), (b, len(z))).copy()
    hydrogen = np.broadcast_to(z == 1, mass.shape)
    control = Control(momentum=True, position_noise_a=(0.0, 0.02), group_hydrogen_noise=False)
    dx = _Controller(control, x, np.zeros_like(x), mass, 50.0, hydrogen).displace(x, hydrogen, quiet) - x
    for i in range(4):
        assert_rigid_displacement(x[i], dx[i], np.flatnonzero(quiet[0] | (z > 1)))
    assert dx[:, nh[0]].std() == pytest.approx(0.02, rel=0.3)


def test_too_few_lags_for_the_difference_velocities_is_a_clear_error():
    state, _ = spinning_molecule()
    cfg = small_cfg()
    with pytest.raises(DataError, match=r"need >= 4 lags per step, found 3"):
        rollout(scrambling_model(cfg), cfg, [state], total_fs=100.0, step_fs=50.0, lags=3, dtype=torch.float64)


def test_position_noise_needs_momentum_control_and_widths_of_zero_or_more():
    with pytest.raises(DataError, match="needs momentum control"):
        Control(position_noise_a=(0.005, 0.0))
    with pytest.raises(DataError, match="two widths >= 0"):
        Control(momentum=True, position_noise_a=(-0.005, 0.0))


def test_rotor_radii_keep_terminal_hydrogens_on_their_minimums_circles_and_need_momentum_control(tmp_path,
                                                                                                   monkeypatch):
    """`Control(rotor_radii=True)`: a random network moves ethanol's methyl and hydroxyl
    hydrogens off their circles; with the control, after every step each of them sits at its
    basin minimum's distance from its group's axis, and with `rotor_heights` at its height along
    it too, and the start's momenta are kept (the velocities' turn onto the circles is
    `onto_circles`', tested with `rotor_circles`)."""
    from atomray.priors import minima, store
    from atomray.priors.modes import rotor_groups
    from atomray.rollout import start_circles, state_from_dataset

    with pytest.raises(DataError, match="need momentum control"):
        Control(rotor_radii=True)
    with pytest.raises(DataError, match="need rotor_radii"):
        Control(momentum=True, rotor_heights=True)
    monkeypatch.setenv(store.ENV, str(tmp_path / "store"))
    monkeypatch.setattr(minima, "_MACHINE", {})
    state = state_from_dataset("data/tg80-mini", "ethanol", 300)
    z = state.atomic_numbers
    groups, radii, heights = start_circles(state.positions, z, minima.molecule_bonds(state.positions, z))
    assert [len(h) for _, _, h in groups] == [len(h) for _, _, h in rotor_groups(z, minima.molecule_bonds(
        state.positions, z))] and sorted(len(h) for _, _, h in groups) == [1, 3]
    cfg = small_cfg()
    model = scrambling_model(cfg)
    off = {}
    for radii_on, heights_on in ((False, False), (True, False), (True, True), (True, "feedback")):
        control = (Control(momentum=True, rotor_radii=True, height_feedback_fs=100.0) if heights_on == "feedback"
                   else Control(momentum=True, rotor_radii=radii_on, rotor_heights=heights_on))
        traj = rollout(model, cfg, [state], total_fs=200.0, step_fs=50.0, dtype=torch.float64, lags=5,
                       control=control)
        x = traj.positions[0][1:]  # after each of the 4 steps
        worst = [0.0, 0.0]
        for (y, c, hs), r, height in zip(groups, radii, heights):
            axis = (x[:, c] - x[:, y]) / np.linalg.norm(x[:, c] - x[:, y], axis=-1, keepdims=True)
            h = x[:, hs] - x[:, c, None]
            along = (h * axis[:, None]).sum(-1)
            radial = h - along[..., None] * axis[:, None]
            worst[0] = max(worst[0], float(np.abs(np.linalg.norm(radial, axis=-1) - r[:, 0]).max()))
            worst[1] = max(worst[1], float(np.abs(along - height[:, 0]).max()))
        off[radii_on, heights_on] = worst
        p, ang = momenta(traj.positions[0][-1], traj.step_velocities[0][-1], z)
        p0, ang0 = momenta(state.positions, state.velocities, z)
        np.testing.assert_allclose(p, p0, atol=1e-9)
        np.testing.assert_allclose(ang, ang0, atol=1e-8)
    assert off[False, False][0] > 0.02 and off[False, False][1] > 0.02, off
    assert off[True, False][0] < 1e-9 and off[True, False][1] > 0.02, off
    assert off[True, True][0] < 1e-9 and off[True, True][1] < 1e-9, off
    assert off[True, "feedback"][0] < 1e-9 and off[True, "feedback"][1] > 0.02, off  # the mean steered, not each


def test_height_feedback_steers_a_groups_mean_height_and_keeps_its_spread():
    """`steer_heights` (`Control(height_feedback_fs=...)`): under a map that pulls a methyl's
    hydrogens towards a height 0.05 Å below their minimum's, with noise, the steered group's
    long-run mean height is the minimum's and each hydrogen's spread about it is the map's
    (unsteered, the mean stays 0.05 Å low; `rotor_heights` would zero the spread)."""
    from atomray.priors.modes import steer_heights

    groups, target, r = [(0, 1, [2, 3, 4])], 0.37, 1.02
    p = np.zeros((1, 5, 3))
    p[0, 1, 2] = 1.5
    for k, phi in enumerate(np.radians([0.0, 120.0, 240.0])):
        p[0, 2 + k] = [r * np.cos(phi), r * np.sin(phi), 1.5 + target]
    heights = [np.full((1, 3, 1), target)]
    rng = np.random.default_rng(0)
    seen = {}
    for steered in (False, True):
        x, lift, h = p.copy(), np.zeros((1, 5)), []
        for _ in range(4000):
            now = x[0, 2:, 2] - 1.5
            x[0, 2:, 2] = 1.5 + (target - 0.05) + 0.8 * (now - (target - 0.05)) + 0.03 * rng.standard_normal(3)
            if steered:
                x, lift = steer_heights(x, groups, heights, lift, 50.0 / 1000.0)
            h.append(x[0, 2:, 2] - 1.5)
        h = np.asarray(h[1000:])
        seen[steered] = (h.mean(), h.std())
    assert abs(seen[False][0] - (target - 0.05)) < 0.005, seen
    assert abs(seen[True][0] - target) < 0.005, seen
    assert seen[True][1] > 0.9 * seen[False][1], seen


def test_height_feedback_needs_rotor_radii_and_excludes_rotor_heights():
    with pytest.raises(DataError, match="needs rotor_radii"):
        Control(momentum=True, height_feedback_fs=1000.0)
    with pytest.raises(DataError, match="choose one"):
        Control(momentum=True, rotor_radii=True, rotor_heights=True, height_feedback_fs=1000.0)
    with pytest.raises(DataError, match=">= 0 fs"):
        Control(momentum=True, rotor_radii=True, height_feedback_fs=-1.0)


def test_prior_only_loads_the_checkpoints_architecture_with_a_zero_correction(tmp_path):
    """`tracking.load_model_uri(..., prior_only=True)` (`jobs/rollout.py --prior-only`): the saved
    network (random weights) moves a spinning rigid molecule off its exact motion; the same
    checkpoint loaded prior-only rolls it out on the rigid prior's analytic motion."""
    from atomray import tracking
    from atomray.checkpoint import TrainState, save_checkpoint

    cfg = small_cfg()
    path = save_checkpoint(tmp_path / "ckpt", scrambling_model(cfg).float(), cfg, TrainState(elements=[1, 6, 7, 8]))
    state, exact = spinning_molecule()
    for prior_only, close in ((False, False), (True, True)):
        model, loaded, _ = tracking.load_model_uri("", str(path), prior_only=prior_only)
        traj = rollout(model.double(), loaded, [state], total_fs=200.0, step_fs=50.0, dtype=torch.float64)
        error = np.abs(traj.positions[0][-1] - exact(200.0)).max()
        assert (error < 1e-6) == close, (prior_only, error)


@pytest.mark.parametrize("name", ["atom", "egnn_r", "egnn_s", "egno"])
def test_the_floor_of_every_model_with_a_prior_is_its_prior_alone(name):
    """`checkpoint.prior_model` (the floor `jobs/rollout.py` rolls out beside a model): ATOM's
    zero output projections and the EGNN family's α = 0 leave the rigid prior's analytic motion
    of a spinning molecule untouched, whatever the untrained network computes."""
    from atomray.checkpoint import prior_model

    cfg = small_cfg()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=name, gnn_hidden_dim=16))
    state, exact = spinning_molecule()
    torch.manual_seed(0)
    traj = rollout(prior_model(cfg).double(), cfg, [state], total_fs=200.0, step_fs=50.0, dtype=torch.float64)
    assert np.abs(traj.positions[0][-1] - exact(200.0)).max() < 1e-6, name


def test_a_checkpoint_saved_with_rotor_circles_rolls_out_on_its_circles(tmp_path, monkeypatch):
    """`model.rotor_circles` travels with the checkpoint: loaded back, a rollout step's prior
    paths (`predict.state_windows`, a new ethanol state's basin from an empty machine store) turn
    the methyl and hydroxyl hydrogens on circles, so they differ from those of the same checkpoint
    saved without it, and the heavy atoms' do not."""
    from atomray import tracking
    from atomray.checkpoint import TrainState, save_checkpoint
    from atomray.predict import state_windows
    from atomray.priors import minima, store
    from atomray.rollout import state_from_dataset

    monkeypatch.setenv(store.ENV, str(tmp_path / "store"))
    monkeypatch.setattr(minima, "_MACHINE", {})
    state = state_from_dataset("data/tg80-mini", "ethanol", 200)
    heavy = state.atomic_numbers > 1
    paths = {}
    for circles in (False, True):
        cfg = RunConfig()
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, embed_dim=16, num_layers=1, num_heads=2,
                                                                  rotor_circles=circles))
        model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k)
        path = save_checkpoint(tmp_path / f"ckpt-{circles}", model, cfg, TrainState(elements=[1, 6, 8]))
        _, loaded, _ = tracking.load_model_uri("", str(path))
        assert loaded.model.rotor_circles is circles
        lags = np.array([[50.0, 100.0, 200.0, 400.0]])
        batch = state_windows(loaded, [state], np.array([0]), lags, state.positions.mean(0)[None],
                              positions=state.positions[None], velocities=state.velocities[None], dtype=np.float64)
        paths[circles] = batch["vib_osc"][0]
    np.testing.assert_allclose(paths[True][:, heavy], paths[False][:, heavy], atol=1e-12, rtol=0)
    assert np.abs(paths[True][:, ~heavy] - paths[False][:, ~heavy]).max() > 1e-4


def test_the_recipe_sets_the_measured_controls_and_the_command_line_wins():
    """`jobs/rollout.py --recipe`: the controls of docs/results.md's recipe where the command line
    left an option at its default; an option given (even --no-momentum) keeps its value; without
    --recipe every control stays off."""
    from jobrun import job_module

    job = job_module("rollout.py")
    base = ["--model", "m", "--out", "o"]
    a = job.parse_args(base + ["--recipe"])
    assert (a.momentum, a.thermostat, a.tau_fs, a.step_fs, list(a.position_noise), a.hydrogen_noise_axes,
            a.group_hydrogen_noise, a.rotor_radii, a.height_feedback, a.thermostat_groups, a.proton_hops,
            a.rotor_turns, a.turn_energy) == (
        True, "csvr", 20.0, 50.0, [0.005, 0.02], "across", False, True, 1000.0, "hydrogens", True, True, "mmff")
    b = job.parse_args(base + ["--recipe", "--tau-fs", "50", "--no-momentum", "--position-noise", "0", "0",
                               "--height-feedback", "0", "--turn-energy", "gfn2"])
    assert (b.tau_fs, b.momentum, list(b.position_noise), b.thermostat, b.height_feedback, b.turn_energy) == (
        50.0, False, [0.0, 0.0], "csvr", 0.0, "gfn2")
    assert job.parse_args(base + ["--recipe", "--no-rotor-turns"]).rotor_turns is False
    d = job.parse_args(base + ["--recipe", "--hydrogen-noise-axes", "all", "--group-hydrogen-noise"])
    assert (d.hydrogen_noise_axes, d.group_hydrogen_noise, list(d.position_noise)) == ("all", True, [0.005, 0.02])
    c = job.parse_args(base)
    assert (c.momentum, c.thermostat, c.tau_fs, c.rotor_radii, c.height_feedback, c.proton_hops, c.rotor_turns,
            c.turn_energy, list(c.position_noise), c.hydrogen_noise_axes, c.group_hydrogen_noise) == (
        False, "none", 100.0, False, 0.0, False, False, "gfn2", [0.0, 0.0], "all", True)
