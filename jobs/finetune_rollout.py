"""Fine-tune a checkpoint with a velocity head for rollouts: an unrolled K-step loss on (x, v).

    python jobs/finetune_rollout.py --model ray_results/<run>/best --steps 4 --step-fs 50 --out ft/
    python jobs/rollout.py --model ft/ --test-molecules --momentum --thermostat csvr --tau-fs 20 --step-fs 50 --out roll/

The checkpoint must predict velocities (`model.predict_velocity=true`, e.g. `jobs/pretrain.py
model.predict_velocity=true`) and see every atom (`data.context_atoms=all`). Training windows come from
the training molecules of the checkpoint's own split, fresh each epoch; before the first epoch and
after each, the unrolled S2T of every step on 64 fixed windows of its validation molecules is
printed. Each step is one stride `--step-fs`; the model's prediction (positions and velocities) is
the next step's state (`atomray.train.unroll`). `--width-weight W` adds W × the width term
(`atomray.train.unroll.width_loss`: the spread of each bond length and angle over a batch's
predicted states against the reference frames', which an MSE alone, minimised by the conditional
mean, lets shrink; measured and off by default, docs/experiments.md); the held-out width term is
printed each epoch whatever the weight. Single process (2 CPU threads by default); writes a
checkpoint directory to --out (model.pt, config.yaml, state.json with the epochs' figures) that
every job loads like a pretraining checkpoint, and logs an MLflow run (experiment --experiment)
with the parameters, the held-out unrolled S2T per step and epoch, and the checkpoint.
--model takes a checkpoint directory or an MLflow model URI (models:/atom@champion).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory with a velocity head")
    parser.add_argument("--out", required=True, help="directory for the fine-tuned checkpoint")
    parser.add_argument("--steps", type=int, default=4, help="unrolled steps K (default 4)")
    parser.add_argument("--step-fs", type=float, default=50.0, help="the stride of each step (default 50 fs)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=16, help="batches per epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--velocity-weight", type=float, default=1.0)
    parser.add_argument("--position-noise", type=float, default=0.0,
                        help="Å per axis on each unrolled step's heavy atoms, as jobs/rollout.py --position-noise")
    parser.add_argument("--width-weight", type=float, default=0.0,
                        help="weight of the spread of bond lengths and angles against the reference's "
                             "(atomray.train.unroll.width_loss; default 0, off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--experiment", default="atomray-finetune", help="MLflow experiment")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    args = parser.parse_args(argv)

    import torch

    from atomray import tracking
    from atomray.checkpoint import CheckpointError, TrainState, save_checkpoint
    from atomray.config import ConfigError, TrackingConfig
    from atomray.data.frames import DataError
    from atomray.data.splits import run_split
    from atomray.outputs import OutputError, check_output_dir
    from atomray.priors.compose import prior_parts
    from atomray.priors.frames import FramePhysics
    from atomray.priors.paths import PriorPaths, basin_source
    from atomray.storage import StorageError
    from atomray.train.unroll import finetune

    torch.set_num_threads(args.threads)
    try:
        out = check_output_dir(args.out)
        if not isinstance(out, Path):
            raise OutputError(f"--out {args.out}: expected a local directory (copy the checkpoint to a store afterwards)")
        if args.steps < 1 or args.step_fs <= 0 or args.epochs < 1 or args.batches < 1 or args.batch_size < 1:
            raise ConfigError("--steps, --epochs, --batches and --batch-size must be >= 1 and --step-fs > 0")
        if not args.position_noise >= 0:
            raise ConfigError(f"--position-noise must be >= 0 Å, found {args.position_noise}")
        if not args.width_weight >= 0:
            raise ConfigError(f"--width-weight must be >= 0, found {args.width_weight}")
        uri = tracking.resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri))
        model, cfg, before = tracking.load_model_uri(uri, args.model)  # a directory or an MLflow model URI
        if not cfg.model.predict_velocity:
            raise ConfigError(f"{args.model}: the model has no velocity head; pretrain with model.predict_velocity=true")
        if cfg.data.context_atoms != "all":
            raise ConfigError(f"{args.model}: unrolled fine-tuning rolls out every atom; it needs data.context_atoms=all")
        split = run_split(cfg.data)
        parts = prior_parts(cfg.model.prior, cfg.model.anharmonic)
        physics = None
        if "vibration" in parts:
            physics = FramePhysics.load(cfg.data.path, [*split.train, *split.val])
            if physics is None:
                raise DataError(f"{cfg.data.path}: the {cfg.model.prior} prior needs the per-frame physics; compute it "
                                f"first (python jobs/frame_physics.py --data {cfg.data.path})")
    except (DataError, ConfigError, CheckpointError, OutputError, StorageError, LookupError, OSError) as err:
        print(f"finetune_rollout: error: {err}", file=sys.stderr)
        return 2
    transform = PriorPaths(parts, basin_source(physics), circles=cfg.model.rotor_circles)
    print(f"fine-tuning {args.model}: {args.steps} unrolled steps of {args.step_fs:g} fs, {args.epochs} epoch(s) of "
          f"{args.batches} x {args.batch_size} windows of {len(split.train)} molecules; held out: {', '.join(split.val)}",
          flush=True)
    t0 = time.perf_counter()

    def log(row: dict) -> None:
        steps = " ".join(f"{row[f'held_out_s2t_step{k}']:.3f}" for k in range(1, args.steps + 1))
        train = "" if math.isnan(row["train_loss"]) else f"train loss {row['train_loss']:.5f}  "
        print(f"epoch {row['epoch']}/{args.epochs}  {train}held-out unrolled S2T per step (x1e-2 A^2) {steps}, "
              f"width {row['held_out_width']:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)

    c = tracking.client(uri)
    run_id = c.create_run(tracking.experiment_id(c, args.experiment), run_name=f"finetune-{time.strftime('%Y%m%d-%H%M%S')}",
                          tags={tracking.TAG_KIND: "finetune", "model": args.model}).info.run_id
    try:
        tracking.log_params(c, run_id, {k: v for k, v in vars(args).items() if k not in ("tracking_uri", "experiment")})
        rows = finetune(model, cfg, split.train, split.val, transform, args.steps, args.step_fs, args.epochs,
                        args.batches, args.batch_size, args.lr, args.velocity_weight, args.seed, log,
                        args.position_noise, args.width_weight)
        for row in rows:
            for key, value in row.items():
                if key != "epoch" and math.isfinite(value):
                    c.log_metric(run_id, key, float(value), step=int(row["epoch"]))
        state = TrainState(epoch=args.epochs, step=args.epochs * args.batches, history=rows, elements=before.elements,
                           mlflow_run_id=run_id)
        out = save_checkpoint(out, model, cfg, state)
        (out / "finetune.json").write_text(json.dumps({"source": str(args.model), **vars(args)}, indent=1))
        c.log_artifacts(run_id, str(out), "checkpoint")
        tracking.finish_run(uri, run_id)
    except BaseException as err:
        tracking.fail_run(uri, run_id, err)
        raise
    print(f"fine-tuned checkpoint: {out}; MLflow run id: {run_id} ({uri})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
