"""The batched MMFF94 of `atomray.priors.forcefield` is RDKit's: energies and gradients on every
tg80-mini molecule (as shipped and shaken by 0.05 Å), batches that mix molecules and padding,
velocity-Verlet paths equal to the per-window RDKit reference, energy conservation over 400 fs
and rotation-equivariant forces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atomray.data.augment import random_rotations
from atomray.data.dataset import read_molecules
from atomray.data.pipeline import molecule_files, molecule_segments
from atomray.elements import atomic_masses
from atomray.priors.anharmonic import mmff_acceleration, verlet_path
from atomray.priors.forcefield import (KCAL_MOL_A_U, MMFFBatch, energy, forces, mmff_terms, step_plan,
                                       verlet_paths)
from atomray.priors.minima import mmff_field

FRAMES = (0.0, 0.5, 1.0)  # fractions of each molecule's first segment
NOISE_A = 0.05


@pytest.fixture(scope="module")
def molecules(repo_root) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """molecule id → (positions (F, N, 3) Å, velocities (F, N, 3) Å/fs, atomic numbers (N,)) of
    its first tg80-mini segment."""
    root = repo_root / "data" / "tg80-mini"
    out = {}
    for mol in read_molecules(root).column("molecule_id").to_pylist():
        seg = molecule_segments(root, mol, molecule_files(root, [mol])[mol])[0]
        out[mol] = (seg.positions.astype(np.float64), seg.velocities.astype(np.float64), np.asarray(seg.atomic_numbers))
    return out


def padded(arrays: list[np.ndarray], n_atoms: int) -> torch.Tensor:
    """(B, n_atoms, ...) float64: per-window arrays (N_b, ...) zero-padded along atoms."""
    out = np.zeros((len(arrays), n_atoms, *arrays[0].shape[1:]))
    for b, a in enumerate(arrays):
        out[b, :len(a)] = a
    return torch.from_numpy(out)


def rdkit_energy_grad(field, x: np.ndarray) -> tuple[float, np.ndarray]:
    flat = x.ravel().tolist()
    e = field.CalcEnergy(flat)  # CalcGrad is only right after CalcEnergy at the same positions
    return e, np.asarray(field.CalcGrad(flat)).reshape(-1, 3)


def test_energy_and_gradient_equal_rdkit_on_every_molecule(molecules):
    rng = np.random.default_rng(0)
    worst_e = worst_g = 0.0
    for mol, (pos, _, z) in molecules.items():
        terms = mmff_terms(pos[0], z)
        assert terms is not None, f"{mol}: MMFF94 should type every tg80-mini molecule"
        field = mmff_field(pos[0], z, nonBondedThresh=100.0)[2]
        shipped = [pos[round(q * (len(pos) - 1))] for q in FRAMES]
        states = shipped + [x + NOISE_A * rng.standard_normal(x.shape) for x in shipped]
        e, f = forces(MMFFBatch.stack([terms] * len(states), len(z)), torch.from_numpy(np.stack(states)))
        for k, x in enumerate(states):
            e_ref, g_ref = rdkit_energy_grad(field, x)
            err_e = abs(e[k].item() - e_ref)
            err_g = np.abs(-f[k].numpy() - g_ref).max()
            assert err_e <= 1e-6 * abs(e_ref) + 1e-7, f"{mol} state {k}: energy {e[k].item()} vs RDKit {e_ref}"
            assert err_g <= 1e-6 * np.abs(g_ref).max() + 1e-7, f"{mol} state {k}: gradient off by {err_g}"
            worst_e, worst_g = max(worst_e, err_e / abs(e_ref)), max(worst_g, err_g / np.abs(g_ref).max())
    print(f"max relative error: energy {worst_e:.1e}, gradient {worst_g:.1e}")


@pytest.mark.parametrize("smiles", ["CC#N", "C#CC(=O)O", "C=C=C", "C1CC1C(=O)N", "C1CCC1O",
                                    "O=[N+]([O-])c1ccccc1", "CS(=O)(=O)N", "CCOP(=O)(O)O"])
def test_chemistry_beyond_tg80_mini_equals_rdkit(smiles):
    """Linear centres (no stretch-bend, no torsion about them), 3- and 4-membered rings,
    charged groups, sulfur and phosphorus: none of these is in tg80-mini."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=3)
    x0 = mol.GetConformer().GetPositions()
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    x = x0 + NOISE_A * np.random.default_rng(1).standard_normal(x0.shape)
    e_ref, g_ref = rdkit_energy_grad(mmff_field(x0, z, nonBondedThresh=100.0)[2], x)
    e, f = forces(MMFFBatch.stack([mmff_terms(x0, z)], len(z)), torch.from_numpy(x)[None])
    assert abs(e.item() - e_ref) <= 1e-6 * abs(e_ref) + 1e-7
    assert np.abs(-f[0].numpy() - g_ref).max() <= 1e-6 * np.abs(g_ref).max() + 1e-7


