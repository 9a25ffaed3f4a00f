"""Integrators: NVE conserves energy, Langevin holds the target temperature, velocities
are drawn at T, and a run split in two equals one run (what exact resume relies on)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from atomray.tg80.dynamics import (
    MDConfig, MDState, kinetic_energy, maxwell_boltzmann, prepare_state, run_steps, temperature,
)
from atomray.tg80.engines import embed, make_engine, molecule_with_hydrogens


def setup(smiles: str, name: str, seed: int = 1):
    mol = molecule_with_hydrogens(smiles, name)
    masses = np.array([a.GetMass() for a in mol.GetAtoms()])
    return make_engine("mmff", mol, name), embed(mol, seed, name), masses


def test_maxwell_boltzmann_is_at_temperature_with_zero_momentum():
    masses = np.array([12.011, 1.008, 15.999] * 7)
    v = maxwell_boltzmann(masses, 300.0, np.random.default_rng(0))
    assert temperature(masses, v) == pytest.approx(300.0, rel=1e-12)
    np.testing.assert_allclose(masses @ v, 0.0, atol=1e-12)


def test_mmff_nve_conserves_total_energy():
    """Relative drift < 1e-3 over 200 fs at 0.5 fs (aspirin, MMFF94).

    Drift = change of the total energy between the first and last 20 fs (averaged, so the
    bounded Verlet oscillation does not count), relative to |E_total| and — since MMFF's
    energy zero is arbitrary — also relative to the kinetic energy. The oscillation itself
    stays below 1 % of the kinetic energy.
    """
    engine, x0, masses = setup("CC(=O)Oc1ccccc1C(=O)O", "aspirin")
    cfg = MDConfig(dt_fs=0.5, equilibration_fs=500.0, production_fs=200.0, segment_fs=200.0)
    state = prepare_state(engine, x0, masses, cfg, seed=1)
    _, vel, e_tot = run_steps(state, engine, masses, cfg, cfg.steps(200.0), "nve")
    assert len(e_tot) == 400
    kinetic = np.mean([kinetic_energy(masses, v) for v in vel])
    assert kinetic > 0.5  # ~ (3N-3)/2 kT = 0.79 eV at 300 K: the molecule is really moving
    drift = abs(e_tot[-40:].mean() - e_tot[:40].mean())
    assert drift / abs(e_tot.mean()) < 1e-3, f"relative energy drift {drift / abs(e_tot.mean()):.2e}"
    assert drift / kinetic < 1e-3, f"energy drift / kinetic energy {drift / kinetic:.2e}"
    assert np.abs(e_tot - e_tot[0]).max() < 0.01 * kinetic


def test_langevin_nvt_mean_temperature_within_15_percent():
    engine, x0, masses = setup("CC(C)Cc1ccc(cc1)C(C)C(=O)O", "ibuprofen")
    cfg = MDConfig(ensemble="nvt", temperature_k=300.0, equilibration_fs=2000.0, production_fs=8000.0, segment_fs=8000.0)
    state = prepare_state(engine, x0, masses, cfg, seed=2)
    _, vel, _ = run_steps(state, engine, masses, cfg, cfg.steps(8000.0), "nvt")
    dof = 3 * len(masses)  # Langevin does not conserve momentum
    mean_t = np.mean([temperature(masses, v, dof) for v in vel])
    assert abs(mean_t - 300.0) / 300.0 < 0.15, f"mean temperature {mean_t:.1f} K"


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_a_run_split_in_two_equals_one_run(ensemble):
    engine, x0, masses = setup("O=CCC=O", "malonaldehyde")
    cfg = MDConfig(ensemble=ensemble, equilibration_fs=50.0, production_fs=100.0, segment_fs=50.0)
    start = prepare_state(engine, x0, masses, cfg, seed=5)
    whole = copy.deepcopy(start)
    pos_whole, _, _ = run_steps(whole, engine, masses, cfg, 100, ensemble)
    first = copy.deepcopy(start)
    pos_a, _, _ = run_steps(first, engine, masses, cfg, 50, ensemble)
    resumed = MDState.from_arrays(first.arrays())  # through the checkpoint representation
    pos_b, _, _ = run_steps(resumed, engine, masses, cfg, 50, ensemble)
    assert np.array_equal(np.concatenate([pos_a, pos_b]), pos_whole)
    assert np.array_equal(resumed.velocities, whole.velocities)
