"""Where a training step's time goes: data (cutting and padding windows), the prior (its paths in
the data path, and its composition inside the forward pass) and the network (forward, backward,
optimiser step), for a shipped config on the shipped data set, one CPU thread.

    .venv/bin/python benchmarks/profile_step.py                                  # pretrain.yaml
    .venv/bin/python benchmarks/profile_step.py --config jobs/configs/cv.yaml
    .venv/bin/python benchmarks/profile_step.py --config jobs/configs/tg80_multitask.yaml --batch 32

Windows are drawn the way a training worker draws them (random training molecules of the
config's split, the config's horizons; `--batch` windows per step, default the config's batch
over its workers), each step timed part by part, `--batches` steps after one untimed. The
composition inside the forward (`atomray.priors.compose.Prior`) is timed with cProfile. Data
paths are replaced by tg80-mini (the paper-scale config's TG80 data is not shipped). Prints one
JSON line: seconds per step (medians) of each part and the prior's share of the step.
Target (issue 30): prior share ≤ 5 % for every shipped config.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def training_pool(cfg, molecules: list[str]) -> list:
    """The training molecules' frames rows, held in memory as a worker holds its chunks."""
    from atomray.data.pipeline import molecule_files, molecule_segments

    files = molecule_files(cfg.data.path, molecules)
    return [seg for m in molecules for seg in molecule_segments(cfg.data.path, m, files[m])]


def draw_batch(cfg, pool: list, n: int, rng: np.random.Generator, context: bool) -> dict:
    """n windows from 4 random trajectories of the pool, padded: what a worker's stream pools."""
    from atomray.data.pipeline import window_seed
    from atomray.data.windows import pad_windows, sample_windows

    picks = rng.choice(len(pool), size=4, replace=len(pool) < 4)
    counts = np.bincount(rng.integers(0, 4, size=n), minlength=4)
    groups = [sample_windows(pool[i], int(c), cfg.data, window_seed(int(rng.integers(2**31)), i), with_context=context)
              for i, c in zip(picks, counts) if c]
    return pad_windows(groups)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "pretrain.yaml"))
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch", type=int, default=0, help="windows per step (default: the config's per worker)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from atomray.config import load_config
    from atomray.data.pipeline import to_torch
    from atomray.data.splits import make_split, usable_molecules
    from atomray.model import build_model
    from atomray.train.loss import training_transform
    from atomray.train.optim import build_optimizer, train_step
    from atomray.train.pretrain import resolve

    cfg = load_config(args.config, args.overrides + [f"data.path={ROOT / 'data' / 'tg80-mini'}"])
    if cfg.data.split == "umap_cluster" and cfg.data.num_clusters > 5:  # tg80-mini's 16 molecules
        cfg = replace(cfg, data=replace(cfg.data, num_clusters=10, num_folds=5))
    cfg = resolve(cfg, ROOT)
    table = usable_molecules(cfg.data)
    split = make_split(table.column("molecule_id").to_pylist(), table.column("smiles").to_pylist(), cfg.data)
    transform, _ = training_transform(cfg, list(split.train))
    pool = training_pool(cfg, list(split.train))
    batch_size = args.batch or max(1, cfg.data.batch_size // cfg.scaling.num_workers)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k)
    optimizer = build_optimizer(model, cfg.optim)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    total = args.batches + 1
    parts: dict[str, list[float]] = {"data": [], "prior_paths": [], "to_torch": [], "network": []}
    profile = cProfile.Profile()
    for step in range(total):
        t0 = time.perf_counter()
        windows = draw_batch(cfg, pool, batch_size, rng, transform.context)
        t1 = time.perf_counter()
        windows = transform(windows)
        t2 = time.perf_counter()
        batch = to_torch(windows)
        t3 = time.perf_counter()
        if step:
            profile.enable()
        train_step(model, optimizer, batch, cfg, step, total, gen, gen, nullcontext())
        if step:
            profile.disable()
        t4 = time.perf_counter()
        if step:  # the first step is not timed (allocations, lazy imports)
            for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key].append(value)
    stats = pstats.Stats(profile).stats  # (file, line, function) -> (calls, primitive, tottime, cumtime, callers)
    compose = sum(v[3] for (f, _, name), v in stats.items()
                  if f.endswith("atomray/priors/compose.py") and name in ("forward", "floor_predictions")) / args.batches
    med = {k: statistics.median(v) for k, v in parts.items()}
    med["data"] += med.pop("to_torch")
    network = med["network"] - compose
    step_s = med["data"] + med["prior_paths"] + med["network"]
    prior = med["prior_paths"] + compose
    row = {"config": Path(args.config).name, "overrides": args.overrides, "model": cfg.model.name,
           "prior": cfg.model.prior + ("+anharmonic" if cfg.model.anharmonic else ""),
           "loss_weighting": cfg.train.loss_weighting, "batch": batch_size, "steps": args.batches,
           "data_s": round(med["data"], 4), "prior_paths_s": round(med["prior_paths"], 4),
           "prior_compose_s": round(compose, 4), "network_s": round(network, 4),
           "seconds_per_step": round(step_s, 4), "prior_share": round(prior / step_s, 4),
           "prior_paths_parts_s": {k: round(v / total, 4) for k, v in transform.seconds.items()},
           "threads": 1, "target_prior_share": 0.05}
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
