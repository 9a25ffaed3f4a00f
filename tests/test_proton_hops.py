"""Proton hops (`atomray.proton_hops`, `Control(proton_hops=True)`): a hop carries the
H-bonded enol of acetylacetone over to its other tautomer and back, keeping the centre of mass; the GFN2-xTB Metropolis rule refuses an uphill hop in the cold; a rollout
moves the prior's basin with the proton; and the stability rule does not call a transfer a
break."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from atomray.config import RunConfig
from atomray.data.frames import DataError
from atomray.elements import atomic_masses
from atomray.predict import InitialState
from atomray.proton_hops import ProtonHops, move_bond, reflect_proton
from atomray.rollout import Control, rollout
from atomray.structure import bonds_from_geometry, hydrogen_bond_sites, stability

ENOL = Path(__file__).resolve().parents[1] / "benchmarks" / "structures" / "acetylacetone_z_enol.xyz"
H, DONOR, ACCEPTOR = 10, 2, 6  # the enol's proton, its oxygen, the carbonyl oxygen


def enol() -> tuple[np.ndarray, np.ndarray]:
    from ase.io import read

    atoms = read(ENOL)
    return atoms.positions.astype(np.float64), atoms.numbers.astype(np.int64)


def test_the_enols_hydrogen_bond_is_its_one_site():
    x, z = enol()
    assert hydrogen_bond_sites(x, z) == [(H, DONOR, ACCEPTOR)]
    far = x.copy()
    far[ACCEPTOR] += 2.0 * (x[ACCEPTOR] - x[H]) / np.linalg.norm(x[ACCEPTOR] - x[H])  # the acceptor 2 Å further
    assert hydrogen_bond_sites(far, z) == []


def test_a_carboxylic_acids_own_carbonyl_is_no_acceptor():
    """Formic acid with its C–O–H bent to 100°: the hydroxyl hydrogen is 2.17 Å from the
    carbonyl oxygen of its own group (within the acceptor distance), but the two oxygens share
    their carbon, so no hydrogen bond's site (a hop there would be a 1,3 shift over a high
    barrier: it broke a rollout of aspirin); the enol's oxygens, four bonds apart, are one."""
    x = np.array([[0.0, 0.0, 0.0], [1.34, 0.0, 0.0], [-0.659, 1.015, 0.0], [1.508, 0.955, 0.0], [-0.59, -0.92, 0.0]])
    z = np.array([6, 8, 8, 1, 1])
    assert 2.0 < np.linalg.norm(x[3] - x[2]) < 2.2
    assert hydrogen_bond_sites(x, z) == []


def test_the_reflection_that_seeds_the_other_tautomer_is_its_own_inverse_and_keeps_the_centre_of_mass():
    x, z = enol()
    m = atomic_masses(z).astype(np.float64)
    x2 = reflect_proton(x, m, H, DONOR, ACCEPTOR)
    assert np.linalg.norm(x2[H] - x2[ACCEPTOR]) == pytest.approx(np.linalg.norm(x[H] - x[DONOR]), abs=1e-12)
    np.testing.assert_allclose((m[:, None] * x2).sum(0), (m[:, None] * x).sum(0), atol=1e-12)
    np.testing.assert_allclose(reflect_proton(x2, m, H, ACCEPTOR, DONOR), x, atol=1e-12)
    assert move_bond(np.array([[0, 1], [DONOR, H]]), H, DONOR, ACCEPTOR).tolist() == [[0, 1], [H, ACCEPTOR]]


