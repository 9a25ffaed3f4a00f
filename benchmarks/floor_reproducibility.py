"""How reproducible the force-field floors are between processes (no network, ~2.5 min).

    .venv/bin/python benchmarks/floor_reproducibility.py [molecule ...] [--no-store]

Each conformer basin's minimum is refined from the first state met there
(`atomray.relaxation.basin_minimum`). This scores relaxed_all and harmonic_all on 48 windows
per molecule, clears the in-memory caches (as a new process starts), scores the same windows
in reversed order, and prints the relative change of each floor's mean error: one JSON line
per molecule, then the largest change per floor. It does so with a fresh basin store
(`atomray.basin_store`, what every run uses by default: the second pass reads the first pass's
basins and modes, so the change should be 0) and without one (`ATOMRAY_CACHE_DIR=off`: each
pass refines from the first state it meets); `--no-store` runs only the latter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLOORS = ("relaxed_all", "harmonic_all")


def forward_and_reversed(cfg, molecules: list[str], windows: int, label: str) -> dict[str, float]:
    """Largest relative change per floor between the two orders, with the store as set now."""
    from atomray import relaxation, vibration
    from atomray.data.pipeline import fixed_windows
    from atomray.evaluate import floor_errors

    worst = dict.fromkeys(FLOORS, 0.0)
    for mid in molecules:
        relaxation._GFN2_MINIMA.clear()
        vibration._MODES.clear()
        w = fixed_windows(cfg.data.path, [mid], windows, cfg.data, 3)
        forward = floor_errors(w, FLOORS)
        relaxation._GFN2_MINIMA.clear()  # a new process: nothing in memory
        vibration._MODES.clear()
        n = len(w["x0"])
        backward = floor_errors({k: (v[::-1].copy() if getattr(v, "shape", (0,))[:1] == (n,) else v)
                                 for k, v in w.items()}, FLOORS)
        row = {"store": label, "molecule": mid}
        for f in FLOORS:
            row[f] = abs(float(forward[f].mean()) / float(backward[f].mean()) - 1)
            worst[f] = max(worst[f], row[f])
        print(json.dumps(row), flush=True)
    return worst


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("molecules", nargs="*", default=["lib-4687", "aspirin", "lib-2330"])
    ap.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "cv.yaml"))
    ap.add_argument("--windows", type=int, default=48)
    ap.add_argument("--no-store", action="store_true", help="only the in-memory caches (ATOMRAY_CACHE_DIR=off)")
    args = ap.parse_args(argv)
    from atomray.basin_store import ENV
    from atomray.config import load_config
    from atomray.train.pretrain import resolve

    cfg = resolve(load_config(args.config, []))
    out = {}
    modes = [("off", "no_store")] if args.no_store else [("fresh", "store"), ("off", "no_store")]
    before = os.environ.get(ENV)
    try:
        with tempfile.TemporaryDirectory(prefix="atomray-basins-") as tmp:
            for setting, label in modes:
                os.environ[ENV] = tmp if setting == "fresh" else "off"
                worst = forward_and_reversed(cfg, args.molecules, args.windows, label)
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
