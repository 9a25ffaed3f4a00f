"""`atomray.relaxation`: the shift to the nearest minimum (MMFF94, refined with GFN2-xTB), and
the models that use it (`model.relaxed_prior`, `model.relaxed_input`). Real RDKit MMFF94 and
real tblite GFN2-xTB on small real molecules."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from atomray import basin_store, physics
from atomray.config import ModelConfig
from atomray.data.windows import atomic_masses
from atomray.evaluate import floor_predictions
from atomray.recent import Recent
from atomray.metrics import random_rotation
from atomray.model import build_model
from atomray import relaxation
from atomray.relaxation import mmff_minimum, relax_geometry, relaxed_shift, rmsd_superposed
from atomray.tg80.engines import embed, molecule_with_hydrogens

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
TINY = ModelConfig(embed_dim=32, num_layers=2, num_heads=4, attn_dropout=0.0, gnn_hidden_dim=16, lifting="canonical")


def conformer(smiles: str) -> tuple[np.ndarray, np.ndarray]:
    """(z (N,), x (N, 3) Å) of an embedded conformer, hydrogens included."""
    mol = molecule_with_hydrogens(smiles, smiles)
    return np.array([a.GetAtomicNum() for a in mol.GetAtoms()]), embed(mol, 0, smiles)


@pytest.fixture(scope="module")
def batch():
    """Ethanol and salicylic acid, each at its minimum (MMFF94 refined with GFN2-xTB) displaced
    by 0.05 Å noise per coordinate, as one padded batch (ethanol padded), with v0 and lags;
    plus the minima."""
    rng = np.random.default_rng(0)
    mols = [conformer(s) for s in ("CCO", "OC(=O)c1ccccc1O")]
    n = max(len(z) for z, _ in mols)
    x0, z, mask, minima = np.zeros((2, n, 3)), np.zeros((2, n), np.int64), np.zeros((2, n), bool), []
    for i, (zi, xi) in enumerate(mols):
        xm = relax_geometry(xi, zi)
        minima.append(xm - xm.mean(0))
        k = len(zi)
        x0[i, :k] = minima[-1] + rng.normal(0, 0.05, (k, 3))
        z[i, :k], mask[i, :k] = zi, True
    x0 -= (x0 * mask[..., None]).sum(1, keepdims=True) / mask.sum(1)[:, None, None]
    x0 *= mask[..., None]
    v0 = rng.normal(0, 0.01, x0.shape) * mask[..., None]
    lags = np.tile(np.array([5.0, 50.0, 250.0, 1000.0]), (2, 1))
    return {"x0": torch.from_numpy(x0), "v0": torch.from_numpy(v0), "z": torch.from_numpy(z),
            "mask": torch.from_numpy(mask), "lags_fs": torch.from_numpy(lags), "minima": minima}


def test_the_shift_takes_a_displaced_molecule_to_its_minimum(batch):
    shift = relaxed_shift(batch["x0"], batch["z"], batch["mask"])
    relaxed = batch["x0"] + shift
    for i, xm in enumerate(batch["minima"]):
        k = len(xm)
        mass = torch.from_numpy(atomic_masses(batch["z"][i, :k].numpy())).double()
        fitted = physics.superpose(torch.from_numpy(xm), relaxed[i, :k], mass)
        assert (fitted - relaxed[i, :k]).norm(dim=-1).max() < 0.01  # the same shape, Å
        rms = shift[i, :k].square().sum(-1).mean().sqrt()
        assert 0.03 < rms < 0.2  # it undoes the 0.05 Å-per-coordinate noise (≈ 0.087 Å per atom)
    assert shift[0, ~batch["mask"][0]].abs().max() == 0  # padding stays put


def test_the_shift_of_a_minimum_is_zero(batch):
    xm = torch.from_numpy(batch["minima"][0])[None]
    z, mask = batch["z"][:1, : xm.shape[1]], batch["mask"][:1, : xm.shape[1]]
    assert relaxed_shift(xm, z, mask).abs().max() < 1e-4


def test_the_shift_turns_with_the_molecule_and_ignores_translations(batch):
    r = random_rotation(torch.Generator().manual_seed(3))
    m = batch["mask"].double()[..., None]
    moved = (batch["x0"] @ r.T + torch.tensor([1.0, -2.0, 0.5])) * m
    shift = relaxed_shift(batch["x0"], batch["z"], batch["mask"])
    torch.testing.assert_close(relaxed_shift(moved, batch["z"], batch["mask"]), (shift @ r.T) * m, atol=1e-5, rtol=0)


def gfn2_max_force(x: np.ndarray, z: np.ndarray) -> float:
    """Largest GFN2-xTB force on an atom (eV/Å) at geometry x."""
    from ase import Atoms
    from tblite.ase import TBLite

    atoms = Atoms(numbers=z, positions=x)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    return float(np.linalg.norm(atoms.get_forces(), axis=1).max())


def test_the_gfn2_minimum_is_stationary_for_gfn2_and_mmff94s_is_not():
    """Salicylic acid: the default relaxation ends where GFN2-xTB's forces vanish; MMFF94's own
    minimum, a different shape, is not a GFN2-xTB minimum (the bias the refinement removes)."""
    z, x = conformer("OC(=O)c1ccccc1O")
    gfn2, mmff = relax_geometry(x, z), relax_geometry(x, z, "mmff94")
    assert gfn2_max_force(gfn2, z) < 1.5 * relaxation.GFN2_FMAX
    assert gfn2_max_force(mmff, z) > 0.2
    assert rmsd_superposed(gfn2, mmff) > 0.02


def test_states_of_one_basin_share_one_gfn2_refinement(tmp_path, monkeypatch):
    """Two differently displaced and turned copies of ethanol lie in one MMFF94 basin: one
    GFN2-xTB refinement serves both, both get the same minimum, and the store holds one basin."""
    monkeypatch.setenv(basin_store.ENV, str(tmp_path))
    z, x = conformer("CCO")
    relaxation._GFN2_MINIMA.pop(np.asarray(z, dtype=np.int64).tobytes(), None)
    rng = np.random.default_rng(1)
    r = random_rotation(torch.Generator().manual_seed(2)).numpy()
    first = relax_geometry(mmff_minimum(x, z) + rng.normal(0, 0.04, x.shape), z)
    second = relax_geometry((mmff_minimum(x, z) + rng.normal(0, 0.04, x.shape)) @ r.T, z)
    assert len(relaxation._GFN2_MINIMA[np.asarray(z, dtype=np.int64).tobytes()]) == 1
    assert rmsd_superposed(first, second) < 1e-9
    assert len(list(tmp_path.glob("*/*/*/basin-*[0-9].npz"))) == 1


def minimum_in_a_new_process(x: np.ndarray, z: np.ndarray, out: Path) -> dict[str, np.ndarray]:
    """The nearest minimum of x and its normal modes, computed by a fresh Python process (with
    this process's environment, so the same basin store or none)."""
    np.savez(out.with_suffix(".in.npz"), x=x, z=z)
    code = ("import sys, numpy as np\n"
            "from atomray.relaxation import nearest_minimum\n"
            "from atomray.vibration import normal_modes\n"
            "a = np.load(sys.argv[1])\n"
            "m, refined = nearest_minimum(a['x'], a['z'])\n"
            "assert refined\n"
            "w, e, f = normal_modes(m, a['z'])\n"
            "np.savez(sys.argv[2], minimum=m, omega=w, modes=e, force=f)\n")
    subprocess.run([sys.executable, "-c", code, str(out.with_suffix(".in.npz")), str(out)],
                   check=True, env=os.environ.copy(), cwd=ROOT, timeout=300)
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def test_a_new_process_reads_the_first_processes_basin_and_modes(tmp_path, monkeypatch):
    """Ethanol met at one state here and at another state of its basin in a second process:
    with the basin store, the second process uses this one's refined minimum and normal modes
    bit for bit (so floors and priors do not depend on which process met a basin first);
    without it, it refines its own minimum, which differs in the last digits."""
    from atomray.vibration import normal_modes

    store = tmp_path / "store"
    monkeypatch.setenv(basin_store.ENV, str(store))
    z, x = conformer("CCO")
    relaxation._GFN2_MINIMA.pop(np.asarray(z, dtype=np.int64).tobytes(), None)
    rng = np.random.default_rng(3)
    here, there = (mmff_minimum(x, z) + rng.normal(0, 0.04, x.shape) for _ in range(2))
    minimum, refined = relaxation.nearest_minimum(here, z)
    assert refined
    omega, modes, force = normal_modes(minimum, z)
    shared = minimum_in_a_new_process(there, z, tmp_path / "shared.npz")
    assert np.array_equal(shared["minimum"], minimum)
    assert np.array_equal(shared["omega"], omega) and np.array_equal(shared["modes"], modes)
    assert np.array_equal(shared["force"], force)
    assert len(list(store.glob("*/*/*/basin-*.modes-*.npz"))) == 1
    monkeypatch.setenv(basin_store.ENV, "off")
    alone = minimum_in_a_new_process(there, z, tmp_path / "alone.npz")
    assert not np.array_equal(alone["minimum"], minimum)
    assert rmsd_superposed(alone["minimum"], minimum) < 1e-3  # the same basin, refined again


def test_the_model_uses_the_configured_relaxation(batch):
    """`model.relaxation` reaches the prior: mmff94 gives MMFF94's shift, gfn2 the refined one."""
    shifts = {}
    for method in relaxation.METHODS:
        model = build_model(replace(TINY, relaxed_prior=True, relaxation=method), 4, 0).double()
        shifts[method] = model.prior.shift(batch["x0"], batch["z"], batch["mask"])
        torch.testing.assert_close(shifts[method], relaxed_shift(batch["x0"], batch["z"], batch["mask"], method))
    assert (shifts["gfn2"] - shifts["mmff94"]).norm(dim=-1).max() > 0.01


def test_a_molecule_mmff_cannot_type_gets_no_shift_and_a_warning():
    x = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]]], dtype=torch.float64)  # two helium atoms
    with pytest.warns(UserWarning, match="He2"):
        shift = relaxed_shift(x, torch.tensor([[2, 2]]), torch.ones(1, 2, dtype=torch.bool))
    assert shift.abs().max() == 0


