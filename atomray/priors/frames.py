"""Per-frame physics of a data set: each frame's conformer basin, computed once, kept beside the frames.

    physics = ensure_frame_physics("data/tg80-mini")        # compute what is missing, then load
    physics = FramePhysics.load("data/tg80-mini")            # None unless every molecule has it
    basin = physics.basin("aspirin", segment=0, frame=1234)  # atomray.priors.modes.Basin or None

A frame's basin, the refined minimum and its normal modes depend on the frame alone, so they are
computed once per data set — not in every forward pass, every epoch, every fold and every
evaluation. For each molecule one `BasinFinder` meets its frames in time order (segment by
segment): each frame's MMFF94 minimum is matched to the basins found so far or opens a new one,
refined with GFN2-xTB, and gets GFN2-xTB normal modes (`atomray.priors.minima`,
`atomray.priors.modes`). The result depends only on the data set and the settings, not on which
machine or process computed it.

Layout, beside the data set (local path or any URI `atomray.storage` opens):

    physics/<TAG>/<molecule>.basins.parquet   one row per basin: minimum, normal modes (BASINS_SCHEMA)
    physics/<TAG>/<molecule>.frames.parquet   one row per frames row (segment): each frame's basin
                                               index, -1 where MMFF94 cannot type the molecule
    physics/<TAG>/provenance.json             settings, package versions, date

<TAG> carries the layout version and every setting that changes a basin (MMFF94 steps, the
GFN2-xTB refinement, basin RMSD, the Hessian's step, the softest mode frequency), so a change
of settings never reads basins made the old way. Files are written whole (temporary name, then
renamed; one PUT on object stores), basins before frames, and never overwritten: the first
writer wins, and a molecule counts as done once its frames file exists.

Cost: one MMFF94 minimisation per frame (~3.5 ms for 10–25 atoms on one core) plus a GFN2-xTB
refinement and Hessian per basin (~1–2 s). Molecules are independent: `ensure_frame_physics`
runs them as Ray tasks when Ray is initialised, else one after another in this process.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atomray import storage
from atomray.data.frames import DataError, safe_name
from atomray.priors.minima import BASIN_RMSD, GFN2_FMAX, GFN2_MAX_STEPS, MAX_STEPS, BasinFinder
from atomray.priors.modes import HESSIAN_STEP, OMEGA_MIN, Basin, basin_modes

PHYSICS_DIR = "physics"
LAYOUT = "frame-basins-v1"

BASINS_SCHEMA = pa.schema([
    pa.field("molecule_id", pa.string(), nullable=False),
    pa.field("basin", pa.int32(), nullable=False),
    pa.field("atomic_numbers", pa.list_(pa.int8()), nullable=False),
    pa.field("mmff", pa.list_(pa.float64()), nullable=False),  # (N*3,) the MMFF94 minimum that opened it
    pa.field("minimum", pa.list_(pa.float64()), nullable=False),  # (N*3,) refined (or MMFF94's when not)
    pa.field("omega", pa.list_(pa.float64()), nullable=False),  # (K,) fs⁻¹, K = 0 when not refined
    pa.field("modes", pa.list_(pa.float64()), nullable=False),  # (3N*K,) row-major (3N, K)
    pa.field("force", pa.list_(pa.float64()), nullable=False),  # (K,)
])
FRAMES_SCHEMA = pa.schema([
    pa.field("molecule_id", pa.string(), nullable=False),
    pa.field("segment", pa.int32(), nullable=False),
    pa.field("basin", pa.list_(pa.int32()), nullable=False),  # (n_frames,) basin index, -1: none
])


def physics_tag() -> str:
    """The folder of this version of the per-frame physics: layout and every setting that changes a basin."""
    return (f"{LAYOUT}-mmff{MAX_STEPS}-fmax{GFN2_FMAX}-steps{GFN2_MAX_STEPS}-rmsd{BASIN_RMSD}"
            f"-hess{HESSIAN_STEP}-wmin{OMEGA_MIN:.6g}")


def physics_dir(root: str | Path) -> str:
    return storage.join(str(root), PHYSICS_DIR, physics_tag())


def _paths(root: str | Path, molecule_id: str) -> tuple[str, str]:
    name = safe_name(molecule_id)
    if name != molecule_id:  # two ids may map to one safe name: keep them apart
        name += "-" + hashlib.sha256(molecule_id.encode()).hexdigest()[:8]
    base = storage.join(physics_dir(root), name)
    return base + ".basins.parquet", base + ".frames.parquet"


@dataclass
class MoleculePhysics:
    """One molecule's basins (in the molecule's atom order) and each frame's basin index."""

    molecule_id: str
    z: np.ndarray
    basins: list[Basin] = field(default_factory=list)
    mmff: list[np.ndarray] = field(default_factory=list)
    frames: dict[int, np.ndarray] = field(default_factory=dict)  # segment → (n_frames,) int32

    def basin_of(self, segment: int, frames: np.ndarray) -> np.ndarray:
        """(W,) basin indices of `frames` (W,) of `segment` (-1: none); a DataError names what is missing."""
        known = self.frames.get(int(segment))
        if known is None:
            raise DataError(f"molecule {self.molecule_id!r}: its stored physics has no segment {segment} "
                            f"(has {sorted(self.frames)}); recompute it (jobs/frame_physics.py --recompute)")
        if frames.size and (frames.min() < 0 or frames.max() >= len(known)):
            raise DataError(f"molecule {self.molecule_id!r} segment {segment}: frame {int(frames.max())} is outside its "
                            f"stored physics ({len(known)} frames); recompute it (jobs/frame_physics.py --recompute)")
        return known[frames]


