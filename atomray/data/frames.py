"""The "TG80 frames" data format: schema, records, checks and atomic writers (readers:
`atomray.data.dataset`).

A data set is a directory (docs/data.md):

    molecules.parquet     one row per molecule (MOLECULES_SCHEMA; extra columns allowed)
    frames/*.parquet      one row per trajectory segment of one molecule (FRAMES_SCHEMA)

Units are physical everywhere: positions Å, times fs, velocities Å/fs. Positions and
velocities are flat float32 lists of length n_frames * n_atoms * 3 (frame-major). A null
velocities cell means "derive by finite differences" (forward, backward on the last frame).
A molecule may have several segments; segments that continue each other in time join into
one contiguous trajectory, gaps separate pieces (windows never cross a gap).

Every writer writes to a temporary name in the destination directory and renames it into
place, so a killed process never leaves a half-written shard. Readers (`atomray.data.dataset`)
check every row they return and raise `DataError` naming the file, the molecule and what was
expected.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class DataError(ValueError):
    """Input data is malformed; the message names the file / molecule / key at fault."""


MOLECULES_FILE = "molecules.parquet"
FRAMES_DIR = "frames"

MOLECULES_SCHEMA = pa.schema(
    [
        pa.field("molecule_id", pa.string(), nullable=False),
        pa.field("smiles", pa.string()),
        pa.field("atomic_numbers", pa.list_(pa.int8()), nullable=False),
        pa.field("n_atoms", pa.int32(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("theory", pa.string()),
        pa.field("engine", pa.string()),
        pa.field("temperature_k", pa.float64()),
        pa.field("dt_fs", pa.float64(), nullable=False),
        pa.field("n_frames", pa.int64(), nullable=False),
        pa.field("provenance", pa.string()),
    ]
)

FRAMES_SCHEMA = pa.schema(
    [
        pa.field("molecule_id", pa.string(), nullable=False),
        pa.field("segment", pa.int32(), nullable=False),
        pa.field("t0_fs", pa.float64(), nullable=False),
        pa.field("dt_fs", pa.float64(), nullable=False),
        pa.field("n_atoms", pa.int32(), nullable=False),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("positions", pa.list_(pa.float32()), nullable=False),
        pa.field("velocities", pa.list_(pa.float32())),
    ]
)

_PARQUET_OPTIONS = dict(
    compression="zstd",
    compression_level=9,
    use_dictionary=["molecule_id"],
    use_byte_stream_split=["positions.list.element", "velocities.list.element"],
)


# ---------------------------------------------------------------------------------------------
# in-memory records


@dataclass
class Molecule:
    """One row of molecules.parquet. `extra` holds additional columns (e.g. seed parent)."""

    molecule_id: str
    atomic_numbers: np.ndarray
    dt_fs: float
    n_frames: int
    smiles: str = ""
    source: str = ""
    theory: str = ""
    engine: str = ""
    temperature_k: float | None = None
    provenance: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return int(len(self.atomic_numbers))


@dataclass
class Segment:
    """A contiguous piece of one molecule's trajectory: frames t0_fs + k * dt_fs."""

    molecule_id: str
    segment: int
    t0_fs: float
    dt_fs: float
    positions: np.ndarray  # (F, N, 3) float32, Å
    velocities: np.ndarray | None  # (F, N, 3) float32, Å/fs, or None (derive)

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[1])


@dataclass
class Trajectory:
    """A molecule's whole trajectory: contiguous segments joined, velocities filled in."""

    molecule_id: str
    atomic_numbers: np.ndarray  # (N,) int
    dt_fs: float
    t0_fs: float
    positions: np.ndarray  # (F, N, 3) float32
    velocities: np.ndarray  # (F, N, 3) float32
    segment: int = 0  # the frames row it comes from (when it is one row, or a piece of one)
    first_frame: int = 0  # frame 0 here is this frame of that row

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])


# ---------------------------------------------------------------------------------------------
# checks shared by writers and readers


def check_atomic_numbers(z: Any, where: str) -> np.ndarray:
    """Atomic numbers as int array; each must be an element (1–118)."""
    z = np.asarray(z)
    if z.ndim != 1 or z.size == 0:
        raise DataError(f"{where}: atomic numbers must be a non-empty 1-D list, found shape {z.shape}")
    if not np.issubdtype(z.dtype, np.integer):
        if np.issubdtype(z.dtype, np.floating) and np.all(np.isfinite(z)) and np.all(z == np.round(z)):
            z = z.astype(np.int64)
        else:
            raise DataError(f"{where}: atomic numbers must be integers, found dtype {z.dtype}")
    bad = (z < 1) | (z > 118)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{where}: atomic number {int(z[i])} at atom {i} is not an element "
            f"(expected 1–118)"
        )
    return z.astype(np.int64)


