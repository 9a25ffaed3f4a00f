"""Where the rotor_all floor's error lies on a CV fold's test windows, and how much an oracle
that knows each test molecule's average structure could remove. No model, no training.

    .venv/bin/python benchmarks/error_anatomy.py --fold 2
    .venv/bin/python benchmarks/error_anatomy.py --fold all        # the five folds of cv.yaml

Same out-of-domain test windows as `jobs/cv.py` and `benchmarks/probe_fold.py` score. Per ΔT
bin it reports (S2T ×10⁻² Å², heavy atoms as scored):
  rotor_all          the strongest floor: exact torque-free rigid-body motion of all atoms
  internal           rotor_all's error left after the best superposition of its prediction on
                     the truth (mass-weighted Kabsch, per window and lag): the part no rigid-body
                     motion, however exact, can remove — the molecule's internal motion
  oracle_mean        the test molecule's Procrustes-mean structure (from its windows' start
                     frames) superposed on rotor_all's prediction: no internal motion, only the
                     average shape. Not a predictor anyone has (it knows the test molecule's
                     average shape); it bounds what "regress toward the equilibrium" can give
  oracle_blend       rotor_all + a (oracle_mean − rotor_all), a ∈ {0, 0.1, …, 1} chosen per bin
                     on the test windows themselves (an oracle twice over)
One JSON line per fold, then (for --fold all) the mean over folds, as `jobs/cv.py` averages.
rotor_all reads the rotor paths the data path attaches (`atomray.evaluate.eval_transform`). Its
figures ("98 % of rotor_all's error is internal motion", cited by `relaxed_floor.py` and
docs/experiments.md) came from the code before the priors moved to the data path; rotor_all is
the same floor (fold 2: rotor_all 1.2033 ×10⁻² Å² then and now).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from atomray.priors.rigid import procrustes_mean, superpose

BINS_FS = ((0, 10), (10, 30), (30, 100), (100, 200), (200, 1000))
BLENDS = np.linspace(0.0, 1.0, 11)


def fit_blend(err, base: torch.Tensor, step: torch.Tensor, lags: torch.Tensor) -> list[float]:
    """Per ΔT bin of BINS_FS, the a in BLENDS that minimises the summed err(base + a step)
    (0 for a bin with no lags)."""
    errors = [err(base + a * step) for a in BLENDS]  # each (W, P)
    weights = []
    for lo, hi in BINS_FS:
        sel = (lags > lo) & (lags <= hi)
        sums = [float(e[sel].sum()) for e in errors]
        weights.append(round(float(BLENDS[int(np.argmin(sums))]), 1))
    return weights


def bin_weights(lags: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """(W, P) the blend weight of each lag's ΔT bin (0 outside BINS_FS)."""
    out = torch.zeros_like(lags)
    for (lo, hi), a in zip(BINS_FS, weights):
        out = torch.where((lags > lo) & (lags <= hi), torch.full_like(out, a), out)
    return out


def mean_shapes(b: dict, molecules: np.ndarray) -> torch.Tensor:
    """(W, N, 3) float64: each window's molecule's Procrustes-mean start structure (over the
    windows given), superposed on the window's start frame x0 (mass-weighted)."""
    x0, mass = b["x0"].double(), b["mass"].double() * b["mask"].double()
    out = torch.empty_like(x0)
    for mid in np.unique(molecules):
        i = torch.from_numpy(np.flatnonzero(molecules == mid))
        ref = procrustes_mean(x0[i], mass[i])
        out[i] = superpose(ref.expand_as(x0[i]), x0[i], mass[i])
    return out


def anatomy(cfg, fold: int) -> dict:
    from probe_fold import fold_windows, scoring_windows

    from atomray.data.pipeline import to_torch
    from atomray.evaluate import score_mask
    from atomray.metrics import lag_errors
    from atomray.priors.compose import floor_predictions

    split, _, _, _, w = fold_windows(cfg, fold, train_windows=1)
    w = scoring_windows(cfg, split.test, w, ["rotor_all"], model=False)  # rotor_all's paths
    b = to_torch(w)
    target, lags = b["target"].double(), b["lags_fs"].double()
    scored = score_mask(b).double()  # (W, N)
    mass = b["mass"].double() * b["mask"].double()
    rotor = floor_predictions(b, ["rotor_all"])["rotor_all"]  # (W, P, N, 3)

    def err(pred: torch.Tensor) -> torch.Tensor:  # (W, P) mean over scored atoms and xyz
        return lag_errors(pred, target, scored)

    per_lag = scored[:, None].expand(-1, rotor.shape[1], -1)
    internal = err(superpose(rotor, target, per_lag))
    shapes = mean_shapes(b, np.asarray(w["molecule_id"]))[:, None].expand_as(rotor)
    mean_shape = superpose(shapes, rotor, mass[:, None].expand(-1, rotor.shape[1], -1))
    e_rotor, e_mean = err(rotor), err(mean_shape)
    blends = [err(rotor + a * (mean_shape - rotor)) for a in BLENDS]
    out = {"fold": fold, "test_molecules": list(split.test), "bins": {}}
    blend_total = 0.0
    for lo, hi in BINS_FS:
        sel = (lags > lo) & (lags <= hi)
        if not bool(sel.any()):
            continue
        sums = [float(e[sel].sum()) for e in blends]
        k = int(np.argmin(sums))
        blend_total += sums[k]
        out["bins"][f"{lo}-{hi}fs"] = {
            "rotor_all": round(100 * float(e_rotor[sel].mean()), 4),
            "internal": round(100 * float(internal[sel].mean()), 4),
            "oracle_mean": round(100 * float(e_mean[sel].mean()), 4),
            "oracle_blend": round(100 * sums[k] / int(sel.sum()), 4), "blend_a": round(float(BLENDS[k]), 1)}
    out.update({"rotor_all": 100 * float(e_rotor.mean()), "internal": 100 * float(internal.mean()),
                "internal_share": float(internal.mean() / e_rotor.mean()),
                "oracle_blend": 100 * blend_total / e_rotor.numel(),
                "oracle_blend_ratio": blend_total / float(e_rotor.sum())})
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "cv.yaml"))
    ap.add_argument("--fold", default="all", help="a fold index, or 'all'")
    ap.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    args = ap.parse_args(argv)
    from atomray.config import load_config
    from atomray.train.pretrain import resolve

    cfg = resolve(load_config(args.config, args.overrides))
    folds = range(cfg.data.num_folds) if args.fold == "all" else [int(args.fold)]
    rows = []
    for fold in folds:
        rows.append(anatomy(cfg, fold))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:
        keys = ("rotor_all", "internal", "oracle_blend")
        print(json.dumps({"folds": len(rows), **{f"mean_{k}": float(np.mean([r[k] for r in rows])) for k in keys}}))
    return rows


if __name__ == "__main__":
    main()
