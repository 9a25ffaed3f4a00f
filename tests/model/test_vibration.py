"""`atomray.vibration`: harmonic normal-mode motion about the nearest GFN2-xTB minimum, the
`harmonic_all` floor and `model.prior=harmonic`. Real tblite GFN2-xTB (Hessians and a short
molecular dynamics run) on small real molecules."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from atomray import physics
from atomray.config import ModelConfig
from atomray.data.windows import atomic_masses
from atomray.evaluate import floor_predictions
from atomray.metrics import random_rotation
from atomray.model import build_model
from atomray.relaxation import relax_geometry
from atomray.vibration import EV_PER_A2_U_IN_FS2, harmonic_paths, normal_modes, rigid_basis, vibrate
from atomray.tg80.engines import embed, molecule_with_hydrogens

torch.set_num_threads(1)
TINY = ModelConfig(embed_dim=32, num_layers=2, num_heads=4, attn_dropout=0.0, gnn_hidden_dim=16,
                   lifting="canonical", prior="harmonic")


def minimum(smiles: str) -> tuple[np.ndarray, np.ndarray]:
    """(z (N,), the GFN2-xTB minimum (N, 3) Å, centred) of a molecule, hydrogens included."""
    mol = molecule_with_hydrogens(smiles, smiles)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    xm = relax_geometry(embed(mol, 0, smiles), z)
    return z, xm - xm.mean(0)


@pytest.fixture(scope="module")
def batch():
    """Ethanol and glycolic acid near their minima (0.03 Å noise per coordinate), with thermal-
    sized velocities (0.005 Å/fs), one padded batch, lags up to 1 ps."""
    rng = np.random.default_rng(1)
    mols = [minimum(s) for s in ("CCO", "OCC(=O)O")]
    n = max(len(z) for z, _ in mols)
    x0, z, mask = np.zeros((2, n, 3)), np.zeros((2, n), np.int64), np.zeros((2, n), bool)
    for i, (zi, xi) in enumerate(mols):
        k = len(zi)
        x0[i, :k], z[i, :k], mask[i, :k] = xi + rng.normal(0, 0.03, (k, 3)), zi, True
    v0 = rng.normal(0, 0.005, x0.shape) * mask[..., None]
    lags = np.tile(np.array([5.0, 20.0, 100.0, 1000.0]), (2, 1))
    return {"x0": torch.from_numpy(x0), "v0": torch.from_numpy(v0), "z": torch.from_numpy(z),
            "mask": torch.from_numpy(mask), "lags_fs": torch.from_numpy(lags)}


def test_normal_modes_are_the_internal_motions_with_gfn2_frequencies():
    z, xm = minimum("CCO")
    omega, modes, _ = normal_modes(xm, z)
    assert modes.shape == (27, 21)  # 3N − 6 for ethanol
    np.testing.assert_allclose(modes.T @ modes, np.eye(21), atol=1e-8)
    mass = atomic_masses(z).astype(float)
    assert np.abs(rigid_basis(xm, mass).T @ modes).max() < 1e-6  # no translation or rotation
    wavenumbers = omega / (2 * np.pi * 2.99792458e-5)  # cm⁻¹
    assert 3300 < wavenumbers.max() < 4000  # the O–H stretch
    assert 2800 < np.sort(wavenumbers)[-2] < 3200  # C–H stretches
    assert normal_modes(xm, z)[0] is omega  # cached per basin


def test_harmonic_paths_follow_real_gfn2_dynamics_at_small_amplitude():
    """Ethanol 0.02 Å from its minimum with small internal velocities, propagated 60 fs by
    GFN2-xTB velocity Verlet: the undamped harmonic path stays within a fraction of the
    displacement no motion makes."""
    from ase import Atoms, units
    from ase.md.verlet import VelocityVerlet
    from tblite.ase import TBLite

    z, xm = minimum("CCO")
    rng = np.random.default_rng(3)
    mass = atomic_masses(z).astype(float)
    x0 = xm + rng.normal(0, 0.02, xm.shape)
    v0 = physics.internal_velocity(torch.from_numpy(x0)[None], torch.from_numpy(rng.normal(0, 0.002, xm.shape))[None],
                                   torch.from_numpy(mass)[None])[0].numpy()
    atoms = Atoms(numbers=z, positions=x0, masses=mass)
    atoms.set_velocities(v0 / units.fs)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    md, lags, truth = VelocityVerlet(atoms, timestep=0.5 * units.fs), [10.0, 20.0, 40.0, 60.0], []
    for steps in np.diff([0.0] + lags) / 0.5:
        md.run(int(steps))
        truth.append(atoms.get_positions())
    osc, d0 = harmonic_paths(torch.from_numpy(x0)[None], torch.from_numpy(v0)[None], torch.from_numpy(z)[None],
                             torch.ones(1, len(z), dtype=torch.bool), torch.tensor([lags], dtype=torch.float64))
    pred = x0 + (osc[0] - d0[0]).numpy()  # no rigid motion: v0 has none
    truth = np.stack(truth)
    err_harmonic = np.square(pred - truth).mean()
    err_still = np.square(x0 - truth).mean()
    assert err_harmonic < 0.02 * err_still, (err_harmonic, err_still)  # measured 0.008


@pytest.mark.parametrize("name, inputs", [("atom", False), ("atom", True), ("egno", False)])
def test_a_fresh_model_with_the_harmonic_prior_predicts_the_harmonic_all_floor(batch, name, inputs):
    torch.manual_seed(0)
    model = build_model(replace(TINY, name=name, relaxed_input=inputs, prior_input=inputs), 4, 0).double().eval()
    with torch.no_grad():
        out = model(batch["x0"], batch["v0"], batch["z"], batch["lags_fs"], batch["mask"])
    m = batch["mask"].double()
    mass = torch.from_numpy(atomic_masses(batch["z"].numpy())).double() * m
    floor = floor_predictions({**batch, "mass": mass}, ["harmonic_all", "rotor_all"])
    torch.testing.assert_close(out, floor["harmonic_all"] * m[:, None, :, None], atol=1e-8, rtol=1e-8)
    assert (out - floor["rotor_all"])[:, 1].norm(dim=-1).max() > 0.01  # at 20 fs the atoms vibrate


def test_the_harmonic_prior_learns_its_dephasing_time(batch):
    model = build_model(TINY, 4, 0).double()
    out = model(batch["x0"], batch["v0"], batch["z"], batch["lags_fs"], batch["mask"])
    out.square().sum().backward()
    assert model.prior.vib_log_tau.grad.abs() > 0


def test_the_floor_is_the_same_whether_hydrogens_are_model_or_context_atoms(batch):
    """harmonic_all for the heavy atoms, the hydrogens passed as context (data.context_atoms=heavy),
    equals the all-atom floor on the heavy atoms: the modes are always the whole molecule's."""
    i = 1
    mask, z = batch["mask"][i], batch["z"][i]
    heavy, light = torch.nonzero(mask & (z > 1))[:, 0], torch.nonzero(mask & (z == 1))[:, 0]
    mass = torch.from_numpy(atomic_masses(z.numpy())).double()
    whole = {"x0": batch["x0"][i:i + 1, mask], "v0": batch["v0"][i:i + 1, mask], "z": z[mask][None],
             "mass": mass[mask][None], "lags_fs": batch["lags_fs"][i:i + 1]}
    split = {"x0": batch["x0"][i:i + 1, heavy], "v0": batch["v0"][i:i + 1, heavy], "z": z[heavy][None],
             "mass": mass[heavy][None], "lags_fs": batch["lags_fs"][i:i + 1],
             "ctx_x0": batch["x0"][i:i + 1, light], "ctx_v0": batch["v0"][i:i + 1, light], "ctx_mass": mass[light][None]}
    full = floor_predictions(whole, ["harmonic_all"])["harmonic_all"]
    part = floor_predictions(split, ["harmonic_all"])["harmonic_all"]
    heavy_in_whole = (z[mask] > 1).nonzero()[:, 0]
    torch.testing.assert_close(part, full[:, :, heavy_in_whole], atol=1e-8, rtol=0)


