"""Why a rollout's bond lengths and angles miss: a shifted mean, or a distribution too narrow or too wide?

    python benchmarks/rollout_bond_widths.py --rollouts <jobs/rollout.py --out dir> --data data/tg80-mini
    python benchmarks/rollout_bond_widths.py --rollouts <--smiles run's --out dir> --reference refs/reference-<hash>.npz

Reads every `<molecule>_<start>.extxyz` a `jobs/rollout.py` run wrote and the reference it scored
against: the molecule's own trajectory in `--data` (rollouts of data set molecules), or for a
`--smiles` / `--structure` run the fresh reference MD its `--reference-cache` kept (one molecule
per run; restricted to the same atoms). Per molecule, for X–H bonds and for bonds between heavy
atoms apart, and for angles with a hydrogen at an end and angles of heavy atoms only: the
Wasserstein-1 distance of each coordinate (Å or degrees, averaged over them, as
`atomray.structure.structure_distances` reports it), the mean |shift| of each one's mean, the
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


def _figures(a: np.ndarray, b: np.ndarray, sel: np.ndarray, unit: str, digits: int) -> dict:
    """W1, mean |shift|, median width ratio and width-only W1 of the columns `sel` of a against b (T, n)."""
    from atomray import structure

    a, b = a[:, sel], b[:, sel]
    w1 = np.array([structure._w1(a[:, [k]], b[:, [k]], False) for k in range(a.shape[1])])
    centred = a - a.mean(0) + b.mean(0)
    width_only = np.array([structure._w1(centred[:, [k]], b[:, [k]], False) for k in range(a.shape[1])])
    return {"count": int(sel.sum()), f"w1_{unit}": round(float(w1.mean()), digits),
            f"mean_shift_{unit}": round(float(np.abs(a.mean(0) - b.mean(0)).mean()), digits),
            "width_ratio_median": round(float(np.median(a.std(0) / b.std(0))), 3),
            f"w1_width_only_{unit}": round(float(width_only.mean()), digits)}


def bond_report(rollout: np.ndarray, reference: np.ndarray, z: np.ndarray, start: np.ndarray) -> dict:
    """{group: figures} for X–H and heavy–heavy bonds and for angles with and without a
    hydrogen at an end (bonds perceived at `start`)."""
    from atomray import structure

    top = structure.bonds_from_geometry(z, start)
    a, b = structure.bond_lengths(rollout, top), structure.bond_lengths(reference, top)  # (T, n_b)
    hydrogen = np.array([min(z[i], z[j]) == 1 for i, j in top.bonds], bool)
    out = {}
    for group, sel in (("x_h", hydrogen), ("heavy", ~hydrogen)):
        if sel.any():
            out[group] = _figures(a, b, sel, "a", 5)
    out["all"] = {"count": int(len(hydrogen)), "w1_a": round(structure._w1(a, b, False), 5)}
    a, b = structure.bond_angles(rollout, top), structure.bond_angles(reference, top)  # (T, n_a) degrees
    with_h = np.array([min(z[i], z[k]) == 1 for i, _, k in top.angles], bool)
    for group, sel in (("angles_h", with_h), ("angles_heavy", ~with_h)):
        if sel.any():
            out[group] = _figures(a, b, sel, "deg", 3)
    out["angles_all"] = {"count": int(len(with_h)), "w1_deg": round(structure._w1(a, b, False), 3)}
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", required=True, help="a jobs/rollout.py --out directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="the data set the rollouts started from")
    source.add_argument("--reference", help="the fresh reference MD of a --smiles / --structure run: the "
                                            "reference-<hash>.npz its --reference-cache kept (one molecule)")
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
    molecules = list(dict.fromkeys(p.stem.rsplit("_", 1)[0] for p in files))
    if args.reference and len(molecules) != 1:
        parser.error(f"--reference holds one molecule's MD; --rollouts {args.rollouts} has {len(molecules)}: {molecules}")
    for molecule in molecules:
        runs = [ase.io.read(p, ":") for p in files if p.stem.rsplit("_", 1)[0] == molecule]
        z = runs[0][0].numbers
        rollout = np.concatenate([np.array([f.positions for f in run[1:]]) for run in runs])
        if args.reference:
            with np.load(args.reference) as f:
                reference = f["positions"]
            if reference.ndim != 3 or reference.shape[1:] != (len(z), 3):
                raise SystemExit(f"--reference {args.reference}: positions of shape {reference.shape}, expected "
                                 f"(T, {len(z)}, 3) for the rollout's {len(z)} atoms")
            rows.append({"molecule": molecule, "rollouts": len(runs), "frames": len(rollout),
                         **bond_report(rollout, reference, z, runs[0][0].positions)})
            print(json.dumps(rows[-1]), flush=True)
            continue
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
