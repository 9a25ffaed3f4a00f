"""MMFF94 molecular dynamics from each window's start state as a predictor, and its hand-over to
the harmonic floor (`atomray.priors.anharmonic`). No neural network, no training.

    .venv/bin/python benchmarks/anharmonic_floor.py --fold all       # the five folds of cv.yaml
    .venv/bin/python benchmarks/anharmonic_floor.py --fold 2 --train-windows 64     # ~20-40 s

Same out-of-domain test windows as `jobs/cv.py` and `benchmarks/probe_fold.py` score. Per fold
it prints (S2T ×10⁻² Å², heavy atoms as scored): harmonic_all, mmff_md, and
harmonic_all + exp(−Δt/τ) (mmff_md − harmonic_all) for each τ of `--taus`, with the τ that fits
the fold's training windows best (a pool of `--train-windows`, as `probe_fold.py` draws it),
then per ΔT bin harmonic_all and mmff_md; last, the mean over folds as `jobs/cv.py` averages.
`anharmonic_all` is the fixed τ = 150 fs column. The windows' prior paths (rotor motion, normal
modes from tg80-mini's stored per-frame physics, MMFF94 MD) are attached as the data path
attaches them (`atomray.evaluate.eval_transform`); the MMFF94 MD of each window dominates the
time. Its figures (τ = 150 fs, the median of the fitted τ per fold; mmff_md and harmonic_all per
fold, `atomray.priors.anharmonic`) came from the code before the priors moved to the data path;
the floors are the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

BINS_FS = ((0, 10), (10, 30), (30, 100), (100, 200), (200, 1000))


def errors(windows: dict, taus: list[float]) -> dict:
    """Per-window-and-lag errors (W, P) of harmonic_all, mmff_md and each hand-over, and the lags."""
    from atomray.data.pipeline import to_torch
    from atomray.evaluate import score_mask
    from atomray.metrics import lag_errors
    from atomray.priors.anharmonic import blend_md
    from atomray.priors.compose import floor_predictions

    b = to_torch(windows)
    floors = floor_predictions(b, ["harmonic_all", "mmff_md"])
    harmonic, md = floors["harmonic_all"], floors["mmff_md"]
    target, scored, lags = b["target"].double(), score_mask(b).double(), b["lags_fs"].double()
    out = {"lags": lags, "harmonic_all": lag_errors(harmonic, target, scored), "mmff_md": lag_errors(md, target, scored)}
    for tau in taus:  # mmff_md is harmonic_all where MMFF94 has no MD: blend_md keeps harmonic_all there too
        pred = blend_md(harmonic, b["md_path"].double(), b["md_ok"], lags, tau)
        out[f"tau{tau:g}"] = lag_errors(pred, target, scored)
    return out


def fold_row(cfg, fold: int, taus: list[float], train_windows: int) -> dict:
    from probe_fold import fold_windows, scoring_windows

    t0 = time.perf_counter()
    split, molecules, pool, _, test = fold_windows(cfg, fold, train_windows)
    floors = ["harmonic_all", "mmff_md"]
    pool = scoring_windows(cfg, molecules, pool, floors, model=False)
    test = scoring_windows(cfg, split.test, test, floors, model=False)
    train, scored = errors(pool, taus), errors(test, taus)
    fitted = min(taus, key=lambda t: float(train[f"tau{t:g}"].mean()))
    row = {"fold": fold, "test_molecules": list(split.test), "tau_fitted_on_train_fs": fitted,
           **{k: round(100 * float(v.mean()), 4) for k, v in scored.items() if k != "lags"},
           "fitted": round(100 * float(scored[f"tau{fitted:g}"].mean()), 4), "bins": {}}
    for lo, hi in BINS_FS:
        sel = (scored["lags"] > lo) & (scored["lags"] <= hi)
        if bool(sel.any()):
            row["bins"][f"{lo}-{hi}fs"] = {k: round(100 * float(scored[k][sel].mean()), 4)
                                           for k in ("harmonic_all", "mmff_md", "tau150")}
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "cv.yaml"))
    ap.add_argument("--fold", default="all", help="a fold index, or 'all'")
    ap.add_argument("--taus", default="50,100,150,200,300,500", help="hand-over times τ (fs), comma-separated")
    ap.add_argument("--train-windows", type=int, default=512, help="training windows per fold to fit τ on")
    ap.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from atomray.config import load_config
    from atomray.train.pretrain import resolve

    cfg = resolve(load_config(args.config, args.overrides))
    taus = sorted({float(t) for t in args.taus.split(",")} | {150.0})
    folds = range(cfg.data.num_folds) if args.fold == "all" else [int(args.fold)]
    rows = []
    for fold in folds:
        rows.append(fold_row(cfg, fold, taus, args.train_windows))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:
        keys = ["harmonic_all", "mmff_md", "fitted"] + [f"tau{t:g}" for t in taus]
        print(json.dumps({"folds": len(rows), **{f"mean_{k}": round(float(np.mean([r[k] for r in rows])), 4)
                                                  for k in keys}}))
    return rows


if __name__ == "__main__":
    main()