def test_a_hop_carries_the_enol_over_to_its_other_tautomer_and_back(tmp_path, monkeypatch):
    """Hot enough that every hop is taken: the first puts the proton on the carbonyl oxygen and
    exchanges the two C–O bond lengths (the heavy atoms' bond pattern moves with it) and keeps the
    centre of mass; the second brings the state back (to second order)."""
    from atomray.priors import minima, store

    monkeypatch.setenv(store.ENV, str(tmp_path / "store"))
    monkeypatch.setattr(minima, "_MACHINE", {})
    x, z = enol()
    m = atomic_masses(z).astype(np.float64)
    hops = ProtonHops(x[None], [z], 1e7, seed=0)
    state = x[None].copy()
    assert hops(state, np.zeros(1, bool)) == [(0, H, DONOR, ACCEPTOR)]
    y = state[0]
    assert np.linalg.norm(y[H] - y[ACCEPTOR]) < 1.05 < 1.5 < np.linalg.norm(y[H] - y[DONOR])
    co = lambda p: (np.linalg.norm(p[1] - p[DONOR]), np.linalg.norm(p[4] - p[ACCEPTOR]))  # enol C–O, C=O
    np.testing.assert_allclose(co(y), co(x)[::-1], atol=0.01)
    np.testing.assert_allclose((m[:, None] * y).sum(0), (m[:, None] * x).sum(0), atol=1e-9)
    assert hops.sites == [[(H, ACCEPTOR, DONOR)]]
    assert hops(state, np.zeros(1, bool)) == [(0, H, ACCEPTOR, DONOR)]
    assert np.abs(state[0] - x).max() < 1e-3


def test_the_metropolis_rule_refuses_an_uphill_hop_in_the_cold(tmp_path, monkeypatch):
    """The committed enol sits a little below the store's refined minimum, so its hop costs a
    few meV: at 1 K (exp(−ΔU / k_B T) < 1e-30) it is refused every time."""
    from atomray.priors import minima, store
    from atomray.priors.rigid import kabsch_np
    from atomray.metropolis import gfn2_engine

    monkeypatch.setenv(store.ENV, str(tmp_path / "store"))
    monkeypatch.setattr(minima, "_MACHINE", {})
    x, z = enol()
    hops = ProtonHops(x[None], [z], 1.0, seed=0)
    minimum, shift, weight = hops.shifts[0][(H, DONOR)]
    rot, _, _ = kabsch_np(minimum, x, weight)
    engine = gfn2_engine(z, "enol")
    rise = engine.forces(x + shift @ rot.T)[0] - engine.forces(x)[0]
    assert rise > 0.006  # eV: 70 k_B T at 1 K
    for _ in range(20):
        assert hops(x[None].copy(), np.zeros(1, bool)) == []
    assert hops.attempts.tolist() == [20] and hops.accepted.tolist() == [0]


def test_a_proton_transfer_is_not_a_break():
    """A trajectory whose proton moves to its acceptor keeps every bond by the stability rule given
    the site (the O–H bond measured to the nearer oxygen) and breaks it without."""
    x, z = enol()
    m = atomic_masses(z).astype(np.float64)
    moved = reflect_proton(x, m, H, DONOR, ACCEPTOR)
    traj = np.linspace(0.0, 1.0, 21)[:, None, None] * (moved - x) + x  # (21, N, 3): the proton walks across
    top = bonds_from_geometry(z, x)
    assert stability(traj, top, transfers=hydrogen_bond_sites(x, z)).stable
    broken = stability(traj, top)
    assert not broken.stable and broken.kind == "bond_stretched" and set(broken.pair) == {DONOR, H}


def test_proton_hops_need_momentum_control():
    with pytest.raises(DataError, match="need momentum control"):
        Control(proton_hops=True)


def test_a_rollout_moves_the_priors_basin_with_the_proton(tmp_path, monkeypatch):
    """At 10⁷ K every hop is taken: the proton changes side after every step. Each step's prior
    (an untrained ATOM predicts its harmonic prior alone) must then vibrate about the basin of
    the proton's new oxygen, so at the step's frames before the next hop the proton stays bonded
    to the oxygen it moved to (without moving the bond in the prior's graph, the old basin's
    vibration throws it back)."""
    from atomray.model import build_model
    from atomray.priors import minima, store

    monkeypatch.setenv(store.ENV, str(tmp_path / "store"))
    monkeypatch.setattr(minima, "_MACHINE", {})
    x, z = enol()
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, embed_dim=16, num_layers=1, num_heads=2),
                              data=dataclasses.replace(cfg.data, context_atoms="all", num_lags=8, rwpe_k=4))
    model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k).double().eval()
    state = InitialState("enol", z, x, np.zeros_like(x))
    traj = rollout(model, cfg, [state], total_fs=200.0, step_fs=20.0, dtype=torch.float64,
                   control=Control(momentum=True, proton_hops=True, hop_every=1, temperature_k=1e7))
    assert traj.hops.tolist() == [10] and traj.hop_attempts.tolist() == [10]
    frames = traj.positions[0][1:].reshape(10, 4, len(z), 3)  # per step: 5, 10, 15 fs before the hop; 20 fs after
    donors = [ACCEPTOR if k % 2 == 0 else DONOR for k in range(10)]  # the proton's oxygen after step k's hop
    for k in range(1, 10):
        within = frames[k, :3, H] - frames[k, :3, donors[k - 1]]
        assert np.linalg.norm(within, axis=-1).max() < 1.2, (k, np.linalg.norm(within, axis=-1))
    assert np.linalg.norm(frames[-1, -1, H] - frames[-1, -1, donors[-1]]) < 1.2


