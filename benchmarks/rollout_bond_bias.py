"""Where a rollout's bond lengths go wrong: after one step from the reference, or over many?

    python benchmarks/rollout_bond_bias.py --model <checkpoint> [--starts 100 --steps 1 2 4 8 --step-fs 50 --lags 1]
        [--molecules M ...] [--prior-only] [--first-order-bonds] [--match-torsions R] [--position-noise HEAVY H]
        [--rotor-radii [--rotor-heights]]
    python benchmarks/rollout_bond_bias.py --model <checkpoint> --smiles "CC(=O)NC" --reference refs/reference-<hash>.npz

From `--starts` frames spread evenly over each test molecule's reference trajectory (the
model's split, as `jobs/rollout.py --test-molecules`; or `--molecules`, e.g. molecules the model
trained on, to tell a bias on new chemistry from one on any molecule; or `--smiles` with the
fresh reference MD a `jobs/rollout.py --smiles ... --reference-cache` run kept, `--reference`), rolls every start forward `max(--steps)`
strides as `jobs/rollout.py --momentum --thermostat csvr --tau-fs 20` does, and compares the
states after k strides with the reference frames k strides after each start (the same
start times, so the reference's spread over the starts is the thermal spread). Per molecule
and k, for bonds between heavy atoms and X–H bonds apart (bonds perceived at the first
start): the mean of each bond's signed shift (rollout − reference, Å; the mean of |that| over
the bonds), the median ratio of each bond's standard deviation over the starts (rollout /
reference), and the Wasserstein-1 distance of the bond lengths (Å, averaged over bonds, as
`atomray.structure.structure_distances` reports); the same for every bond angle (degrees); for
the heavy-atom proper dihedrals, how much nearer anti the rolled chains are (`mean_extension_deg`)
and their W1; and the error state by state (`residual`: rms displacement per axis after superposing each state
on its reference, heavy atoms and hydrogens, the hydrogens along and across their bond). A
shift already there at k = 1 is the
network's own bias on the molecule, which no rollout control changes; a width that falls as k
grows is lost by chaining the steps. Prints one JSON line per molecule and k. About 1 min on
2 cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bias_report(rolled: np.ndarray, reference: np.ndarray, z: np.ndarray, start: np.ndarray) -> dict:
    """{group: figures} for heavy–heavy and X–H bonds of states `rolled` against `reference`
    (S, n, 3), paired start by start (bonds perceived at `start`); for the heavy-atom proper
    dihedrals, `mean_extension_deg`: the mean of |φ| rolled less |φ| of the reference (> 0: the
    rolled chains are nearer anti, 180°) and their W1."""
    from atomray import structure

    top = structure.bonds_from_geometry(z, start)
    keep = np.isfinite(rolled).all((1, 2))
    a, b = structure.bond_lengths(rolled[keep], top), structure.bond_lengths(reference[keep], top)  # (S, n_b)
    shift = (a - b).mean(0)
    ratio = a.std(0) / b.std(0)
    w1 = np.array([structure._w1(a[:, [k]], b[:, [k]], False) for k in range(a.shape[1])])
    hydrogen = np.array([min(z[i], z[j]) == 1 for i, j in top.bonds], bool)
    out: dict = {"finite": int(keep.sum())}
    if len(top.angles):  # angles (degrees): the same figures over every angle
        a_ang, b_ang = structure.bond_angles(rolled[keep], top), structure.bond_angles(reference[keep], top)
        w1_ang = np.array([structure._w1(a_ang[:, [k]], b_ang[:, [k]], False) for k in range(a_ang.shape[1])])
        out["angles"] = {"angles": int(a_ang.shape[1]),
                         "mean_abs_shift_deg": round(float(np.abs((a_ang - b_ang).mean(0)).mean()), 3),
                         "width_ratio_median": round(float(np.median(a_ang.std(0) / b_ang.std(0))), 3),
                         "w1_deg": round(float(w1_ang.mean()), 3)}
    heavy_dihedrals = np.all(z[top.dihedrals] > 1, axis=1) if len(top.dihedrals) else np.zeros(0, bool)
    if heavy_dihedrals.any():  # heavy-atom proper dihedrals (degrees): a chain's conformers
        a_dih = structure.dihedral_angles(rolled[keep], top)[:, heavy_dihedrals]
        b_dih = structure.dihedral_angles(reference[keep], top)[:, heavy_dihedrals]
        out["heavy_dihedrals"] = {"dihedrals": int(heavy_dihedrals.sum()),
                                  "mean_extension_deg": round(float((np.abs(a_dih) - np.abs(b_dih)).mean()), 3),
                                  "w1_deg": round(structure._w1(a_dih, b_dih, True), 3)}
    for group, sel in (("heavy", ~hydrogen), ("x_h", hydrogen)):
        if sel.any():
            out[group] = {"bonds": int(sel.sum()), "mean_abs_shift_a": round(float(np.abs(shift[sel]).mean()), 5),
                          "largest_shift_a": round(float(shift[sel][np.argmax(np.abs(shift[sel]))]), 5),
                          "width_ratio_median": round(float(np.median(ratio[sel])), 3),
                          "w1_a": round(float(w1[sel].mean()), 5)}
    out["residual"] = residual_report(rolled[keep], reference[keep], z, top)
    return out


def shortest_bond_ratio(rolled: np.ndarray, starts: np.ndarray, z: np.ndarray) -> float:
    """The shortest bond of any rolled state (S, n, 3) over its length in the state's start
    (S, n, 3) (bonds perceived at the first start): how near a step came to a compressed bond."""
    from atomray import structure

    top = structure.bonds_from_geometry(z, starts[0])
    return round(float((structure.bond_lengths(rolled, top) / structure.bond_lengths(starts, top)).min()), 4)


def residual_report(rolled: np.ndarray, reference: np.ndarray, z: np.ndarray, top) -> dict:
    """The rollout's error state by state: each rolled state (S, n, 3) superposed on its
    reference state (mass-weighted Kabsch, so the rigid-body part is gone), then the rms of the
    displacement per axis (Å) of heavy atoms and of hydrogens, the hydrogens' split along their
    X–H bond (1 axis) and across it (per axis of the 2). After one stride from the reference this
    is the spread about the model's prediction that a sample of the next state would have and a
    conditional-mean prediction leaves out: the width the rollout's position noise stands in for."""
    from atomray.elements import atomic_masses
    from atomray.priors.rigid import kabsch_np

    m = np.broadcast_to(atomic_masses(z).astype(np.float64), rolled.shape[:2])
    rot, cp, cq = kabsch_np(rolled, reference, m)
    d = (rolled - cp) @ np.swapaxes(rot, -1, -2) + cq - reference  # (S, n, 3)
    h = z == 1
    out = {"heavy_rms_a_per_axis": round(float(np.sqrt((d[:, ~h] ** 2).mean())), 5)}
    partner = {}
    for i, j in top.bonds:
        if z[i] == 1 and z[j] > 1:
            partner[i] = j
        elif z[j] == 1 and z[i] > 1:
            partner[j] = i
    if partner:
        hs, xs = np.array(list(partner)), np.array(list(partner.values()))
        axis = reference[:, hs] - reference[:, xs]
        axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
        along = (d[:, hs] * axis).sum(-1)  # (S, n_H)
        across = d[:, hs] - along[..., None] * axis
        out.update({"h_rms_a_per_axis": round(float(np.sqrt((d[:, hs] ** 2).mean())), 5),
                    "h_along_bond_rms_a": round(float(np.sqrt((along**2).mean())), 5),
                    "h_across_bond_rms_a_per_axis": round(float(np.sqrt((across**2).sum(-1).mean() / 2)), 5)})
    return out


