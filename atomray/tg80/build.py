"""Building a TG80-style data set: simulate every planned molecule, resumably, then write
the molecules table and the stability report.

Output directory (the TG80 frames format of `atomray.data.frames`):

    frames/<molecule_id>-<segment:05d>.parquet   one atomic file per trajectory segment
    _state/<molecule_id>.npz                     float64 state after the last finished segment
    _state/<molecule_id>.log                     one JSON line per prepared / computed segment
    build.json                                   the resolved build settings
    selection.json                               accepted library compounds + yield per criterion
    stability.csv, stability.png                 the stability report
    molecules.parquet                            written last, when every molecule is finished

Resume: each segment file is written (atomically) before the checkpoint that points past
it, so after a kill the checkpoint names the next segment to compute; a segment file
beyond it is recomputed and replaced by identical data. The engine is reset at every
segment start and the checkpoint keeps forces and the Langevin RNG state, so a resumed run
makes exactly the floating-point operations of an uninterrupted one. Finished molecules
are never recomputed.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from atomray.config import flatten
from atomray.data.frames import FRAMES_DIR, Molecule, Segment, provenance_json, read_segments, write_molecules, write_segments
from atomray.tg80.dynamics import MDState, config_json, prepare_state, run_steps
from atomray.tg80.engines import embed, engine_theory, engine_version, make_engine, molecule_with_hydrogens
from atomray.tg80.plan import BuildConfig, BuildError, MoleculeSpec, plan_molecules
from atomray.tg80.stability import StabilityRow, flag, stability_metrics, write_report

log = logging.getLogger("atomray.tg80")
STATE_DIR = "_state"
SEGMENTS_DIR = "_segments"  # segments of molecules still being simulated (staging)
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class BuildInterrupted(RuntimeError):
    """Raised by `simulate_molecule(..., interrupt_after_segments=k)`: the on-disk state is
    exactly what a kill right after the k-th new segment leaves behind (tests use it)."""


@dataclass
class Progress:
    """Build progress: molecules done, simulated fs on disk, this run's throughput."""

    molecules_done: int
    molecules_total: int
    simulated_fs: float
    total_fs: float
    fs_per_s: float
    elapsed_s: float

    def line(self) -> str:
        return (
            f"[tg80] molecules {self.molecules_done}/{self.molecules_total} | simulated "
            f"{self.simulated_fs:,.0f}/{self.total_fs:,.0f} fs ({100 * self.simulated_fs / max(self.total_fs, 1):.0f}%) "
            f"| {self.fs_per_s:,.0f} fs/s | {self.elapsed_s:,.0f} s"
        )


def segment_path(out: Path, molecule_id: str, segment: int) -> Path:
    """A staged segment of a molecule whose simulation is under way (or was killed)."""
    return out / SEGMENTS_DIR / f"{molecule_id}-{segment:05d}.parquet"


def molecule_path(out: Path, molecule_id: str) -> Path:
    """A finished molecule's trajectory: one frames row holding every production frame, so
    training windows may span the whole trajectory (DESIGN.md: a row holds the largest
    horizon)."""
    return out / FRAMES_DIR / f"{molecule_id}.parquet"


def compact_molecule(out: Path, molecule_id: str) -> bool:
    """Join a finished molecule's staged segments into its frames file, then remove them.

    Idempotent: if the frames file exists (a kill after writing it), only the leftover
    staged segments are removed. Returns True if the frames file was written now.
    """
    target = molecule_path(out, molecule_id)
    staged = sorted((out / SEGMENTS_DIR).glob(f"{molecule_id}-[0-9][0-9][0-9][0-9][0-9].parquet"))
    written = False
    if not target.exists():
        if not staged:
            raise BuildError(f"molecule {molecule_id!r}: no staged segments under {out / SEGMENTS_DIR} to compact")
        segs = sorted((seg for path in staged for seg in read_segments(path)), key=lambda x: x.t0_fs)
        joined = Segment(molecule_id, 0, segs[0].t0_fs, segs[0].dt_fs, np.concatenate([x.positions for x in segs]),
                         np.concatenate([x.velocities for x in segs]))
        write_segments(target, [joined])
        written = True
    for path in staged:
        path.unlink()
    return written


def state_path(out: Path, molecule_id: str) -> Path:
    return out / STATE_DIR / f"{molecule_id}.npz"


def _settings(spec: MoleculeSpec, cfg: BuildConfig) -> str:
    """Everything that determines a molecule's trajectory; a checkpoint made with other
    settings must not be continued."""
    return json.dumps(dict(engine=cfg.engine, seed=cfg.seed, smiles=spec.smiles, md=json.loads(config_json(cfg.md))), sort_keys=True)


