"""Importers: public MD files (sGDML MD17 / MD22, revised MD17, generic npz, anything ASE
reads) -> a TG80-frames data set (`atomray.data.frames`).

    cfg = ImportConfig(format="md17", dt_fs=0.5)                  # atomray.data.sources
    summaries = import_dataset(["md17_aspirin.npz"], "data/md17", cfg)

Formats and how each is read: `atomray.data.sources` (docs/data.md).

`import_dataset` writes the whole data set into a temporary sibling directory, validates it
with `validate_dataset`, and only then renames it to the destination; on any error the
temporary directory is removed and the destination is left as it was.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from atomray import storage
from atomray.config import ConfigError
from atomray.data.frames import FRAMES_DIR, MOLECULES_FILE, DataError, Molecule, Segment, provenance_json, write_molecules, write_segments
from atomray.data.dataset import validate_dataset
from atomray.data.sources import FORWARD_DIFFERENCES, TEMPERATURE_K, ImportConfig, SourceTrajectory, read_source
from atomray.outputs import check_output_dir, remove_made_dirs

@dataclass(frozen=True)
class ImportSummary:
    """What was imported for one molecule (for the job's one-line report)."""

    molecule_id: str
    path: Path
    n_frames: int
    n_atoms: int
    n_heavy: int
    n_segments: int
    dt_fs: float
    velocities: str
    dropped_rows: int

    def line(self) -> str:
        dropped = f", {self.dropped_rows} rows in too-short runs dropped" if self.dropped_rows else ""
        vel = "from file" if self.velocities == "file" else "forward differences"
        return (
            f"{self.molecule_id}: {self.n_frames} frames, {self.n_atoms} atoms ({self.n_heavy} heavy), "
            f"{self.n_frames * self.dt_fs:.12g} fs in {self.n_segments} segment(s), dt {self.dt_fs:g} fs, "
            f"velocities {vel}{dropped} <- {self.path.name}"
        )


# ---------------------------------------------------------------------------------------------
# names


_ID_PREFIX = re.compile(r"^(rmd17|md17|md22)_", re.IGNORECASE)
_ID_SUFFIX = re.compile(r"_dft$", re.IGNORECASE)


def molecule_id_from_path(path: str | Path) -> str:
    """Molecule id from a file name: `md17_aspirin.npz` -> `aspirin`, `aspirin_dft.npz` ->
    `aspirin`, `md22_Ac-Ala3-NHMe.npz` -> `Ac-Ala3-NHMe`, `traj.extxyz` -> `traj`."""
    stem = Path(path).stem
    name = _ID_SUFFIX.sub("", _ID_PREFIX.sub("", stem))
    return name or stem


def _package_version() -> str:
    # not atomray.__version__: a stale editable install can import atomray as a namespace package
    try:
        return importlib.metadata.version("atomray")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# runs -> segments


def build_segments(source: SourceTrajectory, molecule_id: str, cfg: ImportConfig) -> tuple[list[Segment], int]:
    """Segments (float32 Å, Å/fs) of one molecule, and the number of file rows dropped with
    runs too short to keep (the last frame lost to forward differences is not counted).

    Runs shorter than the minimum are dropped; without velocities each run loses its last
    frame to forward differences; each run is cut into `segment_frames`-frame segments.
    """
    dt = cfg.dt_fs
    derive = source.runs[0].velocities is None
    min_rows = cfg.min_segment_frames or (2 if derive else 1)
    kept = [r for r in source.runs if len(r.positions) >= min_rows]
    longest = max(len(r.positions) for r in source.runs)
    where = f"{source.path}: molecule {molecule_id!r}"
    sub = ("revised MD17 rows are sub-sampled from the MD17 trajectory, not consecutive MD steps "
           "(see np.diff(old_indices)); ") if source.subsampled else ""
    if not kept:
        runs = "consecutive old_indices" if source.subsampled else "consecutive frames"
        raise DataError(f"{where}: {sub}the longest run of {runs} is {longest} rows, expected at "
                        f"least {min_rows} (min_segment_frames)")
    usable = longest - int(derive)
    if usable < cfg.min_frames:
        why = " after forward-difference velocities drop the last frame" if derive else ""
        raise DataError(f"{where}: {sub}the longest contiguous piece has {usable} frames{why}, "
                        f"expected at least {cfg.min_frames} (min_frames)")
    segments: list[Segment] = []
    for run in kept:
        pos, vel = run.positions, run.velocities
        if vel is None:
            # EGNO convention: v = x[1:] - x[:-1], x = x[:-1]; computed before the float32 cast
            vel = (pos[1:] - pos[:-1]) / dt
            pos = pos[:-1]
        pos = np.asarray(pos, dtype=np.float32)
        vel = np.asarray(vel, dtype=np.float32)
        size = cfg.segment_frames or len(pos)
        for start in range(0, len(pos), size):
            segments.append(Segment(molecule_id, len(segments), run.t0_fs + start * dt, dt,
                                    pos[start : start + size], vel[start : start + size]))
    dropped = sum(len(r.positions) for r in source.runs if len(r.positions) < min_rows)
    return segments, dropped


# ---------------------------------------------------------------------------------------------
# a whole data set, atomically


def _molecule_ids(inputs: Sequence[Path], cfg: ImportConfig) -> list[str]:
    if cfg.molecule_ids and len(cfg.molecule_ids) != len(inputs):
        raise ConfigError(f"import molecule_ids: expected one id per input file ({len(inputs)}), "
                          f"found {len(cfg.molecule_ids)}: {list(cfg.molecule_ids)}")
    ids = list(cfg.molecule_ids) or [molecule_id_from_path(p) for p in inputs]
    seen: dict[str, Path] = {}
    for mid, path in zip(ids, inputs):
        if not mid.strip():
            raise ConfigError(f"{path}: empty molecule id; expected a name")
        if mid in seen:
            raise DataError(f"duplicate molecule id {mid!r}: from {seen[mid]} and {path}; expected one "
                            f"file per molecule (give distinct ids with --molecule-id)")
        seen[mid] = path
    return ids


def _check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out}: exists and is not a directory; expected a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output {out}: directory exists and is not empty; expected a new or empty "
                          f"directory (or pass --overwrite)")
    check_output_dir(out, built_beside=True)