def fresh_reference(smiles: str, path: str) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """(z, positions (T, n, 3) Å, dt_fs, velocities Å/fs) of a fresh reference MD that
    `jobs/rollout.py --smiles SMILES --reference-cache` kept; z the atoms of the SMILES as the
    job embeds it (`atomray.predict.state_from_smiles`)."""
    from atomray.predict import state_from_smiles

    with np.load(path) as ref:
        positions, velocities, dt = ref["positions"].astype(np.float64), ref["velocities"].astype(np.float64), float(ref["dt_fs"])
    z = state_from_smiles(smiles, 300.0, 0).atomic_numbers
    if positions.shape[1] != len(z):
        raise SystemExit(f"{path}: {positions.shape[1]} atoms, but {smiles!r} has {len(z)}: not its reference")
    return z, positions, dt, velocities


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a checkpoint directory (or MLflow model URI)")
    parser.add_argument("--molecules", nargs="+", default=None,
                        help="data set molecules (default: the test molecules of the model's split)")
    parser.add_argument("--starts", type=int, default=100, help="start frames per molecule (default 100)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="strides to compare after")
    parser.add_argument("--step-fs", type=float, default=50.0)
    parser.add_argument("--lags", type=int, default=1, help="lags per step (default 1; 0: the model's own)")
    parser.add_argument("--tau-fs", type=float, default=20.0, help="CSVR relaxation time (default 20 fs)")
    parser.add_argument("--prior-only", action="store_true", help="the prior with a zero correction")
    parser.add_argument("--first-order-bonds", action="store_true",
                        help="the harmonic prior with bond lengths held to first order (atomray.priors.modes.FIRST_ORDER_BONDS)")
    parser.add_argument("--match-torsions", type=float, default=math.inf, metavar="R",
                        help="the rollout control (atomray.rollout.Control.match_torsions_a; default never)")
    parser.add_argument("--smiles", default=None, help="a molecule outside the data set (with --reference)")
    parser.add_argument("--reference", default=None,
                        help="its fresh reference MD: a reference-<hash>.npz of jobs/rollout.py --reference-cache")
    parser.add_argument("--rotor-radii", action="store_true", help="the rollout control (atomray.rollout.Control)")
    parser.add_argument("--rotor-heights", action="store_true", help="the rollout control (with --rotor-radii)")
    parser.add_argument("--position-noise", type=float, nargs=2, default=(0.0, 0.0), metavar=("HEAVY", "H"),
                        help="Å per axis on each step's predicted positions (`atomray.rollout.Control`)")
    args = parser.parse_args(argv)
    if args.starts < 2 or min(args.steps) < 1:
        parser.error("--starts must be >= 2 and every --steps >= 1")
    if (args.smiles is None) != (args.reference is None):
        parser.error("--smiles and --reference go together")

    import torch

    from atomray import tracking
    from atomray.config import TrackingConfig
    from atomray.data.dataset import read_molecules
    from atomray.data.splits import run_split
    from atomray.predict import InitialState
    from atomray.rollout import Control, rollout, state_from_dataset
    from atomray.rollout_check import dataset_reference

    torch.set_num_threads(2)
    if args.first_order_bonds:
        from atomray.priors import modes

        modes.FIRST_ORDER_BONDS = True
    model, cfg, state = tracking.load_model_uri(tracking.resolve_tracking_uri(TrackingConfig()), args.model,
                                                prior_only=args.prior_only)
    root = cfg.data.path
    table = read_molecules(root)
    n_frames = dict(zip(table.column("molecule_id").to_pylist(), table.column("n_frames").to_pylist()))
    dt = dict(zip(table.column("molecule_id").to_pylist(), table.column("dt_fs").to_pylist()))
    control = Control(momentum=True, thermostat="csvr", tau_fs=args.tau_fs, position_noise_a=tuple(args.position_noise),
                      rotor_radii=args.rotor_radii, rotor_heights=args.rotor_heights,
                      match_torsions_a=args.match_torsions)
    k_max = max(args.steps)
    rows = []
    fresh = None
    if args.smiles:
        fresh = fresh_reference(args.smiles, args.reference)
        root, n_frames, dt = args.reference, {args.smiles: len(fresh[1])}, {args.smiles: fresh[2]}
    molecules = [args.smiles] if args.smiles else (args.molecules or run_split(cfg.data).test)
    unknown = [m for m in molecules if m not in n_frames]
    if unknown:
        raise SystemExit(f"{root}: no molecule {', '.join(map(repr, unknown))} in molecules.parquet")
    for m in molecules:
        stride = int(round(args.step_fs / dt[m]))
        last = n_frames[m] - 1 - k_max * stride
        if last < args.starts:
            raise SystemExit(f"{root}: molecule {m!r} has {n_frames[m]} frames, too few for {args.starts} starts "
                             f"and {k_max} strides of {args.step_fs:g} fs")
        frames = np.linspace(0, last, args.starts).astype(int)
        if fresh is not None:
            z, positions, _, velocities = fresh
            states = [InitialState(f"{m}@{f}", z, positions[f], velocities[f]) for f in frames]
            reference = positions
        else:
            states = [state_from_dataset(root, m, int(f)) for f in frames]
            reference = dataset_reference(root, m, cfg).positions  # the model's atoms, every frame
        traj = rollout(model, cfg, states, k_max * args.step_fs, args.step_fs, elements=state.elements,
                       control=control, lags=args.lags)
        p = args.lags or cfg.data.num_lags
        z = traj.atomic_numbers[0]
        for k in sorted(set(args.steps)):
            rolled = np.stack([pos[k * p] for pos in traj.positions])  # the state after k strides
            row = {"molecule": m, "trained_on": m in run_split(cfg.data).train, "steps": k, "after_fs": k * args.step_fs,
                   "prior_only": args.prior_only, "first_order_bonds": args.first_order_bonds,
                   "match_torsions_a": args.match_torsions,
                   "rotor_circles": cfg.model.rotor_circles, "rotor_radii": args.rotor_radii, "rotor_heights": args.rotor_heights,
                   "position_noise_a": list(args.position_noise), "starts": args.starts,
                   "shortest_bond_ratio": shortest_bond_ratio(rolled, reference[frames], z),
                   **bias_report(rolled, reference[frames + k * stride], z, reference[0])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
