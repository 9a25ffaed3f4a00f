"""A stronger floor for the CV folds: the rigid-body motion plus relaxation toward a minimum of the
molecule — no neural network.

    .venv/bin/python benchmarks/relaxed_floor.py --fold all      # the five folds of cv.yaml
    .venv/bin/python benchmarks/relaxed_floor.py --fold 2 --train-windows 256 --minimum mmff94
    .venv/bin/python benchmarks/relaxed_floor.py --per-molecule  # relaxed_all, harmonic_all / rotor_all per molecule

For each window, x0 (every atom) is moved to its nearest minimum — by default its conformer
basin's GFN2-xTB-refined minimum (`atomray.priors.minima`), read from tg80-mini's stored
per-frame physics (`atomray.priors.frames`; x0 − vib_d0, the minimum superposed on x0), with
`--minimum mmff94` MMFF94's own minimum of x0 (minimised here, per window) — superposed on the
rotor_all prediction at each lag, and the prediction moves a fraction a of the way toward it:

    x̂(Δt) = rotor_all(Δt) + a_k (relaxed superposed − rotor_all(Δt)),   Δt in ΔT bin k

The five blend weights a_k (one per ΔT bin of `error_anatomy.BINS_FS`, from {0, 0.1, …, 1})
are fitted on the fold's *training* windows (the pool `probe_fold.py` trains on) and scored on
the fold's out-of-domain test windows — the ones `jobs/cv.py` scores. Why it works:
`error_anatomy.py` shows that 98 % of rotor_all's error is internal motion and that moving
toward the molecule's average shape removes much of it at long lags; a minimum is an estimate
of that shape that needs no knowledge of the test molecule's trajectory. The fitted weights
followed a(Δt) = 1 − exp(−Δt / 250 fs) on every fold: the curve of the `relaxed_all` floor
(`atomray.priors.compose.toward_minimum`; the relaxed prior, a model correcting it, was
removed since). One JSON line per fold (blend weights, rotor_all and relaxed_blend S2T
×10⁻² Å², heavy atoms as scored, their ratio, ms per window: attaching the windows' paths and
the blend, plus the MMFF94 minimisation with `--minimum mmff94`), then the mean over folds.

`--per-molecule [WINDOWS]`: on WINDOWS (default 128) windows of every usable molecule (whole
trajectories, cv.yaml's horizons) rotor_all, relaxed_all, harmonic_all, and relaxed_all with
MMFF94's own minimum (relaxed_mmff94): where the refined minimum helps, where MMFF94's bias
against the data's method hurts. One JSON line per molecule, then a summary line.

The windows' prior paths are attached as the data path attaches them
(`atomray.evaluate.eval_transform`). The figures this script produced (the fitted blend
weights, "~2 min" per mode, relaxed_all below rotor_all on all 15 molecules, relaxed_mmff94
1.5–2.5× worse than rotor_all on salicylic acid, harmonic_all removing 79 % of relaxed_all's
error) came from the code before the priors moved to the data path, where each window's basin
was found in the evaluating process instead of read from the data set's stored physics.
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

from error_anatomy import BINS_FS, bin_weights, fit_blend

from atomray.priors.rigid import superpose


def mmff94_shift(b: dict) -> torch.Tensor:
    """(W, N, 3) float64: MMFF94's own minimum of each window's x0, superposed on x0 (mass-weighted),
    minus x0; 0 at padding and where MMFF94 cannot type the molecule. The windows must hold every
    atom (cv.yaml's `data.context_atoms: all`)."""
    from atomray.priors.minima import mmff_minimum, warn_unrelaxed

    x, z, mask = b["x0"].double(), b["z"].long(), b["mask"].bool()
    relaxed, done = x.clone(), torch.zeros(len(x), dtype=torch.bool)
    for i in range(len(x)):
        atoms = torch.nonzero(mask[i]).ravel()
        out = mmff_minimum(x[i, atoms].numpy(), z[i, atoms].numpy())
        if out is None:
            warn_unrelaxed(z[i, atoms].numpy())
            continue
        relaxed[i, atoms], done[i] = torch.from_numpy(out), True
    weight = b["mass"].double() * mask.double()
    return (superpose(relaxed, x, weight) - x) * (mask & done[:, None])[..., None]


def minimum_shift(b: dict, minimum: str) -> torch.Tensor:
    """(W, N, 3) the shift from x0 to its superposed minimum: "gfn2" its basin's refined minimum
    (−vib_d0 of the stored per-frame physics), "mmff94" MMFF94's own minimum."""
    if "ctx_x0" in b and b["ctx_x0"].shape[1]:
        raise SystemExit("relaxed_floor.py: the windows must hold every atom (data.context_atoms=all)")
    return -b["vib_d0"].double() if minimum == "gfn2" else mmff94_shift(b)


def blend_parts(windows: dict, minimum: str = "gfn2"):
    """rotor_all (W, P, N, 3), the relaxed start superposed on it, lags (W, P), err(pred) → (W, P)."""
    from atomray.data.pipeline import to_torch
    from atomray.evaluate import score_mask
    from atomray.metrics import lag_errors
    from atomray.priors.compose import floor_predictions

    b = to_torch(windows)
    relaxed = b["x0"].double() + minimum_shift(b, minimum)
    target, lags, scored = b["target"].double(), b["lags_fs"].double(), score_mask(b)
    mass = b["mass"].double() * b["mask"].double()
    rotor = floor_predictions(b, ["rotor_all"])["rotor_all"]
    shape = superpose(relaxed[:, None].expand_as(rotor), rotor, mass[:, None].expand(-1, rotor.shape[1], -1))
    return rotor, shape, lags, lambda pred: lag_errors(pred, target, scored)


def relaxed_floor(cfg, fold: int, train_windows: int, minimum: str) -> dict:
    from probe_fold import fold_windows, scoring_windows

    split, molecules, pool, _, test = fold_windows(cfg, fold, train_windows)
    t0 = time.perf_counter()
    pool = scoring_windows(cfg, molecules, pool, ["relaxed_all"], model=False)  # rotor motion and vib_d0
    test = scoring_windows(cfg, split.test, test, ["relaxed_all"], model=False)
    rotor, shape, lags, err = blend_parts(pool, minimum)
    weights = fit_blend(err, rotor, shape - rotor, lags)
    rotor, shape, lags, err = blend_parts(test, minimum)
    pred = rotor + bin_weights(lags, weights)[..., None, None] * (shape - rotor)
    e_rotor, e_blend = err(rotor), err(pred)
    seconds = time.perf_counter() - t0
    return {"fold": fold, "test_molecules": list(split.test), "minimum": minimum,
            "blend_weights": dict(zip([f"{lo}-{hi}fs" for lo, hi in BINS_FS], weights)),
            "rotor_all": 100 * float(e_rotor.mean()), "relaxed_blend": 100 * float(e_blend.mean()),
            "ratio_rotor_all": float(e_blend.mean() / e_rotor.mean()),
            "ms_per_window": 1000 * seconds / (len(pool["x0"]) + len(test["x0"]))}


def per_molecule(cfg, windows: int) -> list[dict]:
    """relaxed_all and rotor_all (the unfitted curve) on `windows` windows of every usable
    molecule, whole trajectories, cfg's horizons, and relaxed_all with MMFF94's minimum alone:
    where the minimum helps, where MMFF94's bias against the data's method hurts."""
    from probe_fold import scoring_windows

    from atomray.data.pipeline import fixed_windows
    from atomray.data.splits import usable_molecules
    from atomray.evaluate import floor_errors

    names = ("rotor_all", "relaxed_all", "harmonic_all")
    rows = []
    for mid in usable_molecules(cfg.data).column("molecule_id").to_pylist():
        w = fixed_windows(cfg.data.path, [mid], windows, cfg.data, cfg.data.split_seed)
        t0 = time.perf_counter()
        w = scoring_windows(cfg, [mid], w, names, model=False)
        err = floor_errors(w, names)
        seconds = time.perf_counter() - t0
        rotor, relaxed = 100 * float(err["rotor_all"].mean()), 100 * float(err["relaxed_all"].mean())
        harmonic = 100 * float(err["harmonic_all"].mean())
        mmff = 100 * float(relaxed_errors(w, "mmff94").mean())
        rows.append({"molecule": mid, "rotor_all": rotor, "relaxed_all": relaxed, "ratio": relaxed / rotor,
                     "relaxed_mmff94": mmff, "ratio_mmff94": mmff / rotor, "harmonic_all": harmonic,
                     "harmonic_to_relaxed": harmonic / relaxed, "seconds": seconds})
    return rows


def relaxed_errors(windows: dict, minimum: str):
    """(W, P) errors of the relaxed_all floor toward the given minimum (windows carrying the
    relaxed_all floor's prior paths)."""
    from atomray.data.pipeline import to_torch
    from atomray.evaluate import score_mask
    from atomray.metrics import lag_errors
    from atomray.priors.compose import toward_minimum

    b = to_torch(windows)
    pred = b["rotor_path"].double() + toward_minimum(minimum_shift(b, minimum), b["rotor_rot"].double(),
                                                     b["lags_fs"].double())
    return lag_errors(pred, b["target"].double(), score_mask(b))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "cv.yaml"))
    ap.add_argument("--fold", default="all", help="a fold index, or 'all'")
    ap.add_argument("--train-windows", type=int, default=2048, help="training windows the blend is fitted on")
    ap.add_argument("--minimum", choices=("gfn2", "mmff94"), default="gfn2",
                    help="the minimum the folds' blend moves toward: the basin's GFN2-xTB-refined one "
                         "(stored per-frame physics) or MMFF94's own")
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
        rows.append(relaxed_floor(cfg, fold, args.train_windows, args.minimum))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:
        print(json.dumps({"folds": len(rows), **{f"mean_{k}": float(np.mean([r[k] for r in rows]))
                                                 for k in ("rotor_all", "relaxed_blend")}}))
    return rows


if __name__ == "__main__":
    main()
