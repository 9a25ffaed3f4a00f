"""MD throughput of the TG80 builder.

    python benchmarks/bench_md.py [--repeats 3] [--steps 300] [--molecules 4] [--production-fs 2000]
    python benchmarks/bench_md.py --repeats 1 --steps 20 --molecules 2 --production-fs 100   # runs it; too small for the speed-up

Prints one JSON line (the last line of output) with
    fs_per_s_per_core       simulated fs per wall-second on one core, GFN2-xTB aspirin
                            (velocity Verlet, 1 fs; median of `repeats` runs of `steps` steps)
    ray_speedup_2_workers   wall time of a Ray build of `molecules` GFN2-xTB molecules with one
                            worker (ray.init(num_cpus=1)) over the same build with two
                            (target >= 1.7); each build in a fresh directory and Ray session
and the raw timings. Takes about 3-4 minutes on 2 idle cores.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core per engine, before tblite loads

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from atomray.tg80.build import build  # noqa: E402
from atomray.tg80.dynamics import MDConfig, prepare_state, run_steps  # noqa: E402
from atomray.tg80.engines import embed, make_engine, molecule_with_hydrogens  # noqa: E402
from atomray.tg80.presets import preset_config  # noqa: E402

# four molecules of about the same size (19-21 atoms), so two workers can split them evenly
BENCH_MOLECULES = "aspirin,paracetamol,vanillin,methyl_salicylate,salicylic_acid,coumarin,isoniazid,nicotinamide"


def single_core_fs_per_s(steps: int, repeats: int) -> tuple[float, list[float], float]:
    """Median simulated fs per wall-second of GFN2-xTB aspirin NVE on this core, every run's
    rate, and the median per CPU-second (equal on an idle core; higher when others share it)."""
    mol = molecule_with_hydrogens("CC(=O)Oc1ccccc1C(=O)O", "aspirin")
    masses = np.array([a.GetMass() for a in mol.GetAtoms()])
    engine = make_engine("gfn2", mol, "aspirin")
    cfg = MDConfig(equilibration_fs=100.0, production_fs=float(steps), segment_fs=float(steps))
    state = prepare_state(engine, embed(mol, 0, "aspirin"), masses, cfg, seed=0)
    rates, cpu_rates = [], []
    for _ in range(repeats):
        engine.reset()
        t0, c0 = time.perf_counter(), time.process_time()
        run_steps(state, engine, masses, cfg, steps, "nve", record=True)
        rates.append(steps * cfg.dt_fs / (time.perf_counter() - t0))
        cpu_rates.append(steps * cfg.dt_fs / (time.process_time() - c0))
    return statistics.median(rates), rates, statistics.median(cpu_rates)


def ray_build_seconds(num_cpus: int, n_molecules: int, production_fs: float) -> tuple[float, float]:
    """Wall seconds of a Ray build of n GFN2 molecules with `num_cpus` workers, and the share
    of those workers' cores the tasks really got (task CPU seconds / (workers x wall)): on a
    shared machine a share well below 1 means other processes took the cores."""
    import ray

    cfg = preset_config("tiny", [
        "engine=gfn2", f"seed_names={BENCH_MOLECULES}", f"n_seeds={n_molecules}",
        "md.equilibration_fs=100", f"md.production_fs={production_fs}", f"md.segment_fs={production_fs / 2}",
    ])
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            summary = build(cfg, out, executor="ray", progress=lambda p: None, poll_s=1.0)
            wall = time.perf_counter() - t0
            return wall, sum(r["cpu_s"] for r in summary["computed"]) / (num_cpus * wall)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--molecules", type=int, default=4)
    parser.add_argument("--production-fs", type=float, default=2000.0)
    args = parser.parse_args()

    fs_per_s, rates, fs_per_cpu_s = single_core_fs_per_s(args.steps, args.repeats)
    print(f"GFN2-xTB aspirin, one core: {fs_per_s:.1f} fs/s ({1000 / fs_per_s:.2f} ms per 1-fs step); runs {rates}")
    t1, share1 = ray_build_seconds(1, args.molecules, args.production_fs)
    print(f"Ray build of {args.molecules} molecules, 1 worker: {t1:.1f} s (core share {share1:.2f})")
    t2, share2 = ray_build_seconds(2, args.molecules, args.production_fs)
    print(f"Ray build of {args.molecules} molecules, 2 workers: {t2:.1f} s (core share {share2:.2f})")
    print(json.dumps(dict(
        fs_per_s_per_core=round(fs_per_s, 2),
        ray_speedup_2_workers=round(t1 / t2, 3),
        ray_build_1_worker_s=round(t1, 2),
        ray_build_2_workers_s=round(t2, 2),
        core_share_1_worker=round(share1, 3),
        core_share_2_workers=round(share2, 3),
        molecules=args.molecules,
        production_fs_per_molecule=args.production_fs,
        single_core_runs_fs_per_s=[round(r, 2) for r in rates],
        fs_per_cpu_s=round(fs_per_cpu_s, 2),
        load_average_1min=round(os.getloadavg()[0], 2),
        cpu_count=os.cpu_count(),
    )))


if __name__ == "__main__":
    main()
