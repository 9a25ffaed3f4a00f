"""Five-fold UMAP-cluster cross-validation of ATOM (or a baseline) in one MLflow parent run.

    python jobs/cv.py                                   # ATOM, jobs/configs/cv.yaml, folds 0-4
    python jobs/cv.py --model egno                      # the EGNO baseline, same settings
    python jobs/cv.py --folds 0 1 --repeats 3 --max-concurrent 2 train.epochs=20

Each fold trains on six clusters (first 80 % of each trajectory), validates on two and tests
on two held-out clusters (out-of-domain) and on the training molecules' last 10 %
(in-distribution). Prints and logs the summary table (test S2T/S2S ×10⁻² Å², mean ± 2σ over
repeats per fold); every fold is an MLflow child run with its split table and UMAP figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "cv.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--model", choices=["atom", "egno", "egnn_r", "egnn_s"], default=None,
                        help="override model.name (the other settings stay the same)")
    parser.add_argument("--folds", type=int, nargs="*", default=None, help="default: all folds")
    parser.add_argument("--repeats", type=int, default=1, help="training runs per fold (seeds), for ±2σ")
    parser.add_argument("--max-concurrent", type=int, default=0, help="folds at once (0: as many as fit)")
    parser.add_argument("--name", default="", help="parent run / Tune experiment name")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    args = parser.parse_args(argv)

    from atomray.config import ConfigError, load_config

    # run_cv always splits by UMAP cluster; saying so here checks the cluster counts up front
    overrides = list(args.overrides) + ([f"model.name={args.model}"] if args.model else []) + ["data.split=umap_cluster"]
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        parser.error(str(err))
    bad = [f for f in args.folds or [] if not 0 <= f < cfg.data.num_folds]
    if bad:
        parser.error(f"--folds: expected folds in [0, data.num_folds) = [0, {cfg.data.num_folds}), found {bad}")

    from atomray.train.pretrain import init_ray, resolve
    from atomray.tune.cv import run_cv

    cfg = resolve(cfg)
    name = args.name or f"cv-{cfg.model.name}-{cfg.name}"
    init_ray()
    out = Path(cfg.storage_path) / name
    parent, rows, table = run_cv(cfg, args.folds, args.repeats, name, args.max_concurrent, out_dir=out)
    folds = args.folds if args.folds is not None else list(range(cfg.data.num_folds))
    print((out / "cv_summary.md").read_text())  # what run_cv wrote
    print(f"MLflow parent run: {parent} ({len(rows)} fold runs) at {cfg.tracking.tracking_uri}")
    return 0 if len(rows) == len(folds) * args.repeats else 1


if __name__ == "__main__":
    sys.exit(main())
