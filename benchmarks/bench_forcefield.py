"""Batched MMFF94 molecular dynamics (`atomray.priors.forcefield.verlet_paths`) against the
per-window RDKit loop it replaces (`mmff_acceleration` + `verlet_path`), on CPU.

    .venv/bin/python benchmarks/bench_forcefield.py [--threads 1] [--batch 64] [--max-lag-fs 400] [--compiled]

A batch of `batch` windows drawn from `molecules` tg80-mini molecules (random frames), each with
`lags` lags uniform on (0, max-lag-fs] fs, is integrated both ways with 0.5-fs velocity-Verlet
steps. Both sides perceive bonds and read MMFF94 parameters per window, as the data path does,
and that setup is inside their times (`batched_setup_s` says how much of the batched time it
is). Rounds alternate which side runs first; times are medians over `rounds` rounds. Prints
one JSON line:
    rdkit_s, batched_s          wall seconds for the whole batch
    *_windows_per_s             batch / those seconds
    speedup                     rdkit_s / batched_s
    max_abs_diff_a              largest |batched − RDKit| position at any lag, any atom (Å)
and with --compiled the same for `verlet_paths(compiled=True)` (`compile_s`: the first,
compiling call). ~15 s at the defaults on one core, ~40 s with --compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atomray.data.dataset import read_molecules  # noqa: E402
from atomray.data.pipeline import molecule_files, molecule_segments  # noqa: E402
from atomray.elements import atomic_masses  # noqa: E402
from atomray.priors.anharmonic import mmff_acceleration, verlet_path  # noqa: E402
from atomray.priors.forcefield import MMFFBatch, mmff_terms, step_plan, verlet_paths  # noqa: E402


def draw_windows(root: Path, n_molecules: int, batch: int, n_lags: int, max_lag_fs: float, seed: int):
    """`batch` windows: lists of start positions (N_b, 3) Å, velocities (N_b, 3) Å/fs, atomic
    numbers (N_b,), and lags (batch, n_lags) fs."""
    rng = np.random.default_rng(seed)
    ids = read_molecules(root).column("molecule_id").to_pylist()
    chosen = [ids[k] for k in np.linspace(0, len(ids) - 1, min(n_molecules, len(ids))).round().astype(int)]
    segments = {m: molecule_segments(root, m, molecule_files(root, [m])[m])[0] for m in chosen}
    xs, vs, zs = [], [], []
    for _ in range(batch):
        seg = segments[chosen[rng.integers(len(chosen))]]
        f = rng.integers(len(seg.positions))
        xs.append(seg.positions[f].astype(np.float64))
        vs.append(seg.velocities[f].astype(np.float64))
        zs.append(np.asarray(seg.atomic_numbers))
    lags = max_lag_fs * (1.0 - rng.random((batch, n_lags)))  # (0, max]
    return xs, vs, zs, lags


def rdkit_loop(xs, vs, zs, lags) -> list[np.ndarray]:
    """Per-window RDKit MD: (P, N_b, 3) Å per window."""
    return [verlet_path(x, v, lag, mmff_acceleration(x, z)) for x, v, z, lag in zip(xs, vs, zs, lags)]


def batched(xs, vs, zs, lags, compiled: bool) -> tuple[torch.Tensor, float]:
    """(B, P, N, 3) Å from `verlet_paths`, and the seconds spent on perception and stacking."""
    t0 = time.perf_counter()
    n = max(len(z) for z in zs)
    pad = np.zeros((3, len(xs), n, 3))
    mass = np.zeros((len(xs), n))
    for b, (x, v, z) in enumerate(zip(xs, vs, zs)):
        pad[0, b, :len(z)], pad[1, b, :len(z)], mass[b, :len(z)] = x, v, atomic_masses(z)
    batch = MMFFBatch.stack([mmff_terms(x, z) for x, z in zip(xs, zs)], n)
    setup = time.perf_counter() - t0
    paths = verlet_paths(batch, torch.from_numpy(pad[0]), torch.from_numpy(pad[1]), torch.from_numpy(mass),
                         torch.from_numpy(lags), compiled=compiled)
    return paths, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-lag-fs", type=float, default=400.0)
    parser.add_argument("--lags", type=int, default=8)
    parser.add_argument("--molecules", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compiled", action="store_true", help="also time verlet_paths(compiled=True)")
    parser.add_argument("--data", default=str(ROOT / "data" / "tg80-mini"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    xs, vs, zs, lags = draw_windows(Path(args.data), args.molecules, args.batch, args.lags, args.max_lag_fs, args.seed)
    sides = {"rdkit": lambda: rdkit_loop(xs, vs, zs, lags),
             "batched": lambda: batched(xs, vs, zs, lags, compiled=False)}
    row = {}
    if args.compiled:
        t0 = time.perf_counter()
        batched(xs, vs, zs, lags, compiled=True)
        row["compile_s"] = round(time.perf_counter() - t0, 2)
        sides["compiled"] = lambda: batched(xs, vs, zs, lags, compiled=True)
    times = {name: [] for name in sides}
    results, setups = {}, []
    for r in range(args.rounds):
        names = list(sides) if r % 2 == 0 else list(sides)[::-1]  # alternate who runs first
        for name in names:
            t0 = time.perf_counter()
            results[name] = sides[name]()
            times[name].append(time.perf_counter() - t0)
            if name == "batched":
                setups.append(results[name][1])
    reference = results["rdkit"]
    for name in sides:
        if name == "rdkit":
            continue
        paths = results[name][0].numpy()
        seconds = statistics.median(times[name])
        row[f"{name}_s"] = round(seconds, 3)
        row[f"{name}_windows_per_s"] = round(args.batch / seconds, 1)
        row[f"{name}_speedup"] = round(statistics.median(times["rdkit"]) / seconds, 2)
        row[f"{name}_max_abs_diff_a"] = float(max(np.abs(paths[b, :, :len(z)] - ref).max()
                                                  for b, (z, ref) in enumerate(zip(zs, reference))))
    rdkit_s = statistics.median(times["rdkit"])
    plan, _ = step_plan(lags, 0.5)
    print(json.dumps(dict(
        rdkit_s=round(rdkit_s, 3), rdkit_windows_per_s=round(args.batch / rdkit_s, 1), **row,
        batched_setup_s=round(statistics.median(setups), 3),
        rounds_s={name: [round(t, 3) for t in ts] for name, ts in times.items()},
        batch=args.batch, lags=args.lags, max_lag_fs=args.max_lag_fs, molecules=args.molecules,
        atoms_max=max(len(z) for z in zs), batched_steps=len(plan),
        rdkit_steps=int(sum((p > 0).sum() for p in plan.T)), threads=args.threads,
        torch=torch.__version__, load_average_1min=round(os.getloadavg()[0], 2), cpu_count=os.cpu_count(),
    )))


if __name__ == "__main__":
    main()