@pytest.mark.parametrize("name", ["atom", "egno"])
def test_a_fresh_model_with_the_relaxed_prior_predicts_rotor_plus_the_relaxation_curve(batch, name):
    torch.manual_seed(0)
    cfg = replace(TINY, name=name, relaxed_prior=True, relaxed_input=True)
    model = build_model(cfg, 4, 0).double().eval()
    with torch.no_grad():
        out = model(batch["x0"], batch["v0"], batch["z"], batch["lags_fs"], batch["mask"])
    x0, v0, lags, m = batch["x0"], batch["v0"], batch["lags_fs"], batch["mask"].double()
    mass = torch.from_numpy(atomic_masses(batch["z"].numpy())).double() * m
    c, u, rot = physics.rotor_motion(x0, v0, mass, lags)
    shift = relaxed_shift(x0, batch["z"], batch["mask"])
    a = 1 - torch.exp(-lags / 250.0)  # a(Δt) at initialisation
    expected = (physics.carry(x0, c, u, rot, lags) + a[..., None, None] * (shift[:, None] @ rot.transpose(-1, -2)))
    torch.testing.assert_close(out, expected * m[:, None, :, None], atol=1e-8, rtol=1e-8)
    rotor = physics.carry(x0, c, u, rot, lags) * m[:, None, :, None]
    assert (out - rotor)[:, -1].norm(dim=-1).max() > 0.05  # at 1 ps the atoms have moved toward the minimum
    floor = floor_predictions({**batch, "mass": mass}, ["relaxed_all"])["relaxed_all"]
    torch.testing.assert_close(out, floor * m[:, None, :, None], atol=1e-8, rtol=1e-8)  # = the relaxed_all floor


