"""What exact MD would score as a rollout: the W1 a set of starts can reach at best.

    python benchmarks/sampling_floor.py --smiles CCCCCC --reference refs/reference-<hash 0>.npz ... \
        --stand-in refs/reference-<hash k>.npz ... [--starts 5] [--groups G]
    python benchmarks/sampling_floor.py --smiles CCO --reference A.npz B.npz --stand-in C.npz --starts 1   # runs it

A rollout job judges its rollouts (n starts × its length) against the reference MD with the
Wasserstein-1 distances of bond lengths, angles and proper dihedrals
(`atomray.structure.structure_distances`, bonds from the first reference frame). Independent MD
runs of the same molecule not in the reference (`--stand-in`, e.g. further seeds of
`jobs/rollout.py --reference-runs` kept by `--reference-cache`) stand in for a perfect rollout:
each group of `--starts` of them, joined, is scored against the joined `--reference` runs as the
job scores its rollouts. Their W1 is what sampling alone costs n starts of that length — the
floor a rollout cannot beat except by luck — beside the reference's own halves (the job's
`reference_halves_w1_*`). A flexible molecule whose rollouts keep their start's conformers
(hexane: 0 rotamer transitions per 100 ps of rollout against 20 in MD) still lands on this floor
when its starts are the reference's own frames spread over many runs.

Prints one JSON line (the last line of output): per group its runs and W1 (Å, °, °), their mean
and the largest, the halves, and the numbers of runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def load(paths: list[str]) -> np.ndarray:
    """The runs' positions (T, N, 3) joined; every file must hold the same atoms."""
    parts = []
    for p in paths:
        if not Path(p).is_file():
            raise SystemExit(f"sampling_floor: {p}: no such reference file")
        with np.load(p) as f:
            if "positions" not in f:
                raise SystemExit(f"sampling_floor: {p}: no 'positions' array (a jobs/rollout.py reference expected)")
            parts.append(np.asarray(f["positions"], np.float64))
    shapes = {x.shape[1:] for x in parts}
    if len(shapes) != 1:
        raise SystemExit(f"sampling_floor: the runs hold different atoms: shapes {sorted(shapes)}")
    return np.concatenate(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", nargs="+", required=True, help="the reference runs (.npz), joined")
    parser.add_argument("--stand-in", nargs="+", required=True, help="independent runs standing in for rollouts")
    parser.add_argument("--starts", type=int, default=5, help="runs per stand-in group: the rollouts' starts (default 5)")
    parser.add_argument("--groups", type=int, default=0, help="how many groups to score (default: as many as fit)")
    parser.add_argument("--smiles", required=True, help="the molecule (its atoms in the references' order, as "
                                                        "jobs/rollout.py --smiles wrote them)")
    args = parser.parse_args(argv)
    if args.starts < 1:
        parser.error("--starts must be >= 1")
    fit = len(args.stand_in) // args.starts
    groups = args.groups or fit
    if groups < 1 or groups > fit:
        parser.error(f"{len(args.stand_in)} stand-in runs make {fit} group(s) of {args.starts}; asked for {groups}")

    from atomray import structure
    from atomray.tg80.engines import molecule_with_hydrogens

    ref = load(args.reference)
    z = np.array([a.GetAtomicNum() for a in molecule_with_hydrogens(args.smiles, "--smiles").GetAtoms()])
    if len(z) != ref.shape[1]:
        parser.error(f"--smiles {args.smiles} has {len(z)} atoms, the reference runs hold {ref.shape[1]}")
    bonds = structure.bonds_from_geometry(z, ref[0])
    half = len(ref) // 2
    halves = structure.structure_distances(ref[:half], ref[half:], z, bonds)
    keys = ("bond_length_a", "bond_angle_deg", "dihedral_deg")
    rows = []
    for g in range(groups):
        runs = args.stand_in[g * args.starts:(g + 1) * args.starts]
        w = structure.structure_distances(load(runs), ref, z, bonds)
        rows.append({"runs": [Path(r).name for r in runs], **{f"w1_{k}": round(w[k], 5) for k in keys}})
        print(f"group {g + 1}/{groups}: " + " / ".join(f"{w[k]:.4g}" for k in keys), flush=True)
    print(json.dumps({"benchmark": "sampling_floor", "reference_runs": len(args.reference), "starts": args.starts,
                      "groups": rows,
                      **{f"mean_w1_{k}": round(float(np.mean([r[f'w1_{k}'] for r in rows])), 5) for k in keys},
                      **{f"max_w1_{k}": round(float(np.max([r[f'w1_{k}'] for r in rows])), 5) for k in keys},
                      **{f"reference_halves_w1_{k}": round(halves[k], 5) for k in keys}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
