"""Experiment harness (not a feature): ATOM given the MMFF-relaxed start frame, on one CV fold.

    .venv/bin/python benchmarks/probe_relaxed.py FOLD STEPS MODE [key=value ...]
    .venv/bin/python benchmarks/probe_relaxed.py 3 320 both        # ~4.5 min, one thread

δ = superpose(MMFF-relaxed x0, x0) − x0 (`relaxed_floor.Relaxer`) per window. MODE:
  input  δ (×10, in the canonical frame) enters as a second lifted position stream
  prior  the output adds a_k R(Δt) δ, a_k per ΔT bin fitted on the training pool as
         `relaxed_floor.py` does (at step 0 the model is exactly that baseline)
  both   both; none: neither (plain ATOM on the same windows)
It patches a built ATOM (its lifting and forward) instead of changing the model: a probe for the
`prior: rotor_relaxed` + δ-input design, to be replaced by the real thing (δ computed in the data
pipeline and in predict). Trains like `probe_fold.py` (same pool, steps, optimiser) and prints
one JSON line: the fold's OOD test S2T beside rotor_all (×10⁻² Å²).
"""
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))
torch.set_num_threads(1)
from error_anatomy import bin_weights, fit_blend
from probe_fold import fold_windows
from relaxed_floor import Relaxer

from atomray.config import load_config
from atomray.data.pipeline import to_torch
from atomray.evaluate import floor_predictions, score_mask
from atomray.metrics import lag_errors
from atomray.model import build_model
from atomray.model.canonical import canonicalise
from atomray.model.lifting import EquivariantLifting
from atomray.physics import rotor_motion, superpose
from atomray.train.loss import epoch_generator
from atomray.train.optim import build_optimizer, train_step
from atomray.train.pretrain import resolve

fold, steps, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]  # mode: input | prior | both | none
cfg = resolve(load_config(str(ROOT / 'jobs' / 'configs' / 'cv.yaml'), sys.argv[4:]))
d = cfg.data
split, _, pool, val, test = fold_windows(cfg, fold, 8192)
relaxer = Relaxer()
def prep(w):
    b = to_torch(w)
    rel = relaxer(w)
    mass = b["mass"].double() * b["mask"].double()
    b["delta"] = (superpose(rel, b["x0"].double(), mass) - b["x0"].double()).float() * b["mask"][..., None]
    return b
t0 = time.time(); train, tst = prep(pool), prep(test); print("relaxed in", time.time() - t0, flush=True)
torch.manual_seed(cfg.train.seed)
model = build_model(cfg.model, num_lags=d.num_lags, rwpe_dim=d.rwpe_k)
state = {"delta": None}
if mode in ("input", "both"):
    lift2 = EquivariantLifting(cfg.model.embed_dim, cfg.model.max_atomic_number + d.rwpe_k)
    model.add_module("lift_relax", lift2)
    orig = model.lifting
    class Wrapped(torch.nn.Module):
        def __init__(s, inner): super().__init__(); s.inner = inner
        def forward(s, x, v, chem):
            lx, lv, lz = s.inner(x, v, chem)
            dl = state["delta_c"]
            rx, _, _ = model.lift_relax(dl * 10.0, torch.zeros_like(dl), chem)
            return lx + rx, lv, lz
    model.lifting = Wrapped(orig)
weights = None
if mode in ("prior", "both"):
    # fit per-bin blend on the training pool, as relaxed_floor.py
    lags = train["lags_fs"].double(); rot = floor_predictions(train, ["rotor_all"])["rotor_all"]
    mass = (train["mass"] * train["mask"]).double()
    c, u, R = rotor_motion(train["x0"].double(), train["v0"].double(), mass, lags, None)
    shift = torch.einsum("bpij,bnj->bpni", R, train["delta"].double())
    target, scored = train["target"].double(), score_mask(train)
    weights = fit_blend(lambda pred: lag_errors(pred, target, scored), rot, shift, lags)
    print("blend weights", weights, flush=True)
base_forward = model.forward
prior_module = next(m for m in model.modules() if type(m).__name__ == "Prior")
def forward(x0, v0, z, lags_fs, mask, rwpe=None, t0_fs=0.0):
    if mode in ("input", "both"):
        x = x0.float(); v = v0.float() * cfg.model.velocity_scale_fs
        _, _, q, _ = canonicalise(x, v, mask.bool())
        state["delta_c"] = (state["delta"] @ q) * mask[..., None].float()
    y = base_forward(x0, v0, z, lags_fs, mask, rwpe)
    if weights is not None:
        m = prior_module._mass(z, mask).double()
        _, _, R = rotor_motion(x0.double(), v0.double(), m, lags_fs.double(), None)
        y = y + (bin_weights(lags_fs.double(), weights).float()[..., None, None] * torch.einsum("bpij,bnj->bpni", R.float(), state["delta"])).to(y.dtype)
    return y
model.forward = forward
optimizer = build_optimizer(model, cfg.optim)
rng = np.random.default_rng(cfg.train.seed)
noise, augment = (epoch_generator(cfg.train.seed, 0, 0, p) for p in ("noise", "augment"))
def evaluate(b):
    model.eval(); errs = []
    with torch.no_grad():
        for i in range(0, len(b["x0"]), 256):
            bb = {k: v[i:i + 256] for k, v in b.items()}
            state["delta"] = bb["delta"]
            p = model(bb["x0"], bb["v0"], bb["z"], bb["lags_fs"], bb["mask"], bb.get("rwpe"))
            errs.append(lag_errors(p.double(), bb["target"], score_mask(bb)))
    model.train(); return torch.cat(errs)
t0 = time.time()
for step in range(steps):
    idx = torch.from_numpy(rng.choice(len(train["x0"]), d.batch_size, replace=False))
    batch = {k: v[idx] for k, v in train.items()}
    state["delta"] = batch["delta"]
    train_step(model, optimizer, batch, cfg, step, steps, noise, augment, nullcontext())
e = evaluate(tst)
rot = floor_predictions(tst, ["rotor_all"])["rotor_all"]
er = lag_errors(rot, tst["target"], score_mask(tst))
print(json.dumps({"fold": fold, "mode": mode, "steps": steps, "test_s2t": 100 * float(e.mean()), "rotor_all": 100 * float(er.mean()),
                  "ratio_rotor_all": float(e.mean() / er.mean()), "seconds": time.time() - t0}), flush=True)