def test_relaxed_input_lets_the_trunk_see_the_shift(batch):
    """With random weights, ATOM's trunk features change with relaxed_input on a displaced
    molecule, and not at a minimum (δ = 0 lifts to zero), all other weights shared."""
    from symmetry import randomise_parameters

    def features(cfg, x0, z, mask):
        model = randomise_parameters(build_model(cfg, 4, 0).double().eval(), 0.5)
        with torch.no_grad():
            h, _ = model.embed(x0, torch.zeros_like(x0), z, batch["lags_fs"][:1], mask)
        return h

    z, mask = batch["z"][1:], batch["mask"][1:]
    displaced = batch["x0"][1:]
    xm = torch.from_numpy(batch["minima"][1])[None]
    off, on = TINY, replace(TINY, relaxed_input=True)
    assert (features(on, displaced, z, mask) - features(off, displaced, z, mask)).abs().max() > 1e-2
    torch.testing.assert_close(features(on, xm, z, mask), features(off, xm, z, mask), atol=1e-4, rtol=0)


def test_a_relaxed_canonical_atom_stays_equivariant(batch):
    from symmetry import assert_equivariant_output, randomise_parameters

    torch.manual_seed(0)
    model = randomise_parameters(build_model(replace(TINY, relaxed_prior=True, relaxed_input=True), 4, 0).double().eval(), 0.5)
    b, p, n = batch["lags_fs"].shape[0], batch["lags_fs"].shape[1], batch["x0"].shape[1]
    windows = {**batch, "rwpe": None, "target": torch.zeros(b, p, n, 3, dtype=torch.float64)}
    with torch.no_grad():
        assert_equivariant_output(model, windows, random_rotation(torch.Generator().manual_seed(5)), atol=1e-5, rtol=0)


def test_a_state_is_minimised_once_while_it_is_recent(monkeypatch):
    """A training step asks for each window's minimum twice (loss weight, then the model's
    prior): MMFF94 minimises it once, and every caller gets its own copy."""
    z, xm = conformer("CCO")
    x = xm + np.random.default_rng(1).normal(0, 0.05, xm.shape)
    calls = []
    real = relaxation.mmff_minimum
    monkeypatch.setattr(relaxation, "mmff_minimum", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(relaxation, "_RECENT", Recent(max_items=relaxation.RECENT_STATES))
    first = relaxation.nearest_minimum(x, z, "mmff94")[0]
    first += 1.0  # a caller's change must not reach the next one
    second = relaxation.nearest_minimum(x, z, "mmff94")[0]
    assert len(calls) == 1
    np.testing.assert_allclose(second, first - 1.0)
    monkeypatch.setattr(relaxation._RECENT, "max_items", 1)
    relaxation.nearest_minimum(xm, z, "mmff94")  # pushes x out
    relaxation.nearest_minimum(x, z, "mmff94")
    assert len(calls) == 3
