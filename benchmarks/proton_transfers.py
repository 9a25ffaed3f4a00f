"""Does a proton move between two acceptors, in the reference and in the rollouts?

    python benchmarks/proton_transfers.py --rollouts <jobs/rollout.py --out dir> [--reference refs/reference-<hash>.npz]

Reads every `<molecule>_<start>.extxyz` a `jobs/rollout.py` run wrote (their atoms name the
molecule) and, with `--reference`, the fresh reference MD its `--reference-cache` kept (same
atoms, same order). The proton is each hydrogen bonded to an O or N at the first frame (within
1.2 Å) that has a second O or N within 2.2 Å (an intramolecular hydrogen bond,
`atomray.structure.hydrogen_bond_sites`); per trajectory,
frame by frame, which of its two acceptors is nearer: a transfer is a change of side. Prints
one JSON line per trajectory (`source`, `hydrogen`, `acceptors`, `frames`, `transfers`,
`fraction_on_second`: of the frames, on the second acceptor, the farther one at the first
trajectory's first frame; `o_h_a`: mean distance to the nearer acceptor, `h_o_a`: to the farther).
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


def transfers(x: np.ndarray, h: int, a: int, b: int) -> dict:
    """Side changes of hydrogen h between acceptors a and b over frames x (T, N, 3)."""
    da, db = np.linalg.norm(x[:, h] - x[:, a], axis=-1), np.linalg.norm(x[:, h] - x[:, b], axis=-1)
    side = db < da
    return {"frames": len(x), "transfers": int(np.count_nonzero(np.diff(side))),
            "fraction_on_second": round(float(side.mean()), 3),
            "o_h_a": round(float(np.minimum(da, db).mean()), 4), "h_o_a": round(float(np.maximum(da, db).mean()), 4)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", required=True, help="a jobs/rollout.py --out directory")
    parser.add_argument("--reference", default=None, help="its cached fresh reference (reference-<hash>.npz)")
    args = parser.parse_args(argv)

    from ase.io import read

    files = sorted(Path(args.rollouts).glob("*_*.extxyz"))
    if not files:
        parser.error(f"--rollouts {args.rollouts}: no <molecule>_<start>.extxyz files there")
    runs = {f.name: np.stack([a.positions for a in read(f, index=":")]) for f in files}
    z = read(files[0], index=0).numbers
    if args.reference:
        with np.load(args.reference) as ref:
            positions = ref["positions"]
        if positions.shape[1] != len(z):
            parser.error(f"--reference {args.reference}: {positions.shape[1]} atoms, the rollouts {len(z)}")
        runs = {Path(args.reference).name: positions, **runs}
    from atomray.structure import hydrogen_bond_sites

    bonds = hydrogen_bond_sites(next(iter(runs.values()))[0], z)
    if not bonds:
        parser.error(f"{files[0]}: no hydrogen between two O/N acceptors at the first frame")
    rows = []
    for source, x in runs.items():
        for h, a, b in bonds:
            row = {"source": source, "hydrogen": h, "acceptors": [a, b], **transfers(x, h, a, b)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