def compute_molecule(molecule_id: str, z: np.ndarray, segments: Sequence[tuple[int, np.ndarray]]) -> MoleculePhysics:
    """The per-frame physics of one molecule: `segments` [(segment id, positions (F, N, 3) Å)] in
    time order; every frame is assigned a basin by a fresh `BasinFinder` (no machine store: the
    result depends on the frames alone). Every frame is minimised: assigning only every 10th
    frame and bisecting where the basin changes missed short visits to other basins (lib-4139:
    3 basins found instead of 4; docs/experiments.md)."""
    finder = BasinFinder(z)
    out = MoleculePhysics(molecule_id, np.asarray(z, np.int64))
    for segment, positions in segments:
        out.frames[int(segment)] = np.asarray([finder.assign(x) for x in positions], np.int32)
    out.basins = [basin_modes(finder, k) for k in range(len(finder))]
    out.mmff = list(finder.mmff)
    return out


def _to_parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_molecule(root: str | Path, physics: MoleculePhysics) -> str:
    """Store one molecule's physics (basins first, then frames); a molecule already stored is
    kept as the first writer left it. Returns the frames file."""
    basins_path, frames_path = _paths(root, physics.molecule_id)
    if storage.exists(frames_path):
        return frames_path
    mid = physics.molecule_id
    basins = pa.table({
        "molecule_id": [mid] * len(physics.basins),
        "basin": pa.array(range(len(physics.basins)), pa.int32()),
        "atomic_numbers": pa.array([b.z.tolist() for b in physics.basins], pa.list_(pa.int8())),
        "mmff": [m.ravel().tolist() for m in physics.mmff],
        "minimum": [b.minimum.ravel().tolist() for b in physics.basins],
        "omega": [b.omega.tolist() for b in physics.basins],
        "modes": [b.modes.ravel().tolist() for b in physics.basins],
        "force": [b.force.tolist() for b in physics.basins],
    }, schema=BASINS_SCHEMA)
    frames = pa.table({
        "molecule_id": [mid] * len(physics.frames),
        "segment": pa.array(list(physics.frames), pa.int32()),
        "basin": pa.array([ids.tolist() for ids in physics.frames.values()], pa.list_(pa.int32())),
    }, schema=FRAMES_SCHEMA)
    storage.write_bytes(basins_path, _to_parquet(basins))
    storage.write_bytes(frames_path, _to_parquet(frames))
    return frames_path


def read_molecule(root: str | Path, molecule_id: str) -> MoleculePhysics | None:
    """One molecule's stored physics, or None when it has none yet."""
    basins_path, frames_path = _paths(root, molecule_id)
    if not storage.exists(frames_path):
        return None
    def damaged(path: str, err: Exception) -> DataError:
        return DataError(f"{path}: damaged per-frame physics ({err}); delete {physics_dir(root)} and "
                         f"recompute it (jobs/frame_physics.py)")

    tables = {}
    for path, schema in ((basins_path, BASINS_SCHEMA), (frames_path, FRAMES_SCHEMA)):
        try:
            tables[path] = pq.read_table(io.BytesIO(storage.read_bytes(path)))
            if not tables[path].schema.equals(schema):
                raise ValueError("unexpected columns")
        except (OSError, ValueError, pa.ArrowException) as err:
            raise damaged(path, err) from None
    basins, frames = tables[basins_path], tables[frames_path]
    out = MoleculePhysics(molecule_id, np.zeros(0, np.int64))
    try:
        for row in basins.to_pylist():
            z = np.asarray(row["atomic_numbers"], np.int64)
            n, k = len(z), len(row["omega"])
            minimum = np.asarray(row["minimum"]).reshape(n, 3)
            out.basins.append(Basin(z, minimum, np.asarray(row["omega"]), np.asarray(row["modes"]).reshape(3 * n, k),
                                    np.asarray(row["force"])))
            out.mmff.append(np.asarray(row["mmff"]).reshape(n, 3))
            out.z = z
    except ValueError as err:  # arrays that do not fit the atom count
        raise damaged(basins_path, err) from None
    for row in frames.to_pylist():
        out.frames[int(row["segment"])] = np.asarray(row["basin"], np.int32)
    return out


