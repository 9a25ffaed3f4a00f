"""`atomray.anharmonic`: MMFF94 molecular dynamics from the start state, the `mmff_md` and
`anharmonic_all` floors and `model.anharmonic`. Real RDKit MMFF94 and tblite GFN2-xTB."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from atomray.anharmonic import KCAL_MOL_A_U, TAU_MD_FS, blend_md, mmff_acceleration, mmff_paths, verlet_path
from atomray.config import ConfigError, load_config
from atomray.data.windows import atomic_masses
from atomray.evaluate import floor_predictions
from atomray.recent import Recent
from atomray.model import build_model

from test_vibration import TINY, batch, minimum  # noqa: F401 (the batch fixture)

torch.set_num_threads(1)


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
    rng = np.random.default_rng(2)
    mass = atomic_masses(z).astype(float)
    v0 = rng.normal(0, 1, xm.shape) * np.sqrt(0.0259 * 9.648533e-3 / mass)[:, None]  # kT/m in Å²/fs²
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


@pytest.mark.parametrize("name, inputs", [("atom", False), ("atom", True), ("egno", False)])
def test_a_fresh_model_with_the_anharmonic_prior_predicts_the_anharmonic_all_floor(batch, name, inputs):
    torch.manual_seed(0)
    cfg = replace(TINY, name=name, anharmonic=True, relaxed_input=inputs, prior_input=inputs)
    model = build_model(cfg, 4, 0).double().eval()
    with torch.no_grad():
        out = model(batch["x0"], batch["v0"], batch["z"], batch["lags_fs"], batch["mask"])
    m = batch["mask"].double()
    mass = torch.from_numpy(atomic_masses(batch["z"].numpy())).double() * m
    floor = floor_predictions({**batch, "mass": mass}, ["anharmonic_all", "harmonic_all", "mmff_md"])
    torch.testing.assert_close(out, floor["anharmonic_all"] * m[:, None, :, None], atol=1e-7, rtol=1e-7)
    # the hand-over: MMFF94 MD at 5 fs (weight e^(−5/150)), the harmonic path at 1 ps (e^(−1000/150))
    gap = (floor["mmff_md"] - floor["harmonic_all"]).norm(dim=-1).amax(-1)  # (B, P)
    assert (gap[:, 1] > 1e-3).all()  # the two differ by 20 fs
    np.testing.assert_allclose((out - floor["harmonic_all"])[:, 3].norm(dim=-1).amax(-1),
                               np.exp(-1000 / TAU_MD_FS) * gap[:, 3], rtol=1e-4, atol=1e-9)


def test_the_anharmonic_prior_learns_its_hand_over_time(batch):
    model = build_model(replace(TINY, anharmonic=True), 4, 0).double()
    out = model(batch["x0"], batch["v0"], batch["z"], batch["lags_fs"], batch["mask"])
    out.square().sum().backward()
    assert model.prior.md_log_tau.grad.abs() > 0


def test_a_state_mmff94_cannot_type_keeps_the_harmonic_path():
    """Two carbon atoms 4 Å apart: no bonds MMFF94 can type. The MD path is NaN, with one
    warning, and the hand-over leaves the harmonic path as it is."""
    x = torch.tensor([[[0.0, 0.0, 0.0], [4.0, 0.0, 0.0]]], dtype=torch.float64)
    lags = torch.tensor([[5.0, 50.0]], dtype=torch.float64)
    with pytest.warns(UserWarning, match="MMFF94 cannot type C2"):
        md = mmff_paths(x, torch.zeros_like(x), torch.tensor([[6, 6]]), torch.ones(1, 2, dtype=torch.bool), lags)
    assert torch.isnan(md).all()
    harmonic = x[:, None].expand(1, 2, 2, 3) + 0.1
    torch.testing.assert_close(blend_md(harmonic, md, lags), harmonic)


def test_anharmonic_needs_the_harmonic_prior(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  prior: rotor\n  anharmonic: true\ndata:\n  context_atoms: all\n")
    with pytest.raises(ConfigError, match="model.prior"):
        load_config(path, [])


def test_md_results_are_kept_within_the_byte_budget(monkeypatch):
    """The same inputs integrate once while they fit the budget (fixed evaluation batches,
    every epoch); the least recently used results leave first when it is exceeded."""
    import atomray.anharmonic as anharmonic

    z, xm = minimum("CCO")
    runs = []
    real = anharmonic._integrate
    monkeypatch.setattr(anharmonic, "_integrate", lambda *a: runs.append(1) or real(*a))
    monkeypatch.setattr(anharmonic, "_RECENT", Recent(max_bytes=anharmonic.CACHE_BYTES))
    x = torch.from_numpy(xm)[None]
    args = (torch.zeros_like(x), torch.from_numpy(z)[None], torch.ones(1, len(z), dtype=torch.bool))
    one = lambda lag: mmff_paths(x, *args, torch.tensor([[lag]], dtype=torch.float64))  # noqa: E731
    first = one(20.0)
    torch.testing.assert_close(one(20.0), first)
    assert len(runs) == 1
    monkeypatch.setattr(anharmonic._RECENT, "max_bytes", 2 * first.numel() * 8)  # room for two results
    one(30.0), one(40.0)  # 20 fs is now the least recently used: it leaves
    one(40.0)
    assert len(runs) == 3
    one(20.0)
    assert len(runs) == 4
