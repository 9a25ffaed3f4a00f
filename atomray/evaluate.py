"""Scoring a model beside the physics floors, on fixed windows of any data set (no Ray needed).

One home for "how good is it": the training loop's validation and test sets, cross-validation,
sweeps, the notebooks and `jobs/evaluate.py` all score through `score_windows` and `summarise`,
so a checkpoint evaluated here reproduces the figures its run logged on the same windows.

    model, cfg, state = load_model_uri(uri, "models:/atom@champion")           # atomray.tracking
    rows, table = evaluate_dataset(model, cfg, "data/tg80-mini", horizons_fs=[25, 100, 400, 1000])

Floors (predictors that need no learning; `atomray.priors.compose`, docs/physics-floors.md),
scored on exactly the model's windows and atoms: no_motion, linear, rigid_heavy, rigid_all,
rotor_all, relaxed_all, harmonic_all, mmff_md and anharmonic_all. The windows first pass through
the data path's prior transform (`atomray.priors.paths.PriorPaths`, `eval_transform`): the
model's own prior paths and the floors' are computed once per window, from the data set's stored
per-frame physics when it has some (`atomray.priors.frames`), else through the machine's basin
store; rotated copies turn the paths with the windows instead of recomputing them.

Errors are kept per window and lag (`ErrorTable`, Å², mean over the scored atoms and xyz), so
any breakdown is a reduction of one table: S2T (mean over lags), S2S (last lag), per lag
index, per ΔT decade (`summarise`), per molecule and horizon (`evaluate_dataset`).

Every model is also scored on a randomly rotated copy of the same windows ("model_rotated",
each window turned about its centroid by its own fixed random rotation): floors are
equivariant and score the same there, so the gap between the two model figures measures how
much a quasi-equivariant model memorised the orientations it trained on.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from atomray import storage
from atomray.config import DataConfig, RunConfig
from atomray.data.frames import DataError
from atomray.data.dataset import frame_files, read_molecules
from atomray.data.pipeline import (fixed_windows, molecule_files, molecule_segments, read_atomic_numbers,
                                   scan_segments, segment_windows, window_seed)
from atomray.data.splits import Split, run_split
from atomray.data.windows import max_horizon_frames, pad_windows
from atomray.data.augment import rotate_windows
from atomray.equivariance import (EquivarianceError, FrameAveraged, equivariance_error,  # noqa: F401 (re-exported)
                                  frame_average, noise_floor, quasi_equivariance_epsilon, rotation_penalty,
                                  rotation_set)
from atomray.metrics import lag_errors
from atomray.model.registry import model_inputs
from atomray.priors.compose import FLOORS, floor_parts, floor_predictions, prior_parts
from atomray.priors.frames import FramePhysics, missing_molecules
from atomray.priors.paths import PriorPaths, apply_in_chunks, basin_source

PREDICTORS = ("model", "model_rotated") + FLOORS
DT_DECADES = tuple(10.0 ** k for k in range(0, 7))  # ΔT bins (lo, hi] in fs


def eval_transform(cfg: RunConfig | None, physics: FramePhysics | None, floors: Sequence[str] = FLOORS) -> PriorPaths:
    """The prior transform of evaluation windows: the paths the model (trained with `cfg`;
    None: no model) and the `floors` read, basins from `physics` (None: the machine's store).
    The floors share the model's vibration (with `model.rotor_circles`, theirs turn on circles
    too): a floor is the model's prior alone."""
    parts = set(floor_parts(floors))
    if cfg is not None:
        parts |= prior_parts(cfg.model.prior, cfg.model.anharmonic)
    return PriorPaths(parts, basin_source(physics), circles=cfg is not None and cfg.model.rotor_circles)


def with_paths(windows: Mapping[str, Any], transform: PriorPaths) -> dict[str, Any]:
    """A padded numpy window set with its prior paths attached (in slices of 1024 windows)."""
    return apply_in_chunks(transform, windows)


def score_mask(batch: Mapping[str, Any]) -> Any:
    """The atoms the metrics score: `score` when the windows carry it, else every real atom."""
    return batch["score"] if "score" in batch else batch["mask"]


# ---------------------------------------------------------------------------------------------
# per-window, per-lag errors


