"""Reading public MD files into runs of consecutive MD steps (the first half of an import).

Formats (docs/data.md, "Public MD files"):

    md17, md22  sGDML npz: `R` (frames, N, 3) Å, `z` (N,); frames 0.5 fs (MD17), 1 fs (MD22).
    rmd17  revised MD17 npz: `coords`, `nuclear_charges`, `old_indices`. Rows are a random
           sub-sample of MD17, NOT consecutive steps: sorted by `old_indices` and split into
           runs of consecutive indices, each a segment at t0 = old_index * dt (gaps between).
    npz    generic: positions `R`|`positions`|`coords`, elements `z`|`atomic_numbers`|
           `nuclear_charges`, optional velocities `V`|`velocities` (Å/fs), per-frame times
           `t_fs` (gaps split runs) and `dt_fs` (must agree): what `exporters.export_npz` writes.
    ase    anything `ase.io.read(path, index=":")` reads (extxyz, .traj); velocities from the
           momenta, ASE units (Å per 1/ase.units.fs fs) -> Å/fs; per-frame `time_fs` in info.

The time step is always given by the user (`dt_fs`), never guessed. Without velocities in
the file they are forward differences the EGNO way (docs/reference.md, "The EGNO single-task
protocol"): v[t] = (x[t+1] - x[t]) / dt in Å/fs and the last frame of each run is dropped.
Velocities are stored explicitly, so every reader sees the same numbers.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from atomray.config import ConfigError
from atomray.data.frames import DataError, check_atomic_numbers, check_coordinates

FORMATS = ("md17", "rmd17", "md22", "npz", "ase")
# Level of theory of the public sets (paper App. C.5, Table 7).
THEORY = {"md17": "PBE+TS", "rmd17": "PBE/def2-SVP", "md22": "PBE+MBD"}
# MD17 and rMD17 were run at 500 K; MD22 at 400–500 K depending on the molecule, so unknown.
TEMPERATURE_K = {"md17": 500.0, "rmd17": 500.0}
POSITIONS_KEYS = ("R", "positions", "coords")
ELEMENTS_KEYS = ("z", "atomic_numbers", "nuclear_charges")
VELOCITIES_KEYS = ("V", "velocities")
FORWARD_DIFFERENCES = "forward differences (EGNO: v = (x[t+1] - x[t]) / dt, last frame dropped)"


@dataclass(frozen=True)
class ImportConfig:
    """How to import files. Times in fs.

    format: one of FORMATS. dt_fs: time between consecutive frames of the files (required).
    molecule_ids: one id per input file, or empty (ids from the file names).
    segment_frames: split each contiguous run into segments of this many frames (0: one
    segment per run). min_segment_frames: runs with fewer rows are dropped (0: 2 when
    velocities are derived, 1 when the file has them). min_frames: every molecule's longest
    contiguous piece must keep at least this many frames (e.g. the largest horizon + 1).
    positions_key / elements_key / velocities_key: npz key names ("" = the usual names).
    overwrite: replace a non-empty destination directory.
    """

    format: Literal["md17", "rmd17", "md22", "npz", "ase"]
    dt_fs: float
    molecule_ids: tuple[str, ...] = ()
    segment_frames: int = 0
    min_segment_frames: int = 0
    min_frames: int = 1
    positions_key: str = ""
    elements_key: str = ""
    velocities_key: str = ""
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "molecule_ids", tuple(str(m) for m in self.molecule_ids))
        if self.format not in FORMATS:
            raise ConfigError(f"import format: expected one of {', '.join(FORMATS)}, found {self.format!r}")
        if not isinstance(self.dt_fs, (int, float)) or not np.isfinite(self.dt_fs) or self.dt_fs <= 0:
            raise ConfigError(f"import dt_fs: expected a positive time step in fs, found {self.dt_fs!r}")
        for name in ("segment_frames", "min_segment_frames", "min_frames"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"import {name}: expected a count >= 0, found {getattr(self, name)!r}")


@dataclass
class Run:
    """Consecutive MD steps read from a file: frames t0_fs + k * dt."""

    t0_fs: float
    positions: np.ndarray  # (F, N, 3) Å, as stored in the file (float64 for sGDML)
    velocities: np.ndarray | None  # (F, N, 3) Å/fs, or None: derive by forward differences


@dataclass
class SourceTrajectory:
    """What one input file holds: elements, runs of consecutive steps, and metadata."""

    path: Path
    atomic_numbers: np.ndarray  # (N,) int64
    runs: list[Run]
    theory: str = ""
    subsampled: bool = False  # revised MD17: rows are a sub-sample, runs come from old_indices
    smiles: str = ""
    temperature_k: float | None = None


# ---------------------------------------------------------------------------------------------
# reading files


class _Npz:
    """An opened npz archive whose errors name the file and the keys found."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise DataError(f"{path}: input file not found")
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path}: not an .npz archive (expected a zip file of .npy arrays)")
        try:
            self._npz = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise DataError(f"{path}: not a readable .npz archive ({err})") from None
        self.path, self.keys = path, list(self._npz.files)

    def key(self, candidates: Sequence[str], what: str, hint: str = "", required: bool = True) -> str | None:
        """The first of `candidates` in the archive; DataError listing the keys found."""
        for key in candidates:
            if key in self.keys:
                return key
        if not required:
            return None
        expected = " or ".join(repr(k) for k in candidates)
        raise DataError(f"{self.path}: missing {what}: expected key {expected}, found keys {sorted(self.keys)}{hint}")

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._npz[key]
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
            raise DataError(f"{self.path}: key {key!r} cannot be read ({err})") from None


