"""ATOM against the authors' implementation, side by side in one process, on CPU.

    .venv/bin/python benchmarks/bench_vs_official.py --official PATH [--atoms 9 21] [--threads 1 2]
        [--rounds 7] [--batch 100] [--lags 8] [--rwpe 8] [--set key=value ...]

PATH is a checkout of the authors' repository (github.com/luke-a-thompson/ATOM, the model in
`src/atom/atom/`); nothing of it is copied here, it is imported from PATH at run time. Their
code is meant for CUDA and a full training environment, so four things are patched while it
loads and is built, never in their files: `typing.override` (Python 3.12) becomes a no-op
decorator on older Pythons; `tensordict` (imported only to name a type: their forward takes
a plain dict) is stubbed when missing; `atom.training`'s package initialiser (which pulls in
wandb, the data loaders and the training loop) is skipped, so that only its `config_options`
(the enums) loads; and the `device="cuda"` of their T-RoPE buffer becomes the CPU while the
model is built.

Both models are built at the paper's MD17 configuration (Table 19; the authors'
configs/md17_paper): width 128, 5 blocks, 8 heads, 1 output head, RMSNorm, SwiGLU, learned value
residual, T-RoPE base 1000, E(3)-equivariant lifting with the tensor product, heterogeneous
attention with attention dropout 0.2, absolute positions (atomray `prior=none`, theirs
`delta_update=false`), RWPE of length `--rwpe` for both. atomray's additions to the paper
(distance bias, lag-conditioned output, internal velocity, relaxed / prior inputs, ...) are
off (`PAPER`); `--set key=value` changes any `ModelConfig` field of atomray's model (e.g.
`--set distance_bias=true`).

Inputs are identical: one batch of `--batch` molecule-like states of N atoms (positions
spread 1.5 Å about their centre, velocities ~0.01 Å/fs, atomic numbers 6-8, RWPE uniform in
[0, 1)), P lags of 3000 · 0.5 fs / P apart (MD17: 3000 frames of 0.5 fs); atomray reads
(x0, v0, z, lags, mask, rwpe), the authors' model the same numbers replicated over the P
time steps as their data loader lays them out (x_0 = [x, ‖x‖], v_0 = [v, ‖v‖],
concatenated_features = [x, ‖x‖, v, ‖v‖, Z, RWPE]), with no padding mask (single molecule).

A training step is each code base's own: label noise σ 0.1 (atomray's `add_label_noise`;
theirs adds σ to positions, velocities and features as their `add_brownian_noise` does),
forward, masked MSE, backward, grad-norm clip 1.0, and the authors' optimiser for both
(AdamW, AMSGrad, fused; lr 1e-3, wd 1e-5, ε 1e-10); train mode. Inference: eval mode under
`torch.inference_mode()`. Per cell (atoms, threads) each round times one training step and
one inference of each model, alternating which model goes first, after one untimed warm-up
call of each; samples/s are the medians over `--rounds` rounds and a cell's ratio is
atomray's median over theirs. The last line printed is one JSON object: per cell both
models' samples/s and the ratios, the median ratios over cells, and the 1-minute load average
(the machine may be shared; alternating rounds keep the comparison fair, not the absolute
rates). On a 2-core machine one thread count at N = 21 takes about 3 minutes (their training
step alone ~15 s), so run cells as separate processes when time is short.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import types
import typing
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from atomray.config import ModelConfig
from atomray.model import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_model's step functions


PAPER = {  # atomray's ModelConfig at the paper's MD17 settings (Table 19), every addition to the paper off
    "name": "atom", "embed_dim": 128, "num_layers": 5, "num_heads": 8, "output_heads": 1, "attn_dropout": 0.2,
    "mlp_dropout": 0.0, "rope_base": 1000.0, "lifting": "equivariant", "attention": "heterogeneous",
    "time_encoding": "trope", "gamma": "learned", "value_residual": "learned", "prior": "none",
    "distance_bias": False, "lag_conditioned_output": False, "internal_velocity": False,
    "relaxed_input": False, "prior_input": False, "anharmonic": False, "latent_equivariance_weight": 0.0,
}


def paper_config(overrides: list[str]) -> ModelConfig:
    """`PAPER` (the fields this ModelConfig has), then the `key=value` overrides."""
    names = {f.name for f in fields(ModelConfig)}
    cfg = ModelConfig(**{k: v for k, v in PAPER.items() if k in names})
    for item in overrides:
        key, value = item.split("=", 1)
        if key not in names:
            raise SystemExit(f"--set: ModelConfig has no field {key!r}")
        current = getattr(cfg, key)
        if isinstance(current, bool):
            parsed = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(current, (int, float)):
            parsed = type(current)(value)
        else:
            parsed = value
        cfg = replace(cfg, **{key: parsed})
    return cfg


@contextmanager
def cuda_to_cpu():
    """While active, torch.zeros(..., device='cuda') allocates on the CPU (their T-RoPE buffer)."""
    real = torch.zeros

    def zeros(*args, **kwargs):
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return real(*args, **kwargs)

    torch.zeros = zeros
    try:
        yield
    finally:
        torch.zeros = real


def import_official(path: Path):
    """The authors' ATOM class and option enums, imported from their checkout at `path`."""
    src = path / "src"
    if not (src / "atom" / "atom" / "atom_model.py").exists():
        raise SystemExit(f"--official: no src/atom/atom/atom_model.py under {path}")
    sys.path.insert(0, str(src))
    if not hasattr(typing, "override"):  # Python < 3.12: their decorator is a no-op marker
        typing.override = lambda fn: fn
    try:
        import tensordict  # noqa: F401
    except ImportError:  # their forward takes any mapping; the import only names a type
        stub = types.ModuleType("tensordict")
        stub.TensorDict = dict
        sys.modules["tensordict"] = stub
    # `atom.training/__init__.py` imports their whole training stack (wandb, data loaders);
    # the model needs only the enums in atom.training.config_options.
    training = types.ModuleType("atom.training")
    training.__path__ = [str(src / "atom" / "training")]
    sys.modules["atom.training"] = training
    from atom.atom.atom_model import ATOM
    from atom.training import config_options as options

    return ATOM, options