@dataclass
class ErrorTable:
    """Squared errors (Å²) per window and lag: errors[predictor] (W, P) float64, mean over the
    scored atoms and xyz; lags_fs (W, P); molecule_id (W,)."""

    lags_fs: np.ndarray
    molecule_id: np.ndarray
    errors: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lags_fs)

    @classmethod
    def concat(cls, tables: Sequence["ErrorTable"]) -> "ErrorTable":
        tables = [t for t in tables if len(t)]
        if not tables:
            raise ValueError("ErrorTable.concat: no windows")
        keys = [k for k in tables[0].errors if all(k in t.errors for t in tables)]
        return cls(np.concatenate([t.lags_fs for t in tables]), np.concatenate([t.molecule_id for t in tables]),
                   {k: np.concatenate([t.errors[k] for t in tables]) for k in keys})


def _batches(windows: Mapping[str, Any], batch_size: int) -> Iterable[dict[str, Any]]:
    n = len(windows["x0"])
    for s in range(0, n, batch_size):
        yield {k: v[s : s + batch_size] for k, v in windows.items()}


@torch.no_grad()
def model_errors(model: torch.nn.Module, windows: Mapping[str, Any], batch_size: int = 256,
                 autocast: Any = None) -> np.ndarray:
    """(W, P) errors of `model` on a padded window set (numpy or torch arrays; tensors stay on
    their device, numpy arrays go to the model's device). The model is put in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for part in _batches(windows, batch_size):
        part = {k: (torch.as_tensor(v, device=device) if isinstance(v, np.ndarray) and v.dtype != object else v)
                for k, v in part.items()}
        with autocast if autocast is not None else nullcontext():
            pred = model(**model_inputs(part))
        out.append(lag_errors(pred.double(), part["target"].double(), score_mask(part).bool()).cpu())
    return torch.cat(out).numpy()


def floor_errors(windows: Mapping[str, Any], names: Sequence[str] = FLOORS, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """(W, P) errors of each floor on a padded window set carrying the floors' prior paths
    (`with_paths`), computed on the CPU in float64."""
    out: dict[str, list] = {n: [] for n in names}
    for part in _batches(windows, batch_size):
        t = {k: torch.as_tensor(v).cpu() for k, v in part.items() if not (isinstance(v, np.ndarray) and v.dtype == object)}
        target, mask = t["target"].double(), score_mask(t).bool()
        for name, pred in floor_predictions(t, names).items():
            out[name].append(lag_errors(pred, target, mask))
    return {n: torch.cat(v).numpy() for n, v in out.items()}


ROTATION_SEED = 20260  # the fixed rotations of the rotated copies


def rotated_copy(windows: Mapping[str, Any], seed: int = ROTATION_SEED) -> dict[str, Any]:
    """The windows and their prior paths, each turned about its centroid by its own fixed random
    rotation (numpy in, numpy out; torch in, torch out on the same device)."""
    numpy = isinstance(windows["x0"], np.ndarray)
    t = {k: torch.as_tensor(v) for k, v in windows.items() if not (isinstance(v, np.ndarray) and v.dtype == object)}
    out = rotate_windows(t, torch.Generator().manual_seed(seed))
    if numpy:
        out = {k: v.numpy() for k, v in out.items()}
    out.update({k: v for k, v in windows.items() if k not in out})
    return out


def score_windows(model: torch.nn.Module | None, windows: Mapping[str, Any], batch_size: int = 256,
                  autocast: Any = None, floors: Sequence[str] = FLOORS,
                  rotated: Mapping[str, Any] | None = None) -> ErrorTable:
    """The ErrorTable of a window set carrying its prior paths (`with_paths`): the model (if
    given) on the windows and on `rotated` (default: `rotated_copy(windows)`), and the floors
    on the same windows."""
    ids = windows.get("molecule_id")
    lags = np.asarray(windows["lags_fs"].cpu() if isinstance(windows["lags_fs"], torch.Tensor) else windows["lags_fs"])
    table = ErrorTable(lags.astype(np.float64), np.asarray(ids if ids is not None else [""] * len(lags), dtype=object),
                       floor_errors(windows, floors))
    if model is not None:
        table.errors["model"] = model_errors(model, windows, batch_size, autocast)
        rotated = rotated if rotated is not None else rotated_copy(windows)
        table.errors["model_rotated"] = model_errors(model, rotated, batch_size, autocast)
    return table


# ---------------------------------------------------------------------------------------------
# reductions


def _dt_bins(horizons: np.ndarray) -> list[tuple[str, np.ndarray]]:
    bins = []
    for lo, hi in zip(DT_DECADES[:-1], DT_DECADES[1:]):
        keep = (horizons > lo) & (horizons <= hi)
        if keep.any():
            bins.append((f"dt_{lo:g}-{hi:g}fs", keep))
    return bins


def summarise(table: ErrorTable, prefix: str, breakdown: bool = True) -> dict[str, float]:
    """Metrics of an ErrorTable, keys `{prefix}_{metric}[_{floor}]` (Å²): s2t, s2s (the model on
    the rotated copies: `_rotated`); with `breakdown` also s2t_lag{p} per lag index and
    s2t_dt_{lo}-{hi}fs per ΔT decade (lo, hi], for the model and every floor."""
    out: dict[str, float] = {}
    bins = _dt_bins(table.lags_fs[:, -1]) if breakdown else []
    for name, err in table.errors.items():
        suffix = {"model": "", "model_rotated": "_rotated"}.get(name, f"_{name}")
        out[f"{prefix}_s2t{suffix}"] = float(err.mean())
        out[f"{prefix}_s2s{suffix}"] = float(err[:, -1].mean())
        if not breakdown or name == "model_rotated":
            continue
        for p in range(err.shape[1]):
            out[f"{prefix}_s2t_lag{p + 1}{suffix}"] = float(err[:, p].mean())
        for label, keep in bins:
            out[f"{prefix}_s2t_{label}{suffix}"] = float(err[keep].mean())
    return out


def strongest_floor(metrics: Mapping[str, float], key: str) -> tuple[str, float]:
    """(name, value) of the floor with the lowest `key` (e.g. "val_s2t") among those present."""
    present = [(f, metrics[f"{key}_{f}"]) for f in FLOORS if f"{key}_{f}" in metrics]
    if not present:
        raise KeyError(f"no floor figures for {key!r} (expected e.g. {key}_rigid_all)")
    return min(present, key=lambda fv: fv[1])


LEVEL = 0.01  # a model within 1 % of a floor is level with it, neither better nor worse


def comparison(ratio: float) -> str:
    """What a model/floor error ratio says: "beats", "is level with" (within LEVEL) or "does
    NOT beat". A 0.1 % difference on a few hundred windows is noise, not a result."""
    if ratio < 1 - LEVEL:
        return "beats"
    if ratio <= 1 + LEVEL:
        return f"is level with (within {LEVEL:.0%})"
    return "does NOT beat"


