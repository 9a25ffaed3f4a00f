"""How reproducible the force-field floors are between processes (no network, ~70 s).

    .venv/bin/python benchmarks/floor_reproducibility.py [molecule ...]

A process refines each conformer basin's minimum from the first state it meets there
(`atomray.relaxation.basin_minimum`), so a training run and a later evaluation, which meet the
states in other orders, can hold slightly different minima. This scores relaxed_all and
harmonic_all on 48 windows per molecule, clears the caches, scores the same windows in reversed
order, and prints the relative change of each floor's mean error: one JSON line per molecule,
then the largest change per floor (`atomray.vibration.REPRODUCIBLE_REL` bounds harmonic_all's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLOORS = ("relaxed_all", "harmonic_all")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("molecules", nargs="*", default=["lib-4687", "aspirin", "lib-2330"])
    ap.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "cv.yaml"))
    ap.add_argument("--windows", type=int, default=48)
    args = ap.parse_args(argv)
    from atomray import relaxation, vibration
    from atomray.config import load_config
    from atomray.data.pipeline import fixed_windows
    from atomray.evaluate import floor_errors
    from atomray.train.pretrain import resolve

    cfg = resolve(load_config(args.config, []))
    worst = dict.fromkeys(FLOORS, 0.0)
    for mid in args.molecules:
        w = fixed_windows(cfg.data.path, [mid], args.windows, cfg.data, 3)
        forward = floor_errors(w, FLOORS)
        relaxation._GFN2_MINIMA.clear()
        vibration._MODES.clear()
        n = len(w["x0"])
        backward = floor_errors({k: (v[::-1].copy() if getattr(v, "shape", (0,))[:1] == (n,) else v)
                                 for k, v in w.items()}, FLOORS)
        row = {"molecule": mid}
        for f in FLOORS:
            row[f] = abs(float(forward[f].mean()) / float(backward[f].mean()) - 1)
            worst[f] = max(worst[f], row[f])
        print(json.dumps(row), flush=True)
    out = {f"max_relative_change_{f}": v for f, v in worst.items()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
