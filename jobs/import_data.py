"""Import public MD files into a TG80-frames data set, or export one molecule back out.

Import (the default subcommand; `import` may be written or left out):

    python jobs/import_data.py --format md17 --dt-fs 0.5 md17_aspirin.npz md17_ethanol.npz --out data/md17
    python jobs/import_data.py import --format rmd17 --dt-fs 0.5 rmd17_aspirin.npz --out data/rmd17

Export (one molecule; the suffix of --to picks the format: .npz, .extxyz, .xyz, .traj):

    python jobs/import_data.py export --data data/md17 --molecule aspirin --to aspirin.extxyz

The work is done by `atomray.data.importers` and `atomray.data.exporters`; see their module
docstrings for the formats, units and the velocity convention.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from atomray.config import ConfigError
from atomray.data.exporters import export_molecule
from atomray.data.frames import DataError
from atomray.data.importers import import_dataset
from atomray.data.sources import FORMATS, ImportConfig
from atomray.outputs import OutputError

EPILOG = "Export a molecule instead: import_data.py export --data DIR --molecule ID --to FILE"


def import_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="import_data.py [import]", epilog=EPILOG,
        description="Import MD17 / rMD17 / MD22 / npz / ASE-readable files (one molecule per file) "
                    "into a TG80-frames data set directory, written atomically.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="input files, one molecule each")
    p.add_argument("--format", required=True, choices=FORMATS, help="input format")
    p.add_argument("--dt-fs", required=True, type=float,
                   help="time between consecutive frames in fs (MD17 / rMD17: 0.5, MD22: 1.0)")
    p.add_argument("--out", required=True, help="output data set directory (new or empty)")
    p.add_argument("--molecule-id", action="append", default=[],
                   help="molecule id; give once per input (default: from the file name)")
    p.add_argument("--segment-frames", type=int, default=0,
                   help="split contiguous runs into segments of N frames (default: one per run)")
    p.add_argument("--min-segment-frames", type=int, default=0,
                   help="drop runs with fewer rows (default: 2 if velocities are derived, else 1)")
    p.add_argument("--min-frames", type=int, default=1,
                   help="refuse a molecule whose longest contiguous piece has fewer frames")
    p.add_argument("--positions-key", default="", help="npz key of the positions (Å)")
    p.add_argument("--elements-key", default="", help="npz key of the atomic numbers")
    p.add_argument("--velocities-key", default="", help="npz key of the velocities (Å/fs)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="import_data.py export",
        description="Export one molecule of a data set to an sGDML-style npz (R, z, V in Å/fs, "
                    "dt_fs, t_fs) or via ASE to extxyz / traj (velocities in ASE units).")
    p.add_argument("--data", required=True, help="data set directory")
    p.add_argument("--molecule", default=None, help="molecule id (default: the only molecule)")
    p.add_argument("--to", required=True, help="output file: .npz, .extxyz, .xyz or .traj")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["export"]:
            args = export_parser().parse_args(argv[1:])
            path = export_molecule(args.data, args.molecule, args.to, args.overwrite)
            print(f"wrote {path}")
            return 0
        args = import_parser().parse_args(argv[1:] if argv[:1] == ["import"] else argv)
        cfg = ImportConfig(
            format=args.format, dt_fs=args.dt_fs, molecule_ids=tuple(args.molecule_id),
            segment_frames=args.segment_frames, min_segment_frames=args.min_segment_frames,
            min_frames=args.min_frames, positions_key=args.positions_key,
            elements_key=args.elements_key, velocities_key=args.velocities_key,
            overwrite=args.overwrite,
        )
        command = shlex.join([sys.executable, *sys.argv])
        for summary in import_dataset(args.inputs, args.out, cfg, command=command):
            print(summary.line())
        print(f"wrote {args.out}")
        return 0
    except (ConfigError, DataError, OutputError) as err:
        print(f"import_data: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
