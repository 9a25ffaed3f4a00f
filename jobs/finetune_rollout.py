"""Fine-tune a checkpoint with a velocity head for rollouts: an unrolled K-step loss on (x, v).

    python jobs/finetune_rollout.py --model ray_results/<run>/best --steps 4 --step-fs 50 --out ft/
    python jobs/rollout.py --model ft/ --test-molecules --momentum --thermostat csvr --tau-fs 20 --step-fs 50 --out roll/

The checkpoint must predict velocities (`model.predict_velocity=true`, e.g. `jobs/pretrain.py
model.predict_velocity=true`) and see every atom (`data.context_atoms=all`). Training windows come from
the training molecules of the checkpoint's own split, fresh each epoch; before the first epoch and
after each, the unrolled S2T of every step on 64 fixed windows of its validation molecules is
printed. Each step is one stride `--step-fs`; the model's prediction (positions and velocities) is
the next step's state (`atomray.train.unroll`). Single process (2 CPU threads by default); writes a
checkpoint directory to --out (model.pt, config.yaml, state.json with the epochs' figures) that
every job loads like a pretraining checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from atomray.checkpoint import TrainState, load_model, read_state, save_checkpoint
    from atomray.data.frames import DataError
    from atomray.data.splits import make_split, usable_molecules
    from atomray.priors.compose import prior_parts
    from atomray.priors.frames import FramePhysics
    from atomray.priors.paths import PriorPaths, basin_source
    from atomray.train.unroll import finetune

    torch.set_num_threads(args.threads)
    model, cfg = load_model(args.model)
    if not cfg.model.predict_velocity:
        raise SystemExit(f"{args.model}: the model has no velocity head; pretrain with model.predict_velocity=true")
    if cfg.data.context_atoms != "all":
        raise SystemExit(f"{args.model}: unrolled fine-tuning rolls out every atom; it needs data.context_atoms=all")
    molecules = usable_molecules(cfg.data)
    split = make_split(molecules.column("molecule_id").to_pylist(), molecules.column("smiles").to_pylist(), cfg.data)
    parts = prior_parts(cfg.model.prior, cfg.model.anharmonic)
    physics = None
    if "vibration" in parts:
        physics = FramePhysics.load(cfg.data.path, [*split.train, *split.val])
        if physics is None:
            raise DataError(f"{cfg.data.path}: the {cfg.model.prior} prior needs the per-frame physics; compute it first "
                            f"(python jobs/frame_physics.py --data {cfg.data.path})")
    transform = PriorPaths(parts, basin_source(physics))
    print(f"fine-tuning {args.model}: {args.steps} unrolled steps of {args.step_fs:g} fs, {args.epochs} epoch(s) of "
          f"{args.batches} x {args.batch_size} windows of {len(split.train)} molecules; held out: {', '.join(split.val)}",
          flush=True)
    t0 = time.perf_counter()

    def log(row: dict) -> None:
        steps = " ".join(f"{row[k]:.3f}" for k in sorted(row) if k.startswith("held_out_s2t_step"))
        train = "" if math.isnan(row["train_loss"]) else f"train loss {row['train_loss']:.5f}  "
        print(f"epoch {row['epoch']}/{args.epochs}  {train}held-out unrolled S2T per step (x1e-2 A^2) {steps}  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    rows = finetune(model, cfg, split.train, split.val, transform, args.steps, args.step_fs, args.epochs, args.batches,
                    args.batch_size, args.lr, args.velocity_weight, args.seed, log)
    before = read_state(args.model)
    state = TrainState(epoch=args.epochs, step=args.epochs * args.batches, history=rows, elements=before.elements)
    out = save_checkpoint(args.out, model, cfg, state)
    (out / "finetune.json").write_text(json.dumps({"source": str(args.model), **vars(args)}, indent=1))
    print(f"fine-tuned checkpoint: {out}", flush=True)


if __name__ == "__main__":
    main()
