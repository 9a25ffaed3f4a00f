"""`atomray.priors.paths`: the data-path transform that attaches the prior paths to real
tg80-mini windows (ethanol and malonaldehyde, 9 atoms each, several basins each in their first
500 frames), with all atoms as model atoms and with heavy atoms plus hydrogen context atoms.
Real MMFF94 and GFN2-xTB; the per-frame physics is computed in memory for the windows' frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atomray.data.augment import random_rotations, rotate_batch
from atomray.data.frames import DataError
from atomray.data.windows import cut_windows, pad_windows
from atomray.elements import atomic_masses
from atomray.priors import anharmonic, minima, rigid
from atomray.priors.anharmonic import TAU_MD_FS, md_paths
from atomray.priors.compose import FLOORS, PATH_KEYS, TAU_RELAX_FS, floor_predictions
from atomray.priors.frames import FramePhysics, compute_molecule
from atomray.priors.modes import TAU_VIB_FS, vibrate, vibration_paths
from atomray.priors.paths import DatasetBasins, PriorPaths, StateBasins, apply_in_chunks, window_order
from priorkit import as_numpy, as_torch, data_config, frame_physics, fresh_store, windows

torch.set_num_threads(1)
MOLECULES = ("ethanol", "malonaldehyde")
ALL_PARTS = {"rigid", "rotor", "vibration", "md"}


def tg80_windows(context_atoms: str) -> dict[str, np.ndarray]:
    """12 windows (6 per molecule) starting in the first 500 frames of each, as a padded batch."""
    return windows(MOLECULES, 12, context_atoms, seed=0, frame_fraction=(0.0, 0.1))


@pytest.fixture(scope="module", params=["all", "heavy"])
def case(request) -> tuple[str, dict[str, np.ndarray], FramePhysics]:
    """(context_atoms, windows, the per-frame physics of their start frames)."""
    batch = tg80_windows(request.param)
    return request.param, batch, frame_physics(batch)


def basin_indices(batch: dict, physics: FramePhysics) -> np.ndarray:
    return np.array([physics.molecules[m].basin_of(s, np.array([f]))[0]
                     for m, s, f in zip(batch["molecule_id"], batch["segment"], batch["frame"])])


def test_window_order_is_the_windows_atom_order():
    z = np.array([6, 1, 8, 1, 6, 1])
    np.testing.assert_array_equal(window_order(z, 6, 6), np.arange(6))
    np.testing.assert_array_equal(window_order(z, 3, 6), [0, 2, 4, 1, 3, 5])  # heavy atoms, then hydrogens
    batch = tg80_windows("heavy")
    traj_z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])  # ethanol as stored
    np.testing.assert_array_equal(traj_z[window_order(traj_z, 3, 9)][:3], batch["z"][0, :3])


def test_dataset_and_state_basins_give_the_same_vibration(case, tmp_path, monkeypatch):
    """The windows' basins read from per-frame physics (by molecule, segment and frame) and found
    afresh from the windows' states (through an empty machine store) give the same vib_osc and
    vib_d0 to float rounding when the same states open the basins in the same order; from the
    data set's own frames (lab frame, uncentred), the refined minima differ by ~1e-6 Å and the
    paths by less than 1e-4 Å (where a soft mode amplifies it)."""
    context, batch, physics = case
    fresh_store(monkeypatch, tmp_path)
    found = PriorPaths({"vibration"}, StateBasins())(batch)
    same_states = PriorPaths({"vibration"}, DatasetBasins(frame_physics(batch, from_states=True)))(batch)
    from_frames = PriorPaths({"vibration"}, DatasetBasins(physics))(batch)
    for key in ("vib_osc", "vib_d0"):
        assert found[key].dtype == np.float32
        np.testing.assert_allclose(same_states[key], found[key], atol=1e-7, rtol=0, err_msg=key)
        np.testing.assert_allclose(from_frames[key], found[key], atol=1e-4, rtol=0, err_msg=key)
    assert np.abs(found["vib_d0"]).max() > 0.02 and np.abs(found["vib_osc"] - found["vib_d0"][:, None]).max() > 0.02
    k = basin_indices(batch, physics)
    assert len(set(k[batch["molecule_id"] == "ethanol"])) > 1  # several basins per molecule
    assert (k >= 0).all()
    ethanol = batch["molecule_id"] == "ethanol"
    assert (batch["mask"][ethanol].sum(1) == (9 if context == "all" else 3)).all()  # heavy: C, C, O
    pad = np.broadcast_to(~batch["mask"][:, None, :, None], found["vib_osc"].shape)
    assert np.all(found["vib_osc"][pad] == 0)


def test_the_circles_option_holds_terminal_hydrogens_at_the_minimums_distance_from_their_axis():
    """`PriorPaths(..., circles=True)` (`model.rotor_circles`) on ethanol's windows: at every lag
    each methyl and hydroxyl hydrogen of the vibration sits at its minimum's distance from its
    group's axis and moves along its circle, where the straight normal modes move it off; the
    heavy atoms' paths are the same either way."""
    from atomray.priors.modes import bond_pairs, rotor_groups

    batch = tg80_windows("all")
    physics = frame_physics(batch)
    ethanol = np.flatnonzero(batch["molecule_id"] == "ethanol")
    z = batch["z"][ethanol[0], :9]
    groups = rotor_groups(z, bond_pairs(physics.molecules["ethanol"].basins[0]))
    assert sorted(len(h) for _, _, h in groups) == [1, 3]
    out = {}
    for circles in (False, True):
        got = PriorPaths({"vibration"}, DatasetBasins(physics), dtype=np.float64, circles=circles)(batch)
        out[circles] = {k: got[k][ethanol][..., :9, :] for k in ("vib_osc", "vib_d0", "vib_vel")}
    s = batch["x0"][ethanol, :9].astype(np.float64) - out[True]["vib_d0"]  # the superposed minimum
    heavy = z > 1
    for key in ("vib_osc", "vib_vel"):
        np.testing.assert_allclose(out[True][key][..., heavy, :], out[False][key][..., heavy, :], atol=1e-12, rtol=0)
    off = 0.0
    for y, x, hydrogens in groups:
        def radial(p):  # (..., H, 3) each hydrogen's offset from the line y→x
            axis = p[..., x, :] - p[..., y, :]
            axis = (axis / np.linalg.norm(axis, axis=-1, keepdims=True))[..., None, :]
            h = p[..., hydrogens, :] - p[..., x, None, :]
            return h - (h * axis).sum(-1, keepdims=True) * axis
        r_min = np.linalg.norm(radial(s), axis=-1)[:, None]  # (W, 1, H)
        for circles in (False, True):
            r = np.linalg.norm(radial(s[:, None] + out[circles]["vib_osc"]), axis=-1)  # (W, P, H)
            if circles:
                np.testing.assert_allclose(r, np.broadcast_to(r_min, r.shape), atol=1e-9, rtol=0)
            else:
                off = max(off, float(np.abs(r - r_min).max()))
        p = s[:, None] + out[True]["vib_osc"]
        direction = radial(p) / np.linalg.norm(radial(p), axis=-1, keepdims=True)
        v = out[True]["vib_vel"]
        rel = v[..., hydrogens, :] - v[..., x, None, :]
        np.testing.assert_allclose((rel * direction).sum(-1), 0.0, atol=1e-12)  # along the circle
    assert off > 1e-3  # the straight modes do move them off their circles


