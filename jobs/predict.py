"""Predict a molecule's future positions with a trained ATOM (zero-shot for new molecules).

    python jobs/predict.py --smiles "CC(=O)Nc1ccc(O)cc1" --model models:/atom@champion \\
        --lags-fs 10 20 50 100 200 500 1000 --out paracetamol.extxyz
    python jobs/predict.py --structure start.extxyz --model ray_results/<run>/best --lags-fs 100 200

--model is a checkpoint directory, runs:/<run_id>/checkpoint, or models:/<name>@<alias>
(looked up at $MLFLOW_TRACKING_URI or --tracking-uri). A SMILES is embedded in 3-D (RDKit
ETKDG + MMFF94) with Maxwell–Boltzmann velocities at --temperature; a structure file keeps its
velocities when it has them. Writes one extxyz frame per lag (the model's atoms: every atom,
hydrogens included, for a model trained with data.context_atoms=all, else the heavy atoms;
`lag_fs` in each frame's info) and prints the time taken.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--smiles", help="the molecule as SMILES")
    source.add_argument("--structure", help="a structure file ase.io.read reads (first frame is used)")
    parser.add_argument("--model", required=True, help="checkpoint dir, runs:/ID/checkpoint or models:/NAME@ALIAS")
    parser.add_argument("--lags-fs", type=float, nargs="+", required=True, help="lags after the initial state, fs")
    parser.add_argument("--out", required=True, help="output .extxyz (a path or URI)")
    parser.add_argument("--temperature", type=float, default=300.0, help="K, for drawn velocities (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 3-D embedding and velocities")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI for runs:/ and models:/ sources")
    args = parser.parse_args(argv)

    import tempfile
    from pathlib import Path

    from atomray import storage, tracking
    from atomray.config import ConfigError, TrackingConfig
    from atomray.data.frames import DataError
    from atomray.checkpoint import CheckpointError
    from atomray.outputs import OutputError, check_output_file
    from atomray.predict import predict, state_from_file, state_from_smiles, write_extxyz

    t0 = time.perf_counter()
    try:
        check_output_file(args.out)  # before any work
        uri = tracking.resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri))
        model, cfg, trained = tracking.load_model_uri(uri, args.model)  # trained: the checkpoint's TrainState
        elements = trained.elements
        state = (state_from_smiles(args.smiles, args.temperature, args.seed) if args.smiles
                 else state_from_file(args.structure, args.temperature, args.seed))
        t1 = time.perf_counter()
        frames = predict(model, cfg, state, args.lags_fs, elements)
        t2 = time.perf_counter()
        if storage.is_uri(args.out):  # written locally, then copied to the store in one piece
            with tempfile.TemporaryDirectory(prefix="atomray-predict-") as tmp:
                local = write_extxyz(Path(tmp) / storage.basename(args.out), frames)
                path = storage.write_bytes(args.out, local.read_bytes())
        else:
            path = write_extxyz(args.out, frames)
    except (DataError, ConfigError, CheckpointError, OutputError, LookupError, OSError) as err:  # OSError: StorageError
        print(f"predict: error: {err}", file=sys.stderr)
        return 2
    print(f"predicted {len(frames.lags_fs)} frames of {len(frames.atomic_numbers)} atoms of {state.name!r} "
          f"({cfg.model.name}, lags {frames.lags_fs.min():g}-{frames.lags_fs.max():g} fs) -> {path}")
    print(f"time: model load + input {1000 * (t1 - t0):.0f} ms, prediction {1000 * (t2 - t1):.1f} ms, "
          f"total {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
