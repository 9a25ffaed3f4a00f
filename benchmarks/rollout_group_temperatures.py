"""Where a rollout puts its kinetic energy: the hydrogens' and the heavy atoms' temperatures.

    python benchmarks/rollout_group_temperatures.py --model <checkpoint> [--step-fs 50 --lags 1 --tau-fs 20]
        [--thermostat-groups molecule|hydrogens] [--prior-only] [--total-ps 5]

Rolls out 5 starts of each test molecule of the model's split (as `jobs/rollout.py
--test-molecules --starts 5 --momentum --thermostat csvr` does) and reports, per molecule, the
temperature of the hydrogens and of the heavy atoms apart: from each atom's velocity relative to
the molecule's rigid-body motion (`atomray.priors.rigid.internal_velocity`), each group given its
share of the 3N − 6 internal degrees of freedom, averaged over the steps and rollouts. Three
sets of velocities: the model's own (before the control), the ones each step starts from (after
the control), and the molecule's reference trajectory (100 frames evenly spaced). In
equilibrium both groups of the reference sit at the same temperature; a model whose heavy atoms
run cold and hydrogens hot under one CSVR group has lost equipartition, which a thermostat that
scales every atom by one factor cannot restore (`--thermostat-groups hydrogens` couples the
two apart). Prints one JSON line per molecule. About 1 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def group_temperatures(x: np.ndarray, v: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """(T of the hydrogens, T of the heavy atoms), K, of states x, v (T, n, 3), averaged over T."""
    import torch

    from atomray.elements import atomic_masses
    from atomray.priors.rigid import internal_velocity
    from atomray.rollout import KB

    keep = np.isfinite(x).all((1, 2)) & np.isfinite(v).all((1, 2))
    x, v = x[keep], v[keep]
    mass = np.broadcast_to(atomic_masses(z).astype(np.float64), x.shape[:2]).copy()
    w = internal_velocity(torch.from_numpy(x), torch.from_numpy(v), torch.from_numpy(mass)).numpy()
    per_atom = (mass[..., None] * w * w).sum(-1).mean(0)  # (n,) 2 × kinetic energy
    hydrogen = z == 1
    share = (3 * len(z) - 6) / (3 * len(z))  # internal degrees of freedom per coordinate

    def temperature(sel):
        return float(per_atom[sel].sum() / (3 * sel.sum() * share * KB)) if sel.any() else float("nan")

    return temperature(hydrogen), temperature(~hydrogen)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a checkpoint directory (or MLflow model URI)")
    parser.add_argument("--step-fs", type=float, default=50.0)
    parser.add_argument("--lags", type=int, default=1, help="lags per step (default 1; 0: the model's own)")
    parser.add_argument("--tau-fs", type=float, default=20.0, help="CSVR relaxation time (default 20 fs)")
    parser.add_argument("--thermostat-groups", choices=("molecule", "hydrogens"), default="molecule")
    parser.add_argument("--total-ps", type=float, default=5.0)
    parser.add_argument("--prior-only", action="store_true", help="the prior with a zero correction")
    args = parser.parse_args(argv)

    from atomray import tracking
    from atomray.config import TrackingConfig
    from atomray.data.dataset import read_molecules
    from atomray.data.splits import run_split
    from atomray.rollout import Control, rollout, state_from_dataset

    model, cfg, state = tracking.load_model_uri(tracking.resolve_tracking_uri(TrackingConfig()), args.model,
                                                prior_only=args.prior_only)
    root = cfg.data.path
    table = read_molecules(root)
    n_frames = dict(zip(table.column("molecule_id").to_pylist(), table.column("n_frames").to_pylist()))
    test = run_split(cfg.data).test
    states, molecule_of = [], []
    for m in test:
        for frame in np.linspace(0, n_frames[m] - 1, 6)[:-1].astype(int):
            states.append(state_from_dataset(root, m, int(frame)))
            molecule_of.append(m)
    control = Control(momentum=True, thermostat="csvr", tau_fs=args.tau_fs, groups=args.thermostat_groups)
    traj = rollout(model, cfg, states, 1000.0 * args.total_ps, args.step_fs, elements=state.elements,
                   control=control, lags=args.lags)
    p = args.lags or cfg.data.num_lags
    rows = []
    for m in test:
        idx = [i for i, name in enumerate(molecule_of) if name == m]
        z = traj.atomic_numbers[idx[0]]
        own = np.mean([group_temperatures(traj.positions[i][p::p], traj.model_velocities[i], z) for i in idx], 0)
        after = np.mean([group_temperatures(traj.positions[i][::p], traj.step_velocities[i], z) for i in idx], 0)
        ref = [state_from_dataset(root, m, int(f)) for f in np.linspace(0, n_frames[m] - 1, 100).astype(int)]
        reference = group_temperatures(np.stack([s.positions for s in ref]), np.stack([s.velocities for s in ref]),
                                       ref[0].atomic_numbers)
        row = {"molecule": m, "thermostat_groups": args.thermostat_groups, "prior_only": args.prior_only,
               "step_fs": args.step_fs, "lags": p,
               "model_own_k": {"hydrogens": round(own[0], 1), "heavy": round(own[1], 1)},
               "after_control_k": {"hydrogens": round(after[0], 1), "heavy": round(after[1], 1)},
               "reference_k": {"hydrogens": round(reference[0], 1), "heavy": round(reference[1], 1)}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
