"""Does a proton move between two acceptors, in the reference and in the rollouts?

    python benchmarks/proton_transfers.py --rollouts <jobs/rollout.py --out dir> [--reference refs/reference-<hash>.npz ...]

Reads every `<molecule>_<start>.extxyz` a `jobs/rollout.py` run wrote (their atoms name the
molecule) and, with `--reference`, the fresh reference MD its `--reference-cache` kept (same
atoms, same order; several files, e.g. the runs of `jobs/rollout.py --reference-runs K`, are
judged joined, each with its own transfer line). The proton is each hydrogen bonded to an O or N at the first frame (within
1.2 Å) that has a second O or N within 2.2 Å (an intramolecular hydrogen bond,
`atomray.structure.hydrogen_bond_sites`); per trajectory,
frame by frame, which of its two acceptors is nearer: a transfer is a change of side. Prints
one JSON line per trajectory (`source`, `hydrogen`, `acceptors`, `frames`, `transfers`,
`fraction_on_second`: of the frames, on the second acceptor, the farther one at the first
trajectory's first frame; `o_h_a`: mean distance to the nearer acceptor, `h_o_a`: to the farther).

With `--reference`, and where the two tautomers of the (first) site are the same molecule (their
bond graphs isomorphic, elements kept: the enol of acetylacetone is; RDKit finds the map), one
more line, `"source": "w1"`: the W1 distances of bond lengths, angles and dihedrals between the
rollouts (pooled) and the reference, each with the reference's two halves beside it, three ways:
`raw` (what `jobs/rollout.py` judges: bond k against bond k, so a proton on the other oxygen
is a long O–H and the figure mixes geometry with the tautomers' population), `mirrored` (the
reference joined with its image under that map: the population the symmetry makes exact, one
half each) and `per_tautomer` (every frame with the proton on the acceptor relabelled through
the map, in rollouts and reference alike: each tautomer's own geometry, whatever the
population). A 100-ps reference with a few transfers pins the population poorly, and that alone
can put `raw` over 0.01 Å (docs/results.md, "Proton hops"). Seconds.
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


def tautomer_map(z: np.ndarray, x: np.ndarray, h: int, donor: int, acceptor: int) -> np.ndarray | None:
    """m (N,) with frame[m] the frame x' of the other tautomer (proton on `acceptor`) relabelled as
    the first (proton on `donor`, x's bonds as `atomray.structure.bonds_from_geometry` perceives
    them): atom i of the first tautomer is atom m[i] of the second. None where the two bond graphs
    are not isomorphic (with elements), so the tautomers differ."""
    from rdkit import Chem

    from atomray.proton_hops import move_bond
    from atomray.structure import bonds_from_geometry

    graph = bonds_from_geometry(z, x).bonds

    def mol(bonds: np.ndarray):
        m = Chem.RWMol()
        for a in z:
            atom = Chem.Atom(int(a))
            atom.SetNoImplicit(True)
            m.AddAtom(atom)
        for i, j in bonds:
            m.AddBond(int(i), int(j), Chem.BondType.SINGLE)
        m.UpdatePropertyCache(strict=False)
        Chem.FastFindRings(m)
        return m

    first, second = mol(graph), mol(move_bond(graph, h, donor, acceptor))
    match = second.GetSubstructMatch(first)
    return np.asarray(match, np.int64) if len(match) == len(z) else None


def _w1(a: np.ndarray, b: np.ndarray, z: np.ndarray, bonds: np.ndarray) -> list[float]:
    from atomray.structure import structure_distances

    d = structure_distances(a, b, z, bonds)
    return [round(d["bond_length_a"], 5), round(d["bond_angle_deg"], 3), round(d["dihedral_deg"], 3)]


def tautomer_w1(rollouts: list[np.ndarray], reference: np.ndarray, z: np.ndarray, site: tuple[int, int, int]
                ) -> dict | None:
    """The `"source": "w1"` line (module docstring): [bonds Å, angles °, dihedrals °] raw,
    mirrored and per tautomer, each for the rollouts and for the reference's halves; None where
    the tautomers differ. `site` is a `hydrogen_bond_sites` entry of the reference's first frame
    (the proton on its donor there)."""
    from atomray.structure import bonds_from_geometry

    h, donor, acceptor = site
    m = tautomer_map(z, reference[0], h, donor, acceptor)
    if m is None:
        return None
    bonds = bonds_from_geometry(z, reference[0]).bonds

    def canonical(x: np.ndarray) -> np.ndarray:
        x = x.copy()
        other = np.linalg.norm(x[:, h] - x[:, acceptor], axis=-1) < np.linalg.norm(x[:, h] - x[:, donor], axis=-1)
        x[other] = x[other][:, m]
        return x

    pooled = np.concatenate([r[1:] for r in rollouts])
    half = len(reference) // 2
    a, b = reference[:half], reference[half:]
    mirror = lambda x: np.concatenate([x, x[:, m]])  # noqa: E731
    return {"source": "w1", "hydrogen": h, "acceptors": [donor, acceptor],
            "columns": ["bonds_a", "angles_deg", "dihedrals_deg"],
            "raw": _w1(pooled, reference, z, bonds), "raw_reference_halves": _w1(a, b, z, bonds),
            "mirrored": _w1(pooled, mirror(reference), z, bonds),
            "mirrored_reference_halves": _w1(mirror(a), mirror(b), z, bonds),
            "per_tautomer": _w1(canonical(pooled), canonical(reference), z, bonds),
            "per_tautomer_reference_halves": _w1(canonical(a), canonical(b), z, bonds)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", required=True, help="a jobs/rollout.py --out directory")
    parser.add_argument("--reference", nargs="+", default=None,
                        help="its cached fresh reference (reference-<hash>.npz), or several runs (joined)")
    args = parser.parse_args(argv)

    from ase.io import read

    files = sorted(Path(args.rollouts).glob("*_*.extxyz"))
    if not files:
        parser.error(f"--rollouts {args.rollouts}: no <molecule>_<start>.extxyz files there")
    runs = {f.name: np.stack([a.positions for a in read(f, index=":")]) for f in files}
    z = read(files[0], index=0).numbers
    references = {}
    for path in args.reference or []:
        with np.load(path) as ref:
            positions = ref["positions"]
        if positions.shape[1] != len(z):
            parser.error(f"--reference {path}: {positions.shape[1]} atoms, the rollouts {len(z)}")
        references[Path(path).name] = positions
    runs = {**references, **runs}
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
    if references:
        row = tautomer_w1([x for name, x in runs.items() if name not in references],
                          np.concatenate(list(references.values())), z, bonds[0])
        if row is not None:
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
