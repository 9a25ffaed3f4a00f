"""The harmonic prior's thermal cap, variant by variant, on identical windows.

    python benchmarks/harmonic_cap.py --data data/tg80-mini --variants uncapped cap1 cap1-gate2
    python benchmarks/harmonic_cap.py --data data/tg80-mini --variants cap1-gate2+linear cap1-gate2+bonds
    python benchmarks/harmonic_cap.py --data data/tg80-mini --variants cap1-gate2 cap1-gate2+torsions0.5
    python benchmarks/harmonic_cap.py --data <tg80 build> --molecules gabapentin thymol --variants uncapped cap2 cap1-gate2

For each molecule (`--molecules`, default all of the data set's), the evaluation windows of
`jobs/evaluate.py` (`--windows` per ΔT, P = 8, seed 0) with their prior paths; then, for each
variant, the vibration paths again with `atomray.priors.modes.AMPLITUDE_CAP` and `CAP_GATE` set
as the variant says, and the S2T (10⁻² Å², mean over molecules) of harmonic_all and
anharmonic_all beside no motion and MMFF94 MD, which no variant changes. Variants: `uncapped`
(no cap), `capA` (every window capped at A thermal amplitudes), `capA-gateG` (capped at A where the
modes' potential energy is more than G times their kinetic energy; the default is
cap1-gate2); a suffix `+bonds` holds each bond's length to first order in the displacement
(`atomray.priors.modes.first_order_bonds`), `+linear` (the default) takes the normal modes'
Cartesian displacement as it is, `+torsionsR` vibrates a state more than R Å RMS from its
minimum about the minimum with the state's saturated torsions
(`atomray.priors.modes.torsion_matched`). The vibration turns terminal groups on their circles
as the floors do (`model.rotor_circles`; it moves hydrogens only, and S2T scores heavy atoms).
Molecules run in worker processes (--workers). Prints one JSON line: per variant and ΔT the mean
S2T, and per molecule the harmonic_all S2T. A few minutes for ten molecules on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("no_motion", "harmonic_all", "mmff_md", "anharmonic_all")


def parse_variant(name: str) -> tuple[float, float, bool, float]:
    """(AMPLITUDE_CAP, CAP_GATE, FIRST_ORDER_BONDS, the prior paths' match_torsions) of a variant name."""
    name, _, suffix = name.partition("+")
    torsions = re.fullmatch(r"torsions([0-9.]+)", suffix)
    if suffix not in ("", "bonds", "linear") and not torsions:
        raise ValueError(f"variant suffix +{suffix}: expected +bonds, +linear or +torsionsR (R a number)")
    first_order = suffix == "bonds"
    match_rms = float(torsions.group(1)) if torsions else math.inf
    if name == "uncapped":
        return math.inf, 0.0, first_order, match_rms
    match = re.fullmatch(r"cap([0-9.]+)(?:-gate([0-9.]+))?", name)
    if not match:
        raise ValueError(f"variant {name!r}: expected uncapped, capA or capA-gateG (A, G numbers)")
    return float(match.group(1)), float(match.group(2) or 0.0), first_order, match_rms


def molecule_scores(root: str, molecule: str, horizons: list[float], windows: int,
                    variants: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{variant: {ΔT: {floor: S2T}}} of one molecule (a worker process's job)."""
    sys.path.insert(0, str(ROOT))
    from atomray import evaluate
    from atomray.config import load_config, to_dict
    from atomray.priors import modes
    from atomray.priors.frames import FramePhysics
    from atomray.priors.paths import DatasetBasins, PriorPaths

    cfg = load_config(str(ROOT / "jobs/configs/pretrain.yaml"), [f"data.path={root}"])
    files = evaluate.molecule_files(root, [molecule]).get(molecule, [])
    sets, _ = evaluate._molecule_sets(root, to_dict(cfg), molecule, files, [8], horizons, windows, 0)
    vibration = PriorPaths({"rotor", "vibration"}, DatasetBasins(FramePhysics.load(root, [molecule])),
                           circles=cfg.model.rotor_circles)  # as the floors are scored (atomray.evaluate)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in variants:
        modes.AMPLITUDE_CAP, modes.CAP_GATE, modes.FIRST_ORDER_BONDS, match = parse_variant(name)
        vibration.match_torsions = match
        for _, h, w in sets:
            bare = {k: v for k, v in w.items() if k not in ("vib_osc", "vib_d0")}
            again = evaluate.with_paths(bare, vibration)
            again["md_path"], again["md_ok"] = w["md_path"], w["md_ok"]  # MMFF94 MD: no variant changes it
            errors = evaluate.floor_errors(again, FLOORS)
            out.setdefault(name, {})[f"{h:g}"] = {f: round(float(100 * e.mean()), 4) for f, e in errors.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a data set with stored per-frame physics")
    parser.add_argument("--molecules", nargs="*", default=None)
    parser.add_argument("--variants", nargs="+", default=["uncapped", "cap1", "cap1-gate2"])
    parser.add_argument("--horizons-fs", nargs="+", type=float, default=[25.0, 100.0, 400.0, 1000.0])
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    for name in args.variants:
        parse_variant(name)  # a bad name fails before any work

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import pyarrow.parquet as pq

    molecules = args.molecules or pq.read_table(Path(args.data) / "molecules.parquet").column("molecule_id").to_pylist()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(molecule_scores, args.data, m, args.horizons_fs, args.windows, args.variants)
                for m in molecules]
        scores = dict(zip(molecules, (j.result() for j in jobs)))
    mean = {v: {h: {f: round(float(np.mean([scores[m][v][h][f] for m in molecules])), 4) for f in FLOORS}
                for h in scores[molecules[0]][v]} for v in args.variants}
    print(json.dumps({"data": args.data, "windows": args.windows, "mean_s2t": mean,
                      "harmonic_all_by_molecule": {m: {v: {h: s[v][h]["harmonic_all"] for h in s[v]} for v in s}
                                                   for m, s in scores.items()}}))


if __name__ == "__main__":
    main()
