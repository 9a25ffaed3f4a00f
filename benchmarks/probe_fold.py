"""Controlled experiments on one CV fold, in one process, no Ray (seconds to start).

Trains a model of the given config for `--steps` steps on a fixed pool of the fold's training
windows (first 80 % of each training trajectory, as `jobs/cv.py`), then scores the fold's
out-of-domain test windows — the same windows `jobs/cv.py` scores — beside the physics floors,
overall and per ΔT decade. One change at a time, identical windows for every run:

    .venv/bin/python benchmarks/probe_fold.py --fold 2 --steps 320                      # cv.yaml as is
    .venv/bin/python benchmarks/probe_fold.py --fold 2 --steps 320 model.name=egno
    .venv/bin/python benchmarks/probe_fold.py --fold 2 --steps 320 model.anharmonic=true train.loss_weighting=anharmonic
    .venv/bin/python benchmarks/probe_fold.py --fold 3 --weight-shares          # who the loss weighting favours

The windows carry their prior paths, computed once before training as the data path computes
them (`atomray.priors.paths`): the training pool through the run's training transform
(`atomray.train.loss.training_transform`), the validation and test windows through
`atomray.evaluate.eval_transform`, both from tg80-mini's stored per-frame physics
(`atomray.priors.frames`; the script waits for it while it is still being computed). A model
with a prior other than harmonic also needs `model.relaxed_input=false model.prior_input=false`.

Prints validation S2T four times during training and, last, one JSON line (S2T ×10⁻² Å²):
test_s2t and every floor's test S2T, the ratios to rotor_all and harmonic_all, S2T per ΔT
decade, the prior's learned τ, seconds. 320 steps ≈ what one fold of `jobs/cv.py` trains (10
epochs × 2048 windows / 64). Two runs side by side with `--threads 1` use a 2-core machine fully.
The figures in docs/experiments.md (and "~3–4 min per run on one thread") came from the code
before the priors moved to the data path, when the prior's physics ran inside the forward pass
(memoised per window) and switches since removed existed (the relaxed prior, the onset gate,
`train.loss_weighting=rigid`); rerun a baseline before comparing with them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fold_windows(cfg, fold: int, train_windows: int, train_molecules: int = 0, test_range: str = "ood",
                 include_test: bool = False, exclude: tuple[str, ...] = ()):
    """One CV fold's windows, each set drawn once and seeded as `jobs/cv.py` draws them:
    (split, training molecules, training pool, validation windows, test windows).
    `train_molecules` > 0 keeps a seeded random subset of the fold's training molecules;
    `exclude` names training molecules to leave out (before the subset is drawn).
    test_range "ood" scores the test molecules' whole trajectories (as `jobs/cv.py`); "last"
    only their last 10 % (`ID_RANGES["test"]`), which `include_test` (an oracle: the test
    molecules' first 80 % join the training pool) never trains on. The windows carry no prior
    paths yet: `training_pool` and `scoring_windows` attach them."""
    from atomray.data.pipeline import fixed_windows
    from atomray.data.splits import ID_RANGES, default_eval_sets
    from atomray.tune.cv import fold_splits

    split = fold_splits(cfg, [fold])[fold]
    d = cfg.data
    unknown = sorted(set(exclude) - set(split.train))
    if unknown:
        raise ValueError(f"--exclude-molecules: {unknown} are not training molecules of fold {fold}; "
                         f"expected some of {sorted(split.train)}")
    molecules = [m for m in split.train if m not in exclude]
    if train_molecules:
        molecules = sorted(np.random.default_rng(d.split_seed).choice(molecules, train_molecules, replace=False))
    if include_test:
        if test_range != "last":
            raise ValueError("include_test trains on the test molecules' first 80 %: score them with test_range='last'")
        molecules = molecules + list(split.test)
    pool = fixed_windows(d.path, molecules, train_windows, d, d.split_seed + 5, split.ranges["train"])
    val = fixed_windows(d.path, split.val, d.val_windows, d, d.split_seed + 1, split.ranges["val"])
    test_set = default_eval_sets(split, d)[0]
    frames = test_set.frame_fraction if test_range == "ood" else ID_RANGES["test"]
    test = fixed_windows(d.path, test_set.molecules, test_set.n, d, test_set.seed, frames)
    return split, molecules, pool, val, test


def wait_for_physics(root, molecules, timeout_s: float = 1800.0) -> None:
    """Block until the data set's per-frame physics is stored for every one of `molecules` (it
    may still be being computed by another process); an error after `timeout_s`."""
    from atomray.priors.frames import missing_molecules

    t0 = time.perf_counter()
    while missing := missing_molecules(root, list(dict.fromkeys(molecules))):
        if time.perf_counter() - t0 > timeout_s:
            raise SystemExit(f"{root}: no per-frame physics for {missing} after {timeout_s:.0f} s "
                             f"(python jobs/frame_physics.py --data {root})")
        print(f"waiting for {root}'s per-frame physics of {len(missing)} molecule(s) ...", flush=True)
        time.sleep(30)


def training_pool(cfg, molecules, pool: dict) -> dict:
    """The training pool with the prior paths a training batch carries (the model's prior and
    the loss weights' floor; `atomray.train.loss.training_transform`), context atoms kept only
    when that transform needs them, as the training loop holds a fixed pool."""
    from atomray.evaluate import with_paths
    from atomray.train.loss import training_transform

    transform = training_transform(cfg, list(molecules))[0]
    pool = with_paths(pool, transform)
    if not transform.context:
        pool = {k: v for k, v in pool.items() if not k.startswith("ctx_")}
    return pool


def scoring_windows(cfg, molecules, windows: dict, floors=None, model: bool = True) -> dict:
    """Evaluation windows of `molecules` with the prior paths the `floors` (default: all) and,
    with `model`, the model of `cfg` read, basins from the data set's stored per-frame physics
    (waited for when a path needs a basin)."""
    from atomray.evaluate import FLOORS, eval_transform, with_paths
    from atomray.priors.compose import floor_parts, prior_parts
    from atomray.priors.frames import FramePhysics

    floors = FLOORS if floors is None else floors
    parts = floor_parts(floors) | (prior_parts(cfg.model.prior, cfg.model.anharmonic) if model else frozenset())
    physics = None
    if "vibration" in parts:
        wait_for_physics(cfg.data.path, molecules)
        physics = FramePhysics.load(cfg.data.path, list(molecules))
    return with_paths(windows, eval_transform(cfg if model else None, physics, floors))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "cv.yaml"))
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--steps", type=int, default=320)
    ap.add_argument("--train-windows", type=int, default=8192, help="size of the fixed training pool")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-molecules", type=int, default=0,
                    help="train on only this many of the fold's training molecules (0: all); a data-scaling probe")
    ap.add_argument("--exclude-molecules", nargs="+", default=[], metavar="NAME",
                    help="leave these of the fold's training molecules out (a data-selection probe)")
    ap.add_argument("--test-range", choices=("ood", "last"), default="ood",
                    help="score the test molecules' whole trajectories (ood, as jobs/cv.py) or their last 10 %%")
    ap.add_argument("--include-test", action="store_true",
                    help="oracle: also train on the test molecules' first 80 %% (needs --test-range last)")
    ap.add_argument("--weight-shares", action="store_true",
                    help="print each training molecule's share of the loss weight (train.loss_weighting, batches of "
                         "data.batch_size) over the pool and stop, without training")
    ap.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from atomray.config import load_config
    from atomray.data.pipeline import to_torch
    from atomray.evaluate import FLOORS, score_windows, summarise
    from atomray.model import build_model
    from atomray.train.loss import epoch_generator
    from atomray.train.optim import build_optimizer, train_step
    from atomray.train.pretrain import resolve

    cfg = resolve(load_config(args.config, args.overrides))
    split, train_molecules, pool, val, test = fold_windows(cfg, args.fold, args.train_windows, args.train_molecules,
                                                       args.test_range, args.include_test,
                                                       tuple(args.exclude_molecules))
    d = cfg.data
    wait_for_physics(d.path, [*train_molecules, *split.val, *split.test])
    pool = training_pool(cfg, train_molecules, pool)
    if args.weight_shares:
        return weight_shares(cfg, args.fold, pool)
    val = scoring_windows(cfg, split.val, val)
    test = scoring_windows(cfg, split.test, test)

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, num_lags=d.num_lags, rwpe_dim=d.rwpe_k)
    optimizer = build_optimizer(model, cfg.optim)
    train = to_torch(pool)
    rng = np.random.default_rng(cfg.train.seed)
    noise, augment = (epoch_generator(cfg.train.seed, 0, 0, p) for p in ("noise", "augment"))

    def scored(windows: dict, name: str, breakdown: bool) -> dict:
        model.eval()
        with torch.no_grad():
            out = summarise(score_windows(model, windows, 256), name, breakdown)
        model.train()
        return out

    t0, losses = time.perf_counter(), []
    for step in range(args.steps):
        idx = torch.from_numpy(rng.choice(len(train["x0"]), d.batch_size, replace=False))
        batch = {k: v[idx] for k, v in train.items()}
        losses.append(float(train_step(model, optimizer, batch, cfg, step, args.steps, noise, augment, nullcontext())))
        if (step + 1) % max(args.steps // 4, 1) == 0:
            v = scored(val, "val", False)
            print(f"step {step + 1}/{args.steps}  loss {np.mean(losses[-50:]):.4g}  val S2T {100 * v['val_s2t']:.3f} "
                  f"= {v['val_s2t'] / v['val_s2t_rotor_all']:.3f}x rotor_all  {time.perf_counter() - t0:.0f} s", flush=True)
    m = scored(test, "test", True)
    result = {"fold": args.fold, "steps": args.steps, "overrides": args.overrides, "test_range": args.test_range,
              "include_test": args.include_test, "test_molecules": list(split.test),
              "train_molecules": [str(m) for m in train_molecules],
              "test_s2t": 100 * m["test_s2t"],
              **{f"test_s2t_{f}": 100 * m[f"test_s2t_{f}"] for f in FLOORS if f"test_s2t_{f}" in m},
              "ratio_rotor_all": m["test_s2t"] / m["test_s2t_rotor_all"],
              "ratio_harmonic_all": m["test_s2t"] / m["test_s2t_harmonic_all"],
              "by_dt": {k[len("test_s2t_"):]: round(100 * v, 4) for k, v in m.items()
                        if k.startswith("test_s2t_dt_") and k.endswith(("fs", "_rotor_all", "_harmonic_all"))},
              "prior_taus_fs": {k: round(float(v.detach().exp()), 1) for k, v in model.named_parameters() if k.endswith("log_tau")},
              "seconds": time.perf_counter() - t0}
    print(json.dumps(result), flush=True)
    return result


def weight_shares(cfg, fold: int, pool: dict) -> dict:
    """Each training molecule's share of the summed loss weights (`window_weights`, each random
    batch normalised as in training) over the training pool (carrying its prior paths), and its
    windows' share; one JSON line."""
    from atomray.data.pipeline import to_torch
    from atomray.train.loss import window_weights

    train, b = to_torch(pool), cfg.data.batch_size
    order = np.random.default_rng(cfg.train.seed).permutation(len(train["x0"]))  # mixed batches, as in training
    if cfg.train.loss_weighting == "none":
        weights = np.ones(len(order))
    else:
        weights = torch.cat([window_weights({k: v[torch.from_numpy(order[i:i + b])] for k, v in train.items()},
                                            cfg.train.loss_weight_floor, cfg.train.loss_weighting)
                             for i in range(0, len(order), b)]).numpy()
    names = np.asarray(pool["molecule_id"])[order]
    result = {"fold": fold, "loss_weighting": cfg.train.loss_weighting, "loss_weight_floor": cfg.train.loss_weight_floor,
              "weight_share": {m: round(float(weights[names == m].sum() / weights.sum()), 4) for m in sorted(set(names))},
              "window_share": {m: round(float((names == m).mean()), 4) for m in sorted(set(names))}}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
