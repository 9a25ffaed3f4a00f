"""Scoring a model beside the physics floors, on fixed windows of any data set (no Ray needed).

One home for "how good is it": the training loop's validation and test sets, cross-validation,
sweeps, the notebooks and `jobs/evaluate.py` all score through `score_windows` and `summarise`,
so a checkpoint evaluated here reproduces the figures its run logged on the same windows.

    model, cfg, state = load_model_uri(uri, "models:/atom@champion")           # atomray.tracking
    rows, table = evaluate_dataset(model, cfg, "data/tg80-mini", horizons_fs=[25, 100, 400, 1000])

Floors (predictors that need no learning, `atomray.physics`), scored on exactly the model's
windows and atoms:

    no_motion     x0
    linear        x0 + v0 Δt
    rigid_heavy   the rigid-body motion (centre-of-mass drift, rotation exp(ω Δt), ω = I⁻¹L)
                  that the heavy atoms' x0, v0 and masses tell
    rigid_all     the same from every atom of the molecule, hydrogens included (windows carry
                  the atoms the model does not see as context atoms)
    rotor_all     the exact torque-free rigid-body motion from every atom (L conserved, ω
                  precessing as the body turns; Euler's equations): the strongest floor at long
                  lags, since a free molecule's ω is not constant
    relaxed_all   rotor_all plus a move toward the molecule's nearest minimum, a fraction
                  a(Δt) = 1 − exp(−Δt / 250 fs) of the way (`atomray.relaxation`): the average
                  shape it vibrates about, which matters at long lags. It is what a fresh model
                  with `relaxed_prior` predicts; needs RDKit and ~3.5 ms per window
    harmonic_all  rotor_all plus each atom's harmonic vibration about that minimum, from the
                  start state's displacement and internal velocity on GFN2-xTB's normal modes,
                  damped toward the minimum with τ = 1000 fs (`atomray.vibration`): the
                  strongest floor wherever the potential is near-quadratic. What a fresh model
                  with `prior=harmonic` predicts; a GFN2-xTB Hessian per new basin (0.05–1 s)
    mmff_md       classical molecular dynamics of the whole molecule from x0 and v0 under
                  MMFF94 (`atomray.anharmonic`, velocity Verlet, 0.5 fs): anharmonic, but not
                  GFN2-xTB's force field; ~8 ms per window
    anharmonic_all  harmonic_all handing over from mmff_md: harmonic_all + exp(−Δt / 150 fs)
                  (mmff_md − harmonic_all): the strongest floor out of domain on the CV folds.
                  What a fresh model with `prior=harmonic, anharmonic=true` predicts

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

from atomray import physics, storage
from atomray.config import DataConfig, RunConfig
from atomray.data.frames import DataError
from atomray.data.dataset import frame_files, read_molecules
from atomray.data.pipeline import (fixed_windows, molecule_files, molecule_segments, scan_segments, segment_windows,
                                   window_seed)
from atomray.data.splits import Split, make_split, usable_molecules
from atomray.data.windows import max_horizon_frames, pad_windows
from atomray.equivariance import (EquivarianceError, FrameAveraged, equivariance_error,  # noqa: F401 (re-exported)
                                  frame_average, noise_floor, rotation_set)
from atomray.metrics import lag_errors, rotate_windows

FLOORS = ("no_motion", "linear", "rigid_heavy", "rigid_all", "rotor_all", "relaxed_all", "harmonic_all", "mmff_md",
          "anharmonic_all")
PREDICTORS = ("model", "model_rotated") + FLOORS
MODEL_INPUTS = ("x0", "v0", "z", "lags_fs", "mask")
DT_DECADES = tuple(10.0 ** k for k in range(0, 7))  # ΔT bins (lo, hi] in fs


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """The keyword arguments of a model's forward from a window batch."""
    out = {k: batch[k] for k in MODEL_INPUTS}
    out["rwpe"] = batch.get("rwpe")
    return out


def score_mask(batch: Mapping[str, Any]) -> Any:
    """The atoms the metrics score: `score` when the windows carry it, else every real atom."""
    return batch["score"] if "score" in batch else batch["mask"]


# ---------------------------------------------------------------------------------------------
# floors as predictors


