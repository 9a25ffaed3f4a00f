"""Reading and validating a TG80-frames data set directory (format: `atomray.data.frames`).

    read_molecules(root)          the checked molecules table
    frame_files(root)             the frames shards
    read_segments(path, ids)      one shard's checked segments
    load_trajectories(root, ids)  each molecule's contiguous trajectories, velocities filled in
    validate_dataset(root)        every check at once; a summary or the first DataError

Readers check every row they return and raise `DataError` naming the file, the molecule and
what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atomray import storage
from atomray.data.frames import (
    FRAMES_DIR, FRAMES_SCHEMA, MOLECULES_FILE, DataError, Segment, Trajectory, check_schema,
    check_coordinates, check_dt, check_molecules_table, finite_difference_velocities,
)


def read_parquet(path: str | Path, columns: Sequence[str] | None = None, filters: Any = None) -> pa.Table:
    """A Parquet file (local path or URI) as a table; DataError naming the file otherwise."""
    try:
        if not storage.is_file(path):
            raise DataError(f"{path}: file not found")
        fs, inner = storage.filesystem(path)
        return pq.read_table(inner, columns=columns, filters=filters, filesystem=fs)
    except storage.StorageError as err:
        raise DataError(str(err)) from None
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None


def read_parquet_schema(path: str | Path) -> pa.Schema:
    """A Parquet file's schema (its footer only)."""
    try:
        fs, inner = storage.filesystem(path)
        return pq.read_schema(inner, filesystem=fs)
    except storage.StorageError as err:
        raise DataError(str(err)) from None
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None


def read_molecules(root: str | Path) -> pa.Table:
    """The validated molecules table of a data set."""
    path = storage.join(root, MOLECULES_FILE)
    table = read_parquet(path)
    check_molecules_table(table, path)
    return table


def frame_files(root: str | Path) -> list[str]:
    """Shard files under root/frames (paths, or URIs for a URI root), sorted (hidden
    temporaries excluded)."""
    d = storage.join(root, FRAMES_DIR)
    try:
        if not storage.is_dir(d):
            raise DataError(f"{d}: frames directory not found")
        names = storage.listdir(d, "file")
    except storage.StorageError as err:
        raise DataError(str(err)) from None
    return [storage.join(d, n) for n in names if n.endswith(".parquet") and not n.startswith(".")]


def row_to_segment(row: dict[str, Any], where: str) -> Segment:
    """Turn one frames row (as a dict of Python / NumPy values) into a checked Segment."""
    mid = row["molecule_id"]
    where = f"{where}: molecule {mid!r} segment {row['segment']}"
    n_frames, n_atoms = int(row["n_frames"]), int(row["n_atoms"])
    expected = n_frames * n_atoms * 3
    pos = np.asarray(row["positions"], dtype=np.float32)
    if pos.size != expected:
        raise DataError(
            f"{where}: positions hold {pos.size} values, expected n_frames*n_atoms*3 = {expected}"
        )
    pos = check_coordinates(pos.reshape(n_frames, n_atoms, 3), n_atoms, where)
    vel = row.get("velocities")
    if vel is not None:
        vel = np.asarray(vel, dtype=np.float32)
        if vel.size != expected:
            raise DataError(
                f"{where}: velocities hold {vel.size} values, expected n_frames*n_atoms*3 = {expected}"
            )
        vel = check_coordinates(vel.reshape(n_frames, n_atoms, 3), n_atoms, where, "velocities")
    dt = check_dt(row["dt_fs"], where)
    return Segment(mid, int(row["segment"]), float(row["t0_fs"]), dt, pos, vel)


def _list_values(col: pa.ChunkedArray, i: int) -> np.ndarray | None:
    scalar = col[i]
    if not scalar.is_valid:
        return None
    return scalar.values.to_numpy(zero_copy_only=False)


def read_segments(path: str | Path, molecule_ids: Iterable[str] | None = None) -> list[Segment]:
    """All (or the selected molecules') segments of one shard, each checked."""
    filters = None
    if molecule_ids is not None:
        filters = [("molecule_id", "in", list(molecule_ids))]
    table = read_parquet(path, filters=filters)
    check_schema(table, FRAMES_SCHEMA, path)
    out = []
    for i in range(table.num_rows):
        row = {n: table.column(n)[i].as_py() for n in FRAMES_SCHEMA.names if n not in ("positions", "velocities")}
        row["positions"] = _list_values(table.column("positions"), i)
        row["velocities"] = _list_values(table.column("velocities"), i)
        out.append(row_to_segment(row, str(path)))
    return out


def iter_segments(root: str | Path, molecule_ids: Iterable[str] | None = None) -> Iterator[Segment]:
    ids = None if molecule_ids is None else set(molecule_ids)
    for path in frame_files(root):
        yield from read_segments(path, ids)


