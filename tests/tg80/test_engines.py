"""Engines: forces are minus the energy gradient in eV/Å, units agree with ASE's tblite
calculator, and a missing ORCA gives an error a user can act on."""

from __future__ import annotations

import numpy as np
import pytest

from atomray.tg80.engines import EngineError, embed, make_engine, molecule_with_hydrogens


def finite_difference_forces(engine, x: np.ndarray, h: float = 1e-4) -> np.ndarray:
    f = np.zeros_like(x)
    for i in range(x.shape[0]):
        for k in range(3):
            xp, xm = x.copy(), x.copy()
            xp[i, k] += h
            xm[i, k] -= h
            f[i, k] = -(engine.forces(xp)[0] - engine.forces(xm)[0]) / (2 * h)
    return f


@pytest.mark.parametrize("name", ["mmff", "gfn2", "gfn1"])
def test_forces_are_minus_the_energy_gradient(name):
    mol = molecule_with_hydrogens("CCO", "ethanol")
    x = embed(mol, 7, "ethanol") + np.random.default_rng(0).normal(0, 0.02, (9, 3))  # off the minimum
    engine = make_engine(name, mol, "ethanol")
    energy, forces = engine.forces(x)
    assert forces.shape == (9, 3) and np.isfinite(energy)
    assert np.abs(forces).max() > 0.05  # a real gradient, not zero
    engine.reset()
    np.testing.assert_allclose(forces, finite_difference_forces(engine, x), atol=2e-3 if name == "mmff" else 5e-3)
    assert engine.n_evaluations == 1 + 2 * 27


def test_gfn2_units_match_ase_tblite_calculator():
    from ase import Atoms
    from tblite.ase import TBLite

    mol = molecule_with_hydrogens("O=CCC=O", "malonaldehyde")
    x = embed(mol, 3, "malonaldehyde")
    energy, forces = make_engine("gfn2", mol).forces(x)
    atoms = Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=x)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    # ASE's units are CODATA 2014, ours 2018: the Hartree differs by 8e-9 relative
    assert energy == pytest.approx(atoms.get_potential_energy(), rel=5e-8)  # eV
    np.testing.assert_allclose(forces, atoms.get_forces(), rtol=5e-7, atol=1e-7)  # eV/Å


def test_orca_without_executable_names_it_and_the_alternatives(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no `orca` here
    with pytest.raises(EngineError, match=r"no executable named 'orca' on PATH.*gfn2, gfn1, mmff"):
        make_engine("orca", molecule_with_hydrogens("CCO", "ethanol"), "ethanol")


def test_unknown_engine_and_bad_smiles_are_named():
    with pytest.raises(EngineError, match=r"unknown engine 'dftb'.*gfn2, gfn1, mmff, orca"):
        make_engine("dftb", molecule_with_hydrogens("CCO", "ethanol"), "ethanol")
    with pytest.raises(EngineError, match=r"molecule 'x': invalid SMILES 'C1CC'"):
        molecule_with_hydrogens("C1CC", "molecule 'x'")
