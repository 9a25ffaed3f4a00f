"""How much of the rotor floor's error is predictable, per molecule, by a linear model.

For one molecule of a data set: at each lag, fit a ridge regression from the start state —
positions (Kabsch-aligned to the first frame by the masses) and internal velocities
v − u − ω × r in that frame — to the displacement the rotor floor misses, expressed in the
body frame. Fit on the first 80 % of the trajectory, score heavy atoms on the last 20 %.
A harmonic molecule's motion is exactly linear in (displacement, velocity), so this is what
a model that learned this molecule's vibrations could remove; what it removes out of domain
is a harder question (`benchmarks/probe_fold.py`).

    .venv/bin/python benchmarks/linear_response.py lib-2330 --lags-fs 25 100 200 400

Prints a line per lag (rotor floor S2T ×10⁻² Å², ridge S2T and ratio per ridge strength), then
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def kabsch(p: np.ndarray, q: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The rotation R (3, 3) minimising Σ w |p R − q|² for centred p, q (N, 3)."""
    u, _, vt = np.linalg.svd((p * w[:, None]).T @ q)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("molecule")
    ap.add_argument("--data", default=str(ROOT / "data" / "tg80-mini"))
    ap.add_argument("--lags-fs", type=float, nargs="+", default=[25.0, 100.0, 200.0, 400.0])
    ap.add_argument("--stride", type=int, default=3, help="frames between start states")
    ap.add_argument("--ridge", type=float, nargs="+", default=[0.01, 1.0, 10.0])
    args = ap.parse_args(argv)

    from atomray.data.dataset import load_trajectories
    from atomray.elements import atomic_masses
    from atomray.priors import rigid as physics

    trajectories = load_trajectories(args.data, [args.molecule]).get(args.molecule)
    if not trajectories:
        raise SystemExit(f"{args.data}: no molecule {args.molecule!r}")
    traj = max(trajectories, key=lambda t: t.n_frames)
    x, v, dt = traj.positions.astype(np.float64), traj.velocities.astype(np.float64), traj.dt_fs
    n_frames, n_atoms, _ = x.shape
    m = atomic_masses(traj.atomic_numbers)
    heavy = np.repeat(traj.atomic_numbers > 1, 3)
    ref = x[0] - (m[:, None] * x[0]).sum(0) / m.sum()
    rows = []
    for lag in args.lags_fs:
        k = round(lag / dt)
        if k < 1 or k >= n_frames // 2:
            raise SystemExit(f"lag {lag} fs: needs 1 ≤ lag/dt < {n_frames // 2} frames (dt = {dt} fs)")
        starts = np.arange(0, n_frames - k, args.stride)
        x0, v0 = torch.from_numpy(x[starts]), torch.from_numpy(v[starts])
        mass = torch.from_numpy(m).expand(len(starts), n_atoms)
        lags = torch.full((len(starts), 1), k * dt, dtype=torch.float64)
        c, u, rot = physics.rotor_motion(x0, v0, mass, lags)
        missed = x[starts + k] - physics.carry(x0, c, u, rot, lags)[:, 0].numpy()  # (S, N, 3) lab frame
        omega = physics.rigid_motion(x0, v0, mass)[2].numpy()
        feats, targets = [], []
        for i, s in enumerate(starts):
            r = x[s] - c[i].numpy()
            internal = v[s] - u[i].numpy() - np.cross(omega[i], r)
            q = kabsch(r, ref, m)
            feats.append(np.concatenate([(r @ q).ravel(), 100.0 * (internal @ q).ravel()]))
            targets.append((missed[i] @ rot[i, 0].numpy() @ q).ravel())  # body frame at t0, then aligned
        f, y = np.asarray(feats), np.asarray(targets)
        n_fit = int(0.8 * len(f))
        f = np.c_[f - f[:n_fit].mean(0), np.ones(len(f))]
        floor = float((y[n_fit:, heavy] ** 2).mean())
        row = {"lag_fs": lag, "rotor_s2t": 100 * floor}
        for lam in args.ridge:
            a = f[:n_fit]
            w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y[:n_fit])
            err = float(((y[n_fit:, heavy] - (f[n_fit:] @ w)[:, heavy]) ** 2).mean())
            row[f"ridge_{lam:g}_s2t"], row[f"ridge_{lam:g}_ratio"] = 100 * err, err / floor
        rows.append(row)
        print("  ".join(f"{key} {val:.4g}" for key, val in row.items()), flush=True)
    result = {"molecule": args.molecule, "frames": n_frames, "dt_fs": dt, "lags": rows}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
