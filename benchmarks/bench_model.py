"""Throughput and FLOP utilisation of ATOM at the paper's MD17 configuration on CPU.

    .venv/bin/python benchmarks/bench_model.py            # MD17 config, batch 100, 9 atoms, P 8, 2 threads
    .venv/bin/python benchmarks/bench_model.py --atoms 21 # aspirin with its hydrogens as tokens
    .venv/bin/python benchmarks/bench_model.py --config pretrain --atoms 21   # the make-pretrain model

Model: `PAPER_MD17` = Table 19 MD17 column (embedding 128, 5 blocks, 8 heads, 1 output head,
attention dropout 0.2, RWPE 8, the paper's quasi-equivariant lifting and heterogeneous
attention, no physics prior), or with `--config NAME` the model section of
jobs/configs/NAME.yaml (its prior's paths are synthetic: the rigid motion at rest and no
vibration, which costs the forward exactly what real paths cost). `--atoms` sets N (hydrogens as tokens, `data.context_atoms=all`, turn
aspirin's 13 heavy atoms into 21 tokens per slot: attention grows as N²). A training step is
what the worker loop does: label noise σ 0.1, forward, L2 loss, backward, grad-norm clip 1.0, AdamW-AMSGrad step.
Inference is eval mode under `torch.inference_mode`. Times are medians over repeats after
warm-up.

FLOPs are counted analytically for the forward pass (2·m·n·k per matmul: projections,
attention scores and attention × values, SwiGLU, output head; elementwise work is not
counted), and a training step counts as 3× forward. `matmul_gflops` is the machine's
measured fp32 rate on a 2048³ matmul with the same thread count, and
train_utilisation = 3 · flops_per_sample · train_samples_per_s / (matmul_gflops · 1e9).
The machine may be shared, so the matmul rate is re-measured right before every timed step
and the utilisation is the median of these paired ratios (`load_average_1min` is printed).

On CPU PyTorch has no fused attention kernel with dropout (SDPA with dropout_p > 0 falls
back to its unfused "math" path with a per-entry Bernoulli mask, which dominated the step:
0.07–0.11 utilisation). Training with attention dropout on CPU therefore runs ATOM's own
`dropout_attention` (atomray/model/attention.py: chunked explicit attention, bulk 16-bit
masks, one single-threaded worker per allowed thread); the step without attention dropout
(SDPA's fused flash kernel) is reported as well (`*_no_dropout`). The last line printed is
one JSON object. Measured on the 2-core dev VM when otherwise idle (load < 1): train
utilisation 0.12 with SDPA's dropout path, 0.32–0.34 with `dropout_attention`, 0.30 without
dropout; a busy machine (load 3+) lowers every figure several-fold, so read the load first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace

import torch

from atomray.config import ModelConfig
from atomray.model import build_model, count_parameters
from atomray.model.attention import swiglu_width
from atomray.train.loss import add_label_noise, trajectory_loss


def forward_flops(cfg: ModelConfig, n_atoms: int, num_lags: int) -> int:
    """Analytic forward FLOPs of one sample (2·m·n·k per matmul)."""
    d, s = cfg.embed_dim, num_lags + 1
    t = s * n_atoms  # tokens: (P + 1) slots × N atoms
    h = swiglu_width(d)
    streams = 3 if cfg.attention == "heterogeneous" else 1
    per_block = (
        2 * t * d * 3 * d  # fused Q, K, V of the Z stream
        + (2 * (2 * n_atoms) * d * 2 * d if streams == 3 else 0)  # K, V of X and V, once per atom
        + streams * 2 * (2 * t * t * d)  # scores q·k and probabilities × values, all heads
        + 2 * t * d * d  # output projection
        + 2 * t * d * 2 * h + 2 * t * h * d  # SwiGLU
    )
    head = 2 * num_lags * n_atoms * (d // 4) * 3 * cfg.output_heads  # vector channels → 3
    return cfg.num_layers * per_block + head


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class MatmulProbe:
    """The machine's fp32 matmul rate (GFLOP/s) on a size³ product, median of 3."""

    def __init__(self, size: int = 2048):
        self.size = size
        self.a, self.b = torch.randn(size, size), torch.randn(size, size)
        self.a @ self.b  # warm-up

    def gflops(self) -> float:
        return 2 * self.size**3 / statistics.median(seconds(lambda: self.a @ self.b) for _ in range(3)) / 1e9


PAPER_MD17 = ModelConfig(embed_dim=128, num_layers=5, num_heads=8, output_heads=1, attn_dropout=0.2,
                         lifting="equivariant", attention="heterogeneous", prior="none", relaxed_input=False,
                         prior_input=False)