@pytest.mark.parametrize("source", ["dataset", "state"])
def test_rotating_a_batch_with_its_paths_equals_the_paths_of_the_rotated_windows(case, tmp_path, monkeypatch, source):
    """Every key the transform attaches turns with its window (`rotate_batch`, each window by its
    own rotation about its centroid): the paths of the turned windows are the turned paths."""
    context, batch, physics = case
    fresh_store(monkeypatch, tmp_path)
    basins = DatasetBasins(physics) if source == "dataset" else StateBasins()
    parts = ALL_PARTS if source == "dataset" else {"rotor", "vibration"}  # MD: once is enough
    transform = PriorPaths(parts, basins, dtype=np.float64)
    plain = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in batch.items()}
    shift = np.array([1.5, -2.0, 0.7])  # off-centre, so positions and vectors turn differently
    plain["x0"] = plain["x0"] + shift * batch["mask"][..., None]
    plain["target"] = plain["target"] + shift * batch["mask"][:, None, :, None]
    plain["ctx_x0"] = plain["ctx_x0"] + shift * (batch["ctx_mass"] > 0)[..., None]
    q = random_rotations(len(batch["x0"]), torch.Generator().manual_seed(11), torch.float64)
    turned_after = rotate_batch(as_torch(transform(plain)), q)
    turned_before = as_torch(transform(as_numpy(rotate_batch(as_torch(plain), q))))
    keys = [k for k in PATH_KEYS if k in turned_after]
    assert len(keys) == 2 * len(parts) + ("vibration" in parts)  # and vib_vel, the vibration's velocity
    real = torch.from_numpy(batch["mask"])
    for key in keys:
        before, after = turned_before[key], turned_after[key]
        if key.endswith(("_path", "_osc")):  # padded atoms' paths mean nothing: compare the real atoms
            before, after = before * real[:, None, :, None], after * real[:, None, :, None]
        torch.testing.assert_close(before, after, atol=1e-7, rtol=0, msg=key)
        if key != "md_ok":  # it did turn (velocities, Å/fs, are ~100x smaller than positions)
            size = 1e-3 if key == "vib_vel" else 0.1
            assert (as_torch(transform(plain))[key] - turned_after[key]).abs().max() > size, key
    if "md_ok" in keys:
        assert turned_after["md_ok"].all()