def floor_predictions(batch: Mapping[str, torch.Tensor], names: Sequence[str] = FLOORS) -> dict[str, torch.Tensor]:
    """(B, P, N, 3) prediction of each floor for a window batch (float64)."""
    x0, v0, lags = batch["x0"].double(), batch["v0"].double(), batch["lags_fs"].double()
    mass = batch["mass"].double()
    if "mask" in batch:  # padded batches; windows straight from cut_windows have no padding
        mass = mass * batch["mask"].double()
    out: dict[str, torch.Tensor] = {}
    for name in names:
        if name == "no_motion":
            out[name] = physics.no_motion(x0, lags)
        elif name == "linear":
            out[name] = physics.linear(x0, v0, lags)
        elif name == "rigid_heavy":
            out[name] = physics.rigid(x0, v0, mass * (batch["z"] > 1).double(), lags)
        elif name in ("rigid_all", "rotor_all"):
            out[name] = (physics.rigid if name == "rigid_all" else physics.rotor)(x0, v0, mass, lags, _context(batch))
        elif name == "relaxed_all":
            out[name] = relaxed_floor(batch, x0, v0, mass, lags)
        elif name == "harmonic_all":
            if name not in out:
                out[name] = harmonic_floor(batch, x0, v0, mass, lags)
        elif name in ("mmff_md", "anharmonic_all"):  # both need the harmonic floor and the MD: once each
            from atomray.anharmonic import TAU_MD_FS, blend_md

            if "harmonic_all" not in out:
                out["harmonic_all"] = harmonic_floor(batch, x0, v0, mass, lags)
            if "mmff_md" not in out:
                out["mmff_md"] = mmff_floor(batch, x0, v0, mass, lags, out["harmonic_all"])
            if name == "anharmonic_all":
                out[name] = blend_md(out["harmonic_all"], out["mmff_md"], lags, TAU_MD_FS)
        else:
            raise ValueError(f"unknown floor {name!r}; known: {', '.join(FLOORS)}")
    return {name: out[name] for name in names}


def _context(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...] | None:
    if "ctx_x0" not in batch:
        return None
    return batch["ctx_x0"].double(), batch["ctx_v0"].double(), batch["ctx_mass"].double()


def _whole_molecule(batch: Mapping[str, torch.Tensor], x0: torch.Tensor, v0: torch.Tensor,
                    mass: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x, v, z, mass (B, N + C, …) of the model's atoms followed by the context atoms (the
    hydrogens when the model sees heavy atoms only; their atomic number is 1)."""
    context = _context(batch)
    z = batch["z"].long()
    if context is None or not context[0].shape[1]:
        return x0, v0, z, mass
    return (torch.cat((x0, context[0]), 1), torch.cat((v0, context[1]), 1),
            torch.cat((z, (context[2] > 0).long()), 1), torch.cat((mass, context[2]), 1))


def relaxed_floor(batch: Mapping[str, torch.Tensor], x0: torch.Tensor, v0: torch.Tensor, mass: torch.Tensor,
                  lags: torch.Tensor, method: str = "gfn2") -> torch.Tensor:
    """The relaxed_all floor (B, P, N, 3): the rotor motion of every atom plus
    a(Δt) R(Δt) δ, δ the shift of the model's atoms to the nearest minimum of the whole molecule
    (`atomray.relaxation`, GFN2-xTB-refined by default; the context atoms, hydrogens, relaxed
    with them)."""
    from atomray.relaxation import relaxed_shift, toward_minimum

    x_all, _, z_all, m_all = _whole_molecule(batch, x0, v0, mass)
    shift = relaxed_shift(x_all, z_all, m_all > 0, method)[:, :x0.shape[1]]
    c, u, rot = physics.rotor_motion(x0, v0, mass, lags, _context(batch))
    return physics.carry(x0, c, u, rot, lags) + toward_minimum(shift, rot, lags)


def harmonic_floor(batch: Mapping[str, torch.Tensor], x0: torch.Tensor, v0: torch.Tensor, mass: torch.Tensor,
                   lags: torch.Tensor) -> torch.Tensor:
    """The harmonic_all floor (B, P, N, 3): the rotor motion of every atom plus the damped
    normal-mode vibration of the whole molecule about its nearest GFN2-xTB minimum, turned with
    the body (`atomray.vibration`), for the model's atoms."""
    from atomray.vibration import harmonic_paths, vibrate

    x_all, v_all, z_all, m_all = _whole_molecule(batch, x0, v0, mass)
    v_int = physics.internal_velocity(x_all, v_all, m_all)
    osc, d0 = harmonic_paths(x_all, v_int, z_all, m_all > 0, lags)
    n = x0.shape[1]
    c, u, rot = physics.rotor_motion(x0, v0, mass, lags, _context(batch))
    return physics.carry(x0, c, u, rot, lags) + vibrate(osc[:, :, :n], d0[:, :n], rot, lags)


