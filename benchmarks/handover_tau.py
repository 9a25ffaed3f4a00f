"""The anharmonic prior's hand-over time τ, chosen on training molecules, confirmed on held-out ones.

    python benchmarks/handover_tau.py --data <tg80 build> --fit <the 45-molecule pool> \\
        --check gabapentin lib-1075 ... --taus 150 300 600 1000 2000 inf

anharmonic_all(Δt) = harmonic_all(Δt) + exp(−Δt/τ) (mmff_md(Δt) − harmonic_all(Δt))
(`atomray.priors.anharmonic.blend_md`); τ = inf is MMFF94 MD itself wherever it ran. For each
molecule of `--fit` and `--check`, the evaluation windows of `jobs/evaluate.py` (`--windows` per
ΔT, P = 8, seed 0) with their prior paths, computed once; then harmonic_all, mmff_md and the
hand-over at every τ of `--taus` on exactly those windows; `--gates R:S:L` adds per-window
hand-overs, τ = L where the window's start is more than R Å (RMS over atoms) from its basin's
minimum (the harmonic prior's d0), else S. S2T is 10⁻² Å², the mean over
molecules of each molecule's mean, as `jobs/evaluate.py` averages. The τ (or gate) fitted is the one with
the lowest geometric mean over the ΔTs on the `--fit` molecules (each ΔT weighs the same,
however large its error); the `--check` molecules only report. Prints one JSON line, with per
molecule and ΔT harmonic_all, mmff_md and the hand-over that suits that molecule best. Molecules
run in worker processes (--workers); MMFF94 MD of every window is most of the time (about 3 min
per 10 molecules × 200 windows × 4 ΔTs on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def molecule_scores(root: str, molecule: str, horizons: list[float], windows: int,
                    taus: list[float], gates: list[tuple[float, float, float]] = ()) -> dict[str, dict[str, float]]:
    """{ΔT: {predictor: S2T}} of one molecule (a worker process's job)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from atomray import evaluate
    from atomray.config import load_config, to_dict
    from atomray.metrics import lag_errors
    from atomray.priors.compose import floor_predictions

    torch.set_num_threads(1)
    cfg = load_config(str(ROOT / "jobs/configs/pretrain.yaml"), [f"data.path={root}"])
    files = evaluate.molecule_files(root, [molecule]).get(molecule, [])
    sets, _ = evaluate._molecule_sets(root, to_dict(cfg), molecule, files, [8], horizons, windows, 0)
    out: dict[str, dict[str, float]] = {}
    for _, h, w in sets:
        t = {k: torch.as_tensor(v) for k, v in w.items() if not (isinstance(v, np.ndarray) and v.dtype == object)}
        target, mask, lags = t["target"].double(), evaluate.score_mask(t).bool(), t["lags_fs"].double()
        floors = floor_predictions(t, ["harmonic_all", "mmff_md"])
        row = {name: lag_errors(pred, target, mask) for name, pred in floors.items()}
        at = {tau: lag_errors(handover(floors, t, lags, tau), target, mask)
              for tau in {*taus, *(g[1] for g in gates), *(g[2] for g in gates)}}  # (W, P) per τ
        row.update({f"tau{tau:g}": at[tau] for tau in taus})
        rms = t["vib_d0"].double().square().sum(-1).mean(-1).sqrt()  # (W,) Å from the basin's minimum
        for radius, short, long in gates:
            row[gate_name((radius, short, long))] = torch.where((rms > radius)[:, None], at[long], at[short])
        out[f"{h:g}"] = {k: float(100 * e.mean()) for k, e in row.items()}
    return out


def handover(floors: dict, t: dict, lags, tau: float):
    """anharmonic_all at hand-over time τ (inf: MMFF94 MD itself)."""
    from atomray.priors.anharmonic import blend_md

    if math.isinf(tau):
        return floors["mmff_md"]
    return blend_md(floors["harmonic_all"], t["md_path"].double(), t["md_ok"], lags, tau)


def gate_name(gate: tuple[float, float, float]) -> str:
    return f"gate{gate[0]:g}:{gate[1]:g}:{gate[2]:g}"


def parse_gate(text: str) -> tuple[float, float, float]:
    """'R:S:L' → (R Å, τ S fs, τ L fs)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(text)
    return float(parts[0]), float(parts[1]), float(parts[2])


def means(scores: dict[str, dict], molecules: list[str]) -> dict[str, dict[str, float]]:
    """{ΔT: {predictor: mean over molecules}}."""
    first = scores[molecules[0]]
    return {h: {k: round(float(np.mean([scores[m][h][k] for m in molecules])), 4) for k in first[h]} for h in first}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a data set with stored per-frame physics")
    parser.add_argument("--fit", nargs="+", required=True, help="molecules τ is chosen on")
    parser.add_argument("--check", nargs="*", default=[], help="molecules that only report")
    parser.add_argument("--taus", nargs="+", default=["150", "300", "600", "1000", "2000", "inf"])
    parser.add_argument("--gates", nargs="*", default=[], metavar="R:S:L",
                        help="per-window hand-overs: τ = L fs where the start is more than R Å RMS from its "
                             "basin's minimum, else S fs (e.g. 0.5:50:600)")
    parser.add_argument("--horizons-fs", nargs="+", type=float, default=[25.0, 100.0, 400.0, 1000.0])
    parser.add_argument("--windows", type=int, default=200, help="windows per molecule and ΔT (--check)")
    parser.add_argument("--fit-windows", type=int, default=50, help="windows per molecule and ΔT (--fit)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        taus = sorted({float(t) for t in args.taus})
    except ValueError:
        parser.error(f"--taus {' '.join(args.taus)}: expected numbers of fs or inf")
    try:
        gates = [parse_gate(g) for g in args.gates]
    except ValueError:
        parser.error(f"--gates {' '.join(args.gates)}: expected R:S:L (Å, fs, fs; L may be inf), e.g. 0.5:50:600")
    if overlap := sorted(set(args.fit) & set(args.check)):
        parser.error(f"molecules both in --fit and --check: {', '.join(overlap)}")

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    work = [(m, args.fit_windows) for m in args.fit] + [(m, args.windows) for m in args.check]
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = {m: pool.submit(molecule_scores, args.data, m, args.horizons_fs, n, taus, gates) for m, n in work}
        scores = {m: j.result() for m, j in tqdm(jobs.items(), desc="molecules", unit="molecule")}
    fit = means(scores, args.fit)
    keys = [f"tau{t:g}" for t in taus] + [gate_name(g) for g in gates]
    geo = {k: float(np.exp(np.mean([np.log(fit[h][k]) for h in fit]))) for k in keys}
    result = {"data": args.data, "windows": {"fit": args.fit_windows, "check": args.windows},
              "fitted": min(keys, key=geo.get), "fit_geomean": {k: round(v, 4) for k, v in geo.items()},
              "fit": fit}
    if args.check:
        result["check"] = means(scores, args.check)
    result["by_molecule"] = {m: {h: {"harmonic_all": round(s[h]["harmonic_all"], 4), "mmff_md": round(s[h]["mmff_md"], 4),
                                     "best": min(keys, key=s[h].get)} for h in s} for m, s in scores.items()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