def test_the_floors_from_the_attached_keys_are_the_direct_computation(case):
    """For each window: the rotor motion of all its atoms, its basin's vibration from a direct
    call of `vibration_paths` on that one window, MMFF94 MD of that one window — composed by hand
    (relaxed_all, harmonic_all, mmff_md, anharmonic_all) — equal `floor_predictions` on the batch
    the transform made."""
    context, batch, physics = case
    got = floor_predictions(as_torch(PriorPaths(ALL_PARTS, DatasetBasins(physics), dtype=np.float64)(batch)))
    for i in range(len(batch["x0"])):
        k = int(batch["mask"][i].sum())
        j = int((batch["ctx_mass"][i] > 0).sum())
        x = np.concatenate([batch["x0"][i, :k], batch["ctx_x0"][i, :j]]).astype(np.float64)
        v = np.concatenate([batch["v0"][i, :k], batch["ctx_v0"][i, :j]]).astype(np.float64)
        z = np.concatenate([batch["z"][i, :k], np.ones(j, np.int64)])
        mass = atomic_masses(z).astype(np.float64)
        lags = batch["lags_fs"][i:i + 1].astype(np.float64)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None]  # noqa: E731
        c, u, rot = rigid.rotor_motion(t(x), t(v), t(mass), torch.from_numpy(lags))
        v_int = rigid.internal_velocity(t(x), t(v), t(mass))[0].numpy()
        mol = physics.molecules[batch["molecule_id"][i]]
        basin = mol.basins[mol.basin_of(batch["segment"][i], batch["frame"][i:i + 1])[0]]
        basin = basin.permuted(window_order(mol.z, k, len(z)))
        osc, d0 = vibration_paths(x[None], v_int[None], mass, lags, basin)
        osc, d0 = torch.from_numpy(osc[:, :, :k]), torch.from_numpy(d0[:, :k])
        tl = torch.from_numpy(lags)
        rotor = rigid.carry(t(x[:k]), c, u, rot, tl)
        harmonic = rotor + vibrate(osc, d0, rot, tl, TAU_VIB_FS)
        relaxed = rotor + (1 - torch.exp(-tl / TAU_RELAX_FS))[..., None, None] * (-d0[:, None] @ rot.transpose(-1, -2))
        md, ok = md_paths(x[None], v[None], z, lags)
        assert ok.all()
        md = torch.from_numpy(md[:, :, :k])
        expect = {"rotor_all": rotor, "relaxed_all": relaxed, "harmonic_all": harmonic, "mmff_md": md,
                  "anharmonic_all": harmonic + torch.exp(-tl / TAU_MD_FS)[..., None, None] * (md - harmonic),
                  "no_motion": t(x[:k])[:, None].expand_as(rotor)}
        for name, value in expect.items():
            # 1e-6: the rotor's RK4 step count follows the fastest spin in the batch (3e-7 Å apart)
            torch.testing.assert_close(got[name][i:i + 1, :, :k], value, atol=1e-6, rtol=0, msg=f"{name} window {i}")
    assert set(got) == set(FLOORS)