def check_coordinates(arr: Any, n_atoms: int, where: str, name: str = "positions") -> np.ndarray:
    """(F, N, 3) finite float32 array whose atom count matches the element list."""
    arr = np.asarray(arr)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"{where}: {name} must have shape (frames, atoms, 3), found {arr.shape}")
    if arr.shape[1] != n_atoms:
        raise DataError(
            f"{where}: {name} have {arr.shape[1]} atoms per frame but the element list has "
            f"{n_atoms} atoms"
        )
    if arr.shape[0] == 0:
        raise DataError(f"{where}: {name} have no frames")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{where}: {name} must be numeric, found dtype {arr.dtype}")
    finite = np.isfinite(arr)
    if not finite.all():
        frame, atom, _ = np.argwhere(~finite)[0]
        raise DataError(
            f"{where}: {name} contain NaN or inf (first at frame {frame}, atom {atom}); "
            f"expected finite values"
        )
    return arr.astype(np.float32, copy=False)


def check_dt(dt_fs: Any, where: str) -> float:
    try:
        dt = float(dt_fs)
    except (TypeError, ValueError):
        raise DataError(f"{where}: time step dt_fs must be a number, found {dt_fs!r}") from None
    if not np.isfinite(dt) or dt <= 0:
        raise DataError(f"{where}: time step dt_fs must be positive and finite, found {dt}")
    return dt


def finite_difference_velocities(positions: np.ndarray, dt_fs: float) -> np.ndarray:
    """Forward differences (x[t+1] - x[t]) / dt in Å/fs; the last frame repeats the previous
    difference. Importers instead drop the last frame (the EGNO convention)."""
    if positions.shape[0] < 2:
        raise DataError("cannot derive velocities from a single frame")
    v = np.empty_like(positions)
    v[:-1] = (positions[1:] - positions[:-1]) / dt_fs
    v[-1] = v[-2]
    return v


# ---------------------------------------------------------------------------------------------
# atomic writing


