"""Rotor turns (`atomray.rotor_turns`, `Control(rotor_turns=True)`): a turn moves only a
terminal group's hydrogens, on their circles, and undoes itself; the GFN2-xTB Metropolis rule
refuses most turns in the cold and takes every one when hot; a rollout counts them and keeps
its start's momenta. Torsion turns (`Control(torsion_turns=True)`): the rotatable heavy-atom
bonds found, amides left out; a turn moves one side rigidly by a rotamer's angle, and takes
acetylacetone's enol between s-cis and s-trans. Matched torsions (`Control.match_torsions_a`):
a step from a state between two rotamers keeps its bonds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from atomray.config import RunConfig
from atomray.data.frames import DataError
from atomray.predict import InitialState
from atomray.priors import modes
from atomray.priors.modes import rotor_groups, torsion_groups
from atomray.rollout import Control, model_step, rollout
from atomray.rotor_turns import TORSION_ANGLES, RotorTurns, TorsionTurns, turn_group
from atomray.structure import bonds_from_geometry

ENOL = Path(__file__).resolve().parents[1] / "benchmarks" / "structures" / "acetylacetone_z_enol.xyz"


def enol() -> tuple[np.ndarray, np.ndarray, list]:
    from ase.io import read

    atoms = read(ENOL)
    x, z = atoms.positions.astype(np.float64), atoms.numbers.astype(np.int64)
    return x, z, rotor_groups(z, bonds_from_geometry(z, x).bonds)


def tiny_model():
    """(an untrained one-layer ATOM in float64, its RunConfig): the rollouts here test the moves."""
    from atomray.model import build_model

    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, embed_dim=16, num_layers=1, num_heads=2),
                              data=dataclasses.replace(cfg.data, context_atoms="all", num_lags=8, rwpe_k=4))
    return build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k).double().eval(), cfg


def test_a_turn_moves_only_the_groups_hydrogens_on_their_circles_and_undoes_itself():
    x, z, groups = enol()
    y, c, hs = next(g for g in groups if len(g[2]) == 3)  # a methyl
    turned = turn_group(x, y, c, hs, np.radians(40.0))
    others = np.setdiff1d(np.arange(len(z)), hs)
    np.testing.assert_array_equal(turned[others], x[others])
    axis = (x[c] - x[y]) / np.linalg.norm(x[c] - x[y])
    for a in (x, turned):  # each hydrogen's height along the axis and distance from X kept
        np.testing.assert_allclose((a[hs] - a[c]) @ axis, (x[hs] - x[c]) @ axis, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(a[hs] - a[c], axis=-1), np.linalg.norm(x[hs] - x[c], axis=-1),
                                   atol=1e-12)
    assert np.abs(turned[hs] - x[hs]).max() > 0.5
    np.testing.assert_allclose(turn_group(turned, y, c, hs, np.radians(-40.0)), x, atol=1e-12)


@pytest.mark.parametrize("energy", ["gfn2", "mmff"])
def test_the_metropolis_rule_refuses_most_turns_in_the_cold_and_takes_every_one_hot(energy):
    """The enol's two methyls and its H-bonded hydroxyl, 10 rounds each: at 1 K only turns of a
    degree or so cost less than k_B T; at 10⁷ K every turn is taken (on GFN2-xTB's energy and on
    MMFF94's)."""
    x, z, groups = enol()
    assert len(groups) == 3
    taken = {}
    for t in (1.0, 1e7):
        turns = RotorTurns(x[None], [z], [groups], t, seed=0, every=1, energy=energy,
                           bonds=[bonds_from_geometry(z, x).bonds])
        state = x[None].copy()
        for _ in range(10):
            turns(state, np.zeros(1, bool))
        assert turns.attempts.tolist() == [30]
        taken[t] = int(turns.accepted[0])
    assert taken[1.0] < 8 and taken[1e7] == 30, taken


def test_a_turn_with_the_groups_symmetry_jump_carries_a_methyl_to_its_next_rotamer():
    """Butane's methyls (MMFF94 barrier ~3 kcal/mol; hexane's in GFN2-xTB MD reach another rotamer
    20 times per 100 ps), 100 rounds of turns at 300 K from three seeds: a turn of at most 60°
    lands at most on the eclipsed top and is refused there, so an H-C-C-C dihedral reaches another
    rotamer a few times at most; with the jump of k·120° it does at least ten times as often. A
    hydroxyl (one hydrogen) gets no jump: the same draws with and without."""
    from atomray.predict import state_from_smiles
    from atomray.structure import rotamer_transitions

    start = state_from_smiles("CCCC", 300.0, 0)
    x, z = start.positions, start.atomic_numbers
    bonds = bonds_from_geometry(z, x).bonds
    groups = rotor_groups(z, bonds)
    h = next(j for i, j in bonds if i == 0 and z[j] == 1)
    reached = {}
    for jumps in (False, True):
        reached[jumps] = 0
        for seed in range(3):
            turns = RotorTurns(x[None], [z], [groups], 300.0, seed=seed, every=1, energy="mmff", bonds=[bonds],
                               jumps=jumps)
            state, frames = x[None].copy(), [x]
            for _ in range(100):
                turns(state, np.zeros(1, bool))
                frames.append(state[0].copy())
            reached[jumps] += rotamer_transitions(np.array(frames), [[h, 0, 1, 2]])
    assert reached[True] >= 10 * max(reached[False], 1), reached
    plain, jumping = (RotorTurns(x[None], [z], [groups], 300.0, seed=0, jumps=j) for j in (False, True))
    assert [plain.angle(1) for _ in range(5)] == [jumping.angle(1) for _ in range(5)]
    assert max(abs(jumping.angle(3)) for _ in range(50)) > np.radians(100)


def test_a_rollout_counts_its_turns_and_keeps_its_momenta(tmp_path, monkeypatch):
    from atomray.priors import minima, store

    monkeypatch.setenv(store.ENV, str(tmp_path / "store"))
    monkeypatch.setattr(minima, "_MACHINE", {})
    with pytest.raises(DataError, match="need momentum control"):
        Control(rotor_turns=True)
    with pytest.raises(DataError, match=">= 1 steps"):
        Control(momentum=True, rotor_turns=True, turn_every=0)
    x, z, _ = enol()
    model, cfg = tiny_model()
    rng = np.random.default_rng(0)
    v = 0.002 * rng.standard_normal(x.shape)
    state = InitialState("enol", z, x, v)
    traj = rollout(model, cfg, [state], total_fs=100.0, step_fs=20.0, dtype=torch.float64,
                   control=Control(momentum=True, rotor_turns=True, turn_every=1, temperature_k=1e7))
    assert traj.turn_attempts.tolist() == [15] and traj.turns.tolist() == [15]
    from atomray.elements import atomic_masses

    m = atomic_masses(z).astype(np.float64)[:, None]
    com = lambda p: (m * p).sum(0) / m.sum()  # noqa: E731
    end_x, end_v = traj.positions[0][-1], traj.step_velocities[0][-1]
    np.testing.assert_allclose((m * end_v).sum(0), (m * v).sum(0), atol=1e-9)
    np.testing.assert_allclose((m * np.cross(end_x - com(end_x), end_v)).sum(0),
                               (m * np.cross(x - com(x), v)).sum(0), atol=1e-8)


def embedded(smiles: str) -> tuple[np.ndarray, np.ndarray]:
    from atomray.predict import state_from_smiles

    state = state_from_smiles(smiles, 300.0, 0)
    return state.positions.astype(np.float64), np.asarray(state.atomic_numbers)


def dihedral(x: np.ndarray, a: int, b: int, c: int, d: int) -> float:
    """The dihedral a–b–c–d (degrees) of x (N, 3)."""
    return float(np.degrees(modes.dihedral(x, a, b, c, d)))


@pytest.mark.parametrize("smiles, expect", [
    ("CC(O)=CC(C)=O", [(3, 4)]),  # the enol: only the single bond between C=C and C=O
    ("CCCCCC", [(1, 2), (2, 3), (3, 4)]),  # hexane: the three inner C–C
    ("CC(=O)NC", []),  # N-methylacetamide: the amide's C–N is left out, the rest are terminal
    ("Cc1ccccc1", []),  # toluene: a ring and a terminal methyl
])
def test_torsion_groups_are_the_rotatable_heavy_atom_bonds_each_turning_its_smaller_side(smiles, expect):
    from atomray.priors.minima import molecule_bonds

    x, z = embedded(smiles)
    bonds = molecule_bonds(x, z)
    groups = torsion_groups(x, z, bonds)
    assert sorted(tuple(sorted((y, c))) for y, c, _ in groups) == expect
    for y, c, side in groups:
        moving = set(side) | {c}
        crossing = [(a, b) for a, b in bonds.tolist() if (a in moving) != (b in moving)]
        assert sorted(crossing[0]) == sorted((y, c)) and len(crossing) == 1  # only Y–X joins the two sides
        assert len(moving) <= len(z) - len(moving)  # the smaller side turns


def test_a_torsion_turn_moves_one_side_rigidly_by_a_rotamers_angle_and_switches_the_enol():
    """The enol's C3–C4 torsion, 40 rounds at 1000 K on MMFF94 (from the embedded minimum, s-trans,
    the three turns cost 1.6–4.3 kcal/mol there: at 300 K nearly all are refused): every accepted
    turn changes the C1–C3–C4–O6 dihedral by 120°, −120° or 180° and no bond length, and turns the
    side's velocities with it; s-cis and s-trans are both visited."""
    from atomray.priors.minima import molecule_bonds

    x, z = embedded("CC(O)=CC(C)=O")
    bonds = molecule_bonds(x, z)
    groups = torsion_groups(x, z, bonds)
    turns = TorsionTurns(x[None], [z], [groups], 1000.0, seed=0, every=1, energy="mmff", bonds=[bonds])
    state = x[None].copy()
    v = np.random.default_rng(1).normal(size=state.shape)
    cis = [abs(dihedral(x, 1, 3, 4, 6)) < 90]
    _, _, side = groups[0]
    fixed = np.setdiff1d(np.arange(len(z)), side)
    for _ in range(40):
        before, v_before = state[0].copy(), v[0].copy()
        for _, _, angle in turns(state, np.zeros(1, bool), v):
            # the turned side's velocities turn with it (one rotation keeps every velocity-offset product)
            np.testing.assert_array_equal(v[0][fixed], v_before[fixed])
            np.testing.assert_allclose(v[0][side] @ (state[0][side] - state[0][4]).T,
                                       v_before[side] @ (before[side] - before[4]).T, atol=1e-9)
            assert np.isclose(np.radians(angle), TORSION_ANGLES).any()
            change = (dihedral(state[0], 1, 3, 4, 6) - dihedral(before, 1, 3, 4, 6)) % 360.0
            assert min(abs(change - a) for a in (120.0, 240.0, 180.0)) < 1e-6
            np.testing.assert_allclose(np.linalg.norm(state[0][bonds[:, 0]] - state[0][bonds[:, 1]], axis=-1),
                                       np.linalg.norm(before[bonds[:, 0]] - before[bonds[:, 1]], axis=-1), atol=1e-9)
        cis.append(abs(dihedral(state[0], 1, 3, 4, 6)) < 90)
    assert turns.attempts.tolist() == [40] and 0 < turns.accepted[0] < 40
    assert len(set(cis)) == 2, "the enol never left its start's rotamer"


def test_a_rollout_counts_its_torsion_turns():
    with pytest.raises(DataError, match="torsion turns need momentum control"):
        Control(torsion_turns=True)
    x, z = embedded("CCCCCC")
    model, cfg = tiny_model()
    state = InitialState("hexane", z, x, np.zeros_like(x))
    traj = rollout(model, cfg, [state], total_fs=100.0, step_fs=20.0, dtype=torch.float64,
                   control=Control(momentum=True, torsion_turns=True, turn_every=1, turn_energy="mmff",
                                   temperature_k=1e7))
    assert traj.torsion_attempts.tolist() == [15] and traj.torsions.tolist() == [15]
    assert traj.turns is None


def test_a_step_from_between_two_rotamers_keeps_its_bonds_with_the_prior_about_the_matched_minimum():
    """Butane with one end turned 60° about its middle bond: eclipsed, between two rotamers, far
    from the minimum of the basin it relaxes to. One 50-fs step of an untrained model (its zero
    correction: the prior alone) with thermal velocities: with `match_torsions_a` 0.5 Å the prior
    vibrates about the minimum with the state's torsion and every bond keeps 95 % of its length;
    about the minimum itself the modes' straight chords shrink a bond below 93 %. An RMS that is
    not > 0 is refused."""
    from atomray.elements import atomic_masses
    from atomray.priors.rigid import rotated

    with pytest.raises(DataError, match="RMS displacement > 0"):
        Control(match_torsions_a=0.0)
    x, z = embedded("CCCC")
    (y, c, side), = torsion_groups(x, z, None)
    x[side] = x[c] + rotated(x[side] - x[c], x[c] - x[y], np.radians(60.0))
    bonds = np.asarray(bonds_from_geometry(z, x).bonds).reshape(-1, 2)
    length = lambda p: np.linalg.norm(p[..., bonds[:, 0], :] - p[..., bonds[:, 1], :], axis=-1)
    model, cfg = tiny_model()
    for seed in (0, 1):
        v = np.random.default_rng(seed).normal(size=x.shape) * np.sqrt(300 * 8.314462618e-7 / atomic_masses(z))[:, None]
        state = InitialState("butane", z, x, v)
        shortest = {}
        for match in (np.inf, 0.5):
            frames, _, _ = model_step(model, cfg, [state], x[None], v[None], 50.0, torch.float64, lags=8,
                                      match_torsions=match)
            shortest[match] = float((length(frames[0, -1]) / length(x)).min())
        assert shortest[np.inf] < 0.93 and shortest[0.5] > 0.95, (seed, shortest)