def helium_windows(context: str) -> dict[str, np.ndarray]:
    """Two windows of a helium pair (3 Å, drifting): a molecule MMFF94 cannot type."""
    f = 40
    positions = np.zeros((f, 2, 3), np.float32)
    positions[:, 1, 2] = 3.0
    positions += np.linspace(0, 0.4, f, dtype=np.float32)[:, None, None]
    velocities = np.full((f, 2, 3), 0.01, np.float32)
    cfg = data_config(context)
    return cut_windows(positions, velocities, np.array([2, 2]), 1.0, np.array([0, 3]),
                       np.tile(np.arange(1, cfg.num_lags + 1) * 4, (2, 1)), cfg, "helium")


@pytest.mark.parametrize("source", ["dataset", "state"])
def test_windows_mmff94_cannot_type_get_no_vibration_and_no_md(case, tmp_path, monkeypatch, source):
    context, batch, physics = case
    fresh_store(monkeypatch, tmp_path)
    monkeypatch.setattr(minima, "_WARNED", set())
    monkeypatch.setattr(anharmonic, "_WARNED", set())
    helium = helium_windows(context)
    mixed = pad_windows([helium, {k: v[:4] for k, v in batch.items()}])
    if source == "dataset":
        with pytest.warns(UserWarning, match="He2"):
            he = compute_molecule("helium", np.array([2, 2]), [(0, np.zeros((10, 2, 3)) + [[0, 0, 0], [0, 0, 3.0]])])
        basins = DatasetBasins(FramePhysics("", {**physics.molecules, "helium": he}))
    else:
        basins = StateBasins()
    with pytest.warns(UserWarning, match="MMFF94 cannot .* He2"):
        out = PriorPaths(ALL_PARTS, basins)(mixed)
    assert out["md_ok"].tolist() == [False, False, True, True, True, True]
    assert np.all(out["vib_osc"][:2] == 0) and np.all(out["vib_d0"][:2] == 0) and np.all(out["md_path"][:2] == 0)
    assert np.abs(out["vib_d0"][2:]).max() > 0.01 and np.abs(out["md_path"][2:]).max() > 0.1
    floors = floor_predictions(as_torch(out))
    for name in ("relaxed_all", "harmonic_all", "mmff_md", "anharmonic_all"):  # the rigid motion alone
        torch.testing.assert_close(floors[name][:2], floors["rotor_all"][:2], atol=1e-6, rtol=0, msg=name)
    assert np.abs(out["rotor_path"][:2] - out["x0"][:2, None]).max() > 0.01  # it does drift


