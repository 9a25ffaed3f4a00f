"""Why a rollout's bond lengths miss: a shifted mean, or a distribution too narrow or too wide?

    python benchmarks/rollout_bond_widths.py --rollouts <jobs/rollout.py --out dir> --data data/tg80-mini

Reads every `<molecule>_<start>.extxyz` a `jobs/rollout.py` run wrote (rollouts of data set
molecules) and the molecule's own trajectory in `--data` (the reference `jobs/rollout.py` scored
against, restricted to the same atoms). Per molecule, for X–H bonds and for bonds between heavy
atoms apart: the Wasserstein-1 distance of each bond's length (Å, averaged over bonds, as
`atomray.structure.structure_distances` reports it), the mean |shift| of each bond's mean, the
median ratio of the rollout's standard deviation to the reference's, and W1 again with the
rollout's distribution moved onto the reference's mean (what the width alone costs). Prints
one JSON line per molecule. Seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bond_report(rollout: np.ndarray, reference: np.ndarray, z: np.ndarray, start: np.ndarray) -> dict:
    """{group: figures} for X–H and heavy–heavy bonds (bonds perceived at `start`)."""
    from atomray import structure

    top = structure.bonds_from_geometry(z, start)
    a, b = structure.bond_lengths(rollout, top), structure.bond_lengths(reference, top)  # (T, n_b)
    w1 = np.array([structure._w1(a[:, [k]], b[:, [k]], False) for k in range(a.shape[1])])
    centred = a - a.mean(0) + b.mean(0)
    width_only = np.array([structure._w1(centred[:, [k]], b[:, [k]], False) for k in range(a.shape[1])])
    ratio = a.std(0) / b.std(0)
    hydrogen = np.array([min(z[i], z[j]) == 1 for i, j in top.bonds], bool)
    out = {}
    for group, sel in (("x_h", hydrogen), ("heavy", ~hydrogen)):
        if sel.any():
            out[group] = {"bonds": int(sel.sum()), "w1_a": round(float(w1[sel].mean()), 5),
                          "mean_shift_a": round(float(np.abs(a.mean(0) - b.mean(0))[sel].mean()), 5),
                          "width_ratio_median": round(float(np.median(ratio[sel])), 3),
                          "w1_width_only_a": round(float(width_only[sel].mean()), 5)}
    out["all"] = {"bonds": int(len(w1)), "w1_a": round(float(w1.mean()), 5)}
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", required=True, help="a jobs/rollout.py --out directory")
    parser.add_argument("--data", required=True, help="the data set the rollouts started from")
    args = parser.parse_args(argv)

    import dataclasses

    import ase.io

    from atomray.config import RunConfig
    from atomray.data.pipeline import read_atomic_numbers
    from atomray.rollout_check import dataset_reference

    files = sorted(Path(args.rollouts).glob("*_*.extxyz"))
    if not files:
        parser.error(f"--rollouts {args.rollouts}: no <molecule>_<start>.extxyz files there")
    rows = []
    for molecule in dict.fromkeys(p.stem.rsplit("_", 1)[0] for p in files):
        runs = [ase.io.read(p, ":") for p in files if p.stem.rsplit("_", 1)[0] == molecule]
        z = runs[0][0].numbers
        rollout = np.concatenate([np.array([f.positions for f in run[1:]]) for run in runs])
        zr = np.asarray(read_atomic_numbers(args.data, molecule))
        atoms = "all" if len(zr) == len(z) else "heavy"  # a heavy-atom model rolls out its heavy atoms only
        if not np.array_equal(zr if atoms == "all" else zr[zr > 1], z):
            raise SystemExit(f"{args.data}: molecule {molecule!r}: its atoms {zr.tolist()} do not match the rollout's "
                             f"{z.tolist()}")
        cfg = RunConfig()
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, context_atoms=atoms))
        reference = dataset_reference(args.data, molecule, cfg).positions
        rows.append({"molecule": molecule, "rollouts": len(runs), "frames": len(rollout),
                     **bond_report(rollout, reference, z, runs[0][0].positions)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