def build_official(path: Path, num_lags: int, rwpe: int):
    ATOM, o = import_official(path)
    with cuda_to_cpu():
        return ATOM(lifting_dim=128, norm=o.NormType.RMS, activation=o.FFNActivation.SWIGLU, num_layers=5,
                    num_heads=8, attention_type=o.AttentionType.GHCA, output_heads=1, delta_update=False,
                    num_timesteps=num_lags, use_rope=True, rope_base=1000.0, use_spherical_harmonics=False,
                    use_equivariant_lifting=o.EquivariantLiftingType.EQUIVARIANT, rrwp_length=rwpe,
                    value_residual_type=o.ValueResidualType.LEARNABLE, learnable_attention_denom=False)


def molecules(batch: int, n_atoms: int, num_lags: int, rwpe: int, seed: int = 0) -> dict:
    """`bench_model.synthetic_batch` (no prior paths: the paper's model has no prior), with the
    same batch in the authors' layout under the key `official`."""
    from bench_model import synthetic_batch

    data = synthetic_batch(batch, n_atoms, num_lags, rwpe, seed)
    data.pop("paths")
    x0, v0, z, rw = data["x0"], data["v0"], data["z"], data["rwpe"]
    xn = torch.cat((x0, x0.norm(dim=-1, keepdim=True)), -1)
    vn = torch.cat((v0, v0.norm(dim=-1, keepdim=True)), -1)
    feats = [xn, vn, z[..., None].float()] + ([rw] if rw is not None else [])
    rep = lambda t: t[:, None].expand(batch, num_lags, *t.shape[1:]).contiguous()  # noqa: E731
    data["official"] = {"x_0": rep(xn), "v_0": rep(vn), "concatenated_features": rep(torch.cat(feats, -1))}
    return data


def optimiser(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The authors' AdamW (configs/md17_paper), used for both models."""
    return torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-10, weight_decay=1e-5,
                             amsgrad=True, fused=True)


def atomray_steps(model, data: dict):
    """atomray's training step and inference, as `bench_model.py` times them, with the authors'
    optimiser settings."""
    from bench_model import step_functions

    return step_functions(model, data, optimiser(model))


def official_steps(model, data: dict):
    opt, batch, target = optimiser(model), data["official"], data["target"]

    def train() -> None:
        noisy = {k: t + 0.1 * torch.randn_like(t) for k, t in batch.items()}
        noisy["concatenated_features"][..., -1] = batch["concatenated_features"][..., -1]  # theirs keeps it noiseless
        opt.zero_grad()
        loss = F.mse_loss(model(noisy), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def infer() -> None:
        with torch.inference_mode():
            model(batch)

    return train, infer


def cell(models: dict, data: dict, rounds: int) -> dict:
    """Median samples/s of each model's train step and inference over alternating rounds."""
    from bench_model import seconds

    b = len(data["x0"])
    fns = {"atomray": atomray_steps(models["atomray"], data), "official": official_steps(models["official"], data)}
    rates: dict[str, list[float]] = {f"{m}_{k}": [] for m in fns for k in ("train", "infer")}
    for name, (train, infer) in fns.items():  # warm-up: allocations, worker threads, workspaces
        models[name].train()
        train()
        models[name].eval()
        infer()
    for r in range(rounds):
        order = ("atomray", "official") if r % 2 == 0 else ("official", "atomray")
        for name in order:
            train, infer = fns[name]
            models[name].train()
            rates[f"{name}_train"].append(b / seconds(train))
            models[name].eval()
            rates[f"{name}_infer"].append(b / seconds(infer))
    out = {k: round(statistics.median(v), 2) for k, v in rates.items()}
    out["train_ratio"] = round(out["atomray_train"] / out["official_train"], 3)
    out["infer_ratio"] = round(out["atomray_infer"] / out["official_infer"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of github.com/luke-a-thompson/ATOM")
    parser.add_argument("--atoms", type=int, nargs="+", default=[9, 21])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--lags", type=int, default=8)
    parser.add_argument("--rwpe", type=int, default=8)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="atomray ModelConfig overrides")
    args = parser.parse_args()

    cfg = paper_config(args.set)
    torch.manual_seed(0)
    models = {"atomray": build_model(cfg, args.lags, args.rwpe),
              "official": build_official(args.official.resolve(), args.lags, args.rwpe)}
    cells = []
    for n in args.atoms:
        data = molecules(args.batch, n, args.lags, args.rwpe)
        for threads in args.threads:
            torch.set_num_threads(threads)
            cells.append({"atoms": n, "threads": threads, **cell(models, data, args.rounds)})
    row = {
        "benchmark": "vs_official", "batch": args.batch, "lags": args.lags, "rwpe": args.rwpe, "rounds": args.rounds,
        "overrides": args.set, "cells": cells,
        "median_train_ratio": round(statistics.median(c["train_ratio"] for c in cells), 3),
        "median_infer_ratio": round(statistics.median(c["infer_ratio"] for c in cells), 3),
        "parameters": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
        "torch": torch.__version__, "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