@dataclass
class FramePhysics:
    """The stored per-frame physics of a data set's molecules (see the module docstring)."""

    root: str
    molecules: dict[str, MoleculePhysics]

    @classmethod
    def load(cls, root: str | Path, molecule_ids: Sequence[str] | None = None) -> "FramePhysics | None":
        """Every (or the given) molecule's stored physics, or None when any of them has none."""
        from atomray.data.dataset import read_molecules

        ids = molecule_ids if molecule_ids is not None else read_molecules(root).column("molecule_id").to_pylist()
        found = {}
        for mid in ids:
            physics = read_molecule(root, mid)
            if physics is None:
                return None
            found[mid] = physics
        return cls(str(root), found)

    def basin(self, molecule_id: str, segment: int, frame: int) -> Basin | None:
        """The basin (molecule's atom order) of one frame, None where MMFF94 cannot type it."""
        mol = self.molecules[molecule_id]
        k = int(mol.basin_of(segment, np.asarray([frame]))[0])
        return None if k < 0 else mol.basins[k]


def missing_molecules(root: str | Path, molecule_ids: Sequence[str]) -> list[str]:
    """The molecules whose per-frame physics is not stored yet."""
    return [m for m in molecule_ids if not storage.exists(_paths(root, m)[1])]


def _molecule_task(root: str, molecule_id: str) -> tuple[str, int, int, float]:
    """Compute and store one molecule (a Ray task or a local call): (id, frames, basins, seconds)."""
    from atomray.data.pipeline import molecule_files, molecule_segments

    t0 = time.perf_counter()
    pieces = molecule_segments(root, molecule_id, molecule_files(root, [molecule_id]).get(molecule_id, []))
    physics = compute_molecule(molecule_id, pieces[0].atomic_numbers, [(p.segment, p.positions) for p in pieces])
    write_molecule(root, physics)
    return molecule_id, sum(p.n_frames for p in pieces), len(physics.basins), time.perf_counter() - t0


def compute_missing(root: str | Path, molecule_ids: Sequence[str] | None = None,
                    progress: bool = True, num_cpus: float = 1.0) -> list[str]:
    """Compute and store the per-frame physics of every (or the given) molecule that lacks it;
    the ids it computed. Molecules run as Ray tasks (`num_cpus` each) when Ray is initialised and
    this process is not inside a placement group (a Tune trial), else here one after another; a
    progress bar counts molecules. Nothing is read back: a stored molecule costs one existence check."""
    from atomray.data.dataset import read_molecules

    root = str(root)
    ids = list(molecule_ids) if molecule_ids is not None else read_molecules(root).column("molecule_id").to_pylist()
    todo = missing_molecules(root, ids)
    if todo:
        _compute(root, todo, progress, num_cpus)
        _write_provenance(root)
        if still := missing_molecules(root, todo):
            raise DataError(f"{root}: per-frame physics of {still[:5]} is still missing after computing it")
    return todo


def ensure_frame_physics(root: str | Path, molecule_ids: Sequence[str] | None = None,
                         progress: bool = True, num_cpus: float = 1.0) -> FramePhysics:
    """`compute_missing`, then load every (or the given) molecule's physics."""
    from atomray.data.dataset import read_molecules

    ids = list(molecule_ids) if molecule_ids is not None else read_molecules(root).column("molecule_id").to_pylist()
    compute_missing(root, ids, progress, num_cpus)
    physics = FramePhysics.load(root, ids)
    if physics is None:
        raise DataError(f"{root}: per-frame physics of {missing_molecules(root, ids)[:5]} is missing")
    return physics


def _compute(root: str, todo: list[str], progress: bool, num_cpus: float) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"per-frame physics of {len(todo)} molecule(s)", unit="molecule",
               disable=not progress)
    try:
        import ray
        from ray.util import get_current_placement_group

        # inside a Tune trial (a placement group of a fraction of a CPU) tasks could not be placed
        use_ray = ray.is_initialized() and get_current_placement_group() is None
    except ImportError:
        use_ray = False
    if use_ray:
        task = ray.remote(num_cpus=num_cpus)(_molecule_task)
        pending = [task.remote(root, m) for m in todo]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            mid, frames, basins, seconds = ray.get(done[0])
            bar.set_postfix_str(f"{mid}: {frames} frames, {basins} basins, {seconds:.0f} s")
            bar.update()
    else:
        for m in todo:
            mid, frames, basins, seconds = _molecule_task(root, m)
            bar.set_postfix_str(f"{mid}: {frames} frames, {basins} basins, {seconds:.0f} s")
            bar.update()
    bar.close()


def _write_provenance(root: str) -> None:
    from importlib.metadata import version

    path = storage.join(physics_dir(root), "provenance.json")
    if storage.exists(path):
        return
    info = {"layout": LAYOUT, "tag": physics_tag(), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": {"mmff_max_steps": MAX_STEPS, "gfn2_fmax_ev_per_a": GFN2_FMAX, "gfn2_max_steps": GFN2_MAX_STEPS,
                         "basin_rmsd_a": BASIN_RMSD, "hessian_step_a": HESSIAN_STEP, "omega_min_per_fs": OMEGA_MIN},
            "versions": {p: version(p) for p in ("rdkit", "tblite", "ase", "numpy")}}
    storage.write_text(path, json.dumps(info, indent=1))
