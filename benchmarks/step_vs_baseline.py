"""A training step of `make pretrain`'s config, this checkout against another revision of atomray,
timed in alternating subprocesses on the same machine (paired runs).

    git worktree add /tmp/base <revision>          # e.g. e988b38, the last commit with the priors in forward()
    .venv/bin/python benchmarks/step_vs_baseline.py --baseline /tmp/base [--rounds 5] [--steps 8]

Each round runs one subprocess per checkout (PYTHONPATH pointing at it, one thread). A subprocess
draws `--steps` fresh batches of the config's per-worker size from the training molecules of its
split (the same seeds in both checkouts), and times what a training worker does per batch: cut
the windows, attach the prior paths (this checkout's data path; the baseline computes its prior
inside forward), convert to torch, and one optimiser step — after two untimed steps that warm the
basin store (a run's later epochs find it warm). Prints one JSON line: each checkout's median
seconds per step over all rounds, their ratio, and the per-round medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r'''
import json, sys, time
from contextlib import nullcontext
import numpy as np, torch
torch.set_num_threads(1)
from atomray.config import load_config
from atomray.data.pipeline import fixed_windows, to_torch
from atomray.data.splits import make_split, usable_molecules
from atomray.model import build_model
from atomray.train.optim import build_optimizer, train_step
from atomray.train.pretrain import resolve
root, steps = sys.argv[1], int(sys.argv[2])
cfg = resolve(load_config(f"{root}/jobs/configs/pretrain.yaml", [f"data.path={root}/data/tg80-mini"]), root)
table = usable_molecules(cfg.data)
split = make_split(table.column("molecule_id").to_pylist(), table.column("smiles").to_pylist(), cfg.data)
try:  # this checkout: the prior's paths in the data path
    from atomray.train.loss import training_transform
    transform = training_transform(cfg, list(split.train))[0]
except ImportError:  # the baseline: the prior inside forward
    transform = lambda w: {k: v for k, v in w.items() if not k.startswith("ctx_")}
batch = cfg.data.batch_size // cfg.scaling.num_workers
torch.manual_seed(0)
model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k)
opt = build_optimizer(model, cfg.optim)
gen = torch.Generator().manual_seed(0)
times = []
for step in range(steps + 2):
    t0 = time.perf_counter()
    w = fixed_windows(cfg.data.path, list(split.train), batch, cfg.data, 1000 + step)
    b = to_torch(transform(w))
    train_step(model, opt, b, cfg, step, steps + 2, gen, gen, nullcontext())
    if step >= 2:
        times.append(time.perf_counter() - t0)
print("RESULT", json.dumps({"median_s": float(np.median(times)), "times": times}))
'''


def run(checkout: Path, steps: int, cache: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "ATOMRAY_CACHE_DIR": cache}
    out = subprocess.run([sys.executable, "-c", WORKER, str(checkout), str(steps)], env=env, capture_output=True,
                         text=True, cwd=checkout, timeout=3600)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{checkout}: the step benchmark failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])["median_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="another atomray checkout (a git worktree)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    baseline = Path(args.baseline).resolve()
    per: dict[str, list[float]] = {"this": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="atomray-step-store-") as cache:  # one basin store, warmed by both
        for r in range(args.rounds):
            order = (("this", ROOT), ("baseline", baseline)) if r % 2 == 0 else (("baseline", baseline), ("this", ROOT))
            for name, checkout in order:
                per[name].append(run(checkout, args.steps, cache))
                print(f"round {r + 1}: {name} {per[name][-1]:.4f} s/step", file=sys.stderr, flush=True)
    this, base = statistics.median(per["this"]), statistics.median(per["baseline"])
    print(json.dumps({"config": "pretrain.yaml", "this_s_per_step": round(this, 4), "baseline_s_per_step": round(base, 4),
                      "speedup": round(base / this, 3), "rounds": args.rounds, "steps": args.steps,
                      "per_round": {k: [round(x, 4) for x in v] for k, v in per.items()},
                      "baseline": str(baseline), "load_average_1min": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