def _split_runs(times_fs: np.ndarray, dt: float, positions: np.ndarray,
                velocities: np.ndarray | None, where: str) -> list[Run]:
    """Sort frames by time (fs) and split them into runs of consecutive MD steps; times must
    lie on the dt grid. Each run starts at the time of its first frame."""
    t = np.asarray(times_fs, dtype=np.float64)
    if not np.isfinite(t).all():
        raise DataError(f"{where}: frame times contain NaN or inf; expected finite fs")
    order = np.argsort(t, kind="stable")
    t = t[order]
    gaps = np.diff(t) / dt  # in steps
    steps = np.rint(gaps)
    bad = np.flatnonzero((steps == 0) | (np.abs(gaps - steps) > 1e-4))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{where}: frames at {t[i]} fs and {t[i + 1]} fs are not distinct MD steps "
                        f"{dt} fs apart; expected each step once, on the dt_fs grid")
    runs = []
    for idx in np.split(np.arange(len(t)), np.flatnonzero(steps != 1) + 1):
        rows = order[idx]
        runs.append(Run(float(t[idx[0]]), positions[rows], None if velocities is None else velocities[rows]))
    return runs


# format -> (positions keys, elements keys), each tried in order
_NPZ_KEYS = {
    "md17": (("R",), ("z",)),
    "md22": (("R",), ("z",)),
    "rmd17": (("coords",), ("nuclear_charges",)),
    "npz": (POSITIONS_KEYS, ELEMENTS_KEYS),
}


def read_npz(path: str | Path, cfg: ImportConfig) -> SourceTrajectory:
    """Read an md17 / md22 / rmd17 / generic npz file into runs of consecutive steps."""
    npz = _Npz(Path(path))
    try:
        return _read_npz(npz, cfg)
    finally:
        npz._npz.close()


def _read_npz(npz: _Npz, cfg: ImportConfig) -> SourceTrajectory:
    fmt, path, dt = cfg.format, npz.path, cfg.dt_fs
    hint = ""
    if fmt in ("md17", "md22") and "old_indices" in npz.keys:
        hint = " (this looks like revised MD17: use format 'rmd17')"
    pos_keys, z_keys = _NPZ_KEYS[fmt]
    pos_key = npz.key([cfg.positions_key] if cfg.positions_key else pos_keys, "positions", hint)
    z_key = npz.key([cfg.elements_key] if cfg.elements_key else z_keys, "atomic numbers", hint)
    pos = npz[pos_key]
    z = check_atomic_numbers(npz[z_key], f"{path}: key {z_key!r}")
    check_coordinates(pos, len(z), f"{path}: key {pos_key!r}")  # shape, atom count, finiteness
    vel, vel_key = None, None
    if cfg.velocities_key:
        vel_key = npz.key([cfg.velocities_key], "velocities")
    elif fmt == "npz":  # the public benchmark files carry no velocities
        vel_key = npz.key(VELOCITIES_KEYS, "velocities", required=False)
    if vel_key is not None:
        vel = npz[vel_key]
        check_coordinates(vel, len(z), f"{path}: key {vel_key!r}", "velocities")
        if vel.shape != pos.shape:
            raise DataError(f"{path}: key {vel_key!r} has shape {vel.shape}, expected the positions' shape {pos.shape}")
    if fmt == "npz" and "dt_fs" in npz.keys:
        stored = npz["dt_fs"].reshape(-1)
        if stored.size != 1 or not np.isclose(float(stored[0]), dt):
            raise DataError(f"{path}: key 'dt_fs' says {stored.tolist()} fs but the import asks for dt {dt} fs")
    if fmt == "rmd17":
        where = f"{path}: key 'old_indices'"
        old = npz[npz.key(["old_indices"], "MD step of each row",
                          " (revised MD17 rows are sub-sampled; without old_indices their steps are unknown)")]
        if old.shape != (len(pos),) or not np.issubdtype(old.dtype, np.integer):
            raise DataError(f"{where}: expected {len(pos)} integer MD step indices (one per row), "
                            f"found shape {old.shape} dtype {old.dtype}")
        runs = _split_runs(old.astype(np.int64) * dt, dt, pos, vel, where)
    elif fmt == "npz" and "t_fs" in npz.keys:
        where = f"{path}: key 't_fs'"
        t = npz["t_fs"]
        if t.shape != (len(pos),):
            raise DataError(f"{where}: expected one time per frame, shape ({len(pos)},), found {t.shape}")
        runs = _split_runs(t, dt, pos, vel, where)
    else:
        runs = [Run(0.0, pos, vel)]
    meta = _npz_metadata(npz, z) if fmt == "npz" else {}
    return SourceTrajectory(path, z, runs, theory=meta.get("theory", THEORY.get(fmt, "")), subsampled=fmt == "rmd17",
                            smiles=meta.get("smiles", ""), temperature_k=meta.get("temperature_k"))


