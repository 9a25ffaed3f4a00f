"""Reference MD runs one after another against the same runs in parallel processes.

    python benchmarks/reference_workers.py [--smiles CCCCCC] [--runs 2] [--ps 2] [--workers 2] [--repeats 3]
    python benchmarks/reference_workers.py --runs 2 --ps 0.2 --repeats 1      # runs it; too short to time

`jobs/rollout.py --reference-runs K --reference-workers W` computes the K independent GFN2-xTB
runs of its reference (`atomray.rollout_check.pooled_md`) W at a time, each in its own process
with cores / W OpenMP threads; W = 1 runs them in the job's own process, one after another, with
the engine's default threads (every core). Each repeat times both on the same runs (NVT at 300 K
after 200 fs of equilibration, no cache), serial first on odd repeats and parallel first on even
ones. Prints one JSON line (the last line of output): the median wall seconds of each, their
ratio `speedup` (serial / parallel: the ratio measured in one run is what counts on a shared
machine), every repeat's timings, and `same_frames`: whether both arms gave the same frames to
the last bit (MMFF94: yes; GFN2-xTB: not across thread counts, tblite's sums then run in another
order and MD parts the rounding within a few hundred steps, so the runs are equally valid but
not bitwise equal).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smiles", default="CCCCCC")
    parser.add_argument("--runs", type=int, default=2, help="independent runs (default 2)")
    parser.add_argument("--ps", type=float, default=2.0, help="ps of MD per run (default 2)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes of the parallel arm (default: the machine's cores)")
    parser.add_argument("--engine", default="gfn2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.runs < 2 or args.workers < 2 or args.repeats < 1 or not args.ps > 0:
        parser.error("--runs and --workers must be >= 2, --repeats >= 1 and --ps > 0")

    from atomray.predict import state_from_smiles
    from atomray.rollout_check import pooled_md

    state = state_from_smiles(args.smiles, 300.0, 0)
    kw = dict(equilibrate_fs=200.0, temperature_k=300.0, ensemble="nvt")
    times: dict[str, list[float]] = {"serial": [], "parallel": []}
    same = []
    for repeat in range(args.repeats):
        order = ("serial", "parallel") if repeat % 2 == 0 else ("parallel", "serial")
        frames = {}
        for arm in order:
            t = time.perf_counter()
            ref = pooled_md(state, args.smiles, 1000.0 * args.ps, args.runs, args.engine,
                            workers=1 if arm == "serial" else args.workers, **kw)
            times[arm].append(time.perf_counter() - t)
            frames[arm] = ref.positions
            print(f"repeat {repeat + 1}/{args.repeats} {arm}: {times[arm][-1]:.1f} s", flush=True)
        same.append(bool(np.array_equal(frames["serial"], frames["parallel"])))
    serial, parallel = statistics.median(times["serial"]), statistics.median(times["parallel"])
    ratios = [s / p for s, p in zip(times["serial"], times["parallel"])]
    print(json.dumps({"benchmark": "reference_workers", "smiles": args.smiles, "engine": args.engine,
                      "runs": args.runs, "ps_per_run": args.ps, "workers": args.workers,
                      "cores": os.cpu_count(), "serial_s": round(serial, 2), "parallel_s": round(parallel, 2),
                      "speedup": round(statistics.median(ratios), 3), "same_frames": all(same),
                      "serial_times_s": [round(t, 2) for t in times["serial"]],
                      "parallel_times_s": [round(t, 2) for t in times["parallel"]]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