def verdict(metrics: Mapping[str, float], key: str) -> str:
    """One sentence comparing the model's `key` with the strongest floor, as the numbers say."""
    name, floor = strongest_floor(metrics, key)
    value = metrics[key]
    ratio = value / floor if floor > 0 else math.inf
    return f"the model {comparison(ratio)} the strongest floor ({name}) on {key}: {ratio:.2f}x its error"


def check_elements(z: Iterable[int], elements: Sequence[int], name: str, max_atomic_number: int = 0) -> None:
    """Refuse atomic numbers above the model's `max_atomic_number` (its one-hot chemistry has
    no slot for them; 0: no limit) and elements the model never saw in training (they have
    untrained embeddings; none recorded: no check)."""
    z = [int(x) for x in z]
    if max_atomic_number and z and max(z) > max_atomic_number:
        raise DataError(f"{name}: atomic number {max(z)} exceeds the model's max_atomic_number {max_atomic_number}")
    if not elements:
        return
    unseen = sorted(set(x for x in z if x > 0) - set(int(e) for e in elements))
    if unseen:
        from ase.data import chemical_symbols

        raise DataError(
            f"{name}: elements {[chemical_symbols[u] for u in unseen]} (Z={unseen}) never occurred in "
            f"the model's training data (it saw Z={sorted(elements)}); its prediction would be meaningless"
        )


# ---------------------------------------------------------------------------------------------
# any data set, fixed horizons, any number of lags


