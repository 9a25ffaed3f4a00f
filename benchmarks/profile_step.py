"""Where a training step's time goes: one CV fold's windows, the committed cv.yaml model and loss.

    .venv/bin/python benchmarks/profile_step.py [--fold 0] [--batches 8] [--batch 32] [key=value ...]

Draws `--batches` batches of `--batch` training windows of the fold (a rank's share of cv.yaml's
batch of 64 on 2 workers), runs one untimed step, then `train_step` on each under cProfile on
one thread. Prints one JSON line: seconds per step (median), and the seconds per step spent in
the physics that runs on the host (MMFF94 MD, MMFF94 minimisation, GFN2-xTB basin matching) and
in the network's forward and backward passes.
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
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PARTS = {  # label: (file suffix, function) whose cumulative time is reported
    "mmff94_md": ("atomray/anharmonic.py", "_integrate"),
    "mmff94_minimisation": ("atomray/relaxation.py", "mmff_minimum"),
    "basin_matching": ("atomray/relaxation.py", "basin_minimum"),
    "loss_weights": ("atomray/train/loss.py", "window_weights"),
    "model_forward": ("torch/nn/modules/module.py", "_call_impl"),
    "backward": ("torch/_tensor.py", "backward"),
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "cv.yaml"))
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from probe_fold import fold_windows

    from atomray.config import load_config
    from atomray.data.pipeline import to_torch
    from atomray.model import build_model
    from atomray.train.optim import build_optimizer, train_step
    from atomray.train.pretrain import resolve

    cfg = resolve(load_config(args.config, args.overrides))
    pool = fold_windows(cfg, args.fold, (args.batches + 1) * args.batch)[2]
    batches = [to_torch({k: v[i:i + args.batch] for k, v in pool.items()})
               for i in range(0, (args.batches + 1) * args.batch, args.batch)]
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k)
    optimizer = build_optimizer(model, cfg.optim)
    gen = torch.Generator().manual_seed(0)
    total = args.batches + 1
    train_step(model, optimizer, batches[0], cfg, 0, total, gen, gen, nullcontext())  # untimed
    profile, seconds = cProfile.Profile(), []
    for step, batch in enumerate(batches[1:], start=1):
        t0 = time.perf_counter()
        profile.enable()
        train_step(model, optimizer, batch, cfg, step, total, gen, gen, nullcontext())
        profile.disable()
        seconds.append(time.perf_counter() - t0)
    stats = pstats.Stats(profile).stats  # (file, line, function) -> (calls, primitive, tottime, cumtime, callers)
    parts = {}
    for label, (suffix, function) in PARTS.items():
        cum = sum(v[3] for (f, _, name), v in stats.items() if f.endswith(suffix) and name == function)
        parts[f"{label}_s"] = round(cum / args.batches, 4)
    row = {"fold": args.fold, "batch": args.batch, "steps": args.batches, "model": cfg.model.name,
           "seconds_per_step_median": round(statistics.median(seconds), 4), **parts}
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