def test_a_molecules_windows_in_different_basins_are_handled_in_one_batch(case, tmp_path, monkeypatch):
    """Windows of one molecule in several basins, in one batch: each window gets its own
    basin's vibration — what the transform gives the window alone — and another basin's would
    differ."""
    context, batch, physics = case
    transform = PriorPaths({"vibration"}, DatasetBasins(physics), dtype=np.float64)
    together = transform(batch)
    k = basin_indices(batch, physics)
    for mid in MOLECULES:
        assert len(set(k[batch["molecule_id"] == mid])) > 1, mid
    for i in range(len(k)):
        alone = transform({key: v[i:i + 1] for key, v in batch.items()})
        for key in ("vib_osc", "vib_d0"):
            np.testing.assert_allclose(together[key][i], alone[key][0], atol=1e-12, rtol=0, err_msg=f"{key} window {i}")
    # with the basin of another window of its molecule, a window's vibration would differ
    i = int(np.flatnonzero(batch["molecule_id"] == "ethanol")[0])
    other = int(np.flatnonzero((batch["molecule_id"] == "ethanol") & (k != k[i]))[0])
    wrong = dict(batch, frame=batch["frame"].copy())
    wrong["frame"][i] = batch["frame"][other]
    assert np.abs(transform(wrong)["vib_osc"][i] - together["vib_osc"][i]).max() > 1e-3


SHUFFLE = np.array([3, 0, 4, 5, 1, 6, 7, 2, 8])  # ethanol's atoms stored as H C H H C H H O H


def test_a_molecule_stored_with_hydrogens_between_its_heavy_atoms(tmp_path, monkeypatch):
    """Every tg80-mini molecule lists its heavy atoms first; ethanol's frames with the atoms
    stored as H C H H C H H O H exercise the permutation from the stored order to the windows'
    (heavy atoms, then hydrogens as context atoms). Stored physics holding the heavy-first
    ethanol's basins in that order gives, permuted back, exactly the heavy-first windows' paths;
    physics computed afresh in that order agrees to the refinement's own spread (3e-4 Å: BFGS
    stops at 0.03 eV/Å, and the atom order changes where)."""
    from atomray.priors.frames import MoleculePhysics
    from priorkit import trajectory

    fresh_store(monkeypatch, tmp_path)
    traj = trajectory("ethanol")
    z = np.asarray(traj.atomic_numbers)[SHUFFLE]
    cfg = data_config("heavy")
    starts = np.array([0, 150, 300, 20])
    offsets = np.tile(np.arange(1, cfg.num_lags + 1) * 20, (len(starts), 1))

    def cut(order: np.ndarray, mid: str) -> dict:
        return pad_windows([cut_windows(traj.positions[:, order], traj.velocities[:, order],
                                        np.asarray(traj.atomic_numbers)[order], traj.dt_fs, starts, offsets, cfg, mid)])

    shuffled, plain = cut(SHUFFLE, "shuffled"), cut(np.arange(9), "ethanol")
    np.testing.assert_array_equal(shuffled["z"], plain["z"])  # the same model atoms: C, C, O
    reference_physics = frame_physics(plain).molecules["ethanol"]
    assert len(set(reference_physics.frames[0][starts])) > 1  # two basins among the windows
    moved = MoleculePhysics("shuffled", z, [b.permuted(SHUFFLE) for b in reference_physics.basins],
                            [m[SHUFFLE] for m in reference_physics.mmff], reference_physics.frames)
    reference = PriorPaths({"vibration"}, DatasetBasins(FramePhysics("", {"ethanol": reference_physics})))(plain)
    stored = PriorPaths({"vibration"}, DatasetBasins(FramePhysics("", {"shuffled": moved})))(shuffled)
    afresh = compute_molecule("shuffled", z, [(0, traj.positions[starts][:, SHUFFLE].astype(np.float64))])
    full = np.full(traj.n_frames, -1, np.int32)
    full[starts] = afresh.frames[0]
    afresh.frames[0] = full
    recomputed = PriorPaths({"vibration"}, DatasetBasins(FramePhysics("", {"shuffled": afresh})))(shuffled)
    found = PriorPaths({"vibration"}, StateBasins())(shuffled)
    for key in ("vib_osc", "vib_d0"):
        np.testing.assert_allclose(stored[key], reference[key], atol=1e-7, rtol=0, err_msg=key)
        np.testing.assert_allclose(found[key], reference[key], atol=1e-6, rtol=0, err_msg=key)
        np.testing.assert_allclose(recomputed[key], reference[key], atol=1e-3, rtol=0, err_msg=key)
    assert np.abs(stored["vib_d0"]).max() > 0.02 and np.abs(stored["vib_osc"] - stored["vib_d0"][:, None]).max() > 0.02


