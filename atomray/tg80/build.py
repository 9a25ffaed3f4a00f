"""Building a TG80-style data set: `build` plans the molecules, simulates the unfinished ones
in this process (`atomray.tg80.simulate.run_local`) or as Ray tasks
(`atomray.tg80.cluster.run_ray`), then writes the molecules table and the stability report.

Layers (each imports only those before it): `plan` (settings, molecules) -> `simulate`
(one molecule, resumable; the in-process runner) -> `cluster` (Ray) -> `build` (this
module, the entry point).

Output directory (the TG80 frames format of `atomray.data.frames`):

    frames/<molecule_id>.parquet                 one file per finished molecule (all its frames)
    _segments/, _state/                          per-molecule staging and checkpoints (see `simulate`)
    build.json                                   the resolved build settings
    selection.json                               accepted library compounds + yield per criterion
    stability.csv, stability.png                 the stability report
    molecules.parquet                            written when every molecule is finished
    cv_folds.json                                the UMAP-cluster CV folds, computed once, then kept
                                                 (`atomray.data.splits`; 10 molecules or more)

A rerun with the same settings resumes: finished molecules are never recomputed and a
molecule under way continues from its last checkpoint (see `atomray.tg80.simulate`).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from atomray.config import DataConfig, flatten
from atomray.data.frames import FRAMES_DIR, Molecule, provenance_json, write_molecules
from atomray.data.dataset import read_segments
from atomray.data.splits import ensure_folds
from atomray.tg80.cluster import run_ray, select_library_ray
from atomray.tg80.engines import engine_theory, engine_version, molecule_with_hydrogens
from atomray.tg80.plan import BuildConfig, BuildError, MoleculeSpec, plan_molecules
from atomray.tg80.simulate import (
    SEGMENTS_DIR,
    STATE_DIR,
    Progress,
    compact_molecule,
    is_finished,
    molecule_path,
    read_checkpoint,
    run_local,
    state_path,
)
from atomray.tg80.stability import StabilityRow, flag, stability_metrics, write_report

log = logging.getLogger("atomray.tg80")


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
    specs, selection = plan_molecules(cfg, select_ray=select_library_ray)
    _check_out_dir(out, cfg, specs)
    if selection is not None:
        if selection.invalid_note():
            log.warning("[tg80] library %s: %s", cfg.library or "rdkit:NCI/first_5K.smi", selection.invalid_note())
        _write_json(out / "selection.json", dict(screened=selection.screened, yields=selection.yields,
                                                 unexamined=selection.unexamined, selected=selection.rows(),
                                                 invalid_smiles=selection.invalid))
    todo = [s for s in specs if not is_finished(out, s)]
    log.info("[tg80] %d molecules planned, %d finished, %d to simulate with %s", len(specs), len(specs) - len(todo), len(todo), cfg.engine)
    if executor == "ray":
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
    folds = ensure_folds(DataConfig(path=str(out), split="umap_cluster"))
    log.info("[tg80] cross-validation folds: %s", folds or "none (fewer molecules than clusters, or no SMILES)")
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