def test_a_harmonic_canonical_atom_stays_equivariant(batch):
    from symmetry import assert_equivariant_output, randomise_parameters

    torch.manual_seed(0)
    model = randomise_parameters(build_model(replace(TINY, relaxed_input=True, prior_input=True), 4, 0).double().eval(), 0.5)
    b, p, n = batch["lags_fs"].shape[0], batch["lags_fs"].shape[1], batch["x0"].shape[1]
    windows = {**batch, "rwpe": None, "target": torch.zeros(b, p, n, 3, dtype=torch.float64)}
    with torch.no_grad():
        assert_equivariant_output(model, windows, random_rotation(torch.Generator().manual_seed(5)), atol=1e-5, rtol=0)


def test_vibrate_damps_toward_the_minimum_and_turns_with_the_body():
    osc = torch.ones(1, 2, 3, 3, dtype=torch.float64)
    d0 = torch.full((1, 3, 3), 2.0, dtype=torch.float64)
    lags = torch.tensor([[0.0, 1e6]], dtype=torch.float64)
    rot = random_rotation(torch.Generator().manual_seed(1)).expand(1, 2, 3, 3)
    out = vibrate(osc, d0, rot, lags, 1000.0)
    torch.testing.assert_close(out[:, 0], ((osc[:, 0] - d0) @ rot[0, 0].T))
    torch.testing.assert_close(out[:, 1], (-d0) @ rot[0, 1].T)  # long after: at the minimum
    assert EV_PER_A2_U_IN_FS2 == pytest.approx(1.602176634e-19 / (1.66053906660e-27 * 1e-20) * 1e-30, rel=1e-6)


