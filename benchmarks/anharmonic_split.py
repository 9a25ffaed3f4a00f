"""Where the anharmonic prior loses, and a split that keeps GFN2-xTB's harmonic motion: no
network, no training.

    .venv/bin/python benchmarks/anharmonic_split.py --fold 0 2 3
    .venv/bin/python benchmarks/anharmonic_split.py --fold 0          # ~1 min on one thread

`anharmonic_all` (`atomray.priors.anharmonic`) hands harmonic_all over from MMFF94 MD, so at short
lags it carries MMFF94's vibrations too, whose frequencies are off: on the rigid aromatics of
CV folds 0 and 4, where GFN2-xTB's modes are nearly exact, it is 2–4× worse than harmonic_all.
This script scores, on the same out-of-domain test windows as `jobs/cv.py`, a prior that takes
only MMFF94's *anharmonic* part:

    split(Δt) = harmonic_all(Δt) + exp(−Δt/τ) [mmff_md(Δt) − mmff_harmonic(Δt)],

mmff_harmonic the rotor motion plus the undamped harmonic vibration on MMFF94's own normal
modes about MMFF94's minimum (Hessian by central differences of MMFF94 forces, per window), so
that what MMFF94 MD adds beyond its own harmonic motion is added to GFN2-xTB's. One JSON line
per fold (S2T ×10⁻² Å², heavy atoms as scored): harmonic_all, mmff_md, anharmonic_all and
split_tau{τ} for τ in `--taus`. The floors read the prior paths the data path attaches
(`atomray.evaluate.eval_transform`, normal modes from tg80-mini's stored per-frame physics);
MMFF94's own modes are computed here, per window. The "2–4× worse" above came from the code
before the priors moved to the data path (the floors are the same: fold 0 still gives
anharmonic_all 2.3× harmonic_all).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

HESSIAN_STEP = 0.005  # Å


def mmff_harmonic_change(x: np.ndarray, v_int: np.ndarray, z: np.ndarray, lags: np.ndarray) -> np.ndarray | None:
    """(P, N, 3) the undamped harmonic change of the internal displacement on MMFF94's normal
    modes about its minimum nearest x, in x's frame (None when MMFF94 cannot type the state)."""
    from atomray.elements import atomic_masses
    from atomray.priors.anharmonic import mmff_acceleration
    from atomray.priors.minima import mmff_minimum
    from atomray.priors.modes import OMEGA_MIN, rigid_basis
    from atomray.priors.rigid import kabsch

    mass = atomic_masses(z).astype(np.float64)
    xm = mmff_minimum(x, z)
    acceleration = None if xm is None else mmff_acceleration(xm, z)
    if acceleration is None:
        return None
    n = len(z)
    hess = np.zeros((3 * n, 3 * n))  # Å/fs² u per Å: −∂(m a)/∂x
    for i in range(n):
        for a in range(3):
            p = xm.copy()
            p[i, a] += HESSIAN_STEP
            plus = (acceleration(p) * mass[:, None]).ravel()
            p[i, a] -= 2 * HESSIAN_STEP
            minus = (acceleration(p) * mass[:, None]).ravel()
            hess[:, 3 * i + a] = (minus - plus) / (2 * HESSIAN_STEP)
    w = np.repeat(1 / np.sqrt(mass), 3)
    k = 0.5 * (hess + hess.T) * w[:, None] * w[None]
    rigid = rigid_basis(xm, mass)
    proj = np.eye(3 * n) - rigid @ rigid.T
    lam, vecs = np.linalg.eigh(proj @ k @ proj)
    internal = np.square(rigid.T @ vecs).sum(0) < 0.5
    omega, modes = np.sqrt(np.clip(lam[internal], OMEGA_MIN ** 2, None)), vecs[:, internal]
    rot, cp, cq = (t.numpy() for t in kabsch(torch.from_numpy(xm), torch.from_numpy(x), torch.from_numpy(mass)))
    d0 = x - ((xm - cp) @ rot.T + cq)
    sq = np.repeat(np.sqrt(mass), 3)
    q0, qd = modes.T @ ((d0 @ rot).ravel() * sq), modes.T @ ((v_int @ rot).ravel() * sq)
    wt = omega[None] * lags[:, None]
    q = q0 * np.cos(wt) + qd * np.sin(wt) / omega
    rest = (d0 @ rot).ravel() - (modes @ q0) / sq
    return ((q @ modes.T) / sq + rest).reshape(len(lags), -1, 3) @ rot.T - d0


def fold_row(cfg, fold: int, taus: list[float]) -> dict:
    from probe_fold import fold_windows, scoring_windows

    from atomray.data.pipeline import to_torch
    from atomray.evaluate import score_mask
    from atomray.metrics import lag_errors
    from atomray.priors import rigid as physics
    from atomray.priors.compose import floor_predictions

    t0 = time.perf_counter()
    split, _, _, _, test = fold_windows(cfg, fold, 1)
    names = ["harmonic_all", "mmff_md", "anharmonic_all"]
    b = to_torch(scoring_windows(cfg, split.test, test, names, model=False))
    floors = floor_predictions(b, names)
    x0, v0, lags = b["x0"].double(), b["v0"].double(), b["lags_fs"].double()
    mass = b["mass"].double() * b["mask"].double()
    v_int = physics.internal_velocity(x0, v0, mass)
    c, u, rot = physics.rotor_motion(x0, v0, mass, lags, None)
    carry = physics.carry(x0, c, u, rot, lags)
    anharmonic_part = torch.zeros_like(floors["harmonic_all"])
    for i in range(len(x0)):
        atoms = np.flatnonzero(b["mask"][i].numpy())
        change = mmff_harmonic_change(x0[i, atoms].numpy(), v_int[i, atoms].numpy(), b["z"][i, atoms].long().numpy(),
                                      lags[i].numpy())
        if change is not None:
            harmonic_mmff = carry[i][:, atoms] + torch.from_numpy(change) @ rot[i].transpose(-1, -2)
            anharmonic_part[i][:, atoms] = floors["mmff_md"][i][:, atoms] - harmonic_mmff
    target, scored = b["target"].double(), score_mask(b).double()
    row = {"fold": fold, **{k: round(100 * float(lag_errors(v, target, scored).mean()), 4) for k, v in floors.items()}}
    for tau in taus:
        pred = floors["harmonic_all"] + torch.exp(-lags / tau)[..., None, None] * anharmonic_part
        row[f"split_tau{tau:g}"] = round(100 * float(lag_errors(pred, target, scored).mean()), 4)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "cv.yaml"))
    ap.add_argument("--fold", type=int, nargs="+", default=[0, 2, 3])
    ap.add_argument("--taus", default="100,200,400", help="hand-over times τ (fs), comma-separated")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from atomray.config import load_config
    from atomray.train.pretrain import resolve

    cfg = resolve(load_config(args.config, []))
    rows = []
    for fold in args.fold:
        rows.append(fold_row(cfg, fold, [float(t) for t in args.taus.split(",")]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
