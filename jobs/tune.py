"""Ray Tune sweeps over whole ATOM training runs, each trial an MLflow child run.

    python jobs/tune.py --ablation                       # one switch at a time (paper Figs. 5-6)
    python jobs/tune.py --ablation --switches model.lifting model.time_encoding
    python jobs/tune.py --search --num-samples 16 --asha # random search with ASHA on val S2T

The sweep ends with a results table (CSV) and an ablation bar chart (PNG) logged to its
parent run and written under <storage_path>/<name>/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "sweep.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--ablation", action="store_true", help="the ablation grid")
    mode.add_argument("--search", action="store_true", help="the hyperparameter search space")
    parser.add_argument("--switches", nargs="*", default=None, help="ablation switches (default: all)")
    parser.add_argument("--full-grid", action="store_true", help="every combination of the switches")
    parser.add_argument("--num-samples", type=int, default=8, help="trials drawn from the search space")
    parser.add_argument("--asha", action="store_true", help="stop lagging trials early (ASHA on val S2T)")
    parser.add_argument("--max-concurrent", type=int, default=0)
    parser.add_argument("--name", default="")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    args = parser.parse_args(argv)

    from atomray.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        parser.error(str(err))

    from atomray.evaluate import FLOORS
    from atomray.train.pretrain import init_ray, resolve
    from atomray.tune.space import ablation_trials, search_space
    from atomray.tune.sweep import run_sweep

    cfg = resolve(cfg)
    name = args.name or ("ablation" if args.ablation else "search") + f"-{cfg.name}"
    trials = ablation_trials(args.switches, args.full_grid) if args.ablation else search_space()
    init_ray()
    parent, rows, chart = run_sweep(cfg, trials, name, num_samples=1 if args.ablation else args.num_samples,
                                    asha=args.asha, max_concurrent=args.max_concurrent)
    for r in sorted(rows, key=lambda r: r.get("best_val_s2t", float("inf"))):
        floors = {f: r[f"val_s2t_{f}"] for f in FLOORS if f"val_s2t_{f}" in r}
        strongest = min(floors, key=floors.get) if floors else ""
        vs = f" = {r['best_val_s2t'] / floors[strongest]:.2f}x {strongest} ({100 * floors[strongest]:.3f})" if floors else ""
        print(f"{r['label']:<40} {r['status']:<9} epochs {r['epochs']:>3}  best val S2T {100 * r['best_val_s2t']:.3f}"
              f"{vs} x1e-2 A^2")
    print(f"MLflow parent run: {parent} ({len(rows)} trials); chart: {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
