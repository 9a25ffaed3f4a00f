"""`atomray.priors.frames`: the per-frame physics of a data set — each frame's conformer basin,
computed once in frame order and stored beside the frames — on real tg80-mini ethanol frames
(9 atoms: the cheapest molecule), real MMFF94 and GFN2-xTB. Stores go to a local temporary
folder, never into data/tg80-mini."""

from __future__ import annotations

import numpy as np
import pytest

from atomray.data.frames import DataError
from atomray.priors.frames import (FramePhysics, MoleculePhysics, compute_molecule, missing_molecules, read_molecule,
                                   write_molecule, _paths)
from atomray.priors.minima import BASIN_RMSD, mmff_minimum, rmsd_superposed
from atomray.priors.modes import Basin
from priorkit import trajectory

FIRST = slice(0, 60)  # ethanol's first 60 frames: one basin
LATER = slice(100, 160)  # frames 100–159: ethanol turns its OH into another basin in between


@pytest.fixture(scope="module")
def ethanol() -> MoleculePhysics:
    """compute_molecule on ethanol: segment 0 = frames 0–59, segment 1 = frames 100–159,
    segment 2 = frames 0–59 again."""
    traj = trajectory("ethanol")
    pos = traj.positions.astype(np.float64)
    return compute_molecule("ethanol", traj.atomic_numbers, [(0, pos[FIRST]), (1, pos[LATER]), (2, pos[FIRST])])


def test_every_frame_gets_a_basin_and_a_frame_met_twice_the_same_one(ethanol):
    traj = trajectory("ethanol")
    assert sorted(ethanol.frames) == [0, 1, 2]
    for seg, n in ((0, 60), (1, 60), (2, 60)):
        assert ethanol.frames[seg].shape == (n,) and ethanol.frames[seg].dtype == np.int32
        assert (ethanol.frames[seg] >= 0).all()
    np.testing.assert_array_equal(ethanol.frames[2], ethanol.frames[0])  # the same frames, the same basins
    assert (ethanol.frames[0] == 0).all()  # the first frame opens basin 0, its neighbours share it
    assert len(set(ethanol.frames[1].tolist())) > 1  # the later frames visit another basin too
    assert len(ethanol.basins) == len(ethanol.mmff) == int(np.max([f.max() for f in ethanol.frames.values()])) + 1
    np.testing.assert_array_equal(ethanol.z, traj.atomic_numbers)
    for basin in ethanol.basins:
        assert isinstance(basin, Basin) and basin.refined and basin.modes.shape == (27, 21)
        np.testing.assert_array_equal(basin.z, traj.atomic_numbers)
    # each frame's own MMFF94 minimum lies in the basin it was given
    for seg, rows in ((0, range(0, 60, 20)), (1, range(0, 60, 7))):
        frames = traj.positions[FIRST if seg == 0 else LATER].astype(np.float64)
        for i in rows:
            k = ethanol.frames[seg][i]
            assert rmsd_superposed(mmff_minimum(frames[i], ethanol.z), ethanol.mmff[k]) < BASIN_RMSD


def test_the_result_depends_on_the_frames_alone(ethanol):
    """Computed again (another process, another machine), the same frames give the same basins bit for bit."""
    traj = trajectory("ethanol")
    again = compute_molecule("ethanol", traj.atomic_numbers, [(0, traj.positions[FIRST].astype(np.float64))])
    np.testing.assert_array_equal(again.frames[0], ethanol.frames[0])
    for key in ("minimum", "omega", "modes", "force"):
        np.testing.assert_array_equal(getattr(again.basins[0], key), getattr(ethanol.basins[0], key), err_msg=key)


def test_a_molecule_mmff94_cannot_type_gets_basin_minus_one_and_no_basin():
    x = np.array([[[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]]] * 3)
    with pytest.warns(UserWarning, match="He2"):
        helium = compute_molecule("helium", np.array([2, 2]), [(0, x)])
    np.testing.assert_array_equal(helium.frames[0], [-1, -1, -1])
    assert helium.basins == [] and helium.mmff == []
    assert FramePhysics("", {"helium": helium}).basin("helium", 0, 1) is None


def assert_same(a: MoleculePhysics, b: MoleculePhysics) -> None:
    assert a.molecule_id == b.molecule_id
    np.testing.assert_array_equal(a.z, b.z)
    assert sorted(a.frames) == sorted(b.frames)
    for seg in a.frames:
        np.testing.assert_array_equal(a.frames[seg], b.frames[seg])
        assert b.frames[seg].dtype == np.int32
    assert len(a.basins) == len(b.basins) and len(a.mmff) == len(b.mmff)
    for x, y in zip(a.basins, b.basins):
        for key in ("z", "minimum", "omega", "modes", "force"):
            np.testing.assert_array_equal(getattr(x, key), getattr(y, key), err_msg=key)
    for x, y in zip(a.mmff, b.mmff):
        np.testing.assert_array_equal(x, y)


