"""Compute a data set's per-frame physics once, beside its frames: each frame's conformer basin,
the refined minimum and its normal modes (`atomray.priors.frames`).

    python jobs/frame_physics.py --data data/tg80-mini                 # every molecule that lacks it
    python jobs/frame_physics.py --data s3://bucket/tg80 --molecules aspirin benzene
    python jobs/frame_physics.py --data data/md17-aspirin --recompute  # drop this version, compute again

Molecules run as Ray tasks (one per molecule, one CPU each) on the cluster in $RAY_ADDRESS, or
on a local Ray instance. Training, cross-validation, sweeps and `jobs/evaluate.py` read the
result and never minimise a frame again; `jobs/pretrain.py` computes what is missing itself
before training, so this job is for doing it ahead of time (e.g. right after an import).
Prints one line per molecule (frames, basins, seconds) and where the files went.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data set directory or URI")
    parser.add_argument("--molecules", nargs="*", default=None, help="molecule ids (default: all)")
    parser.add_argument("--recompute", action="store_true",
                        help="delete this version's stored physics of the data set first")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance (default: all)")
    args = parser.parse_args(argv)

    from atomray import storage
    from atomray.data.dataset import read_molecules
    from atomray.data.frames import DataError
    from atomray.priors.frames import ensure_frame_physics, missing_molecules, physics_dir
    from atomray.storage import StorageError

    try:
        ids = read_molecules(args.data).column("molecule_id").to_pylist()
        wanted = args.molecules or ids
        unknown = [m for m in wanted if m not in ids]
        if unknown:
            raise DataError(f"{args.data}: no molecule {unknown[0]!r} (it holds {', '.join(ids[:20])})")
        if args.recompute and storage.exists(physics_dir(args.data)):
            storage.delete_dir(physics_dir(args.data))
        todo = missing_molecules(args.data, wanted)
        print(f"frame_physics: {len(wanted)} molecule(s) in {args.data}, {len(todo)} to compute", flush=True)
        t0 = time.perf_counter()
        started = False
        if todo:
            import ray

            from atomray.train.pretrain import init_ray

            started = not ray.is_initialized()
            init_ray(num_cpus=args.num_cpus)
        try:
            physics = ensure_frame_physics(args.data, wanted)
        finally:
            if started:  # a caller's own Ray instance stays up; the one this job started goes
                ray.shutdown()
    except (DataError, StorageError) as err:
        print(f"frame_physics: error: {err}", file=sys.stderr)
        return 2
    for mid, mol in physics.molecules.items():
        frames = sum(len(f) for f in mol.frames.values())
        none = sum(int((f < 0).sum()) for f in mol.frames.values())
        print(f"  {mid}: {frames} frames, {len(mol.basins)} basin(s)" + (f", {none} frames MMFF94 cannot type" if none else ""))
    print(f"wrote {physics_dir(args.data)} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
