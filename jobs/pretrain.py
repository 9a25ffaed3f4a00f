"""Pretrain ATOM on a TG80-frames data set with Ray Train; track the run in MLflow.

    python jobs/pretrain.py                                  # jobs/configs/pretrain.yaml
    python jobs/pretrain.py --config FILE key=value ...      # e.g. model.num_layers=6
    ray job submit --working-dir . -- python jobs/pretrain.py scaling.use_gpu=true

Connects to the Ray cluster in $RAY_ADDRESS (set by `ray job submit`), else to the one `ray start` started on
this machine, else starts a local one.
Prints one line per epoch (once Ray Train has committed its checkpoint), then the best
validation S2T/S2S beside the physics floors (no motion, linear, rigid body from heavy / all
atoms) on the same windows, a verdict against the strongest floor, the MLflow run id and the
best checkpoint's directory. `data.path` and `storage_path` take local paths or URIs
(s3://, gs://, file://). `--verbose` adds the full config and Ray's and MLflow's INFO logs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "pretrain.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML run config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=5")
    parser.add_argument("--verbose", action="store_true",
                        help="print the resolved config and Ray's / MLflow's informational logs")
    args = parser.parse_args(argv)

    from atomray.config import ConfigError, dump_config, load_config
    from atomray.data.frames import DataError
    from atomray.storage import StorageError

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        parser.error(str(err))

    import ray

    from atomray.evaluate import FLOORS, verdict
    from atomray.train.pretrain import init_ray, pretrain, resolve

    cfg = resolve(cfg)
    init_ray(verbose=args.verbose, log_to_driver=True)
    print(f"atomray pretrain: run {cfg.name!r}, data {cfg.data.path}, {cfg.scaling.num_workers} "
          f"{'GPU' if cfg.scaling.use_gpu else 'CPU'} worker(s), Ray {ray.__version__}", flush=True)
    print(f"config: {' '.join([args.config, *args.overrides])} (resolved: MLflow params, and config.yaml in "
          f"every checkpoint{'' if args.verbose else '; --verbose prints it'})", flush=True)
    if args.verbose:
        print(dump_config(cfg), flush=True)
    try:
        result = pretrain(cfg)
    except (DataError, ConfigError, StorageError) as err:
        print(f"pretrain: error: {err}", file=sys.stderr)
        return 2
    best = result.best
    print(f"\nbest epoch {int(best['epoch']) + 1} of {len(result.history)} (lowest validation S2S, the paper's "
          f"early-stopping rule): validation S2T {100 * best['val_s2t']:.3f}, S2S {100 * best['val_s2s']:.3f} x1e-2 A^2")
    print("physics floors on the same windows (S2T / S2S x1e-2 A^2): " + ", ".join(
        f"{f} {100 * best[f'val_s2t_{f}']:.3f} / {100 * best[f'val_s2s_{f}']:.3f}" for f in FLOORS))
    print(verdict(best, "val_s2t"))
    print(f"MLflow run id: {result.run_id} ({result.tracking_uri})")
    print(f"best checkpoint: {result.checkpoint}")
    print(f"wall time: {result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