def _shard_name(index: int, molecule_id: str) -> str:
    # the index keeps names unique even when two ids differ only in unsafe characters
    return f"{index:04d}-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in molecule_id) + ".parquet"


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; a previous `out` is set aside and deleted only afterwards."""
    old = None
    if out.exists() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
        out.rename(old)
    elif out.exists():
        out.rmdir()
    try:
        tmp.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def import_dataset(inputs: Sequence[str | Path], out: str | Path, cfg: ImportConfig,
                   command: str = "") -> list[ImportSummary]:
    """Import `inputs` (one molecule each) into the TG80-frames data set directory `out`.

    Returns one ImportSummary per molecule. `command` is recorded in each molecule's
    provenance together with the input file name and its sha256. Raises ConfigError for bad
    options, DataError for bad files and OutputError for an unwritable `out`; either way `out`
    is left untouched.
    """
    if storage.is_uri(out):
        return _import_to_uri(inputs, str(out), cfg, command)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ConfigError("import: expected at least one input file, found none")
    out = Path(out)
    ids = _molecule_ids(paths, cfg)
    _check_destination(out, cfg.overwrite)
    missing_parents = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.importing")
    summaries: list[ImportSummary] = []
    try:
        (tmp / FRAMES_DIR).mkdir(parents=True)
        molecules = []
        for index, (path, mid) in enumerate(zip(paths, ids)):
            source = read_source(path, cfg)
            segments, dropped = build_segments(source, mid, cfg)
            write_segments(tmp / FRAMES_DIR / _shard_name(index, mid), segments)
            n_frames = sum(s.n_frames for s in segments)
            velocities = "file" if source.runs[0].velocities is not None else FORWARD_DIFFERENCES
            provenance = provenance_json(
                command=command, format=cfg.format, input=path.name, input_path=str(path.resolve()),
                sha256=sha256_of(path), velocities=velocities,
                runs_in_file=len(source.runs), rows_dropped=dropped, segment_frames=cfg.segment_frames,
                atomray=_package_version(),
            )
            molecules.append(Molecule(
                molecule_id=mid, atomic_numbers=source.atomic_numbers, dt_fs=cfg.dt_fs,
                n_frames=n_frames, source=cfg.format, theory=source.theory, smiles=source.smiles,
                temperature_k=source.temperature_k or TEMPERATURE_K.get(cfg.format), provenance=provenance,
            ))
            z = source.atomic_numbers
            summaries.append(ImportSummary(mid, path, n_frames, len(z), int((z > 1).sum()), len(segments),
                                           cfg.dt_fs, velocities, dropped))
            del source, segments  # one molecule in memory at a time
        write_molecules(tmp, molecules)
        validate_dataset(tmp)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_made_dirs(missing_parents)  # innermost first: undo our mkdir -p
        raise
    return summaries


def _import_to_uri(inputs: Sequence[str | Path], out: str, cfg: ImportConfig, command: str) -> list[ImportSummary]:
    """Import into a local staging directory, then copy it to the URI `out` with the molecules
    table last: a reader finds no data set until every frames file is in place."""
    try:
        if storage.listdir(out) and not cfg.overwrite:
            raise ConfigError(f"output {out}: exists and is not empty; expected a new or empty location "
                              f"(or pass --overwrite)")
        with tempfile.TemporaryDirectory(prefix="atomray-import-") as tmp:
            staged = Path(tmp) / "dataset"
            summaries = import_dataset(inputs, staged, cfg, command)
            storage.delete_dir(out)
            storage.upload_dir(staged, out, last=(MOLECULES_FILE,))
    except storage.StorageError as err:
        raise DataError(str(err)) from None
    return summaries
