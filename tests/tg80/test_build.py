"""The TG80 build: a tiny MMFF build is a valid data set; an interrupted build, rerun,
gives exactly the data of an uninterrupted one without recomputing finished segments; the
Ray build (one task per molecule) gives the same data as the in-process one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from atomray.data.dataset import load_trajectories, read_molecules, validate_dataset
from atomray.data.dataset import read_segments
from atomray.tg80.build import build
from atomray.tg80.plan import BuildError
from atomray.tg80.presets import preset_config
from atomray.tg80.simulate import BuildInterrupted, molecule_path, read_checkpoint, segment_path, state_path

ROOT = Path(__file__).resolve().parents[2]


def frames_of(root: Path) -> dict[str, np.ndarray]:
    """Every stored array of a data set, by molecule: positions and velocities, float32."""
    return {
        mid: np.concatenate([np.concatenate([p.positions, p.velocities]) for p in pieces])
        for mid, pieces in load_trajectories(root).items()
    }


def table_without_provenance(root: Path):
    table = read_molecules(root)
    return table.drop_columns(["provenance"]).to_pylist()


def events(root: Path, molecule_id: str) -> list[dict]:
    return [json.loads(line) for line in (root / "_state" / f"{molecule_id}.log").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-whole")
    summary = build(preset_config("tiny"), out, executor="local", command="pytest")
    return out, summary


def test_tiny_build_is_a_valid_dataset_with_selection_and_stability_columns(uninterrupted):
    out, summary = uninterrupted
    info = validate_dataset(out)
    assert info == {"molecules": 3, "shards": 3, "frames": 600, "simulated_fs": 600.0}
    assert not list((out / "_segments").glob("*.parquet"))  # staged segments compacted away
    table = read_molecules(out).to_pylist()
    assert [r["molecule_id"] for r in table] == ["ethanol", "malonaldehyde", "benzene"]
    for row in table:
        assert row["theory"] == "MMFF94" and row["temperature_k"] == 300.0 and row["n_frames"] == 200
        assert row["seed_parent"] == row["molecule_id"] and row["role"] == "seed"
        assert row["stable"] is True and row["stability_reason"] == ""
        assert row["com_drift_a"] < 1e-4  # NVE production after removing the centre-of-mass velocity
        prov = json.loads(row["provenance"])
        assert prov["engine"] == "mmff" and prov["seed"] == 0 and prov["command"] == "pytest"
    assert (out / "stability.csv").is_file() and (out / "stability.png").is_file()
    n_atoms = {"ethanol": 9, "malonaldehyde": 9, "benzene": 12}
    assert {m: a.shape for m, a in frames_of(out).items()} == {m: (400, n, 3) for m, n in n_atoms.items()}


def test_rerun_of_a_finished_build_computes_nothing(uninterrupted):
    out, _ = uninterrupted
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "frames").iterdir()}
    summary = build(preset_config("tiny"), out, executor="local", command="pytest")
    assert summary["computed"] == []
    assert {p.name: p.stat().st_mtime_ns for p in (out / "frames").iterdir()} == stamps


@pytest.mark.parametrize("ensemble, engine", [("nve", "mmff"), ("nvt", "mmff"), ("nve", "gfn2")])
def test_interrupted_build_resumes_to_identical_data(tmp_path, ensemble, engine, uninterrupted):
    """GFN2-xTB too: its SCF restarts from the previous wavefunction inside a segment, and
    from scratch at every segment start, resumed or not."""
    cfg = preset_config("tiny", [f"md.ensemble={ensemble}", f"engine={engine}"])
    if (ensemble, engine) == ("nve", "mmff"):
        reference = uninterrupted[0]
    else:
        reference = tmp_path / "whole"
        build(cfg, reference, executor="local")
    out = tmp_path / "resumed"
    with pytest.raises(BuildInterrupted):
        build(cfg, out, executor="local", interrupt_after_segments=1)
    first = segment_path(out, "ethanol", 0)
    assert first.exists() and not segment_path(out, "ethanol", 1).exists()
    assert read_checkpoint(state_path(out, "ethanol"))["next_segment"] == 1
    (segment0,) = read_segments(first)  # the finished segment, as staged before the resume
    half_written = out / "_segments" / ".ethanol-00001.parquet.deadbeef.tmp"  # what a kill mid-write leaves
    half_written.write_bytes(b"PAR1 truncated")
    evals_first = events(out, "ethanol")[-1]["force_evals"]

    summary = build(cfg, out, executor="local")
    resumed = {r["molecule_id"]: r for r in summary["computed"]}
    assert resumed["ethanol"]["computed_segments"] == [1]  # the finished segment is not recomputed
    assert resumed["ethanol"]["force_evals"] == 100  # one force call per step of segment 1 only
    assert resumed["malonaldehyde"]["computed_segments"] == [0, 1]
    assert [e["event"] for e in events(out, "ethanol")] == ["prepared", "segment", "resumed", "segment"]
    assert evals_first == 100
    # The finished molecule is one frames row whose first segment is exactly the staged
    # segment 0 written before the interruption (reused, not recomputed).
    (joined,) = read_segments(molecule_path(out, "ethanol"))
    assert np.array_equal(joined.positions[: segment0.n_frames], segment0.positions)
    assert np.array_equal(joined.velocities[: segment0.n_frames], segment0.velocities)
    assert not first.exists()  # staged segments are removed once compacted

    assert not half_written.exists()
    validate_dataset(out)
    want, got = frames_of(reference), frames_of(out)
    assert want.keys() == got.keys()
    for mid in want:
        assert np.array_equal(want[mid], got[mid]), mid  # bit-for-bit
    assert table_without_provenance(out) == table_without_provenance(reference)


def test_build_refuses_a_directory_made_with_other_settings(uninterrupted, tmp_path):
    out, _ = uninterrupted
    with pytest.raises(BuildError, match=r"other settings \(differing keys: \['md.production_fs'\]\)"):
        build(preset_config("tiny", ["md.production_fs=300"]), out, executor="local")


def test_ray_build_equals_local_build(uninterrupted, tmp_path, ray_local):
    out = tmp_path / "ray"
    lines = []
    summary = build(preset_config("tiny"), out, executor="ray", progress=lambda p: lines.append(p), poll_s=0.5)
    assert sorted(r["molecule_id"] for r in summary["computed"]) == ["benzene", "ethanol", "malonaldehyde"]
    assert lines[-1].molecules_done == 3 and lines[-1].simulated_fs == 600.0
    assert "molecules 3/3" in lines[-1].line() and "fs/s" in lines[-1].line()
    reference = uninterrupted[0]
    want, got = frames_of(reference), frames_of(out)
    for mid in want:
        assert np.array_equal(want[mid], got[mid]), mid
    assert table_without_provenance(out) == table_without_provenance(reference)


def test_segment_files_use_byte_stream_split(uninterrupted):
    meta = pq.ParquetFile(molecule_path(uninterrupted[0], "benzene")).metadata
    names = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).encodings for i in range(meta.num_columns)}
    assert "BYTE_STREAM_SPLIT" in names["positions.list.element"]


def test_job_builds_tiny_in_process(tmp_path):
    out = tmp_path / "job"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "build_tg80.py"), "--preset", "tiny", "--engine", "mmff",
         "--out", str(out), "--executor", "local", "--set", "md.production_fs=100", "--set", "md.segment_fs=50"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["validation"]["frames"] == 300 and summary["flagged"] == []
    assert "molecules 3/3" in proc.stdout
    prov = json.loads(read_molecules(out).column("provenance")[0].as_py())
    assert "--preset tiny" in prov["command"] and prov["md"]["production_fs"] == 100.0