def data_digest(root: str | Path) -> str:
    """sha256 (first 16 hex) of a data set's files: identifies exactly what was evaluated."""
    digest = hashlib.sha256()
    for path in [storage.join(root, "molecules.parquet"), *frame_files(root)]:
        digest.update(storage.basename(path).encode())
        with storage.open_input(path) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def check_request(root: str | Path, molecules: Sequence[str] | None, horizons_fs: Sequence[float],
                  num_lags: Sequence[int]) -> list[str]:
    """The molecules to evaluate (all when None), after checking that they exist and that every
    horizon fits in each molecule's longest trajectory piece; errors name what is wrong."""
    table = read_molecules(root)
    ids = table.column("molecule_id").to_pylist()
    wanted = list(molecules) if molecules else ids
    unknown = [m for m in wanted if m not in ids]
    if unknown:
        raise DataError(f"{root}: no molecule {unknown[0]!r} in the data set (it holds {', '.join(ids[:20])}"
                        f"{' ...' if len(ids) > 20 else ''})")
    if not horizons_fs or any(not (h > 0 and math.isfinite(h)) for h in horizons_fs):
        raise DataError(f"horizons must be positive times in fs, found {list(horizons_fs)}")
    if not num_lags or any(p < 1 for p in num_lags):
        raise DataError(f"numbers of lags must be at least 1, found {list(num_lags)}")
    longest: dict[str, tuple[int, float]] = {}
    for s in scan_segments(root, wanted):
        if s.n_frames > longest.get(s.molecule_id, (0, 0.0))[0]:
            longest[s.molecule_id] = (s.n_frames, s.dt_fs)
    for m in wanted:
        frames, dt = longest.get(m, (0, 1.0))
        for h in horizons_fs:
            for p in num_lags:
                need = max(int(np.rint(h / dt)), p) + 1
                if need > frames:
                    raise DataError(f"{root}: molecule {m!r}: a horizon of {h:g} fs with {p} lags needs {need} "
                                    f"frames, but its longest trajectory piece has {frames} ({(frames - 1) * dt:g} fs)")
    return wanted


def _molecule_sets(root: str, cfg_dict: dict, mid: str, files: list[str], num_lags: Sequence[int],
                   horizons_fs: Sequence[float], windows: int, seed: int) -> tuple[list, dict[str, float]]:
    """One molecule's evaluation windows with their prior paths, every (P, ΔT) set in order (a
    worker process's job: a molecule's basins are met in one fixed order): ([(P, ΔT, windows)],
    seconds per stage)."""
    import time

    from atomray.config import config_from_dict

    cfg = config_from_dict(cfg_dict)
    segments = molecule_segments(root, mid, files)
    transform = eval_transform(cfg, FramePhysics.load(root, [mid]))
    out, clock = [], {"windows": 0.0, "prior paths": 0.0}
    for p in num_lags:
        for h in horizons_fs:
            dcfg = replace(cfg.data, horizon="fixed", horizon_fs=float(h), num_lags=int(p))
            usable = [s for s in segments if s.n_frames > max_horizon_frames(dcfg, s.dt_fs)]
            t0 = time.perf_counter()
            w = pad_windows(segment_windows(usable, windows, dcfg, window_seed(seed, mid, "evaluate", p, float(h))))
            t1 = time.perf_counter()
            out.append((int(p), float(h), with_paths(w, transform)))
            clock["windows"] += t1 - t0
            clock["prior paths"] += time.perf_counter() - t1
    clock.update({f"prior paths: {part}": value for part, value in transform.seconds.items()})
    return out, clock


def _start_worker() -> None:
    torch.set_num_threads(1)