def _save_state(path: Path, state: MDState, next_segment: int, n_segments: int, settings: str,
                z: np.ndarray, energies: list[float], force_evals: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **state.arrays(), next_segment=np.int64(next_segment), n_segments=np.int64(n_segments),
                 settings=np.array(settings), atomic_numbers=z, energies=np.array(energies, np.float64),
                 force_evals=np.int64(force_evals))
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> dict:
    """A molecule's checkpoint as a dict (state, next_segment, n_segments, settings, ...)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError) as err:
        raise BuildError(f"{path}: unreadable checkpoint ({err}); delete it to recompute this molecule") from None
    return dict(
        state=MDState.from_arrays(arrays), next_segment=int(arrays["next_segment"]),
        n_segments=int(arrays["n_segments"]), settings=str(arrays["settings"]),
        atomic_numbers=arrays["atomic_numbers"], energies=list(arrays["energies"]),
        force_evals=int(arrays["force_evals"]),
    )


def _log_event(out: Path, molecule_id: str, **fields) -> None:
    path = out / STATE_DIR / f"{molecule_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(fields) + "\n")


def simulate_molecule(spec: MoleculeSpec, out: str | Path, cfg: BuildConfig, interrupt_after_segments: int | None = None) -> dict:
    """Simulate one molecule into `out`, resuming from its checkpoint if there is one.

    Returns {molecule_id, computed_segments (list), force_evals (this call), wall_s, cpu_s
    (this process's CPU seconds), simulated_fs (this call)}. Runs in one process;
    `atomray.tg80.cluster` runs it as a Ray task. On a multi-node cluster `out` must be
    storage every node sees (e.g. NFS): segments and checkpoints are plain files.
    """
    out = Path(out)
    where = f"molecule {spec.molecule_id!r}"
    md = cfg.md
    n_segments, per = md.n_segments, md.steps(md.segment_fs)
    mol = molecule_with_hydrogens(spec.smiles, where)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], np.int64)
    masses = np.array([a.GetMass() for a in mol.GetAtoms()], np.float64)
    settings = _settings(spec, cfg)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    engine = make_engine(cfg.engine, mol, where)
    ckpt_path = state_path(out, spec.molecule_id)
    if ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path)
        if ckpt["settings"] != settings or not np.array_equal(ckpt["atomic_numbers"], z):
            raise BuildError(
                f"{ckpt_path}: {where} was started with other settings ({ckpt['settings']}); this build "
                f"uses {settings}. Use another output directory or delete {out}"
            )
        state, next_segment, energies = ckpt["state"], ckpt["next_segment"], ckpt["energies"]
        evals_before = ckpt["force_evals"]
        _log_event(out, spec.molecule_id, event="resumed", next_segment=next_segment)
    else:
        x0 = embed(mol, spec.random_seed(cfg.seed), where)
        state = prepare_state(engine, x0, masses, md, spec.random_seed(cfg.seed))
        next_segment, energies, evals_before = 0, [], 0
        _save_state(ckpt_path, state, 0, n_segments, settings, z, energies, engine.n_evaluations)
        _log_event(out, spec.molecule_id, event="prepared", force_evals=engine.n_evaluations)
    computed = []
    for k in range(next_segment, n_segments):
        engine.reset()  # same SCF start whether or not the run was resumed here
        t0, evals0 = time.perf_counter(), engine.n_evaluations
        pos, vel, e_tot = run_steps(state, engine, masses, md, per, md.ensemble)
        seg = Segment(spec.molecule_id, k, k * per * md.dt_fs, md.dt_fs, pos.astype(np.float32), vel.astype(np.float32))
        write_segments(segment_path(out, spec.molecule_id, k), [seg])
        energies = energies + [float(e_tot[0]), float(e_tot[-1])]
        _save_state(ckpt_path, state, k + 1, n_segments, settings, z, energies, evals_before + engine.n_evaluations)
        _log_event(out, spec.molecule_id, event="segment", segment=k, force_evals=engine.n_evaluations - evals0,
                   wall_s=round(time.perf_counter() - t0, 3))
        computed.append(k)
        if interrupt_after_segments is not None and len(computed) >= interrupt_after_segments and k + 1 < n_segments:
            raise BuildInterrupted(f"{where}: interrupted after segment {k}")
    compact_molecule(out, spec.molecule_id)
    return dict(molecule_id=spec.molecule_id, computed_segments=computed, force_evals=engine.n_evaluations,
                wall_s=time.perf_counter() - t_start, cpu_s=time.process_time() - cpu_start,
                simulated_fs=len(computed) * per * md.dt_fs)


def is_finished(out: Path, spec: MoleculeSpec) -> bool:
    """True when the molecule's checkpoint says every segment is written."""
    path = state_path(out, spec.molecule_id)
    if not path.exists():
        return False
    ckpt = read_checkpoint(path)
    return ckpt["next_segment"] >= ckpt["n_segments"]


def simulated_fs_on_disk(out: Path, specs: Sequence[MoleculeSpec], cfg: BuildConfig) -> float:
    """Production fs already on disk: finished molecules plus staged segments (progress)."""
    ids = {s.molecule_id for s in specs}
    finished = sum(1 for m in ids if molecule_path(out, m).exists())
    staged = sum(1 for p in (out / SEGMENTS_DIR).glob("*.parquet") if p.stem.rsplit("-", 1)[0] in ids
                 and not molecule_path(out, p.stem.rsplit("-", 1)[0]).exists())
    return finished * cfg.md.production_fs + staged * cfg.md.segment_fs


def _check_out_dir(out: Path, cfg: BuildConfig, specs: Sequence[MoleculeSpec]) -> None:
    """Refuse to mix builds: build.json must match, frames must belong to planned molecules."""
    path = out / "build.json"
    settings = flatten(cfg)
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise BuildError(
                f"{path}: this directory was built with other settings (differing keys: {diff}); "
                "use another --out or delete it"
            )
    for stale in [*out.glob(f"{FRAMES_DIR}/.*.tmp"), *out.glob(f"{STATE_DIR}/.*.tmp"), *out.glob(f"{SEGMENTS_DIR}/.*.tmp")]:
        stale.unlink()  # temporaries of a killed run; only one build may use a directory
    ids = {s.molecule_id for s in specs}
    if (out / FRAMES_DIR).is_dir() or (out / SEGMENTS_DIR).is_dir():
        found = {p.stem for p in (out / FRAMES_DIR).glob("*.parquet")}
        found |= {p.stem.rsplit("-", 1)[0] for p in (out / SEGMENTS_DIR).glob("*.parquet")}
        strays = sorted(found - ids)
        if strays:
            raise BuildError(f"{out / FRAMES_DIR}: holds molecules not in this build's plan: {strays[:10]}")
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".build.json.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))
    os.replace(tmp, path)


def run_local(specs: Sequence[MoleculeSpec], out: Path, cfg: BuildConfig, progress: Callable[[Progress], None],
              interrupt_after_segments: int | None = None) -> list[dict]:
    """Simulate molecules one after another in this process (tests, single-core runs)."""
    from atomray.tg80.cluster import single_threaded

    results, t0, new_fs = [], time.perf_counter(), 0.0
    total_fs = len(specs) * cfg.md.production_fs
    with single_threaded():
        for i, spec in enumerate(specs):
            r = simulate_molecule(spec, out, cfg, interrupt_after_segments)
            results.append(r)
            new_fs += r["simulated_fs"]
            elapsed = time.perf_counter() - t0
            progress(Progress(i + 1, len(specs), simulated_fs_on_disk(out, specs, cfg), total_fs,
                              new_fs / max(elapsed, 1e-9), elapsed))
    return results


def _load_positions(out: Path, molecule_id: str) -> tuple[np.ndarray, np.ndarray]:
    (seg,) = read_segments(molecule_path(out, molecule_id))
    return seg.positions, seg.velocities


def stability_rows(out: Path, specs: Sequence[MoleculeSpec], cfg: BuildConfig) -> list[StabilityRow]:
    """Stability metrics and flags of every finished molecule, from the files on disk."""
    rows = []
    for spec in specs:
        mol = molecule_with_hydrogens(spec.smiles, f"molecule {spec.molecule_id!r}")
        masses = np.array([a.GetMass() for a in mol.GetAtoms()])
        bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()], np.int64).reshape(-1, 2)
        pos, vel = _load_positions(out, spec.molecule_id)
        energies = read_checkpoint(state_path(out, spec.molecule_id))["energies"]
        dof = 3 * len(masses) - (3 if cfg.md.ensemble == "nve" else 0)  # NVE conserves momentum
        drift = energies[-1] - energies[0] if energies else float("nan")
        row = stability_metrics(spec.molecule_id, pos, vel, masses, bonds, dof, drift)
        rows.append(flag(row, cfg.stability, cfg.md.temperature_k))
    return rows


