"""How well a model's velocities at a lag match the trajectory's, on its own validation windows.

    python benchmarks/velocity_head.py --model /tmp/vel-runs/vel2-w01/best [--delta-fs 1]

Three ways to get each atom's velocity at every lag of the run's fixed validation windows
(`atomray.evaluate.validation_windows`, the windows its val S2T is scored on), against the
trajectory's own velocities there (`target_v`):

    head        the velocity head (`model.predict_velocity`), when the model has one
    difference  the fourth-order centred difference of the model's positions at Δt ± δ, Δt ± 2δ
                (what `atomray.rollout` uses without a head), δ = --delta-fs
    prior       the time derivative of the model's prior alone (`atomray.priors.compose.Prior.velocity`,
                the head's starting point; the harmonic prior with its learned τ)

For lags in (0, 50], (50, 200] and (200, 1000] fs: the velocity error, the mean over windows of
the mean squared error over real atoms (all atoms, hydrogens included: a rollout starts from
every atom's velocity) times (10 fs)², in 10⁻² Å² like S2T, and the kinetic-energy ratio
Σ m|v − u|² predicted ÷ the trajectory's (u the centre-of-mass velocity): below 1 the velocities
run cold, which is how a rollout freezes. The velocity a model predicts with no knowledge at
all is zero internal motion: the `zero` row, the rigid-body prior's velocity alone (its ratio
is the rotation's share). Prints one JSON line. About 1 min for 512 windows on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
BINS = ((0.0, 50.0), (50.0, 200.0), (200.0, 1000.0))
DIFF = ((-2.0, 1.0), (-1.0, -8.0), (1.0, 8.0), (2.0, -1.0))  # (offset in δ, weight over 12δ)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a checkpoint directory (or MLflow model URI)")
    parser.add_argument("--delta-fs", type=float, default=1.0, help="spacing of the difference lags (default 1 fs)")
    parser.add_argument("--windows", type=int, default=0, help="score only the first N validation windows (0: all)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from atomray import evaluate
    from atomray.checkpoint import load_model
    from atomray.data.pipeline import to_torch
    from atomray.elements import atomic_masses
    from atomray.model.registry import model_inputs
    from atomray.priors.rigid import prior_velocity

    torch.set_num_threads(2)
    model, cfg = load_model(args.model)
    model = model.double().eval()
    raw, transform = evaluate.validation_set(cfg)  # the windows its val S2T is scored on
    if args.windows:
        raw = {k: v[: args.windows] for k, v in raw.items()}

    def batch_of(windows, shift: float = 0.0) -> dict:
        w = dict(windows)
        w["lags_fs"] = windows["lags_fs"] + shift
        t = to_torch(evaluate.with_paths(w, transform))
        return {k: (v.double() if v.is_floating_point() else v) for k, v in t.items()}

    base = batch_of(raw)
    mask = base["mask"]
    mass = torch.from_numpy(atomic_masses(base["z"].numpy())).double() * mask
    with torch.no_grad():
        inputs = model_inputs(base)
        head = None
        if cfg.model.predict_velocity:
            _, head = model(**inputs, with_velocity=True)
        rot = model.prior(base["x0"], base["lags_fs"], inputs["paths"])[1]
        prior = model.prior.velocity(base["x0"], base["v0"], mass, base["lags_fs"], inputs["paths"], rot)
        diff = sum(w * model(**model_inputs(batch_of(raw, k * args.delta_fs))) for k, w in DIFF) / (12 * args.delta_fs)
        zero = None  # the rigid body's velocity alone
        if cfg.model.prior in ("rigid", "rotor", "harmonic"):
            zero = prior_velocity(base["x0"], base["v0"], mass, rot, "rigid" if cfg.model.prior == "rigid" else "rotor")
    truth = base["target_v"]
    lags = base["lags_fs"]
    m3 = mask[:, None, :, None].double()
    atoms = mask.sum(1).clamp_min(1).double()[:, None]

    def kinetic(v):  # (W, P) Σ m |v − u|²
        u = (mass[:, None, :, None] * v).sum(2, keepdim=True) / mass.sum(1)[:, None, None, None]
        return (mass[:, None, :, None] * (v - u) ** 2 * m3).sum((2, 3))

    out = {"model": args.model, "windows": int(len(truth)), "delta_fs": args.delta_fs, "unit": "1e-2 A^2 ((A/fs x 10 fs)^2)"}
    ke_true = kinetic(truth)
    for name, v in (("head", head), ("difference", diff), ("prior", prior), ("zero", zero)):
        if v is None:
            continue
        err = (((v - truth) * 10.0) ** 2 * m3).sum((2, 3)) / (3 * atoms)  # (W, P) Å²
        ratio = kinetic(v) / ke_true.clamp_min(1e-30)
        row = {}
        for lo, hi in BINS:
            sel = (lags > lo) & (lags <= hi)
            if sel.any():
                key = f"{lo:g}-{hi:g}fs"
                row[key] = {"error": round(float(err[sel].mean()) * 100, 4), "ke_ratio": round(float(ratio[sel].median()), 3)}
        out[name] = row
    print(json.dumps(out))


if __name__ == "__main__":
    main()
