"""Build a TG80-style MD data set (paper §3.3, App. C.4) with one Ray task per molecule.

    python jobs/build_tg80.py --preset mini --engine gfn2 --out data/tg80-mini
    python jobs/build_tg80.py --preset full --library CID-SMILES.gz --out /shared/tg80
    python jobs/build_tg80.py --preset tiny --out /tmp/tg80-tiny --set md.production_fs=400

Rerunning the same command resumes a killed build from the last finished segment of each
molecule. Presets: tiny (MMFF, seconds), mini (GFN2-xTB, ~16 molecules × 5 ps), tg80 (60
molecules × 5 ps from the same library), full (80 molecules × 31 ps). `--set key=value`
overrides any BuildConfig setting (dotted keys).
"""

from __future__ import annotations

import os

# one thread per engine process, set before any numerical library loads (see DESIGN: 1 task = 1 core)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402

from atomray.config import ConfigError  # noqa: E402
from atomray.data.dataset import validate_dataset  # noqa: E402
from atomray.data.frames import DataError  # noqa: E402
from atomray.outputs import OutputError, check_output_dir  # noqa: E402
from atomray.tg80.build import build  # noqa: E402
from atomray.tg80.library import LibraryError  # noqa: E402
from atomray.tg80.plan import BuildError, library_paths  # noqa: E402
from atomray.tg80.presets import PRESETS, preset_config  # noqa: E402
from atomray.tg80.seeds import SeedError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--engine", choices=["gfn2", "gfn1", "mmff", "orca"], help="default: the preset's")
    parser.add_argument("--out", required=True, help="output data set directory")
    parser.add_argument("--library", help="SMILES library: .smi/.csv(.gz) file(s), comma-separated, or a directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--executor", choices=["ray", "local"], default="ray")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="start a private local Ray with this many CPUs (default: Ray's choice)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: $RAY_ADDRESS, a running `ray start` cluster, or a new local one)")
    parser.add_argument("--poll-s", type=float, default=15.0, help="seconds between progress lines")
    args = parser.parse_args(argv)

    overrides = list(args.overrides)
    if args.engine:
        overrides.append(f"engine={args.engine}")
    if args.library:
        overrides.append(f"library={args.library}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    command = "python " + " ".join(shlex.quote(a) for a in ([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])))
    try:
        cfg = preset_config(args.preset, overrides)
        check_output_dir(args.out)  # these two fail before Ray starts or anything is written
        if cfg.library:
            library_paths(cfg)
        if args.executor == "ray":
            import ray

            address = args.address or ("local" if args.num_cpus else None)
            ray.init(address=address, num_cpus=args.num_cpus, include_dashboard=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
            logging.info("[tg80] ray resources: %s", ray.cluster_resources())
        summary = build(cfg, args.out, executor=args.executor, command=command, poll_s=args.poll_s)
        summary["validation"] = validate_dataset(args.out)
    except (ConfigError, BuildError, LibraryError, SeedError, OutputError, DataError) as err:
        print(f"build_tg80: error: {err}", file=sys.stderr)
        return 2
    summary.pop("computed")
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