def molecules_rows(specs: Sequence[MoleculeSpec], cfg: BuildConfig, rows: Sequence[StabilityRow], provenance: dict) -> list[Molecule]:
    """The molecules table: one row per molecule with selection info and stability flags."""
    by_id = {r.molecule_id: r for r in rows}
    out = []
    for spec in specs:
        mol = molecule_with_hydrogens(spec.smiles, spec.molecule_id)
        r = by_id[spec.molecule_id]
        extra = dict(
            role=spec.role, seed_parent=spec.seed_parent, similarity_to_seed=float(spec.similarity_to_seed),
            max_similarity_to_selected=float(spec.max_similarity_to_selected), library_id=spec.library_id,
            heavy_atoms=int(spec.heavy_atoms), stable=bool(r.stable), stability_reason=r.reason,
            com_drift_a=r.com_drift_a, max_step_motion_a=r.max_step_motion_a, max_bond_stretch=r.max_bond_stretch,
            temperature_mean_k=r.temperature_mean_k, energy_drift_ev=r.energy_drift_ev,
        )
        out.append(Molecule(
            spec.molecule_id, np.array([a.GetAtomicNum() for a in mol.GetAtoms()]), cfg.md.dt_fs,
            cfg.md.n_segments * cfg.md.steps(cfg.md.segment_fs), smiles=spec.smiles, source="tg80",
            theory=engine_theory(cfg.engine), engine=engine_version(cfg.engine), temperature_k=cfg.md.temperature_k,
            provenance=provenance_json(**provenance, embed_seed=spec.random_seed(cfg.seed)), extra=extra,
        ))
    return out


