"""Physical validity of trajectories (`atomray.structure`): bonds, the stability coefficient,
structure distributions and their distances, temperature, the plot. Reference trajectory: a
short MMFF94 NVE run of ethanol with the tg80 integrator (~0.1 s)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.stats import wasserstein_distance

from atomray import structure as st
from atomray.data.windows import atomic_masses
from atomray.tg80 import dynamics
from atomray.tg80.engines import MMFFEngine, embed, molecule_with_hydrogens


@pytest.fixture(scope="module")
def ethanol():
    """(mol, z, positions (400, 9, 3) Å, velocities (400, 9, 3) Å/fs, RDKit masses): 200 fs of
    MMFF94 NVE at 0.5 fs from the relaxed conformer with 300 K Maxwell–Boltzmann velocities."""
    mol = molecule_with_hydrogens("CCO", "ethanol")
    x = embed(mol, 0, "ethanol")
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    masses = np.array([a.GetMass() for a in mol.GetAtoms()])
    engine = MMFFEngine(mol, "ethanol")
    rng = np.random.Generator(np.random.PCG64(0))
    energy, forces = engine.forces(x)
    state = dynamics.MDState(x, dynamics.maxwell_boltzmann(masses, 300.0, rng), forces, energy, 0,
                             rng.bit_generator.state)
    pos, vel, e_tot = dynamics.run_steps(state, engine, masses, dynamics.MDConfig(dt_fs=0.5), 400, "nve")
    assert np.ptp(e_tot) < 0.01  # a sane NVE run: energy conserved to 10 meV
    return mol, z, pos, vel, masses


def turned(traj, seed=0, shift=5.0):
    """Each frame rigidly rotated by its own random rotation and translated."""
    rng = np.random.default_rng(seed)
    r = Rotation.random(len(traj), random_state=seed).as_matrix()  # (T, 3, 3)
    return np.einsum("tnk,tjk->tnj", traj, r) + rng.normal(0, shift, (len(traj), 1, 3))


def test_topology_of_ethanol(ethanol):
    mol, z, pos, _, _ = ethanol
    top = st.bonds_from_geometry(z, pos[0])
    assert np.array_equal(top.bonds, st.bonds_from_geometry(z, pos[0], mol=mol).bonds)
    assert (len(top.bonds), len(top.angles), len(top.dihedrals)) == (8, 13, 12)  # 9 H-C-C-X + 3 X-C-O-H
    from rdkit import Chem
    from rdkit.Chem import rdMolTransforms

    conf = Chem.Conformer(len(z))
    for i, p in enumerate(pos[0]):
        conf.SetAtomPosition(i, p.tolist())
    ref = [rdMolTransforms.GetDihedralDeg(conf, *map(int, d)) for d in top.dihedrals]
    np.testing.assert_allclose(st.dihedral_angles(pos[:1], top)[0], ref, atol=1e-9)  # IUPAC sign
    ref = [rdMolTransforms.GetAngleDeg(conf, *map(int, a)) for a in top.angles]
    np.testing.assert_allclose(st.bond_angles(pos[:1], top)[0], ref, atol=1e-9)


def test_covalent_radii_are_cordero_as_in_rdkit():
    from ase.data import covalent_radii
    from rdkit import Chem

    table = Chem.GetPeriodicTable()
    assert [covalent_radii[z] for z in (1, 6, 7, 8, 9, 16, 17)] == [table.GetRcovalent(z) for z in (1, 6, 7, 8, 9, 16, 17)]


def test_stable_reference_trajectory(ethanol):
    _, z, pos, _, _ = ethanol
    top = st.bonds_from_geometry(z, pos[0])
    result = st.stability(pos, top)
    assert result.stable and result.first_failure_frame is None and result.frames == 400
    summary = st.stability_coefficient([pos, turned(pos), pos[::2]], top, dt_fs=[0.5, 0.5, 1.0])
    assert summary.coefficient == 1.0 and summary.n_stable == 3
    # a stable trajectory counts with its whole duration: 399 × 0.5 fs, and 199 × 1 fs for pos[::2]
    assert summary.mean_time_to_failure_fs == pytest.approx((199.5 * 2 + 199) / 3)
    assert summary.min_time_to_failure_fs == pytest.approx(199.0)


def stretched(pos, top, bond, factor, from_frame):
    """pos with bond `bond` (index into top.bonds) scaled by `factor` from `from_frame` on, by
    moving its second atom along the bond."""
    out = pos.copy()
    i, j = top.bonds[bond]
    u = out[from_frame:, j] - out[from_frame:, i]
    out[from_frame:, j] = out[from_frame:, i] + factor * u
    return out


def test_a_bond_stretched_by_60_percent_fails(ethanol):
    _, z, pos, _, _ = ethanol
    top = st.bonds_from_geometry(z, pos[0])
    oh = int(np.flatnonzero((z[top.bonds] == [1, 8]).all(1) | (z[top.bonds] == [8, 1]).all(1))[0])
    bad = stretched(pos, top, oh, 1.6, 123)
    result = st.stability(bad, top)
    assert not result.stable
    assert (result.first_failure_frame, result.kind, result.pair) == (123, "bond_stretched", tuple(top.bonds[oh]))
    assert result.distance_a == pytest.approx(1.6 * st.bond_lengths(pos[123:124], top)[0, oh])
    summary = st.stability_coefficient([bad, stretched(pos, top, 0, 1.6, 10)], top, dt_fs=0.5)
    assert summary.coefficient == 0.0
    assert summary.min_time_to_failure_fs == 5.0 and summary.mean_time_to_failure_fs == pytest.approx((123 + 10) / 4)
    trace = st.bond_deviation_trace(bad, top)
    assert trace[0] == 0 and trace[123:].min() > 0.55 and trace[:123].max() < 0.2
    assert st.stability(stretched(pos, top, oh, 0.45, 7), top).kind == "bond_compressed"
    assert st.stability(stretched(pos, top, oh, 1.3, 7), top).stable  # within ±50 %
    # the reference lengths may be given: against a 2.5× start, frames before 123 are compressed
    far = stretched(pos, top, oh, 2.5, 123)
    result = st.stability(far, top, start=far[200])
    assert (result.first_failure_frame, result.kind) == (0, "bond_compressed")


def test_non_bonded_atoms_closer_than_0_7_angstrom_fail():
    """Two H2 molecules approach each other; their own bonds never change."""
    h2 = np.array([[0.0, 0.0, 0.0], [0.74, 0.0, 0.0]])
    gaps = np.linspace(3.0, 0.5, 51)  # distance between the near atoms of the two molecules
    traj = np.stack([np.concatenate((h2, h2 + [0.74 + g, 0.0, 0.0])) for g in gaps])
    z = np.ones(4, dtype=int)
    top = st.bonds_from_geometry(z, traj[0])
    assert top.bonds.tolist() == [[0, 1], [2, 3]]
    result = st.stability(traj, top)
    assert (result.kind, result.pair) == ("close_contact", (1, 2))
    assert result.first_failure_frame == int(np.argmax(gaps < 0.7)) and result.distance_a < 0.7
    assert st.stability(traj[gaps >= 0.71], top).stable
    assert st.stability(traj, top, chunk=7).first_failure_frame == result.first_failure_frame
    water = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])[None].repeat(5, 0)
    mixed = st.stability_coefficient([traj, water], [top, st.bonds_from_geometry([8, 1, 1], water[0]).bonds])
    assert mixed.coefficient == 0.5 and [r.stable for r in mixed.results] == [False, True]


def test_non_finite_positions_fail(ethanol):
    _, z, pos, _, _ = ethanol
    bad = pos.copy()
    bad[50, 3] = np.nan
    result = st.stability(bad, st.bonds_from_geometry(z, pos[0]))
    assert (result.stable, result.first_failure_frame, result.kind) == (False, 50, "non_finite")


def test_structure_distances(ethanol):
    _, z, pos, _, _ = ethanol
    top = st.bonds_from_geometry(z, pos[0])
    same = st.structure_distances(pos, pos.copy(), z, top)
    assert set(same) == {"bond_length_a", "bond_angle_deg", "dihedral_deg", "radius_of_gyration_a"}
    assert all(v == 0.0 for v in same.values())
    noisy = pos + np.random.default_rng(1).normal(0, 0.05, pos.shape)
    assert all(v > 0 for v in st.structure_distances(pos, noisy, z, top).values())
    assert st.structure_distances(pos, noisy, z) == st.structure_distances(pos, noisy, z, top)  # default bonds


def test_rigid_motion_leaves_every_distribution_unchanged(ethanol):
    _, z, pos, _, _ = ethanol
    top = st.bonds_from_geometry(z, pos[0])
    moved = turned(pos, seed=3)
    for fn in (st.bond_lengths, st.bond_angles, st.dihedral_angles):
        np.testing.assert_allclose(fn(moved, top), fn(pos, top), atol=1e-9, rtol=0)
    np.testing.assert_allclose(st.radius_of_gyration(moved, z), st.radius_of_gyration(pos, z), atol=1e-12)
    assert max(st.structure_distances(pos, moved, z, top).values()) < 1e-9
    assert st.stability(moved, top, start=pos[0]).stable


def brute_force(a, b):
    """W1 on the circle of two equal-size samples: the optimal matching of points on a circle is
    a cyclic shift of the sorted orders (Werman et al. 1985), so try every shift."""
    a, b = np.sort(np.mod(a, 360)), np.sort(np.mod(b, 360))
    best = np.inf
    for k in range(len(a)):
        gap = np.abs(a - np.roll(b, k))
        best = min(best, np.minimum(gap, 360 - gap).mean())
    return best


def test_dihedrals_are_compared_on_the_circle():
    assert st.circular_wasserstein([179.0], [-179.0]) == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    a = rng.vonmises(np.pi, 4.0, 2000) * 180 / np.pi  # a trans-like distribution across ±180°
    b = rng.vonmises(np.pi, 4.0, 1500) * 180 / np.pi
    for shift in (0.0, 37.0, 180.0):  # only relative position matters
        assert st.circular_wasserstein(a + shift, b + shift) == pytest.approx(st.circular_wasserstein(a, b))
    assert st.circular_wasserstein(a[:400], a[:400] + 10.0) == pytest.approx(brute_force(a[:400], a[:400] + 10.0))
    assert st.circular_wasserstein(a[:400], b[:400]) == pytest.approx(brute_force(a[:400], b[:400]))
    assert st.circular_wasserstein(a[:400], b[:400]) < 10  # some of the mass moves the short way round
    wrapped = a + 10 - 360 * (a + 10 > 180)  # the same angles written in (−180, 180]
    assert st.circular_wasserstein(a, wrapped) < 10.0
    assert wasserstein_distance(a, wrapped) > 3 * st.circular_wasserstein(a, wrapped)  # the line is fooled by the cut
    c, d = rng.normal(60, 10, 700), rng.normal(75, 5, 400)  # far from the cut: the line's W1
    assert st.circular_wasserstein(c, d) == pytest.approx(wasserstein_distance(c, d), rel=1e-9)


def butane_turned_to(angles_deg):
    """(z, frames (T, 14, 3)): butane's embedding with its C0-C1-C2-C3 dihedral set to each angle
    (NaN for a non-finite frame), C3 and its hydrogens turned about C1-C2."""
    from atomray.priors.rigid import rotated

    mol = molecule_with_hydrogens("CCCC", "butane")
    x = embed(mol, 0, "butane")
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    side = [3] + [n.GetIdx() for n in mol.GetAtomWithIdx(3).GetNeighbors() if n.GetAtomicNum() == 1]
    quad = np.array([[0, 1, 2, 3]])
    frames = []
    for target in angles_deg:
        now = st.torsion_angles(x[None], quad)[0, 0]
        f = x.copy()
        f[side] = x[2] + rotated(x[side] - x[2], x[2] - x[1], np.radians(target - now))
        frames.append(f if np.isfinite(target) else np.full_like(x, np.nan))
    return z, np.stack(frames), quad


def test_a_rotamer_transition_is_counted_when_a_torsion_reaches_another_rotamer():
    """anti → 100° (the barrier's side) → back to anti: no transition; → gauche+ (1) → across
    cis to gauche− (2) → a NaN frame, skipped → anti (3)."""
    z, frames, quad = butane_turned_to([180, 175, 100, 185, 120, 62, 40, 0, -58, np.nan, -170, 179])
    phi = st.torsion_angles(frames[[0, 5, 8]], quad)[:, 0]
    assert np.allclose(phi, [180 - 360 * (phi[0] < 0), 62, -58], atol=1e-6)
    assert st.rotamer_transitions(frames, quad) == 3
    assert st.rotamer_transitions(frames[:4], quad) == 0  # a turn back from the barrier is no transition
    assert st.rotamer_transitions(frames, np.zeros((0, 4))) == 0


def test_unit_conversion_from_si_constants():
    u, fs, kb = 1.66053906660e-27, 1e5, 1.380649e-23
    assert st.U_A2_FS2_IN_K == pytest.approx(u * fs**2 / kb, rel=1e-12)
    assert u * fs**2 / 1.602176634e-19 == pytest.approx(dynamics.KINETIC_EV, rel=1e-6)  # 103.64 eV
    assert dynamics.KINETIC_EV / dynamics.KB_EV == pytest.approx(st.U_A2_FS2_IN_K, rel=1e-6)


def test_maxwell_boltzmann_at_300_k_reads_300_k():
    rng = np.random.default_rng(0)
    z = rng.choice([1, 6, 7, 8], size=20000)
    m = atomic_masses(z).astype(np.float64)
    sigma = np.sqrt(1.380649e-23 * 300.0 / (m * 1.66053906660e-27)) / 1e5  # Å/fs, from SI constants
    v = rng.normal(size=(3, len(z), 3)) * sigma[:, None]
    t = st.temperature(v, z)
    assert t.shape == (3,)
    np.testing.assert_allclose(t, 300.0, rtol=0.02)  # 1 SD = 300·√(2/(3N)) ≈ 1.7 K
    # the tg80 engines' draws (rescaled to exactly T, 3N − 3 dof) read exactly T here too
    mol = molecule_with_hydrogens("CC(=O)Nc1ccc(O)cc1", "paracetamol")
    zs = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    vm = dynamics.maxwell_boltzmann(atomic_masses(zs).astype(np.float64), 300.0, np.random.default_rng(1))
    assert st.temperature(vm, zs)[0] == pytest.approx(300.0, rel=1e-6)


def test_temperature_of_a_trajectory_agrees_with_the_md_engine(ethanol):
    _, z, _, vel, masses = ethanol
    t = st.temperature(vel, z, masses=masses)
    ref = [dynamics.temperature(masses, v) for v in vel]
    np.testing.assert_allclose(t, ref, rtol=1e-9)
    assert 50 < t.mean() < 300  # equipartition: ~half the start's 300 K becomes potential energy
    drift = np.broadcast_to([0.01, -0.02, 0.005], vel.shape)  # pure centre-of-mass motion
    assert np.abs(st.temperature(drift, z)).max() < 1e-9
    assert st.temperature(drift, z, remove_com=False)[0] > 1000
    n = len(z)
    np.testing.assert_allclose(st.temperature(vel, z, remove_com=False, masses=masses) * 3 * n / (3 * n - 3), t,
                               rtol=1e-2)  # same KE (the run has ~no drift), 3N vs 3N − 3 dof


def test_plot_structure(ethanol, tmp_path):
    _, z, pos, _, _ = ethanol
    top = st.bonds_from_geometry(z, pos[0])
    rollout = stretched(pos, top, 2, 1.2, 200)
    path = st.plot_structure(rollout, pos, z, tmp_path / "plots" / "ethanol.png", dt_fs=0.5, reference_dt_fs=0.5,
                             title="ethanol")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["ethanol.png"]  # no temporaries left
    alone = st.plot_structure(rollout, pos, z, tmp_path / "alone.png", dt_fs=0.5, reference_dt_fs=0.5).read_bytes()
    floor = rollout.copy()
    floor[len(floor) // 2:] = np.nan  # a prior alone that flew apart halfway still draws
    beside = st.plot_structure(rollout, pos, z, tmp_path / "floor.png", dt_fs=0.5, reference_dt_fs=0.5,
                               floor=floor).read_bytes()
    assert beside[:8] == b"\x89PNG\r\n\x1a\n" and beside != alone  # the prior alone drawn beside the rollout


def test_bad_input_names_what_is_wrong(ethanol):
    mol, z, pos, _, _ = ethanol
    with pytest.raises(st.StructureError, match=r"\(T, N, 3\)"):
        st.stability(pos[0], st.bonds_from_geometry(z, pos[0]))
    with pytest.raises(st.StructureError, match="0..8"):
        st.stability(pos, [(0, 9)])
    with pytest.raises(st.StructureError, match="not the atoms"):
        st.bonds_from_geometry(z[::-1], pos[0], mol=mol)
    with pytest.raises(st.StructureError, match="for 9 atoms but the trajectory has 4"):
        st.bond_lengths(pos[:, :4], st.bonds_from_geometry(z, pos[0]))
    with pytest.raises(st.StructureError, match="no degrees of freedom"):
        st.temperature(np.zeros((2, 1, 3)), [6])
    with pytest.raises(st.StructureError, match="2 bond lists for 3"):
        top = st.bonds_from_geometry(z, pos[0])
        st.stability_coefficient([pos] * 3, [top, top])