def test_write_and_read_give_back_the_same_arrays(ethanol, tmp_path):
    assert read_molecule(tmp_path, "ethanol") is None
    path = write_molecule(tmp_path, ethanol)
    assert path.endswith("ethanol.frames.parquet") and str(tmp_path) in path
    assert_same(ethanol, read_molecule(tmp_path, "ethanol"))
    # ids that are no file names, even two that map to one safe name, are kept apart
    for mid in ("lib/4139 a", "lib_4139_a"):
        write_molecule(tmp_path, MoleculePhysics(mid, ethanol.z, ethanol.basins[:1], ethanol.mmff[:1],
                                                 {0: np.zeros(3, np.int32) + len(mid) % 2}))
    assert _paths(tmp_path, "lib/4139 a") != _paths(tmp_path, "lib_4139_a")
    assert read_molecule(tmp_path, "lib/4139 a").frames[0].tolist() == [0, 0, 0]
    assert read_molecule(tmp_path, "lib_4139_a").frames[0].tolist() == [0, 0, 0]
    assert read_molecule(tmp_path, "lib/4139 a").molecule_id == "lib/4139 a"


def test_the_first_writer_wins(ethanol, tmp_path):
    write_molecule(tmp_path, ethanol)
    other = MoleculePhysics("ethanol", ethanol.z, ethanol.basins[:1], ethanol.mmff[:1], {0: np.zeros(5, np.int32)})
    path = write_molecule(tmp_path, other)  # a second writer (another worker) finishes later
    assert path == _paths(tmp_path, "ethanol")[1]
    assert_same(ethanol, read_molecule(tmp_path, "ethanol"))


def test_load_needs_every_molecule_and_missing_molecules_lists_the_rest(ethanol, tmp_path):
    write_molecule(tmp_path, ethanol)
    assert missing_molecules(tmp_path, ["ethanol", "malonaldehyde"]) == ["malonaldehyde"]
    assert FramePhysics.load(tmp_path, ["ethanol", "malonaldehyde"]) is None
    physics = FramePhysics.load(tmp_path, ["ethanol"])
    assert physics.root == str(tmp_path) and list(physics.molecules) == ["ethanol"]
    k = int(ethanol.frames[1][7])
    basin = physics.basin("ethanol", 1, 7)
    np.testing.assert_array_equal(basin.minimum, ethanol.basins[k].minimum)


@pytest.mark.parametrize("which", ["frames", "basins", "shapes"])
def test_a_damaged_file_is_a_data_error_naming_it(ethanol, tmp_path, which):
    """A truncated frames or basins file, or basins whose arrays do not fit their atoms (another
    molecule's minima), is a DataError naming the file at fault."""
    if which == "shapes":
        wrong = MoleculePhysics("ethanol", ethanol.z, ethanol.basins, [m[:5] for m in ethanol.mmff], ethanol.frames)
        write_molecule(tmp_path, wrong)
    else:
        write_molecule(tmp_path, ethanol)
    basins_path, frames_path = _paths(tmp_path, "ethanol")
    damaged = frames_path if which == "frames" else basins_path
    if which != "shapes":
        with open(damaged, "r+b") as fh:  # a truncated copy: the parquet footer is gone
            fh.truncate(100)
    with pytest.raises(DataError, match=damaged.replace(".", r"\.")):
        read_molecule(tmp_path, "ethanol")
    with pytest.raises(DataError, match="damaged"):
        FramePhysics.load(tmp_path, ["ethanol"])


def test_basin_of_an_unknown_segment_or_frame_names_the_molecule(ethanol):
    with pytest.raises(DataError, match=r"molecule 'ethanol'.*no segment 7"):
        ethanol.basin_of(7, np.array([0]))
    with pytest.raises(DataError, match=r"molecule 'ethanol' segment 0: frame 60 is outside"):
        ethanol.basin_of(0, np.array([3, 60]))
    with pytest.raises(DataError, match=r"molecule 'ethanol'"):
        ethanol.basin_of(0, np.array([-1]))
    np.testing.assert_array_equal(ethanol.basin_of(1, np.array([0, 59, 0])), ethanol.frames[1][[0, 59, 0]])