def mmff_floor(batch: Mapping[str, torch.Tensor], x0: torch.Tensor, v0: torch.Tensor, mass: torch.Tensor,
               lags: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """The mmff_md floor (B, P, N, 3): MMFF94 molecular dynamics of the whole molecule from its
    start state (`atomray.anharmonic`), for the model's atoms; `fallback` (the harmonic floor)
    for molecules MMFF94 cannot type."""
    from atomray.anharmonic import mmff_paths

    x_all, v_all, z_all, m_all = _whole_molecule(batch, x0, v0, mass)
    n = x0.shape[1]
    spare = torch.zeros((*lags.shape, *x_all.shape[1:]), dtype=fallback.dtype, device=fallback.device)
    spare[:, :, :n] = fallback
    return mmff_paths(x_all, v_all, z_all, m_all > 0, lags, spare)[:, :, :n]


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
    """(W, P) errors of each floor on a padded window set (computed on the CPU in float64)."""
    out: dict[str, list] = {n: [] for n in names}
    for part in _batches(windows, batch_size):
        t = {k: torch.as_tensor(v).cpu() for k, v in part.items() if not (isinstance(v, np.ndarray) and v.dtype == object)}
        target, mask = t["target"].double(), score_mask(t).bool()
        for name, pred in floor_predictions(t, names).items():
            out[name].append(lag_errors(pred, target, mask))
    return {n: torch.cat(v).numpy() for n, v in out.items()}


ROTATION_SEED = 20260  # the fixed rotations of the rotated copies


def rotated_copy(windows: Mapping[str, Any], seed: int = ROTATION_SEED) -> dict[str, Any]:
    """The windows, each turned about its centroid by its own fixed random rotation (numpy in,
    numpy out; torch in, torch out on the same device)."""
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
    """The ErrorTable of a window set: the model (if given) on the windows and on `rotated`
    (default: `rotated_copy(windows)`), and the floors on the same windows."""
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


def check_elements(z: Iterable[int], elements: Sequence[int], name: str) -> None:
    """Refuse elements the model never saw in training (they have untrained embeddings)."""
    if not elements:
        return
    unseen = sorted(set(int(x) for x in z if int(x) > 0) - set(int(e) for e in elements))
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


def evaluate_dataset(model: torch.nn.Module, cfg: RunConfig, root: str | Path, molecules: Sequence[str] | None = None,
                     horizons_fs: Sequence[float] = (25.0, 100.0, 400.0, 1000.0), num_lags: Sequence[int] = (8,),
                     windows: int = 200, seed: int = 0, batch_size: int = 256, elements: Sequence[int] = (),
                     progress: bool = False) -> tuple[list[dict[str, Any]], dict[int, ErrorTable]]:
    """Score `model` (trained with `cfg`) on `windows` fixed windows per molecule, horizon ΔT
    (uniform lags) and number of lags P of the data set at `root`.

    Windows are cut the way the model was trained (its atoms, centring, RWPE), with the
    horizon fixed and P lags, from anywhere in each trajectory, seeded by (seed, molecule, P,
    ΔT). Returns one row per (P, molecule, ΔT) with S2T/S2S of the model and every floor and
    their ratios, plus a mean row per (P, ΔT) (molecule_id "mean"), and per P the ErrorTable
    of all its windows (its `errors` hold every predictor).
    """
    from tqdm import tqdm

    wanted = check_request(root, molecules, horizons_fs, num_lags)
    files = molecule_files(root, wanted)
    rows, tables = [], []
    steps = tqdm(total=len(wanted) * len(horizons_fs) * len(num_lags), desc="evaluate", unit="set",
                 disable=not progress)
    for mid in wanted:
        segments = molecule_segments(root, mid, files.get(mid, []))
        check_elements(segments[0].atomic_numbers[segments[0].atomic_numbers > 1] if cfg.data.context_atoms == "heavy"
                       else segments[0].atomic_numbers, elements, f"{root}: molecule {mid!r}")
        for p in num_lags:
            for h in horizons_fs:
                dcfg = replace(cfg.data, horizon="fixed", horizon_fs=float(h), num_lags=int(p))
                usable = [s for s in segments if s.n_frames > max_horizon_frames(dcfg, s.dt_fs)]
                w = pad_windows(segment_windows(usable, windows, dcfg, window_seed(seed, mid, "evaluate", p, float(h))))
                table = score_windows(model, w, batch_size)
                tables.append((int(p), table))
                rows.append(_row(table, {"num_lags": int(p), "molecule_id": mid, "horizon_fs": float(h)}))
                steps.update()
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
    """The fixed validation windows of a training run: the same on every rank, every epoch and
    when `run_validation` re-scores a checkpoint."""
    return fixed_windows(data.path, split.val, data.val_windows, data, data.split_seed + 1, split.ranges["val"])


def run_validation(model: torch.nn.Module, cfg: RunConfig, path: str | Path | None = None,
                   batch_size: int = 256) -> tuple[dict[str, float], int]:
    """Re-score `model` on the validation windows of the run that trained it (config `cfg`,
    data at `path`, default cfg.data.path): (metrics as its run logged them — val_s2t, val_s2s,
    floors, per-lag and per-ΔT breakdowns — and the number of windows)."""
    data = replace(cfg.data, path=str(path or cfg.data.path))
    molecules = usable_molecules(data)
    split = make_split(molecules.column("molecule_id").to_pylist(), molecules.column("smiles").to_pylist(), data)
    windows = validation_windows(data, split)
    return summarise(score_windows(model, windows, batch_size), "val"), len(windows["x0"])
