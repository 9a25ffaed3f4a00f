"""Is the data path ever the bottleneck? Ray Data → Ray Train vs the same loop fed from memory.

Runs the same training on the shipped TG80-mini set with 2 CPU workers (DDP, gloo), streaming
through the real pipeline (read_parquet + chunking → streaming split → worker window stream)
and with each worker's windows drawn into memory up front (same model, same loop, same
batches per epoch). Throughput is training samples per second of the epochs after the first
(start-up excluded). Each run starts its own local Ray instance, and the runs alternate
A B B A … over `--repeats` pairs so that drift of a shared machine falls on both feeds alike;
a feed's figure is the median over all its counted epochs (epoch-to-epoch noise on a shared
2-core VM is ±10 %, so one short run of each cannot resolve a 10 % gap).

    .venv/bin/python benchmarks/bench_pipeline.py            # last line: one JSON object
    .venv/bin/python benchmarks/bench_pipeline.py --gpu      # 1 GPU worker instead (on a GPU node)

Target: ratio = pipeline / in-memory ≥ 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(feed: str, overrides: list[str], storage: str) -> dict:
    import ray

    from atomray.config import load_config
    from atomray.train.pretrain import init_ray, pretrain, resolve

    cfg = resolve(load_config(ROOT / "jobs" / "configs" / "pretrain.yaml",
                              overrides + [f"storage_path={storage}", f"name=bench-{feed}-{time.time_ns()}",
                                           "tracking.enabled=false",
                                           f"data.train_feed={'fixed' if feed == 'memory' else 'stream'}"]), ROOT)
    init_ray("local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        result = pretrain(cfg)
    finally:
        ray.shutdown()
    rates = [r["train_samples_per_s"] for r in result.history[1:]]
    waits = [r["data_wait_fraction"] for r in result.history[1:]]
    print(f"{feed}: epochs at {[round(r, 1) for r in rates]} samples/s", file=sys.stderr, flush=True)
    return {"rates": rates, "waits": waits}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5, help="per run; the first is not counted")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs, one of each feed")
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()

    overrides = [f"train.epochs={args.epochs}", "data.train_windows=4096", "data.val_windows=256",
                 "data.test_windows=0"]
    if args.gpu:
        overrides += ["scaling.num_workers=1", "scaling.use_gpu=true", "scaling.cpus_per_worker=4",
                      "data.batch_size=192"]
    else:
        overrides += ["scaling.num_workers=2", "scaling.cpus_per_worker=0.5"]
    runs: dict[str, list[dict]] = {"memory": [], "ray_data": []}
    with tempfile.TemporaryDirectory() as storage:
        for i in range(args.repeats):
            order = ("memory", "ray_data") if i % 2 == 0 else ("ray_data", "memory")
            for feed in order:
                runs[feed].append(run(feed, overrides, storage))
    pipeline = statistics.median(x for r in runs["ray_data"] for x in r["rates"])
    memory = statistics.median(x for r in runs["memory"] for x in r["rates"])
    pairs = zip(runs["ray_data"], runs["memory"])
    print(json.dumps({
        "pipeline_samples_per_s": round(pipeline, 1),
        "in_memory_samples_per_s": round(memory, 1),
        "ratio": round(pipeline / memory, 3),
        "pair_ratios": [round(statistics.median(p["rates"]) / statistics.median(m["rates"]), 3) for p, m in pairs],
        "pipeline_data_wait_fraction": round(statistics.median(x for r in runs["ray_data"] for x in r["waits"]), 4),
        "epochs": args.epochs, "repeats": args.repeats, "workers": 1 if args.gpu else 2,
        "device": "cuda" if args.gpu else "cpu", "load_average_1min": round(os.getloadavg()[0], 2),
        "target_ratio": 0.9,
    }))


if __name__ == "__main__":
    main()
