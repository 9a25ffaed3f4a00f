"""A stronger floor for the CV folds: the rigid-body motion plus relaxation toward a force-field
minimum — no neural network.

    .venv/bin/python benchmarks/relaxed_floor.py --fold all      # the five folds of cv.yaml, ~2 min
    .venv/bin/python benchmarks/relaxed_floor.py --per-molecule  # relaxed_all, harmonic_all / rotor_all per molecule, ~2 min

For each window, x0 (every atom) is relaxed to its nearest minimum (`atomray.relaxation`:
MMFF94 refined with GFN2-xTB, or MMFF94 alone with `model.relaxation=mmff94`), superposed on
the rotor_all prediction at each lag, and the prediction moves a fraction a of the way toward it:

    x̂(Δt) = rotor_all(Δt) + a_k (relaxed superposed − rotor_all(Δt)),   Δt in ΔT bin k

The five blend weights a_k (one per ΔT bin of `error_anatomy.BINS_FS`, from {0, 0.1, …, 1})
are fitted on the fold's *training* windows (the pool `probe_fold.py` trains on) and scored on
the fold's out-of-domain test windows — the ones `jobs/cv.py` scores. Why it works:
`error_anatomy.py` shows that 98 % of rotor_all's error is internal motion and that moving
toward the molecule's average shape removes much of it at long lags; a force-field minimum is
an estimate of that shape that needs no knowledge of the test molecule's trajectory.
The fitted weights follow a(Δt) = 1 − exp(−Δt / 250 fs) on every fold: the curve the
`relaxed_all` floor and a fresh model with `model.relaxed_prior` use (`atomray.model.prior`).
One JSON line per fold, then the mean over folds (S2T ×10⁻² Å², heavy atoms as scored).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from error_anatomy import BINS_FS, bin_weights, fit_blend

from atomray.physics import superpose


def blend_parts(windows: dict, method: str = "gfn2"):
    """rotor_all (W, P, N, 3), the relaxed start superposed on it, lags (W, P), err(pred) → (W, P)."""
    from atomray.data.pipeline import to_torch
    from atomray.evaluate import floor_predictions, score_mask
    from atomray.metrics import lag_errors
    from atomray.relaxation import relaxed_shift

    b = to_torch(windows)
    relaxed = b["x0"].double() + relaxed_shift(b["x0"], b["z"], b["mask"], method)
    target, lags, scored = b["target"].double(), b["lags_fs"].double(), score_mask(b)
    mass = b["mass"].double() * b["mask"].double()
    rotor = floor_predictions(b, ["rotor_all"])["rotor_all"]
    shape = superpose(relaxed[:, None].expand_as(rotor), rotor, mass[:, None].expand(-1, rotor.shape[1], -1))
    return rotor, shape, lags, lambda pred: lag_errors(pred, target, scored)


def relaxed_floor(cfg, fold: int, train_windows: int) -> dict:
    from probe_fold import fold_windows

    split, _, pool, _, test = fold_windows(cfg, fold, train_windows)
    t0 = time.perf_counter()
    rotor, shape, lags, err = blend_parts(pool, cfg.model.relaxation)
    weights = fit_blend(err, rotor, shape - rotor, lags)
    rotor, shape, lags, err = blend_parts(test, cfg.model.relaxation)
    pred = rotor + bin_weights(lags, weights)[..., None, None] * (shape - rotor)
    e_rotor, e_blend = err(rotor), err(pred)
    seconds = time.perf_counter() - t0
    return {"fold": fold, "test_molecules": list(split.test),
            "blend_weights": dict(zip([f"{lo}-{hi}fs" for lo, hi in BINS_FS], weights)),
            "rotor_all": 100 * float(e_rotor.mean()), "relaxed_blend": 100 * float(e_blend.mean()),
            "ratio_rotor_all": float(e_blend.mean() / e_rotor.mean()),
            "ms_per_window": 1000 * seconds / (len(pool["x0"]) + len(test["x0"]))}


def per_molecule(cfg, windows: int) -> list[dict]:
    """relaxed_all and rotor_all (the unfitted curve) on `windows` windows of every usable
    molecule, whole trajectories, cfg's horizons, and relaxed_all with MMFF94's minimum alone:
    where the minimum helps, where MMFF94's bias against the data's method hurts."""
    from atomray.data.pipeline import fixed_windows
    from atomray.data.splits import usable_molecules
    from atomray.evaluate import floor_errors

    rows = []
    for mid in usable_molecules(cfg.data).column("molecule_id").to_pylist():
        w = fixed_windows(cfg.data.path, [mid], windows, cfg.data, cfg.data.split_seed)
        t0 = time.perf_counter()
        err = floor_errors(w, ("rotor_all", "relaxed_all", "harmonic_all"))
        seconds = time.perf_counter() - t0
        rotor, relaxed = 100 * float(err["rotor_all"].mean()), 100 * float(err["relaxed_all"].mean())
        harmonic = 100 * float(err["harmonic_all"].mean())
        mmff = 100 * float(relaxed_errors(w, "mmff94").mean())
        rows.append({"molecule": mid, "rotor_all": rotor, "relaxed_all": relaxed, "ratio": relaxed / rotor,
                     "relaxed_mmff94": mmff, "ratio_mmff94": mmff / rotor, "harmonic_all": harmonic,
                     "harmonic_to_relaxed": harmonic / relaxed, "seconds": seconds})
    return rows


def relaxed_errors(windows: dict, method: str):
    """(W, P) errors of the relaxed_all floor with the given relaxation method."""
    from atomray.data.pipeline import to_torch
    from atomray.evaluate import relaxed_floor, score_mask
    from atomray.metrics import lag_errors

    b = to_torch(windows)
    mass = b["mass"].double() * b["mask"].double()
    pred = relaxed_floor(b, b["x0"].double(), b["v0"].double(), mass, b["lags_fs"].double(), method)
    return lag_errors(pred, b["target"].double(), score_mask(b))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "cv.yaml"))
    ap.add_argument("--fold", default="all", help="a fold index, or 'all'")
    ap.add_argument("--train-windows", type=int, default=2048, help="training windows the blend is fitted on")
    ap.add_argument("--per-molecule", type=int, nargs="?", const=128, default=0, metavar="WINDOWS",
                    help="instead: relaxed_all, harmonic_all and rotor_all per molecule on this many windows each (default 128)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    args = ap.parse_args(argv)
    from atomray.config import load_config
    from atomray.train.pretrain import resolve

    cfg = resolve(load_config(args.config, args.overrides))
    if args.per_molecule:
        rows = per_molecule(cfg, args.per_molecule)
        for row in rows:
            print(json.dumps(row), flush=True)
        ratios = [r["ratio"] for r in rows]
        mmff = [r["ratio_mmff94"] for r in rows]
        print(json.dumps({"molecules": len(rows), "helped": sum(r < 1 for r in ratios),
                          "median_ratio": float(np.median(ratios)), "helped_mmff94": sum(r < 1 for r in mmff),
                          "median_ratio_mmff94": float(np.median(mmff)),
                          "median_harmonic_to_relaxed": float(np.median([r["harmonic_to_relaxed"] for r in rows])),
                          **{f"mean_{k}": float(np.mean([r[k] for r in rows]))
                             for k in ("rotor_all", "relaxed_all", "harmonic_all")}}))
        return rows
    folds = range(cfg.data.num_folds) if args.fold == "all" else [int(args.fold)]
    rows = []
    for fold in folds:
        rows.append(relaxed_floor(cfg, fold, args.train_windows))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:
        print(json.dumps({"folds": len(rows), **{f"mean_{k}": float(np.mean([r[k] for r in rows]))
                                                 for k in ("rotor_all", "relaxed_blend")}}))
    return rows


if __name__ == "__main__":
    main()
