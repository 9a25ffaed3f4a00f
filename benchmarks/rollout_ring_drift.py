"""Whether a rollout's molecule changes class over time, which the stability coefficient misses.

    python benchmarks/rollout_ring_drift.py --rollouts <jobs/rollout.py --out dir> --molecule benzene [--windows 10]

For every `<molecule>_<start>.extxyz` of a `jobs/rollout.py` run: the mean and spread of its
heavy–heavy bond lengths (bonds perceived at the start, `atomray.structure.bonds_from_geometry`)
in each of `--windows` equal stretches of the rollout, and the smallest singular value of the
heavy atoms about their centroid at the start and at the end (≈ 0.1 Å for a planar ring, larger
once it puckers). A ring that expands or puckers at some moment shows as a step in the means.
Then the conformer basins the machine's basin store holds for the molecule's atoms
(`atomray.priors.minima`): each minimum's bond count as perceived from its geometry — a basin
with more bonds than the start is another molecule. One JSON line per rollout, one for the store.
Seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def smallest_extent(x: np.ndarray) -> float:
    """The smallest singular value (Å) of positions x (n, 3) about their centroid."""
    return float(np.linalg.svd(x - x.mean(0), compute_uv=False)[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", required=True, help="a jobs/rollout.py --out directory")
    parser.add_argument("--molecule", required=True, help="the molecule (file name prefix) to read")
    parser.add_argument("--windows", type=int, default=10)
    args = parser.parse_args(argv)

    import ase.io

    from atomray import structure
    from atomray.priors.minima import machine_finder

    files = sorted(Path(args.rollouts).glob(f"{args.molecule}_*.extxyz"))
    if not files:
        parser.error(f"--rollouts {args.rollouts}: no {args.molecule}_<start>.extxyz files there")
    rows = []
    for path in files:
        frames = ase.io.read(path, ":")
        z, x = frames[0].numbers, np.array([f.positions for f in frames])
        top = structure.bonds_from_geometry(z, x[0])
        heavy = np.array([min(z[i], z[j]) > 1 for i, j in top.bonds], bool)
        lengths = structure.bond_lengths(x, top)[:, heavy]
        stretches = np.array_split(lengths, args.windows)
        rows.append({"rollout": path.name, "start_bonds": len(top.bonds),
                     "heavy_bond_mean_a": [round(float(s.mean()), 4) for s in stretches],
                     "heavy_bond_std_a": [round(float(s.std()), 4) for s in stretches],
                     "heavy_extent_start_end_a": [round(smallest_extent(x[0][z > 1]), 3),
                                                  round(smallest_extent(x[-1][z > 1]), 3)]})
        print(json.dumps(rows[-1]), flush=True)
    finder = machine_finder(z)
    finder.assign(x[0])  # reads the store's basins (and adds the start's, if new)
    counts = [len(structure.bonds_from_geometry(z, finder.minimum(k)[0]).bonds) for k in range(len(finder))]
    rows.append({"molecule": args.molecule, "basins_in_store": len(counts), "bonds_per_basin": counts})
    print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