def atomic_write_table(table: pa.Table, path: str | Path, **options: Any) -> Path:
    """Write a local Parquet file under a temporary name in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp, **options)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def segments_table(segments: Sequence[Segment]) -> pa.Table:
    """Validate segments and build a FRAMES_SCHEMA table."""
    cols: dict[str, list] = {name: [] for name in FRAMES_SCHEMA.names}
    for seg in segments:
        where = f"molecule {seg.molecule_id!r} segment {seg.segment}"
        dt = check_dt(seg.dt_fs, where)
        pos = np.asarray(seg.positions)
        if pos.ndim != 3:
            raise DataError(f"{where}: positions must have shape (frames, atoms, 3), found {pos.shape}")
        pos = check_coordinates(pos, pos.shape[1], where)
        vel = None
        if seg.velocities is not None:
            vel = check_coordinates(seg.velocities, pos.shape[1], where, "velocities")
            if vel.shape != pos.shape:
                raise DataError(f"{where}: velocities shape {vel.shape} != positions shape {pos.shape}")
        cols["molecule_id"].append(str(seg.molecule_id))
        cols["segment"].append(int(seg.segment))
        cols["t0_fs"].append(float(seg.t0_fs))
        cols["dt_fs"].append(dt)
        cols["n_atoms"].append(int(pos.shape[1]))
        cols["n_frames"].append(int(pos.shape[0]))
        cols["positions"].append(pos.reshape(-1))
        cols["velocities"].append(None if vel is None else vel.reshape(-1))
    arrays = []
    for f in FRAMES_SCHEMA:
        if f.name in ("positions", "velocities"):
            arrays.append(_float_lists(cols[f.name]))
        else:
            arrays.append(pa.array(cols[f.name], type=f.type))
    return pa.Table.from_arrays(arrays, schema=FRAMES_SCHEMA)


def _float_lists(rows: list[np.ndarray | None]) -> pa.Array:
    """list<float32> array from flat numpy rows without a Python loop over elements."""
    lengths = np.array([0 if r is None else len(r) for r in rows], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    present = [r for r in rows if r is not None]
    values = np.concatenate(present).astype(np.float32) if present else np.zeros(0, np.float32)
    mask = pa.array([r is None for r in rows]) if any(r is None for r in rows) else None
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), mask=mask).cast(
        pa.list_(pa.float32())
    )


def write_segments(path: str | Path, segments: Sequence[Segment]) -> Path:
    """Atomically write one frames shard holding `segments`."""
    return atomic_write_table(segments_table(segments), path, **_PARQUET_OPTIONS)


def molecules_table(molecules: Sequence[Molecule]) -> pa.Table:
    """Validate molecules and build a table with MOLECULES_SCHEMA (+ extra columns)."""
    ids = [m.molecule_id for m in molecules]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise DataError(f"molecules: duplicate molecule_id(s) {sorted(dup)}")
    cols: dict[str, list] = {name: [] for name in MOLECULES_SCHEMA.names}
    extra_names = sorted({k for m in molecules for k in m.extra})
    extra: dict[str, list] = {k: [] for k in extra_names}
    for m in molecules:
        where = f"molecule {m.molecule_id!r}"
        z = check_atomic_numbers(m.atomic_numbers, where)
        cols["molecule_id"].append(str(m.molecule_id))
        cols["smiles"].append(m.smiles or "")
        cols["atomic_numbers"].append(z.astype(np.int8))
        cols["n_atoms"].append(len(z))
        cols["source"].append(m.source)
        cols["theory"].append(m.theory)
        cols["engine"].append(m.engine)
        cols["temperature_k"].append(m.temperature_k)
        cols["dt_fs"].append(check_dt(m.dt_fs, where))
        cols["n_frames"].append(int(m.n_frames))
        cols["provenance"].append(m.provenance)
        for k in extra_names:
            extra[k].append(m.extra.get(k))
    table = pa.table({n: pa.array(cols[n], type=MOLECULES_SCHEMA.field(n).type) for n in MOLECULES_SCHEMA.names})
    table = table.cast(MOLECULES_SCHEMA)
    for k in extra_names:
        table = table.append_column(k, pa.array(extra[k]))
    return table


def write_molecules(root: str | Path, molecules: Sequence[Molecule] | pa.Table) -> Path:
    """Atomically write `root/molecules.parquet`."""
    table = molecules if isinstance(molecules, pa.Table) else molecules_table(molecules)
    check_molecules_table(table, Path(root) / MOLECULES_FILE)
    return atomic_write_table(table, Path(root) / MOLECULES_FILE, compression="zstd")


def write_dataset(
    root: str | Path,
    items: Iterable[tuple[Molecule, np.ndarray, np.ndarray | None]],
    segment_frames: int | None = None,
    t0_fs: float = 0.0,
) -> Path:
    """Write a whole data set: one shard per molecule under frames/, molecules.parquet last.

    `items` yields (molecule, positions (F,N,3), velocities (F,N,3) or None). A trajectory is
    split into segments of `segment_frames` (None: one segment). `molecule.n_frames` is set
    from the positions. The molecules table is written last, so a killed import leaves no
    readable half data set.
    """
    root = Path(root)
    molecules = []
    for mol, pos, vel in items:
        where = f"molecule {mol.molecule_id!r}"
        z = check_atomic_numbers(mol.atomic_numbers, where)
        pos = check_coordinates(pos, len(z), where)
        if vel is not None:
            vel = check_coordinates(vel, len(z), where, "velocities")
        dt = check_dt(mol.dt_fs, where)
        size = segment_frames or pos.shape[0]
        segs = [
            Segment(mol.molecule_id, k, t0_fs + start * dt, dt, pos[start : start + size],
                    None if vel is None else vel[start : start + size])
            for k, start in enumerate(range(0, pos.shape[0], size))
        ]
        write_segments(root / FRAMES_DIR / f"{safe_name(mol.molecule_id)}.parquet", segs)
        mol.n_frames = int(pos.shape[0])
        molecules.append(mol)
    return write_molecules(root, molecules)


def safe_name(molecule_id: str) -> str:
    """A file name for a molecule id: letters, digits, "-", "_" and "." kept, anything else "_"."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in molecule_id)


# ---------------------------------------------------------------------------------------------
# schema checks (writers and readers)


def check_fields(found: pa.Schema, schema: pa.Schema, path: str | Path) -> None:
    """Every column of `schema` is in `found`, with the same type."""
    for f in schema:
        if f.name not in found.names:
            raise DataError(f"{path}: missing column {f.name!r} (expected type {f.type})")
        if found.field(f.name).type != f.type:
            raise DataError(f"{path}: column {f.name!r} has type {found.field(f.name).type}, expected {f.type}")


def check_schema(table: pa.Table, schema: pa.Schema, path: str | Path) -> None:
    check_fields(table.schema, schema, path)
    for f in schema:
        if not f.nullable and table.column(f.name).null_count:
            raise DataError(f"{path}: column {f.name!r} has null values; expected none")


def check_molecules_table(table: pa.Table, path: str | Path) -> None:
    check_schema(table, MOLECULES_SCHEMA, path)
    ids = table.column("molecule_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"{path}: duplicate molecule_id(s) {dup}")
    for mid, z, n, dt in zip(ids, table.column("atomic_numbers").to_pylist(),
                             table.column("n_atoms").to_pylist(), table.column("dt_fs").to_pylist()):
        where = f"{path}: molecule {mid!r}"
        check_atomic_numbers(np.asarray(z, dtype=np.int64), where)
        if len(z) != n:
            raise DataError(f"{where}: n_atoms is {n} but atomic_numbers lists {len(z)} atoms")
        check_dt(dt, where)


def provenance_json(**fields: Any) -> str:
    """Provenance string for the molecules table (engine, seed, command, versions...)."""
    return json.dumps(fields, sort_keys=True, default=str)
