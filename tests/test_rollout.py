"""Rollouts chain predictions exactly: with the rigid prior and a zero correction, a freely
rotating rigid molecule follows its analytic motion for 100 steps (float64, < 1e-8 Å)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from atomray.config import RunConfig
from atomray.elements import atomic_masses
from atomray.model import build_model
from atomray.predict import InitialState
from atomray.rollout import rollout, write_rollout_extxyz

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


@pytest.mark.parametrize("name, num_lags, frames", [
    ("atom", 8, [12.5, 25.0, 37.5, 50.0]),  # frames and difference lags in one call
    ("atom", 4, [12.5, 25.0, 37.5, 50.0]),  # two rows per state
    ("egno", 8, [12.5, 25.0, 37.5, 50.0]),
])
def test_rigid_prior_rollout_reproduces_the_analytic_rigid_motion(name, num_lags, frames):
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=name, embed_dim=16, num_layers=1,
                                                             num_heads=2, gnn_hidden_dim=16, **RIGID),
                              data=dataclasses.replace(cfg.data, context_atoms="all", num_lags=num_lags, rwpe_k=4))
    torch.manual_seed(0)
    model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k).double()
    state, exact = spinning_molecule()
    traj = rollout(model, cfg, [state, state], total_fs=100 * 50.0, step_fs=50.0, dtype=torch.float64)
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
