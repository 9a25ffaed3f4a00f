"""How reproducible the force-field floors of new states are between processes (no network).

    .venv/bin/python benchmarks/floor_reproducibility.py [molecule ...] [--windows 48] [--no-store]
    .venv/bin/python benchmarks/floor_reproducibility.py lib-4687 --windows 16       # ~2 min on 2 cores

A data set's own frames get their basins from the per-frame physics stored beside it
(`atomray.priors.frames`), the same in every process by construction. New states — a
prediction, a rollout step, a data set without stored physics — go through the machine's basin
store (`atomray.priors.paths.StateBasins`, `atomray.priors.store`), and this measures what the
store is for: each conformer basin's minimum is refined from the first state met there
(`atomray.priors.minima.BasinFinder`), so without a shared store two processes that meet the
states in different orders get different minima and normal modes. For each molecule this
scores relaxed_all and harmonic_all on `--windows` windows whose basins StateBasins finds
(ignoring the stored physics), once in a new process in forward order and once in another new
process in reversed order, and prints the relative change of each floor's mean error: one JSON
line per molecule, then one JSON line with the largest change per floor. It does so with a
fresh basin store in a temporary folder (`ATOMRAY_CACHE_DIR`; by default every process of the
machine shares ~/.cache/atomray): the second process reads the first one's basins and modes, so
the change should be 0 up to the rounding of a mean taken in another order (~10⁻¹⁶); and
without one (`ATOMRAY_CACHE_DIR=off`: each process refines from the first state it meets).
`--no-store` runs only the latter.

Before the priors moved to the data path, this script ran both passes in one process (clearing
its in-memory caches between them) on lib-4687, aspirin and lib-2330, 48 windows each, in
~2.5 min; without the store harmonic_all moved by up to 1.5 × 10⁻³ (the figure
`atomray.priors.modes` and `atomray.priors.store` cite), with it by 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLOORS = ("relaxed_all", "harmonic_all")


def floors_in_this_process(config: str, molecules: list[str], windows: int, reverse: bool) -> dict[str, dict[str, float]]:
    """Mean error of each floor per molecule on its windows (reversed order with `reverse`),
    basins through the machine's basin store as set in this process's environment."""
    import torch

    from atomray.config import load_config
    from atomray.data.pipeline import fixed_windows
    from atomray.evaluate import eval_transform, floor_errors, with_paths
    from atomray.train.pretrain import resolve

    torch.set_num_threads(1)
    cfg = resolve(load_config(config, []), ROOT)
    transform = eval_transform(None, None, FLOORS)  # no stored physics: StateBasins
    out = {}
    for mid in molecules:
        w = fixed_windows(cfg.data.path, [mid], windows, cfg.data, 3)
        n = len(w["x0"])
        if reverse:
            w = {k: (v[::-1].copy() if getattr(v, "shape", (0,))[:1] == (n,) else v) for k, v in w.items()}
        err = floor_errors(with_paths(w, transform), FLOORS)
        out[mid] = {f: float(err[f].mean()) for f in FLOORS}
    return out


def in_new_process(*args) -> dict[str, dict[str, float]]:
    """`floors_in_this_process` in a freshly started process (nothing in memory)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(floors_in_this_process, *args).result()


def forward_and_reversed(config: str, molecules: list[str], windows: int, label: str) -> dict[str, float]:
    """Largest relative change per floor between the two orders, with the store as set now."""
    forward = in_new_process(config, molecules, windows, False)
    backward = in_new_process(config, molecules, windows, True)
    worst = dict.fromkeys(FLOORS, 0.0)
    for mid in molecules:
        row = {"store": label, "molecule": mid}
        for f in FLOORS:
            row[f] = abs(forward[mid][f] / backward[mid][f] - 1)
            worst[f] = max(worst[f], row[f])
        print(json.dumps(row), flush=True)
    return worst


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("molecules", nargs="*", default=["lib-4687", "aspirin", "lib-2330"])
    ap.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "cv.yaml"))
    ap.add_argument("--windows", type=int, default=48)
    ap.add_argument("--no-store", action="store_true", help="only without the store (ATOMRAY_CACHE_DIR=off)")
    args = ap.parse_args(argv)
    from atomray.priors.store import ENV

    out = {}
    modes = [("off", "no_store")] if args.no_store else [("fresh", "store"), ("off", "no_store")]
    before = os.environ.get(ENV)
    try:
        with tempfile.TemporaryDirectory(prefix="atomray-basins-") as tmp:
            for setting, label in modes:
                os.environ[ENV] = tmp if setting == "fresh" else "off"  # inherited by the new processes
                worst = forward_and_reversed(args.config, args.molecules, args.windows, label)
                out.update({f"max_relative_change_{f}_{label}": v for f, v in worst.items()})
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