def evaluate_dataset(model: torch.nn.Module, cfg: RunConfig, root: str | Path, molecules: Sequence[str] | None = None,
                     horizons_fs: Sequence[float] = (25.0, 100.0, 400.0, 1000.0), num_lags: Sequence[int] = (8,),
                     windows: int = 200, seed: int = 0, batch_size: int = 256, elements: Sequence[int] = (),
                     progress: bool = False, timings: dict[str, float] | None = None, workers: int = 0,
                     ) -> tuple[list[dict[str, Any]], dict[int, ErrorTable]]:
    """Score `model` (trained with `cfg`) on `windows` fixed windows per molecule, horizon ΔT
    (uniform lags) and number of lags P of the data set at `root`.

    Windows are cut the way the model was trained (its atoms, centring, RWPE), with the
    horizon fixed and P lags, from anywhere in each trajectory, seeded by (seed, molecule, P,
    ΔT). Their prior paths (and the floors') are computed molecule by molecule in `workers`
    processes (0: one per usable CPU; 1: in this process) while this process scores the model
    on the molecules already done. Returns one row per (P, molecule, ΔT) with S2T/S2S of the
    model and every floor and their ratios, plus a mean row per (P, ΔT) (molecule_id "mean"),
    and per P the ErrorTable of all its windows (its `errors` hold every predictor). `timings`,
    when given, receives the seconds spent per stage (summed over processes): cutting windows,
    each part of the prior paths (basins, vibration, MMFF94 MD, ...), and scoring.
    """
    import os
    import time
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    from atomray.config import to_dict

    wanted = check_request(root, molecules, horizons_fs, num_lags)
    files = molecule_files(root, wanted)
    for mid in wanted:
        z = read_atomic_numbers(root, mid)
        check_elements(z[z > 1] if cfg.data.context_atoms == "heavy" else z, elements, f"{root}: molecule {mid!r}",
                       cfg.model.max_atomic_number)
    clock = timings if timings is not None else {}
    clock["stored per-frame physics"] = float(not missing_molecules(root, wanted))
    workers = workers or min(len(wanted), len(os.sched_getaffinity(0)))
    args = [(str(root), to_dict(cfg), mid, files.get(mid, []), list(num_lags), list(horizons_fs), windows, seed)
            for mid in wanted]
    steps = tqdm(total=len(wanted) * len(horizons_fs) * len(num_lags), desc="evaluate", unit="set",
                 disable=not progress)
    rows, tables = [], []
    pool = None
    if workers > 1:
        import multiprocessing

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker)
    try:
        jobs = [pool.submit(_molecule_sets, *a) for a in args] if pool else None
        for k, mid in enumerate(wanted):
            sets, seconds = jobs[k].result() if pool else _molecule_sets(*args[k])
            for key, value in seconds.items():
                clock[key] = clock.get(key, 0.0) + value
            for p, h, w in sets:
                t0 = time.perf_counter()
                table = score_windows(model, w, batch_size)
                clock["scoring"] = clock.get("scoring", 0.0) + time.perf_counter() - t0
                tables.append((p, table))
                rows.append(_row(table, {"num_lags": p, "molecule_id": mid, "horizon_fs": h}))
                steps.update()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    steps.close()
    for p in num_lags:
        for h in horizons_fs:
            group = [r for r in rows if r["num_lags"] == p and r["horizon_fs"] == float(h)]
            mean = {k: float(np.mean([r[k] for r in group])) for k in group[0] if k.endswith(("_s2t", "_s2s"))}
            rows.append(_ratios({"num_lags": int(p), "molecule_id": "mean", "horizon_fs": float(h),
                                 "windows": sum(r["windows"] for r in group), **mean}))
    return rows, {p: ErrorTable.concat([t for q, t in tables if q == p]) for p in num_lags}


def _row(table: ErrorTable, head: dict[str, Any]) -> dict[str, Any]:
    row = {**head, "windows": len(table)}
    for name in PREDICTORS:
        if name in table.errors:
            row[f"{name}_s2t"] = float(table.errors[name].mean())
            row[f"{name}_s2s"] = float(table.errors[name][:, -1].mean())
    return _ratios(row)


def _ratios(row: dict[str, Any]) -> dict[str, Any]:
    if "model_s2t" not in row:
        return row
    if "model_rotated_s2t" in row:
        row["rotation_gap"] = row["model_rotated_s2t"] / row["model_s2t"] if row["model_s2t"] > 0 else math.inf
    for f in FLOORS:
        row[f"ratio_{f}"] = row["model_s2t"] / row[f"{f}_s2t"] if row[f"{f}_s2t"] > 0 else math.inf
    best = min(FLOORS, key=lambda f: row[f"{f}_s2t"])
    row["strongest_floor"], row["ratio_strongest"] = best, row[f"ratio_{best}"]
    return row


def validation_windows(data: DataConfig, split: Split) -> dict[str, np.ndarray]:
    """The fixed validation windows of a training run (without prior paths): the same on every
    rank, every epoch and when `run_validation` re-scores a checkpoint."""
    return fixed_windows(data.path, split.val, data.val_windows, data, data.split_seed + 1, split.ranges["val"])


def run_validation(model: torch.nn.Module, cfg: RunConfig, path: str | Path | None = None,
                   batch_size: int = 256) -> tuple[dict[str, float], int]:
    """Re-score `model` on the validation windows of the run that trained it (config `cfg`,
    data at `path`, default cfg.data.path): (metrics as its run logged them — val_s2t, val_s2s,
    floors, per-lag and per-ΔT breakdowns — and the number of windows)."""
    windows = with_paths(*validation_set(cfg, path))
    return summarise(score_windows(model, windows, batch_size), "val"), len(windows["x0"])


def validation_set(cfg: RunConfig, path: str | Path | None = None) -> tuple[dict[str, np.ndarray], PriorPaths]:
    """The validation windows of the run that trained with `cfg` (data at `path`, default
    cfg.data.path), without prior paths, and the transform that attaches them."""
    data = replace(cfg.data, path=str(path or cfg.data.path))
    split = run_split(data)
    return validation_windows(data, split), eval_transform(cfg, FramePhysics.load(data.path, split.val))
