"""How many CPU cores one GPU needs to be fed: the network's samples/s on the GPU over the data
path's windows/s per CPU core, for each shipped config.

    .venv/bin/python benchmarks/bench_gpu_feed.py                       # projection on a CPU machine
    .venv/bin/python benchmarks/bench_gpu_feed.py --gpu-samples-per-s 9000 --config jobs/configs/pretrain.yaml

The data path's rate is measured here (`bench_pipeline.stream_rate`: one core, the config's
prior). The network's rate on a GPU is, in order of preference: `--gpu-samples-per-s` (e.g.
from `benchmarks/gpu_pretrain.py` on a GPU node), measured here when CUDA is available (training
steps, bf16 autocast, batch `--batch`), or projected from the analytic forward FLOPs of
`bench_model.forward_flops` (a training step = 3× forward) at `--gpu-tflops` × `--gpu-utilisation`
(defaults: an H100's 989 dense bf16 TFLOP/s at 15 % utilisation, an assumption printed with the
result). One JSON line per config, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
CONFIGS = ("pretrain.yaml", "cv.yaml", "tg80_multitask.yaml")


def measured_gpu_rate(config: str, batch: int, steps: int = 20) -> float:
    """Training samples/s of the config's model on this machine's GPU (bf16 autocast), on
    tg80-mini windows with their prior paths."""
    import torch

    from atomray.config import load_config
    from atomray.data.pipeline import fixed_windows, to_torch
    from atomray.model import build_model
    from atomray.train.loss import training_transform
    from atomray.train.optim import build_optimizer, train_step

    cfg = load_config(config, [f"data.path={ROOT / 'data' / 'tg80-mini'}"])
    molecules = ["aspirin", "paracetamol", "lib-2330", "toluene"]
    transform, _ = training_transform(cfg, molecules)
    batch_np = transform(fixed_windows(cfg.data.path, molecules, batch, cfg.data, 0))
    device = torch.device("cuda")
    data = to_torch(batch_np, device)
    model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k).to(device)
    opt = build_optimizer(model, cfg.optim)
    amp = torch.autocast("cuda", dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    for i in range(steps + 3):
        if i == 3:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        train_step(model, opt, data, cfg, i, steps + 3, gen, gen, amp)  # the worker loop's step
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def projected_gpu_rate(config: str, tflops: float, utilisation: float, atoms: int) -> float:
    """Training samples/s from the analytic FLOPs of the config's model at `atoms` tokens per slot."""
    from bench_model import forward_flops

    from atomray.config import load_config

    cfg = load_config(config)
    return tflops * 1e12 * utilisation / (3 * forward_flops(cfg.model, atoms, cfg.data.num_lags))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=None, help="repeatable; default: every shipped config")
    ap.add_argument("--gpu-samples-per-s", type=float, default=0.0, help="a measured GPU training rate")
    ap.add_argument("--gpu-tflops", type=float, default=989.0)
    ap.add_argument("--gpu-utilisation", type=float, default=0.15)
    ap.add_argument("--atoms", type=int, default=21, help="tokens per slot for the FLOP projection (aspirin)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--windows", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from bench_pipeline import stream_rate

    configs = args.config or [str(ROOT / "jobs" / "configs" / c) for c in CONFIGS]
    rows = []
    for config in configs:
        feed = stream_rate(config, args.windows, args.repeats, [])
        if args.gpu_samples_per_s:
            gpu, source = args.gpu_samples_per_s, "given"
        elif torch.cuda.is_available():
            gpu, source = measured_gpu_rate(config, args.batch), f"measured on {torch.cuda.get_device_name()}"
        else:
            gpu = projected_gpu_rate(config, args.gpu_tflops, args.gpu_utilisation, args.atoms)
            source = (f"projected: {args.gpu_tflops:g} TFLOP/s x {args.gpu_utilisation:g} utilisation (an assumption), "
                      f"{args.atoms} tokens per slot")
        row = {"config": Path(config).name, "prior": feed["prior"], "gpu_samples_per_s": round(gpu, 1),
               "gpu_rate_source": source, "windows_per_s_per_core": feed["windows_per_s_per_core"],
               "cores_per_gpu": round(gpu / feed["windows_per_s_per_core"], 2)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(json.dumps({"cores_per_gpu": {r["config"]: r["cores_per_gpu"] for r in rows}}))


if __name__ == "__main__":
    main()
