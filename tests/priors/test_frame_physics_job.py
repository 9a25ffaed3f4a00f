"""`jobs/frame_physics.py`: a data set's per-frame physics, computed as Ray tasks and stored beside
it, then loaded the way training reads it; refusals name what is wrong before Ray starts."""

from __future__ import annotations

import numpy as np
import pytest
from jobrun import ROOT, job_main

from atomray.data.frames import Molecule, write_dataset
from atomray.data.pipeline import molecule_files, molecule_segments


def small_dataset(path, frames: int = 40):
    """Two tg80-mini molecules' first frames as a data set of their own."""
    mini = ROOT / "data" / "tg80-mini"
    entries = []
    for mid in ("ethanol", "malonaldehyde"):
        seg = molecule_segments(mini, mid, molecule_files(mini, [mid])[mid])[0]
        entries.append((Molecule(mid, seg.atomic_numbers, seg.dt_fs, frames, source="test"),
                        seg.positions[:frames], seg.velocities[:frames]))
    write_dataset(path, entries)
    return path


def test_unknown_molecule_is_named_before_any_work(tmp_path, capsys):
    data = small_dataset(tmp_path / "data")
    err = job_main(capsys, "frame_physics.py", "--data", data, "--molecules", "caffeine", expect=2).err
    assert "no molecule 'caffeine'" in err and not (data / "physics").exists()


@pytest.mark.slow
def test_job_stores_every_frames_basin_and_a_second_run_computes_nothing(tmp_path, capsys):
    from atomray.priors.frames import FramePhysics

    data = small_dataset(tmp_path / "data")
    out = job_main(capsys, "frame_physics.py", "--data", data, "--num-cpus", "2").out
    assert "2 to compute" in out and "ethanol: 40 frames" in out and "malonaldehyde: 40 frames" in out
    physics = FramePhysics.load(data)
    assert physics is not None
    for mid in ("ethanol", "malonaldehyde"):
        ids = physics.molecules[mid].frames[0]
        assert len(ids) == 40 and (ids >= 0).all()
        assert len(physics.molecules[mid].basins) == ids.max() + 1
        assert all(b.refined for b in physics.molecules[mid].basins)
    again = job_main(capsys, "frame_physics.py", "--data", data).out
    assert "0 to compute" in again
    assert np.array_equal(FramePhysics.load(data).molecules["ethanol"].frames[0], physics.molecules["ethanol"].frames[0])
