"""Simulating one molecule, resumably, and running a list of them in this process.

Everything a build does per molecule lives here; `atomray.tg80.cluster` runs
`simulate_molecule` as Ray tasks and `atomray.tg80.build` chooses between the two and
writes the data set. Per-molecule files under the output directory:

    _segments/<molecule_id>-<segment:05d>.parquet  staged segments of a molecule under way
    _state/<molecule_id>.npz                       float64 state after the last finished segment
    _state/<molecule_id>.log                       one JSON line per prepared / computed segment
    frames/<molecule_id>.parquet                   the finished trajectory (staged segments joined)

Resume: each segment file is written (atomically) before the checkpoint that points past
it, so after a kill the checkpoint names the next segment to compute; a segment file
beyond it is recomputed and replaced by identical data. The engine is reset at every
segment start and the checkpoint keeps forces and the Langevin RNG state, so a resumed run
makes exactly the floating-point operations of an uninterrupted one. Finished molecules
are never recomputed.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from atomray.data.frames import FRAMES_DIR, Segment, write_segments
from atomray.data.dataset import read_segments
from atomray.tg80.dynamics import MDState, config_json, prepare_state, run_steps
from atomray.tg80.engines import embed, make_engine, molecule_with_hydrogens
from atomray.tg80.plan import BuildConfig, BuildError, MoleculeSpec
from atomray.threads import single_threaded

STATE_DIR = "_state"
SEGMENTS_DIR = "_segments"  # segments of molecules still being simulated (staging)


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
    training windows may span the whole trajectory (docs/data.md: a row holds the largest
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


def run_local(specs: Sequence[MoleculeSpec], out: Path, cfg: BuildConfig, progress: Callable[[Progress], None],
              interrupt_after_segments: int | None = None) -> list[dict]:
    """Simulate molecules one after another in this process (tests, single-core runs)."""
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
