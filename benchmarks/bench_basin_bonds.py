"""What keeping a molecule's bond graph costs the basin search of a rollout step.

    python benchmarks/bench_basin_bonds.py [--states 40 --repeats 3]

For four molecules embedded from SMILES (phenol, aspirin, hexane, naphthalene), `--states`
copies displaced by 0.05 Å Gaussian noise are minimised with MMFF94 twice in turn: bonds and
orders perceived from each state (`atomray.priors.minima.mmff_minimum`, the old rollout step)
and with the start's bond graph, orders perceived (`bonds=molecule_bonds(start)`, what a
rollout does now). Prints one JSON line: the median over molecules × repeats of the paired
time ratio kept ÷ perceived, measured in one process. Seconds.
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
SMILES = ("Oc1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "CCCCCC", "c1ccc2ccccc2c1")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--states", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from atomray.predict import state_from_smiles
    from atomray.priors.minima import mmff_minimum, molecule_bonds

    rng = np.random.default_rng(0)
    ratios = []
    for smiles in SMILES:
        start = state_from_smiles(smiles, 300.0, 0)
        z, graph = start.atomic_numbers, molecule_bonds(start.positions, start.atomic_numbers)
        states = [start.positions + rng.normal(0, 0.05, start.positions.shape) for _ in range(args.states)]
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for x in states:
                mmff_minimum(x, z)
            perceived = time.perf_counter() - t0
            t0 = time.perf_counter()
            for x in states:
                mmff_minimum(x, z, bonds=graph)
            ratios.append((time.perf_counter() - t0) / perceived)
    out = {"benchmark": "basin_bonds", "molecules": len(SMILES), "states": args.states, "repeats": args.repeats,
           "kept_over_perceived_median": round(float(np.median(ratios)), 3),
           "kept_over_perceived_range": [round(float(min(ratios)), 3), round(float(max(ratios)), 3)]}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