def join_segments(segments: Sequence[Segment], atomic_numbers: np.ndarray, where: str) -> list[Trajectory]:
    """Join one molecule's segments (any order) into contiguous trajectory pieces.

    Segments that continue each other in time (t0 of the next = t0 + n_frames*dt of the
    previous) are concatenated; a gap starts a new piece (e.g. revised MD17, whose rows are
    not consecutive MD steps). Overlapping segments, different time steps or atom counts are
    errors. Missing velocities are derived per piece by finite differences.
    """
    if not segments:
        raise DataError(f"{where}: no frames")
    segs = sorted(segments, key=lambda s: (s.t0_fs, s.segment))
    n_atoms = len(atomic_numbers)
    dt = segs[0].dt_fs
    for s in segs:
        if s.n_atoms != n_atoms:
            raise DataError(
                f"{where}: segment {s.segment} has {s.n_atoms} atoms, the molecules table says {n_atoms}"
            )
        if not np.isclose(s.dt_fs, dt):
            raise DataError(f"{where}: segment {s.segment} has dt_fs {s.dt_fs}, segment {segs[0].segment} has {dt}")
    pieces: list[list[Segment]] = [[segs[0]]]
    for a, b in zip(segs, segs[1:]):
        end = a.t0_fs + a.n_frames * dt
        tol = 1e-6 * max(1.0, abs(end))
        if b.t0_fs < end - tol:
            raise DataError(
                f"{where}: segment {b.segment} starts at {b.t0_fs} fs, inside segment {a.segment} "
                f"(which ends at {end} fs); segments must not overlap"
            )
        if abs(b.t0_fs - end) <= tol:
            pieces[-1].append(b)
        else:
            pieces.append([b])
    out = []
    z = np.asarray(atomic_numbers, np.int64)
    for piece in pieces:
        pos = np.concatenate([s.positions for s in piece])
        if all(s.velocities is not None for s in piece):
            vel = np.concatenate([s.velocities for s in piece])
        else:
            vel = finite_difference_velocities(pos, dt)
        out.append(Trajectory(piece[0].molecule_id, z, dt, piece[0].t0_fs, pos, vel))
    return out


def load_trajectories(root: str | Path, molecule_ids: Iterable[str] | None = None) -> dict[str, list[Trajectory]]:
    """Every (or the selected) molecule's trajectory as a list of contiguous pieces
    (usually one), in molecules-table order."""
    molecules = read_molecules(root)
    z_of = dict(zip(molecules.column("molecule_id").to_pylist(), molecules.column("atomic_numbers").to_pylist()))
    wanted = list(z_of) if molecule_ids is None else list(molecule_ids)
    for mid in wanted:
        if mid not in z_of:
            raise DataError(f"{storage.join(root, MOLECULES_FILE)}: no molecule {mid!r}")
    by_mol: dict[str, list[Segment]] = {m: [] for m in wanted}
    for seg in iter_segments(root, wanted):
        by_mol[seg.molecule_id].append(seg)
    return {
        m: join_segments(by_mol[m], np.asarray(z_of[m]), f"{root}: molecule {m!r}") for m in wanted
    }


def validate_dataset(root: str | Path) -> dict[str, Any]:
    """Check a whole data set and return a summary; raise DataError at the first problem.

    Checks: both schemas and column types; every row's list lengths and finiteness; every
    frames molecule is in the molecules table with the same atom count and time step; the
    segments of each molecule do not overlap; n_frames in the molecules table equals the sum
    over its segments.
    """
    molecules = read_molecules(root)
    info = {
        mid: (n, dt, nf)
        for mid, n, dt, nf in zip(
            molecules.column("molecule_id").to_pylist(),
            molecules.column("n_atoms").to_pylist(),
            molecules.column("dt_fs").to_pylist(),
            molecules.column("n_frames").to_pylist(),
        )
    }
    z_of = dict(zip(molecules.column("molecule_id").to_pylist(), molecules.column("atomic_numbers").to_pylist()))
    by_mol: dict[str, list[Segment]] = {m: [] for m in info}
    files = frame_files(root)
    for path in files:
        for seg in read_segments(path):
            if seg.molecule_id not in info:
                raise DataError(f"{path}: molecule {seg.molecule_id!r} is not in {MOLECULES_FILE}")
            n, dt, _ = info[seg.molecule_id]
            if seg.n_atoms != n:
                raise DataError(
                    f"{path}: molecule {seg.molecule_id!r} segment {seg.segment} has {seg.n_atoms} "
                    f"atoms, {MOLECULES_FILE} says {n}"
                )
            if not np.isclose(seg.dt_fs, dt):
                raise DataError(
                    f"{path}: molecule {seg.molecule_id!r} segment {seg.segment} has dt_fs "
                    f"{seg.dt_fs}, {MOLECULES_FILE} says {dt}"
                )
            by_mol[seg.molecule_id].append(seg)
    total_frames = 0
    for mid, segs in by_mol.items():
        pieces = join_segments(segs, np.asarray(z_of[mid]), f"{root}: molecule {mid!r}")
        n_frames = sum(p.n_frames for p in pieces)
        if n_frames != info[mid][2]:
            raise DataError(
                f"{root}: molecule {mid!r} has {n_frames} frames in {FRAMES_DIR}/, "
                f"{MOLECULES_FILE} says n_frames={info[mid][2]}"
            )
        total_frames += n_frames
    return {
        "molecules": len(info),
        "shards": len(files),
        "frames": total_frames,
        "simulated_fs": float(sum(info[m][1] * info[m][2] for m in info)),
    }