def test_separate_fragments_do_not_interact():
    """RDKit's field (ignoreInterfragInteractions) has no terms between fragments: acetic acid
    and ammonia 4.5 Å apart have the sum of their own energies."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    parts = []
    for smiles in ("CC(=O)O", "N"):
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMolecule(mol, randomSeed=3)
        parts.append((mol.GetConformer().GetPositions(), np.array([a.GetAtomicNum() for a in mol.GetAtoms()])))
    x = np.vstack([parts[0][0], parts[1][0] + [4.5, 0.0, 0.0]])
    z = np.concatenate([parts[0][1], parts[1][1]])
    e_ref, g_ref = rdkit_energy_grad(mmff_field(x, z, nonBondedThresh=100.0)[2], x)
    e, f = forces(MMFFBatch.stack([mmff_terms(x, z)], len(z)), torch.from_numpy(x)[None])
    alone = sum(energy(MMFFBatch.stack([mmff_terms(xp, zp)], len(zp)), torch.from_numpy(xp)[None]).item()
                for xp, zp in (parts[0], (parts[1][0] + [4.5, 0.0, 0.0], parts[1][1])))
    assert abs(e.item() - e_ref) <= 1e-6 * abs(e_ref) + 1e-7
    assert np.abs(-f[0].numpy() - g_ref).max() <= 1e-6 * np.abs(g_ref).max() + 1e-7
    assert abs(e.item() - alone) <= 1e-9


def test_padded_batch_of_different_molecules_gives_each_its_own_energy(molecules):
    names = ["lib-2330", "benzene", "aspirin", "ethanol", "uracil"]
    xs = [molecules[m][0][100] for m in names]
    alone = [forces(MMFFBatch.stack([mmff_terms(x, molecules[m][2])], len(x)), torch.from_numpy(x)[None])
             for m, x in zip(names, xs)]
    n_max = 31
    terms = [mmff_terms(x, molecules[m][2]) for m, x in zip(names, xs)]
    terms.insert(2, None)  # a window MMFF94 could not type
    xs.insert(2, np.full((7, 3), 1.5))
    batch = MMFFBatch.stack(terms, n_max)
    pos = padded(xs, n_max) + torch.where(padded([np.ones_like(x) for x in xs], n_max) > 0, 0.0, 3.0)  # padding off 0
    e, f = forces(batch, pos)
    assert batch.valid.tolist() == [True, True, False, True, True, True]
    assert e[2].item() == 0.0 and f[2].abs().max().item() == 0.0
    for b, (e1, f1) in zip([0, 1, 3, 4, 5], alone):
        n = f1.shape[1]
        torch.testing.assert_close(e[b], e1[0], rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(f[b, :n], f1[0], rtol=1e-12, atol=1e-10)
        assert f[b, n:].abs().max().item() == 0.0, "padding feels no force"
    torch.testing.assert_close(energy(batch, pos), e)
    _, f_auto = forces(batch, pos, analytic=False)
    torch.testing.assert_close(f_auto, f, rtol=1e-9, atol=1e-9)


def test_step_plan_lands_on_every_lag():
    lags = np.array([[0.7, 0.0, 3.0, 3.0], [10.25, 0.2, 5.0, 1e-12]])
    plan, reached = step_plan(lags, 0.5)
    assert plan.max() <= 0.5 and plan.min() >= 0.0
    clock = np.vstack([np.zeros(2), np.cumsum(plan, axis=0)])  # (S + 1, B) time after each step
    np.testing.assert_allclose(np.take_along_axis(clock.T, reached, axis=1), np.maximum(lags, 0.0), atol=1e-12)
    assert reached[0, 1] == 0 and reached[1, 3] == 0
    assert reached[0, 2] == reached[0, 3] == 7  # 0.5 + 0.2 fs, then 2.3 fs in 5 steps


def test_verlet_paths_equal_the_rdkit_reference(molecules):
    rng = np.random.default_rng(2)
    names = ["aspirin", "ethanol", "naphthalene", "lib-4139", "nicotinamide", "malonaldehyde"]
    xs, vs, zs = [], [], []
    for k, m in enumerate(names):
        pos, vel, z = molecules[m]
        xs.append(pos[300 * k])
        vs.append(vel[300 * k])
        zs.append(z)
    lags = np.round(rng.uniform(0.0, 100.0, size=(len(names), 5)), 3)
    lags[0, :2] = [0.0, 100.0]
    lags[1, 3] = lags[1, 1]  # a lag met twice
    lags[2] = np.sort(lags[2])[::-1]  # any order
    n_max = 28
    masses = padded([atomic_masses(z) for z in zs], n_max)  # (B, N) u
    batch = MMFFBatch.stack([mmff_terms(x, z) for x, z in zip(xs, zs)], n_max)
    out = verlet_paths(batch, padded(xs, n_max), padded(vs, n_max), masses, torch.from_numpy(lags))
    assert out.shape == (len(names), 5, n_max, 3)
    for b, (x, v, z) in enumerate(zip(xs, vs, zs)):
        ref = verlet_path(x, v, lags[b], mmff_acceleration(x, z))
        err = np.abs(out[b, :, :len(z)].numpy() - ref).max()
        assert err <= 1e-6, f"{names[b]}: path off the RDKit reference by {err} Å at lags {lags[b]}"
        assert out[b, :, len(z):].abs().max().item() == 0.0, "padding stays put"


def test_batched_verlet_conserves_energy_over_400_fs(molecules):
    names = ["aspirin", "malonaldehyde", "lib-2330", "lib-1483"]
    xs = [molecules[m][0][0] for m in names]
    vs = [molecules[m][1][0] for m in names]
    masses = padded([atomic_masses(molecules[m][2]) for m in names], 28)  # (B, N) u
    batch = MMFFBatch.stack([mmff_terms(x, molecules[m][2]) for m, x in zip(names, xs)], 28)
    lags = torch.linspace(0.0, 400.0, 41).repeat(len(names), 1)  # (B, P) fs
    pos, vel = verlet_paths(batch, padded(xs, 28), padded(vs, 28), masses, lags, with_velocities=True)
    potential = torch.stack([energy(batch, pos[:, p]) for p in range(lags.shape[1])], 1)  # (B, P) kcal/mol
    kinetic = 0.5 * (masses[:, None, :, None] * vel**2).sum((-1, -2)) / KCAL_MOL_A_U  # u Å²/fs² → kcal/mol
    total = potential + kinetic
    drift = (total - total[:, :1]).abs().max(1).values
    assert (kinetic[:, 0] > 5.0).all(), "the windows start hot: the test would be vacuous otherwise"
    assert (drift < 0.02 * kinetic[:, 0]).all() and (drift < 0.3).all(), f"energy drift {drift} kcal/mol"


def test_forces_are_rotation_equivariant(molecules):
    g = torch.Generator().manual_seed(5)
    names = ["salicylic_acid", "lib-2209", "toluene"]
    xs = [molecules[m][0][1234] for m in names]
    batch = MMFFBatch.stack([mmff_terms(x, molecules[m][2]) for m, x in zip(names, xs)], 22)
    pos = padded(xs, 22)
    rot = random_rotations(len(names), g, dtype=torch.float64)  # (B, 3, 3)
    shift = torch.randn(len(names), 1, 3, generator=g, dtype=torch.float64)
    e, f = forces(batch, pos)
    e_rot, f_rot = forces(batch, pos @ rot.transpose(1, 2) + shift)
    torch.testing.assert_close(e_rot, e, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(f_rot, f @ rot.transpose(1, 2), rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_compiled_verlet_equals_eager(molecules):
    """`torch.compile` (CPU inductor here) must not change the paths. ~20 s of compilation."""
    names = ["benzene", "ethanol"]
    xs, vs = [molecules[m][0][0] for m in names], [molecules[m][1][0] for m in names]
    batch = MMFFBatch.stack([mmff_terms(x, molecules[m][2]) for m, x in zip(names, xs)], 12)
    masses = padded([atomic_masses(molecules[m][2]) for m in names], 12)
    lags = torch.tensor([[3.0, 10.2], [7.7, 1.0]])
    args = (batch, padded(xs, 12), padded(vs, 12), masses, lags)
    torch.testing.assert_close(verlet_paths(*args, compiled=True), verlet_paths(*args), rtol=0, atol=1e-9)