def build(
    cfg: BuildConfig,
    out: str | Path,
    executor: str = "ray",
    command: str = "",
    progress: Callable[[Progress], None] | None = None,
    poll_s: float = 10.0,
    interrupt_after_segments: int | None = None,
) -> dict:
    """Build (or resume) a TG80-style data set in `out`.

    executor "ray" runs one task per unfinished molecule on the connected Ray cluster
    (call `ray.init` first); "local" runs them in this process. Returns a summary: molecules,
    computed (per-molecule results of this run), simulated_fs, wall_s, flagged molecules.
    """
    t0 = time.perf_counter()
    out = Path(out).resolve()
    progress = progress or (lambda p: log.info(p.line()))
    specs, selection = plan_molecules(cfg)
    _check_out_dir(out, cfg, specs)
    if selection is not None:
        _write_json(out / "selection.json", dict(screened=selection.screened, yields=selection.yields,
                                                 unexamined=selection.unexamined, selected=selection.rows()))
    todo = [s for s in specs if not is_finished(out, s)]
    log.info("[tg80] %d molecules planned, %d finished, %d to simulate with %s", len(specs), len(specs) - len(todo), len(todo), cfg.engine)
    if executor == "ray":
        from atomray.tg80.cluster import run_ray

        computed = run_ray(todo, out, cfg, progress, poll_s, len(specs) - len(todo), len(specs))
    elif executor == "local":
        computed = run_local(todo, out, cfg, progress, interrupt_after_segments)
    else:
        raise BuildError(f"build executor: expected 'ray' or 'local', found {executor!r}")
    for spec in specs:  # a kill between a molecule's last segment and its compaction
        if is_finished(out, spec) and not molecule_path(out, spec.molecule_id).exists():
            compact_molecule(out, spec.molecule_id)
    rows = stability_rows(out, specs, cfg)
    write_report(rows, out, cfg.stability, cfg.md.temperature_k)
    wall = time.perf_counter() - t0
    provenance = dict(
        engine=cfg.engine, engine_version=engine_version(cfg.engine), theory=engine_theory(cfg.engine),
        seed=cfg.seed, command=command, build_wall_s=round(wall, 1), md=asdict(cfg.md),
        finished_before_this_run=len(specs) - len(todo),  # > 0: build_wall_s is a resumed run's
        library=cfg.library or "rdkit:NCI/first_5K.smi", n_selected=cfg.n_selected,
        selection=asdict(replace(cfg.selection, n_select=cfg.n_selected, seed=cfg.seed)),
        versions=_versions(),
    )
    write_molecules(out, molecules_rows(specs, cfg, rows, provenance))
    flagged = [r.molecule_id for r in rows if not r.stable]
    if flagged:
        log.warning("[tg80] flagged as unstable: %s (see %s)", flagged, out / "stability.csv")
    return dict(molecules=len(specs), computed=computed, simulated_fs=sum(c["simulated_fs"] for c in computed),
                wall_s=wall, flagged=flagged, out=str(out))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("atomray", "rdkit", "tblite", "numpy", "pyarrow", "ray"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)
