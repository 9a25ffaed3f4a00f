"""One GPU for real: `jobs/pretrain.py` on tg80-mini with the default config on one CUDA worker,
bf16 autocast, batch 256 — training samples/s, the share of each epoch spent waiting for data,
and the GPU's utilisation sampled by nvidia-smi while it trains.

    .venv/bin/python benchmarks/gpu_pretrain.py                     # on a node with one GPU
    .venv/bin/python benchmarks/gpu_pretrain.py --epochs 6 model.embed_dim=256 model.num_layers=6

The CPU side is Ray Data plus the worker's window stream (cutting windows and their prior paths,
`atomray.priors.paths`), on the node's cores; the figure to read is `data_wait_fraction` (target
≤ 0.10: the GPU is fed). Epochs after the first are counted. Prints one JSON line. Needs CUDA and
nvidia-smi; on a machine without them it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sample_utilisation(stop: threading.Event, out: list[float]) -> None:
    """Append the GPU's utilisation (%) every half second until `stop` is set."""
    proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                             "-lms", "500"], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if stop.is_set():
                break
            if line.strip().isdigit():
                out.append(float(line.strip()))
    finally:
        proc.terminate()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--cpus-per-worker", type=float, default=4.0)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available() or shutil.which("nvidia-smi") is None:
        print("gpu_pretrain: no CUDA device here (run it on a GPU node)", file=sys.stderr)
        return 2
    from atomray.config import load_config
    from atomray.train.pretrain import init_ray, pretrain, resolve

    with tempfile.TemporaryDirectory() as storage:
        cfg = resolve(load_config(ROOT / "jobs" / "configs" / "pretrain.yaml", [
            "scaling.num_workers=1", "scaling.use_gpu=true", "scaling.precision=bf16",
            f"scaling.cpus_per_worker={args.cpus_per_worker}", f"data.batch_size={args.batch}",
            f"data.train_windows={args.batch * 32}", f"train.epochs={args.epochs}", "tracking.enabled=false",
            f"storage_path={storage}", f"name=gpu-{time.time_ns()}", *args.overrides]), ROOT)
        init_ray("local", num_cpus=os.cpu_count(), num_gpus=1, include_dashboard=False, log_to_driver=False)
        stop, util = threading.Event(), []
        sampler = threading.Thread(target=sample_utilisation, args=(stop, util), daemon=True)
        sampler.start()
        try:
            result = pretrain(cfg)
        finally:
            stop.set()
    rows = result.history[1:] or result.history
    print(json.dumps({
        "device": torch.cuda.get_device_name(), "batch": args.batch, "epochs": args.epochs,
        "train_samples_per_s": round(statistics.median(r["train_samples_per_s"] for r in rows), 1),
        "data_wait_fraction": round(statistics.median(r["data_wait_fraction"] for r in rows), 4),
        "gpu_utilisation_percent_median": statistics.median(util) if util else None,
        "val_s2t_best": result.best["val_s2t"], "cpus": os.cpu_count(), "target_data_wait": 0.10,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
