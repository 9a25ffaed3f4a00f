"""How fast the data path feeds a training worker, and whether it is ever the bottleneck.

Default: windows per second that one CPU core delivers to a training worker, for a shipped
config's prior — the worker's window stream (`atomray.data.pipeline.WindowStream`: cut windows
from the chunks Ray Data sends, pool, shuffle, pad, attach the prior paths, convert to torch),
pinned to one core, fed the chunk tables `chunk_segments` makes of tg80-mini (what Ray Data's
read tasks hand the worker). Median over `--repeats` epochs of `--windows` windows each.

    .venv/bin/python benchmarks/bench_pipeline.py                                   # pretrain.yaml
    .venv/bin/python benchmarks/bench_pipeline.py --config jobs/configs/cv.yaml

Target (issue 30): ≥ 1,000 windows/s per core with every shipped config's prior.

`--end-to-end`: is the data path ever the bottleneck of a whole training run? Ray Data → Ray
Train vs the same loop fed from memory. Runs the same training on the shipped TG80-mini set with 2 CPU workers (DDP, gloo), streaming
through the real pipeline (read_parquet + chunking → streaming split → worker window stream)
and with each worker's windows drawn into memory up front (same model, same loop, same
batches per epoch). Throughput is training samples per second of the epochs after the first
(start-up excluded). Each run starts its own local Ray instance, and the runs alternate
A B B A … over `--repeats` pairs so that drift of a shared machine falls on both feeds alike;
a feed's figure is the median over all its counted epochs (epoch-to-epoch noise on a shared
2-core VM is ±10 %, so one short run of each cannot resolve a 10 % gap).

    .venv/bin/python benchmarks/bench_pipeline.py --end-to-end        # last line: one JSON object
    .venv/bin/python benchmarks/bench_pipeline.py --end-to-end --gpu  # 1 GPU worker instead (on a GPU node)

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
from dataclasses import replace
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


class ChunkShard:
    """The worker's view of its Ray Data shard: `iter_batches` over chunk tables (pyarrow), as
    the streaming split delivers them."""

    def __init__(self, tables: list):
        self.tables = tables

    def iter_batches(self, **_: object):
        yield from self.tables


def stream_rate(config: str, windows: int, repeats: int, overrides: list[str]) -> dict:
    """Windows per second one core's window stream delivers (median of `repeats` epochs); the
    process runs on one core and one torch thread meanwhile, and is given its cores back after."""
    import torch

    cores, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {sorted(cores)[0]})  # one core: the figure is per core
    torch.set_num_threads(1)
    try:
        return _one_core_rate(config, windows, repeats, overrides)
    finally:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(threads)


def _one_core_rate(config: str, windows: int, repeats: int, overrides: list[str]) -> dict:
    import numpy as np

    from atomray.config import load_config
    from atomray.data.dataset import read_molecules, read_parquet
    from atomray.data.pipeline import EpochPlan, WindowStream, chunk_segments, count_starts, scan_segments
    from atomray.data.splits import make_split, usable_molecules
    from atomray.train.loss import training_transform
    from atomray.train.pretrain import resolve

    cfg = resolve(load_config(config, overrides + [f"data.path={ROOT / 'data' / 'tg80-mini'}"]), ROOT)
    table = usable_molecules(cfg.data)
    split = make_split(table.column("molecule_id").to_pylist(), table.column("smiles").to_pylist(), cfg.data)
    transform, _ = training_transform(cfg, list(split.train))
    segments = scan_segments(cfg.data.path, split.train)
    z = dict(zip(*(read_molecules(cfg.data.path).column(c).to_pylist() for c in ("molecule_id", "atomic_numbers"))))
    tables = [chunk_segments(read_parquet(path), cfg.data, z) for path in sorted({s.path for s in segments})]
    tables = [t.filter(np.isin(t.column("molecule_id").to_numpy(zero_copy_only=False), list(split.train)))
              for t in tables]
    local = cfg.data.batch_size // cfg.scaling.num_workers
    data = replace(cfg.data, train_windows=windows, batch_size=local)
    plan = EpochPlan.make(data, count_starts(segments, data), 1)
    rates = []
    for epoch in range(repeats + 1):
        stream = WindowStream(ChunkShard(tables), data, plan, cfg.train.seed, 0, transform=transform,
                              with_context=transform.context)
        t0 = time.perf_counter()
        n = 0
        for _, batches in stream.epochs(epoch, epoch + 1):
            for batch in batches:
                n += len(batch["x0"])
        stream.close()
        if epoch:  # the first epoch warms caches and imports
            rates.append(n / (time.perf_counter() - t0))
    return {"config": Path(config).name, "prior": cfg.model.prior + ("+anharmonic" if cfg.model.anharmonic else ""),
            "loss_weighting": cfg.train.loss_weighting, "batch": local,
            "windows_per_s_per_core": round(statistics.median(rates), 1), "epoch_rates": [round(r, 1) for r in rates],
            "windows_per_epoch": plan.steps_per_epoch * plan.local_batch,
            "prior_paths_s_per_window": {k: round(v / max(1, repeats + 1) / (plan.steps_per_epoch * plan.local_batch), 6)
                                         for k, v in transform.seconds.items()},
            "cores": 1, "load_average_1min": round(os.getloadavg()[0], 2), "target_windows_per_s_per_core": 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "jobs" / "configs" / "pretrain.yaml"))
    parser.add_argument("--windows", type=int, default=2048, help="windows per epoch of the stream benchmark")
    parser.add_argument("--end-to-end", action="store_true", help="the Ray Data vs in-memory training comparison")
    parser.add_argument("--epochs", type=int, default=5, help="per run; the first is not counted")
    parser.add_argument("--repeats", type=int, default=3, help="epochs (stream) or pairs of runs (--end-to-end)")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    args = parser.parse_args()
    if not args.end_to_end:
        print(json.dumps(stream_rate(args.config, args.windows, args.repeats, args.overrides)))
        return

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