def _npz_metadata(npz: _Npz, z: np.ndarray) -> dict[str, Any]:
    """Optional metadata keys of a generic npz: `smiles`, `theory` (strings) and
    `temperature_k` or `T` (kelvin), each a single value; a malformed one, or a SMILES whose
    atoms (hydrogens included) differ from the file's elements, is an error naming the key."""
    out: dict[str, Any] = {}
    for key in ("smiles", "theory"):
        if key in npz.keys:
            value = npz[key].reshape(-1)
            if value.size != 1 or value.dtype.kind not in "US":
                raise DataError(f"{npz.path}: key {key!r}: expected one string, found {value.size} "
                                f"value(s) of dtype {value.dtype}")
            out[key] = str(value[0].decode() if isinstance(value[0], bytes) else value[0]).strip()
    if key := npz.key(("temperature_k", "T"), "temperature", required=False):
        value = npz[key].reshape(-1)
        if value.size != 1 or value.dtype.kind not in "iuf" or not np.isfinite(value[0]) or value[0] <= 0:
            raise DataError(f"{npz.path}: key {key!r}: expected one positive temperature in K, found {value.tolist()[:5]}")
        out["temperature_k"] = float(value[0])
    if out.get("smiles"):
        from rdkit import Chem

        mol = Chem.MolFromSmiles(out["smiles"])
        if mol is None:
            raise DataError(f"{npz.path}: key 'smiles': {out['smiles']!r} is not a valid SMILES")
        counts = lambda zs: {int(k): int(v) for k, v in zip(*np.unique(zs, return_counts=True))}  # noqa: E731
        told = counts([a.GetAtomicNum() for a in Chem.AddHs(mol).GetAtoms()])
        if told != counts(z):
            raise DataError(f"{npz.path}: key 'smiles': {out['smiles']!r} has elements {told} (Z: count), "
                            f"the file's atoms are {counts(z)}")
    return out


def read_ase(path: str | Path, cfg: ImportConfig) -> SourceTrajectory:
    """Read every frame ASE can read from `path`; velocities from momenta (ASE units -> Å/fs)."""
    import ase.io
    import ase.units

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: input file not found")
    try:
        images = ase.io.read(str(path), index=":")
    except Exception as err:  # ASE raises many types for unreadable input; all mean "bad file"
        raise DataError(f"{path}: ASE cannot read it ({type(err).__name__}: {err})") from None
    if not isinstance(images, list):
        images = [images]
    if not images:
        raise DataError(f"{path}: no frames")
    z = check_atomic_numbers(images[0].numbers, f"{path}: frame 0 atomic numbers")
    for k, atoms in enumerate(images):
        if len(atoms) != len(z) or not np.array_equal(atoms.numbers, z):
            raise DataError(
                f"{path}: frame {k} has atoms {atoms.get_chemical_formula()} ({len(atoms)} atoms), "
                f"frame 0 has {images[0].get_chemical_formula()} ({len(z)}); expected the same atom "
                f"list in every frame"
            )
    pos = np.stack([a.get_positions() for a in images])  # (F, N, 3) Å
    check_coordinates(pos, len(z), f"{path}: positions")
    has_momenta = ["momenta" in a.arrays for a in images]
    vel = None
    if any(has_momenta):
        if not all(has_momenta):
            k = has_momenta.index(False)
            raise DataError(f"{path}: frame {k} has no velocities (momenta) but frame "
                            f"{has_momenta.index(True)} has; expected all frames or none")
        # ASE time unit is 1/ase.units.fs fs (~10.18 fs): v[Å/fs] = v[ASE] * ase.units.fs
        vel = np.stack([a.get_velocities() for a in images]) * ase.units.fs
        check_coordinates(vel, len(z), f"{path}: velocities", "velocities")
    dts = {float(a.info["dt_fs"]) for a in images if "dt_fs" in a.info}
    if any(not np.isclose(d, cfg.dt_fs) for d in dts):
        raise DataError(f"{path}: frames say dt_fs {sorted(dts)} fs but the import asks for dt {cfg.dt_fs} fs")
    times = [a.info.get("time_fs") for a in images]
    if all(t is not None for t in times):
        where = f"{path}: info 'time_fs'"
        runs = _split_runs(np.asarray(times, dtype=np.float64), cfg.dt_fs, pos, vel, where)
    else:
        runs = [Run(0.0, pos, vel)]
    return SourceTrajectory(path, z, runs)


def read_source(path: str | Path, cfg: ImportConfig) -> SourceTrajectory:
    """Read one input file of `cfg.format`."""
    return read_ase(path, cfg) if cfg.format == "ase" else read_npz(path, cfg)