def test_the_per_tautomer_reading_relabels_the_other_tautomer_onto_the_first():
    """`benchmarks/proton_transfers.py`'s tautomer map sends the enol's hydroxyl oxygen to the
    carbonyl one and back; frames of the other tautomer (the same geometries, relabelled) are
    far from the first's in raw W1 (the O–H runs 1.6 Å) and identical per tautomer; a molecule
    whose two tautomers differ (one methyl hydrogen made a fluorine) has no map."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("proton_transfers", ENOL.parents[1] / "proton_transfers.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    x, z = enol()
    m = bench.tautomer_map(z, x, H, DONOR, ACCEPTOR)
    assert (m[DONOR], m[ACCEPTOR], m[H]) == (ACCEPTOR, DONOR, H)
    rng = np.random.default_rng(0)
    ref = x + 0.02 * rng.standard_normal((40, *x.shape))
    other = ref[:, np.argsort(m)]  # atom m[i] of each frame where atom i was: the proton on the acceptor
    assert np.linalg.norm(other[:, H] - other[:, ACCEPTOR], axis=-1).max() < 1.2
    row = bench.tautomer_w1([np.concatenate([other[:1], other])], ref, z, (H, DONOR, ACCEPTOR))
    assert row["raw"][0] > 0.03 and row["per_tautomer"][0] < 1e-9, row
    methyl_h = next(i for i in range(len(z)) if z[i] == 1 and i != H)
    asymmetric = z.copy()
    asymmetric[methyl_h] = 9
    assert bench.tautomer_map(asymmetric, x, H, DONOR, ACCEPTOR) is None


def test_proton_transfers_judges_several_reference_runs_joined(tmp_path):
    """`benchmarks/proton_transfers.py --reference A B` prints a transfer line per run and one W1
    line against the two joined (the runs of `jobs/rollout.py --reference-runs`), not against A."""
    import importlib.util

    import ase
    import ase.io

    spec = importlib.util.spec_from_file_location("proton_transfers", ENOL.parents[1] / "proton_transfers.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    x, z = enol()
    m = bench.tautomer_map(z, x, H, DONOR, ACCEPTOR)
    rng = np.random.default_rng(1)
    first = x + 0.02 * rng.standard_normal((30, *x.shape))
    second = (x + 0.02 * rng.standard_normal((30, *x.shape)))[:, np.argsort(m)]  # the proton on the acceptor
    for name, frames in (("a", first), ("b", second)):
        np.savez(tmp_path / f"reference-{name}.npz", source=name, positions=frames, velocities=0 * frames, dt_fs=10.0)
    rolls = tmp_path / "rolls"
    rolls.mkdir()
    roll = x + 0.02 * rng.standard_normal((20, *x.shape))
    ase.io.write(rolls / "enol_0.extxyz", [ase.Atoms(numbers=z, positions=p) for p in roll])
    rows = bench.main(["--rollouts", str(rolls), "--reference", str(tmp_path / "reference-a.npz"),
                       str(tmp_path / "reference-b.npz")])
    sources = [r["source"] for r in rows]
    assert sources == ["reference-a.npz", "reference-b.npz", "enol_0.extxyz", "w1"], sources
    assert rows[0]["fraction_on_second"] == 0.0 and rows[1]["fraction_on_second"] == 1.0
    joined = bench.tautomer_w1([roll], np.concatenate([first, second]), z, (H, DONOR, ACCEPTOR))
    alone = bench.tautomer_w1([roll], first, z, (H, DONOR, ACCEPTOR))
    assert rows[-1]["raw"] == joined["raw"] and rows[-1]["raw"] != alone["raw"]
