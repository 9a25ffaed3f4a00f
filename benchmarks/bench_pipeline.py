"""Is the data path ever the bottleneck? Ray Data → Ray Train vs the same loop fed from memory.

Runs the same training twice on the shipped TG80-mini set with 2 CPU workers (DDP, gloo):
once streaming through the real pipeline (read_parquet → chunks → streaming split → worker
window stream), once with each worker's windows drawn into memory up front (same model, same
loop, same batches per epoch). Throughput is training samples per second over the epochs after
the first (start-up excluded), median over epochs.

    .venv/bin/python benchmarks/bench_pipeline.py            # last line: one JSON object
    .venv/bin/python benchmarks/bench_pipeline.py --gpu      # 1 GPU worker instead (on a GPU node)

Target: ratio = pipeline / in-memory ≥ 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(feed: str, overrides: list[str], storage: str) -> dict:
    from atomray.config import load_config
    from atomray.train.pretrain import pretrain, resolve

    cfg = resolve(load_config(ROOT / "jobs" / "configs" / "pretrain.yaml",
                              overrides + [f"storage_path={storage}", f"name=bench-{feed}-{int(time.time())}",
                                           "tracking.enabled=false"]), ROOT)
    result = pretrain(cfg, feed=feed)
    rates = [r["train_samples_per_s"] for r in result.history[1:]]
    waits = [r["data_wait_fraction"] for r in result.history[1:]]
    return {"samples_per_s": statistics.median(rates), "data_wait": statistics.median(waits),
            "epochs": len(result.history)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    import ray

    overrides = [f"train.epochs={args.epochs}", "data.train_windows=4096", "data.val_windows=256",
                 "data.test_windows=0"]
    if args.gpu:
        overrides += ["scaling.num_workers=1", "scaling.use_gpu=true", "scaling.cpus_per_worker=4",
                      "data.batch_size=192"]
    else:
        overrides += ["scaling.num_workers=2", "scaling.cpus_per_worker=0.5"]
    from atomray.train.pretrain import init_ray

    init_ray("local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        memory = run("memory", overrides, storage)
        pipeline = run("ray_data", overrides, storage)
    ray.shutdown()
    print(json.dumps({
        "pipeline_samples_per_s": round(pipeline["samples_per_s"], 1),
        "in_memory_samples_per_s": round(memory["samples_per_s"], 1),
        "ratio": round(pipeline["samples_per_s"] / memory["samples_per_s"], 3),
        "pipeline_data_wait_fraction": round(pipeline["data_wait"], 4),
        "epochs": args.epochs, "workers": 1 if args.gpu else 2, "device": "cuda" if args.gpu else "cpu",
        "load_average_1min": round(os.getloadavg()[0], 2), "target_ratio": 0.9,
    }))


if __name__ == "__main__":
    main()