def test_prior_input_lets_each_lag_slot_see_the_vibration(batch):
    """With random weights, ATOM's lag-slot features change with prior_input on a vibrating
    molecule, and not on one at rest at its minimum (no vibration lifts to zero), all other
    weights shared."""
    from symmetry import randomise_parameters

    def features(cfg, x0, v0):
        torch.manual_seed(0)
        model = randomise_parameters(build_model(cfg, 4, 0).double().eval(), 0.5)
        with torch.no_grad():
            h, _ = model.embed(x0, v0, batch["z"][:1], batch["lags_fs"][:1], batch["mask"][:1])
        return h

    on, off = replace(TINY, prior_input=True), TINY
    x0, v0 = batch["x0"][:1], batch["v0"][:1]
    moving = (features(on, x0, v0) - features(off, x0, v0)).abs().max()
    z, xm = minimum("CCO")  # the batch's first molecule, at rest at its minimum
    rest = torch.zeros_like(x0)
    rest[0, :len(z)] = torch.from_numpy(xm)
    still = (features(on, rest, torch.zeros_like(x0)) - features(off, rest, torch.zeros_like(x0))).abs().max()
    assert moving > 1e-2 and still < 0.2 * moving, (moving, still)  # at rest only the residual force moves it


def test_prior_input_without_the_harmonic_prior_is_refused():
    with pytest.raises(ValueError, match="prior_input.*harmonic"):
        build_model(replace(TINY, prior="rotor", prior_input=True), 4, 0)


def test_harmonic_loss_weights_are_inverse_to_the_harmonic_floors_error(batch):
    """`train.loss_weighting=harmonic`: a window the harmonic_all floor misses by more weighs less."""
    from atomray.metrics import masked_mse
    from atomray.train.loss import window_weights

    b = dict(batch, mass=torch.from_numpy(atomic_masses(batch["z"].numpy())).double() * batch["mask"])
    harm = floor_predictions(b, ["harmonic_all"])["harmonic_all"]
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.01, 0.05], dtype=harm.dtype)[:, None, None, None]
    b["target"] = harm + scale * torch.randn(harm.shape, generator=g, dtype=harm.dtype) * b["mask"][:, None, :, None]
    w = window_weights(b, 1e-3, "harmonic")
    expect = 1 / (masked_mse(harm, b["target"], b["mask"]) + 1e-3)
    torch.testing.assert_close(w.double(), expect / expect.mean(), rtol=1e-4, atol=0)
    assert w[0] > 1.5 * w[1]
    assert not torch.allclose(w, window_weights(b, 1e-3, "rigid"))  # not the rigid floor's weights