def test_hydrogens_as_model_or_context_atoms_give_the_same_heavy_atom_floors():
    """The same windows cut with all atoms as model atoms and with heavy atoms plus hydrogen
    context atoms: the prior paths of the heavy atoms are the same (the rigid motion, the
    modes and the MD always belong to the whole molecule); the windows are centred on different
    centroids, so compare in the lab frame (+ origin)."""
    full, heavy = tg80_windows("all"), tg80_windows("heavy")
    np.testing.assert_array_equal(full["frame"], heavy["frame"])
    np.testing.assert_array_equal(full["lags_fs"], heavy["lags_fs"])
    physics = frame_physics(full)
    floors = {}
    for name, b in (("all", full), ("heavy", heavy)):
        out = as_torch(PriorPaths(ALL_PARTS, DatasetBasins(physics), dtype=np.float64)(b), torch.float64)
        floors[name] = {f: p + out["origin"][:, None, None] for f, p in floor_predictions(out).items()}
    for i in range(len(full["x0"])):
        hv = np.flatnonzero(full["z"][i] > 1)
        for f in ("rotor_all", "relaxed_all", "harmonic_all", "mmff_md", "anharmonic_all", "rigid_all"):
            # 1e-6: the two windows are the same float32 frame centred on different centroids
            torch.testing.assert_close(floors["heavy"][f][i, :, :len(hv)], floors["all"][f][i][:, hv], atol=1e-6,
                                       rtol=0, msg=f"{f} window {i}")


def test_the_transform_names_what_is_wrong(case):
    context, batch, physics = case
    with pytest.raises(ValueError, match="basin source"):
        PriorPaths({"vibration"})
    with pytest.raises(ValueError, match="unknown parts"):
        PriorPaths({"rotor", "wobble"})
    with pytest.raises(DataError, match="'malonaldehyde' has no stored per-frame physics"):
        PriorPaths({"vibration"}, DatasetBasins(FramePhysics("x", {"ethanol": physics.molecules["ethanol"]})))(batch)
    mols = physics.molecules
    swapped = FramePhysics("x", {"ethanol": mols["malonaldehyde"], "malonaldehyde": mols["ethanol"]})
    with pytest.raises(DataError, match="are not the stored physics' atoms"):
        PriorPaths({"vibration"}, DatasetBasins(swapped))(batch)


def test_apply_in_chunks_equals_one_call(case):
    context, batch, physics = case
    transform = PriorPaths({"rotor", "vibration"}, DatasetBasins(physics))
    whole, chunked = transform(batch), apply_in_chunks(transform, batch, size=5)
    assert set(whole) == set(chunked)
    for key in whole:  # 1e-6: the rotor's RK4 step count follows the fastest spin in each chunk
        if whole[key].dtype.kind == "f":
            np.testing.assert_allclose(whole[key], chunked[key], atol=1e-6, rtol=0, err_msg=key)
        else:
            np.testing.assert_array_equal(whole[key], chunked[key], err_msg=key)


def test_a_molecule_mmff94_cannot_type_gets_no_vibration_prior_from_stored_physics():
    """Stored physics with no basin (every frame -1, as `jobs/frame_physics.py` writes for a
    molecule MMFF94 cannot type, e.g. lib-2633 of the tg80 build) gives every window no basin,
    whatever its atoms, instead of refusing the windows."""
    from atomray.priors.frames import FramePhysics, MoleculePhysics

    mol = MoleculePhysics("nitro", np.zeros(0, np.int64), frames={0: np.full(10, -1, np.int32)})
    basins = DatasetBasins(FramePhysics("/data", {"nitro": mol}))
    z = np.array([6, 7, 8, 8, 1, 1, 1])
    assert basins("nitro", np.zeros(3, np.int64), np.array([0, 4, 9]), np.zeros((3, 7, 3)), z, 7) == [None] * 3