def synthetic_batch(batch: int, n_atoms: int, num_lags: int, rwpe_dim: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, n_atoms, 3, generator=g) * 1.5
    x0 = x0 - x0.mean(1, keepdim=True)
    lags = (3000.0 * 0.5 / num_lags) * torch.arange(1, num_lags + 1).expand(batch, num_lags)  # MD17: 3000 frames of 0.5 fs
    still = x0[:, None].expand(batch, num_lags, n_atoms, 3).contiguous()
    eye = torch.eye(3).expand(batch, num_lags, 3, 3).contiguous()
    paths = {"rotor_path": still, "rotor_rot": eye, "rigid_path": still, "rigid_rot": eye,
             "vib_osc": torch.zeros_like(still), "vib_d0": torch.zeros_like(x0), "md_path": still,
             "md_ok": torch.zeros(batch, dtype=torch.bool)}
    return {"x0": x0, "v0": torch.randn(batch, n_atoms, 3, generator=g) * 0.01,
            "z": torch.randint(6, 9, (batch, n_atoms), generator=g), "lags_fs": lags.contiguous(),
            "mask": torch.ones(batch, n_atoms, dtype=torch.bool),
            "rwpe": torch.rand(batch, n_atoms, rwpe_dim, generator=g) if rwpe_dim else None,
            "target": x0[:, None] + 0.1 * torch.randn(batch, num_lags, n_atoms, 3, generator=g), "paths": paths}


def step_functions(model, data: dict, opt) -> tuple:
    """(train, infer) closures for atomray's model on `data`: a training step as the worker loop
    takes it (label noise σ 0.1, forward, L2 loss, backward, grad-norm clip 1.0, `opt` step) and
    an inference in eval mode under `torch.inference_mode`. `data["paths"]` (optional) holds the
    prior's paths."""
    noise = torch.Generator().manual_seed(1)
    args = ("z", "lags_fs", "mask", "rwpe")
    paths = data.get("paths")

    def train_step() -> None:
        x0, v0, target = add_label_noise(data["x0"], data["v0"], data["target"], data["mask"], 0.1, noise)
        loss = trajectory_loss(model(x0, v0, *(data[k] for k in args), paths), target, data["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def infer() -> None:
        with torch.inference_mode():
            model(data["x0"], data["v0"], *(data[k] for k in args), paths)

    return train_step, infer


def throughput(cfg: ModelConfig, data: dict, num_lags: int, rwpe_dim: int, repeats: int,
               probe: MatmulProbe) -> dict[str, float]:
    """Medians of train / inference samples per second of `cfg` on `data`, and of the matmul
    rate measured right before each timing (the 2-core machine is shared, so rates are
    paired in time rather than measured once)."""
    torch.manual_seed(0)
    model = build_model(cfg, num_lags, rwpe_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5, eps=1e-10, amsgrad=True)
    train_step, infer = step_functions(model, data, opt)

    b = len(data["x0"])
    out: dict[str, list[float]] = {"train": [], "infer": [], "peak_train": [], "peak_infer": []}
    for mode, fn in (("train", train_step), ("infer", infer)):
        model.train(mode == "train")
        fn(), fn()  # warm-up
        for _ in range(repeats):
            out["peak_" + mode].append(probe.gflops())
            out[mode].append(b / seconds(fn))
    return {k: statistics.median(v) for k, v in out.items()} | {
        "train_ratio": statistics.median(r / p for r, p in zip(out["train"], out["peak_train"])),
        "infer_ratio": statistics.median(r / p for r, p in zip(out["infer"], out["peak_infer"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--atoms", type=int, default=9)
    parser.add_argument("--lags", type=int, default=8)
    parser.add_argument("--rwpe", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", default="", help="jobs/configs/<name>.yaml model section (default: MD17, Table 19)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = PAPER_MD17
    if args.config:
        from pathlib import Path

        from atomray.config import load_config

        cfg = load_config(Path(__file__).resolve().parents[1] / "jobs" / "configs" / f"{args.config}.yaml").model
    data = synthetic_batch(args.batch, args.atoms, args.lags, args.rwpe)
    flops = forward_flops(cfg, args.atoms, args.lags)
    probe = MatmulProbe()
    paper = throughput(cfg, data, args.lags, args.rwpe, args.repeats, probe)
    plain = throughput(replace(cfg, attn_dropout=0.0), data, args.lags, args.rwpe, args.repeats, probe)
    # utilisation = achieved FLOP/s ÷ matmul FLOP/s, from rates measured back to back
    util = lambda ratio, factor: factor * flops * ratio / 1e9  # noqa: E731  ratio = samples/s per GFLOP/s
    result = {
        "config": args.config or "md17", "batch": args.batch, "atoms": args.atoms, "lags": args.lags, "threads": args.threads,
        "parameters": count_parameters(build_model(cfg, args.lags, args.rwpe)),
        "train_samples_per_s": round(paper["train"], 2),
        "infer_samples_per_s": round(paper["infer"], 2),
        "flops_per_sample": flops,
        "matmul_gflops": round(paper["peak_train"], 2),
        "train_utilisation": round(util(paper["train_ratio"], 3), 4),
        "infer_utilisation": round(util(paper["infer_ratio"], 1), 4),
        "train_samples_per_s_no_dropout": round(plain["train"], 2),
        "train_utilisation_no_dropout": round(util(plain["train_ratio"], 3), 4),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
