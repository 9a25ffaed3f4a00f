"""`atomray.priors.minima` and `atomray.priors.store`: MMFF94 finds a state's conformer basin,
GFN2-xTB refines the basin's minimum once, and the machine's basin store makes every process
use the first writer's minimum whatever order the states come in. Real RDKit MMFF94 and real
tblite GFN2-xTB on ethanol (an embedded conformer and tg80-mini frames) and salicylic acid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from atomray.data.augment import random_rotation
from atomray.priors import minima, store
from atomray.priors.minima import (BASIN_RMSD, BasinFinder, centroid_radii, gfn2_minimum, machine_finder,
                                   mmff_minimum, nearest_minimum, recent_mmff_minimum, rmsd_superposed, store_tag)
from atomray.priors.recent import Recent
from atomray.priors.store import BasinStore, write_once
from priorkit import ROOT, conformer, fresh_store, trajectory

torch.set_num_threads(1)
BASIN_FILES = "*/*/*/basin-*[0-9].npz"  # VERSION / refinement tag / atoms digest / basin-k.npz
# tg80-mini ethanol frames in two different basins (the OH rotor): 0 and 20 in one, 200 and 250 in another
ONE, ONE_AGAIN, OTHER, OTHER_AGAIN = 0, 20, 200, 250


def frame(k: int) -> np.ndarray:
    return trajectory("ethanol").positions[k].astype(np.float64)


def ethanol_z() -> np.ndarray:
    return np.asarray(trajectory("ethanol").atomic_numbers)


def test_states_of_one_basin_share_one_gfn2_refinement(tmp_path, monkeypatch):
    """Two differently displaced and turned copies of ethanol lie in one MMFF94 basin: one
    GFN2-xTB refinement (of the first state's MMFF94 minimum) serves both, and the store
    holds one basin."""
    fresh_store(monkeypatch, tmp_path)
    z, x = conformer("CCO")
    rng = np.random.default_rng(1)
    r = random_rotation(torch.Generator().manual_seed(2)).numpy()
    first = mmff_minimum(x, z) + rng.normal(0, 0.04, x.shape)
    second = (mmff_minimum(x, z) + rng.normal(0, 0.04, x.shape)) @ r.T + 2.0
    finder = machine_finder(z)
    assert finder.assign(first) == 0 and finder.assign(second) == 0
    assert len(finder) == 1
    minimum, refined = finder.minimum(0)
    assert refined
    np.testing.assert_array_equal(minimum, gfn2_minimum(mmff_minimum(first, z), z))  # the first state's refinement
    assert len(list(tmp_path.glob(BASIN_FILES))) == 1
    assert nearest_minimum(second, z)[0] is minimum


def gfn2_max_force(x: np.ndarray, z: np.ndarray) -> float:
    """Largest GFN2-xTB force on an atom (eV/Å) at geometry x."""
    from ase import Atoms
    from tblite.ase import TBLite

    atoms = Atoms(numbers=z, positions=x)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    return float(np.linalg.norm(atoms.get_forces(), axis=1).max())


def test_the_gfn2_minimum_is_stationary_for_gfn2_and_mmff94s_is_not():
    """Salicylic acid: the refinement ends where GFN2-xTB's forces vanish; MMFF94's own minimum,
    a different shape, is not a GFN2-xTB minimum (the bias the refinement removes)."""
    z, x = conformer("OC(=O)c1ccccc1O")
    mmff = mmff_minimum(x, z)
    gfn2 = gfn2_minimum(mmff, z)
    assert gfn2_max_force(gfn2, z) < 1.5 * minima.GFN2_FMAX
    assert gfn2_max_force(mmff, z) > 0.2
    assert rmsd_superposed(gfn2, mmff) > 0.02


def test_basins_are_numbered_by_the_first_writer_whatever_order_the_states_come_in(tmp_path, monkeypatch):
    """Finders A and B stand for two processes sharing the machine's store. A opens basin 0, B
    then meets a state of another basin: it reads A's basin first and opens basin 1. Each finder
    later uses the other's minimum bit for bit, and a third finder meeting the states in the
    reverse order gets the same numbers and minima. A finder without the store numbers the
    basins in the order it meets them and refines its own, slightly different, minimum."""
    fresh_store(monkeypatch, tmp_path)
    z = ethanol_z()
    a, b = (BasinFinder(z, BasinStore.for_atoms(z, store_tag())) for _ in range(2))
    assert rmsd_superposed(mmff_minimum(frame(ONE), z), mmff_minimum(frame(OTHER), z)) > BASIN_RMSD  # two basins
    assert a.assign(frame(ONE)) == 0
    assert b.assign(frame(OTHER)) == 1  # B read A's basin 0 before opening its own
    assert a.assign(frame(OTHER_AGAIN)) == 1  # A reads B's basin 1 instead of refining its own
    assert b.assign(frame(ONE_AGAIN)) == 0
    for k in (0, 1):
        assert a.minimum(k)[1] and b.minimum(k)[1]
        np.testing.assert_array_equal(a.minimum(k)[0], b.minimum(k)[0])
        assert a.files[k] == b.files[k]
    c = BasinFinder(z, BasinStore.for_atoms(z, store_tag()))
    assert [c.assign(frame(k)) for k in (OTHER_AGAIN, ONE_AGAIN, OTHER, ONE)] == [1, 0, 1, 0]
    for k in (0, 1):
        np.testing.assert_array_equal(c.minimum(k)[0], a.minimum(k)[0])
    assert len(list(tmp_path.glob(BASIN_FILES))) == 2
    alone = BasinFinder(z)  # no store: its first basin is the one it meets first
    assert alone.assign(frame(OTHER_AGAIN)) == 0 and alone.assign(frame(ONE)) == 1
    assert not np.array_equal(alone.minimum(0)[0], a.minimum(1)[0])  # refined from another state
    assert rmsd_superposed(alone.minimum(0)[0], a.minimum(1)[0]) < 1e-3  # ... of the same basin


def minimum_in_a_new_process(x: np.ndarray, z: np.ndarray, out: Path) -> dict[str, np.ndarray]:
    """The basin of x and its normal modes, computed by a fresh Python process (with this
    process's environment, so the same basin store or none)."""
    np.savez(out.with_suffix(".in.npz"), x=x, z=z)
    code = ("import sys, numpy as np\n"
            "from atomray.priors.minima import machine_finder\n"
            "from atomray.priors.modes import basin_modes\n"
            "a = np.load(sys.argv[1])\n"
            "finder = machine_finder(a['z'])\n"
            "basin = basin_modes(finder, finder.assign(a['x']))\n"
            "assert basin.refined\n"
            "np.savez(sys.argv[2], minimum=basin.minimum, omega=basin.omega, modes=basin.modes, force=basin.force)\n")
    subprocess.run([sys.executable, "-c", code, str(out.with_suffix(".in.npz")), str(out)],
                   check=True, env=os.environ.copy(), cwd=ROOT, timeout=300)
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def test_a_new_process_reads_the_first_processes_basin_and_modes(tmp_path, monkeypatch):
    """Ethanol met at one state here and at another state of its basin in a second process:
    with the basin store, the second process uses this one's refined minimum and normal modes
    bit for bit (so floors and priors do not depend on which process met a basin first), and
    the modes lie beside the minimum under a name that carries the Hessian's settings; without
    the store it refines its own minimum, which differs in the last digits."""
    from atomray.priors.modes import basin_modes, modes_suffix

    shared = fresh_store(monkeypatch, tmp_path / "store")
    z, x = conformer("CCO")
    rng = np.random.default_rng(3)
    here, there = (mmff_minimum(x, z) + rng.normal(0, 0.04, x.shape) for _ in range(2))
    finder = machine_finder(z)
    basin = basin_modes(finder, finder.assign(here))
    assert basin.refined
    other = minimum_in_a_new_process(there, z, tmp_path / "shared.npz")
    for key in ("minimum", "omega", "modes", "force"):
        np.testing.assert_array_equal(other[key], getattr(basin, key), err_msg=key)
    modes = list(shared.glob("*/*/*/basin-*.modes-*.npz"))
    assert [p.name for p in modes] == ["basin-00000" + modes_suffix()]
    assert "step" in modes_suffix() and "min" in modes_suffix()
    monkeypatch.setenv(store.ENV, "off")
    alone = minimum_in_a_new_process(there, z, tmp_path / "alone.npz")
    assert not np.array_equal(alone["minimum"], basin.minimum)
    assert rmsd_superposed(alone["minimum"], basin.minimum) < 1e-3  # the same basin, refined again


def test_write_once_keeps_the_first_writers_arrays(tmp_path):
    path = tmp_path / "basin-00000.npz"
    write_once(path, {"a": np.arange(3.0)})
    assert write_once(path, {"a": np.ones(3)}) == path
    np.testing.assert_array_equal(store.read(path)["a"], np.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left behind
    assert store.read(tmp_path / "absent.npz") is None


def test_the_store_says_whether_a_basin_was_refined(tmp_path, monkeypatch):
    """Layout v2: a basin whose refinement failed is stored with its MMFF94 minimum and
    refined False; a finder reading it hands out that minimum, unrefined."""
    fresh_store(monkeypatch, tmp_path)
    z, x = conformer("CCO")
    mmff = mmff_minimum(x, z)
    basins = BasinStore.for_atoms(z, store_tag())
    assert basins.folder.parent.parent.name == store.VERSION == "basins-v2"
    with basins.locked():
        path = basins.add(0, mmff, None)
    arrays = store.read(path)
    assert not arrays["refined"] and np.array_equal(arrays["minimum"], mmff)
    [(found, minimum, where)] = basins.read_from(0)
    assert minimum is None and where == path and np.array_equal(found, mmff)
    finder = machine_finder(z)
    assert finder.assign(x) == 0 and len(finder) == 1  # the stored basin, not a new refinement
    got, refined = finder.minimum(0)
    assert not refined and np.array_equal(got, mmff)
    assert nearest_minimum(x, z) == (got, False)


def test_the_store_can_be_turned_off_and_an_unmakeable_one_is_not_used(tmp_path, monkeypatch):
    z = ethanol_z()
    fresh_store(monkeypatch, tmp_path)
    assert machine_finder(z) is machine_finder(z)  # one finder per atom sequence and process
    assert machine_finder(z).store.folder.is_relative_to(tmp_path)
    assert machine_finder(z[::-1]) is not machine_finder(z)
    monkeypatch.setenv(store.ENV, "off")
    monkeypatch.setattr(minima, "_MACHINE", {})
    assert store.cache_root() is None and machine_finder(z).store is None
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(store.ENV, str(blocked))
    monkeypatch.setattr(minima, "_MACHINE", {})
    assert BasinStore.for_atoms(z, store_tag()) is None and machine_finder(z).store is None
    monkeypatch.delenv(store.ENV)
    assert store.cache_root() == Path.home() / ".cache" / "atomray" / store.VERSION


def test_a_state_is_minimised_once_while_it_is_recent(monkeypatch):
    """A state met twice (a window scored twice, a rollout revisiting it) is minimised by
    MMFF94 once, and every caller gets its own copy; the least recently used state leaves first."""
    z, x = conformer("CCO")
    x = x + np.random.default_rng(1).normal(0, 0.05, x.shape)
    calls = []
    real = minima.mmff_minimum
    monkeypatch.setattr(minima, "mmff_minimum", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(minima, "_RECENT", Recent(max_items=minima.RECENT_STATES))
    first = recent_mmff_minimum(x, z)
    first += 1.0  # a caller's change must not reach the next one
    second = recent_mmff_minimum(x, z)
    assert len(calls) == 1
    np.testing.assert_allclose(second, first - 1.0)
    monkeypatch.setattr(minima._RECENT, "max_items", 1)
    recent_mmff_minimum(x + 0.01, z)  # pushes x out
    recent_mmff_minimum(x, z)
    assert len(calls) == 3


def test_rmsd_superposed_ignores_rotation_and_translation_but_not_shape():
    g = np.random.default_rng(4)
    q = g.normal(size=(8, 3))
    turned = np.stack([q @ random_rotation(torch.Generator().manual_seed(k)).numpy().T + k for k in range(3)])
    np.testing.assert_allclose(rmsd_superposed(turned, q), 0.0, atol=1e-10)
    centred = q - q.mean(0)
    grown = 1.1 * centred + 5.0  # a size change no rigid motion undoes: 0.1 × the RMS radius
    expect = 0.1 * np.sqrt((centred ** 2).sum(-1).mean())
    np.testing.assert_allclose(rmsd_superposed(np.stack([grown, turned[1]]), q), [expect, 0.0], atol=1e-10)


def test_the_basin_search_superposes_few_basins_and_finds_the_first_within_basin_rmsd(monkeypatch):
    """The basins' index (`centroid_radii`) is a lower bound on the superposed RMSD, so the
    search returns what superposing every basin returns, while superposing only the basins whose
    bound lets them match. Many near-identical basins (turned, moved, some within BASIN_RMSD of
    the queries, some just outside) probe the edge."""
    g = np.random.default_rng(7)
    shape = g.normal(size=(12, 3)) * 1.5
    turn = [random_rotation(torch.Generator().manual_seed(k)).numpy() for k in range(400)]
    spread = g.choice([0.01, 0.03, 0.3, 1.0], p=[0.05, 0.05, 0.45, 0.45], size=400)
    basins = [(shape + g.normal(size=(12, 3)) * spread[k]) @ turn[k].T + g.normal(size=3) for k in range(400)]
    finder = BasinFinder(np.full(12, 6))
    for b in basins:
        finder._add(b, None)
    superposed = []
    real = minima.rmsd_superposed
    monkeypatch.setattr(minima, "rmsd_superposed", lambda p, q: superposed.append(len(p)) or real(p, q))
    found = 0
    for k in range(60):
        query = (basins[k] + g.normal(size=(12, 3)) * 0.02) @ turn[-k - 1].T
        start = int(g.integers(0, 3))
        rmsd = real(np.stack(basins[start:]), query)
        assert np.all(np.sqrt(np.square(centroid_radii(np.stack(basins[start:])) - centroid_radii(query)).mean(-1))
                      <= rmsd + 1e-12)
        close = np.flatnonzero(rmsd < BASIN_RMSD)
        expect = start + int(close[0]) if close.size else -1
        assert finder._match(query, start) == expect
        found += expect >= 0
    assert found > 20  # the queries do match basins, not only miss them
    assert sum(superposed) < 0.2 * 60 * 400, "the search superposed (nearly) every basin: the index is not used"


def test_a_molecule_mmff_cannot_type_gets_no_basin_and_a_warning(tmp_path, monkeypatch):
    fresh_store(monkeypatch, tmp_path)
    monkeypatch.setattr(minima, "_WARNED", set())
    x = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]])  # two helium atoms
    z = np.array([2, 2])
    with pytest.warns(UserWarning, match="MMFF94 cannot relax He2"):
        assert machine_finder(z).assign(x) == -1
    assert nearest_minimum(x, z) == (None, False)
    assert len(machine_finder(z)) == 0 and not list(tmp_path.glob(BASIN_FILES))


def squeezed_benzene():
    """(start, squeezed, z, para pair): benzene embedded from SMILES, and the same with two para
    carbons pulled to 1.95 Å apart — close enough that perception from the geometry adds a
    transannular bond."""
    from atomray.predict import state_from_smiles

    s = state_from_smiles("c1ccccc1", 300.0, seed=0)
    x, z = s.positions.copy(), s.atomic_numbers
    carbons = np.flatnonzero(z == 6)
    a = carbons[0]
    para = carbons[int(np.argmax([np.linalg.norm(x[a] - x[k]) for k in carbons]))]
    mid = (x[a] + x[para]) / 2
    x[[a, para]] = mid + 0.7 * (x[[a, para]] - mid)
    return s.positions, x, z, (a, para)


def test_a_kept_bond_graph_keeps_the_molecule_whatever_the_geometry(tmp_path, monkeypatch):
    """Perceived afresh, a squeezed benzene ring gains a bond and MMFF94 relaxes it to Dewar
    benzene (para carbons bonded, ~1.5 Å); with the start's bond graph it relaxes to benzene
    (para carbons ~2.8 Å apart) — in `mmff_minimum` and in the basin a rollout's prior uses
    (`StateBasins` with the graph, through the machine's basin store)."""
    from atomray.priors.minima import molecule_bonds
    from atomray.priors.paths import StateBasins

    fresh_store(monkeypatch, tmp_path)
    start, squeezed, z, (a, para) = squeezed_benzene()
    graph = molecule_bonds(start, z)
    assert len(graph) == 12 and len(molecule_bonds(squeezed, z)) == 13

    def para_distance(x):
        return float(np.linalg.norm(x[a] - x[para]))

    assert para_distance(mmff_minimum(squeezed, z)) < 1.7  # Dewar benzene
    assert para_distance(mmff_minimum(squeezed, z, bonds=graph)) > 2.6  # benzene
    frames = np.zeros(1, np.int64)
    kept = StateBasins({"m": graph})("m", frames, frames, squeezed[None], z, len(z))[0]
    perceived = StateBasins()("other", frames, frames, squeezed[None], z, len(z))[0]
    assert para_distance(kept.minimum) > 2.6 and para_distance(perceived.minimum) < 1.7
