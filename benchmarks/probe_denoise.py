"""Does a model learn equilibrium geometry that transfers to molecules it never saw?

The long-lag error of every model is mostly internal motion (`benchmarks/error_anatomy.py`),
and the best a predictor can do there is to move toward the molecule's average shape. This
probe asks for exactly that and nothing else: from a start state (x0, v0) predict the
molecule's Procrustes-mean structure, superposed on x0 (a denoising task; no time, no
dynamics). Trains the config's model (prior x0, the first lag's output) on one CV fold's
training windows and scores the fold's out-of-domain test windows, as a ratio to predicting
x0 itself (1 = learned nothing; < 1 = transferable equilibrium geometry; > 1 = it applies the
training molecules' shapes to molecules that have other shapes):

    .venv/bin/python benchmarks/probe_denoise.py --fold 0 --steps 400
    .venv/bin/python benchmarks/probe_denoise.py --fold 0 --steps 400 model.name=egno

The model gets no physics prior and no prior inputs (`model.prior=x0 model.anharmonic=false
model.relaxed_input=false model.prior_input=false` are appended to the overrides: the relaxed
input would hand it the displacement from the basin's minimum, close to the answer), so its
windows need no prior paths. Prints the training-pool and test ratios four times, then one JSON
line (train_ratio, test_ratio, test_x0_error ×10⁻² Å², seconds). ~4–6 min per run on one thread
(measured with the code before the priors moved to the data path, as are the figures in
docs/experiments.md; the model and the task are unchanged); two side by side on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

NO_PRIOR = ("model.prior=x0", "model.anharmonic=false", "model.relaxed_input=false", "model.prior_input=false")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "cv.yaml"))
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--train-windows", type=int, default=8192, help="size of the fixed training pool")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-molecules", type=int, default=0,
                    help="train on only this many of the fold's training molecules (0: all)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value config overrides (NO_PRIOR is appended)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from error_anatomy import mean_shapes
    from probe_fold import fold_windows

    from atomray.config import load_config
    from atomray.data.pipeline import to_torch
    from atomray.evaluate import score_mask
    from atomray.model import build_model
    from atomray.model.registry import model_inputs
    from atomray.train.optim import build_optimizer, lr_at, set_lr
    from atomray.train.pretrain import resolve

    cfg = resolve(load_config(args.config, [*args.overrides, *NO_PRIOR]))
    split, molecules, pool, _, test = fold_windows(cfg, args.fold, args.train_windows, args.train_molecules)
    sets = {}
    for name, w in (("train", pool), ("test", test)):
        b = to_torch(w)
        b["shape"] = mean_shapes(b, np.asarray(w["molecule_id"])).float()
        sets[name] = b
    train, probe = sets["train"], {k: v[:512] for k, v in sets["train"].items()}

    torch.manual_seed(cfg.train.seed)
    d = cfg.data
    model = build_model(cfg.model, num_lags=d.num_lags, rwpe_dim=d.rwpe_k)
    optimizer = build_optimizer(model, cfg.optim)
    rng = np.random.default_rng(cfg.train.seed)

    def error(b: dict, pred: torch.Tensor) -> torch.Tensor:
        m = score_mask(b).to(pred.dtype)[..., None]
        return ((pred - b["shape"]) ** 2 * m).sum() / (m.sum() * 3)

    def ratio(b: dict) -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            got = float(error(b, model(**model_inputs(b))[:, 0]))
        model.train()
        base = float(error(b, b["x0"]))
        return got / base, base

    t0, row = time.perf_counter(), {}
    for step in range(args.steps):
        set_lr(optimizer, lr_at(step, args.steps, cfg.optim))
        idx = torch.from_numpy(rng.choice(len(train["x0"]), d.batch_size, replace=False))
        batch = {k: v[idx] for k, v in train.items()}
        loss = error(batch, model(**model_inputs(batch))[:, 0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % max(args.steps // 4, 1) == 0:
            (r_train, _), (r_test, base) = ratio(probe), ratio(sets["test"])
            row = {"train_ratio": r_train, "test_ratio": r_test, "test_x0_error": 100 * base}
            print(f"step {step + 1}/{args.steps}  training molecules {r_train:.3f}  test molecules {r_test:.3f} "
                  f"(x0's error {100 * base:.3f})  {time.perf_counter() - t0:.0f} s", flush=True)
    result = {"fold": args.fold, "steps": args.steps, "overrides": args.overrides,
              "test_molecules": list(split.test),
              "train_molecules": [str(m) for m in molecules], **row, "seconds": time.perf_counter() - t0}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
