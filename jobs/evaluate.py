"""Evaluate a trained model on any data set beside the physics floors on the same windows.

    python jobs/evaluate.py --model models:/atom@champion --data data/tg80-mini
    python jobs/evaluate.py --model ray_results/<run>/best --data data/md17-aspirin \\
        --horizons-fs 25 100 400 1000 --num-lags 4 8 16 32 --windows 200 --out eval/
    python jobs/evaluate.py --model ray_results/<run>/best --validation     # the run's own val windows

--model is a checkpoint directory, runs:/<run_id>/checkpoint or models:/<name>@<alias> (looked
up at $MLFLOW_TRACKING_URI or --tracking-uri); --data any data set `validate_dataset` accepts
(TG80 frames, imported MD17 / MD22 / npz / extxyz). For every molecule, horizon ΔT and number
of lags P it draws --windows fixed windows (uniform lags, seeded) and scores the model and the
physics floors (docs/physics-floors.md) on exactly those windows; the prior paths come from the
data set's stored per-frame physics, or from the machine's basin store when it has none. The
last line says where the time went. Writes evaluation.csv (a row per P × molecule × ΔT, and a mean row
per P × ΔT), evaluation.md (the tables to read) and s2t_vs_dt.png to --out, and logs them with
the means to an MLflow run in the `atomray-eval` experiment (params: model, data directory and
a digest of its files). ATOM evaluates at any P; EGNO / EGNN refuse a P other than their own.

--validation re-scores the checkpoint on its own training run's validation windows (same
molecules, seed and horizons) and prints the figures its run logged for them.

--frame-average K evaluates the frame-averaged model instead (average of R⁻¹ f(R x) over K
random rotations, or `pca`: over the molecule's 4 PCA frames, `atomray.equivariance`);
--equivariance R adds the equivariance error over R random rotations on --windows windows of
the model's training horizons, beside the noise floor of its exactly equivariant twin in the
same precision (`atomray.equivariance.noise_floor`), in the model's precision and under bf16
autocast.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint dir, runs:/ID/checkpoint or models:/NAME@ALIAS")
    parser.add_argument("--data", default="", help="data set directory (default with --validation: the run's)")
    parser.add_argument("--molecules", nargs="*", default=None, help="molecule ids (default: all)")
    parser.add_argument("--horizons-fs", type=float, nargs="+", default=[25.0, 100.0, 400.0, 1000.0])
    parser.add_argument("--num-lags", type=int, nargs="+", default=[8], help="P; one table per value")
    parser.add_argument("--windows", type=int, default=200, help="windows per molecule, horizon and P")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default="evaluation", help="output directory (default: %(default)s)")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI "
                                                             "or sqlite:///mlflow.db)")
    parser.add_argument("--experiment", default="atomray-eval")
    parser.add_argument("--no-mlflow", action="store_true", help="write the files only")
    parser.add_argument("--validation", action="store_true", help="score the run's own validation windows")
    parser.add_argument("--frame-average", default="", help="K random rotations, or 'pca' (the 4 PCA frames)")
    parser.add_argument("--equivariance", type=int, default=0, help="rotations for the equivariance error (0: off)")
    args = parser.parse_args(argv)

    import torch

    from atomray import tracking
    from atomray.config import ConfigError, TrackingConfig
    from atomray.data.frames import DataError
    from atomray.evaluate import FLOORS, data_digest, evaluate_dataset, run_validation, verdict
    from atomray import storage
    from atomray.outputs import check_output_dir, staged
    from atomray.report import log_evaluation, write_evaluation

    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    try:
        if not args.validation:  # before any work: an unwritable --out fails now, not after evaluating
            check_output_dir(args.out)
        uri = tracking.resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri))
        model, cfg, state = tracking.load_model_uri(uri, args.model)
        elements = state.elements
        if args.frame_average:
            from atomray.evaluate import frame_average

            if args.frame_average != "pca" and not args.frame_average.isdigit():
                raise ConfigError(f"--frame-average: expected a number of rotations or 'pca', found {args.frame_average!r}")
            k = None if args.frame_average == "pca" else int(args.frame_average)
            model = frame_average(model, k, torch.Generator().manual_seed(args.seed))
        if args.validation:
            metrics, n = run_validation(model, cfg, args.data or cfg.data.path, args.batch_size)
            print(f"validation windows of {args.model} ({n} windows): "
                  f"S2T {100 * metrics['val_s2t']:.4f}, S2S {100 * metrics['val_s2s']:.4f} x1e-2 A^2; floors S2T "
                  + ", ".join(f"{f} {100 * metrics[f'val_s2t_{f}']:.4f}" for f in FLOORS))
            print(verdict(metrics, "val_s2t"))
            return 0
        if not args.data:
            raise DataError("--data is required (or --validation)")
        load_seconds = time.perf_counter() - t0
        timings: dict[str, float] = {}
        rows, _ = evaluate_dataset(model, cfg, args.data, args.molecules, args.horizons_fs, args.num_lags,
                                   args.windows, args.seed, args.batch_size, elements, progress=True, timings=timings)
        seconds = time.perf_counter() - t0
        run_id = ""
        with staged(args.out) as local:  # a URI --out: written locally, then copied there
            files = write_evaluation(rows, local, f"{cfg.model.name} {args.model} on {args.data}")
            tables = files[1].read_text()
            if not args.no_mlflow:
                params = {"model": args.model, "model_name": cfg.model.name, "data": storage.absolute(args.data),
                          "data_digest": data_digest(args.data), "horizons_fs": args.horizons_fs,
                          "num_lags": args.num_lags, "windows": args.windows, "seed": args.seed,
                          "molecules": args.molecules or "all"}
                run_id = log_evaluation(uri, args.experiment, params, rows, files)
        files = [storage.join(args.out, f.name) if storage.is_uri(args.out) else f for f in files]
        if args.equivariance:
            eq = equivariance(model, cfg, args)
            print(eq["line"])
            if run_id:
                c = tracking.client(uri)
                for key, value in eq.items():
                    if key != "line":
                        c.log_metric(run_id, key, value)
    except (DataError, ConfigError, LookupError, ValueError, OSError) as err:  # OSError: writing --out
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2
    print(tables)
    print(f"wrote {', '.join(str(f) for f in files)}; {sum(r['windows'] for r in rows if r['molecule_id'] != 'mean')} "
          f"windows in {seconds:.1f} s" + (f"; MLflow run {run_id} ({uri})" if run_id else ""))
    print(where_time_went(load_seconds, timings))
    return 0


def where_time_went(load_seconds: float, timings: dict[str, float]) -> str:
    """One line: the seconds of each stage of an evaluation, and where the prior's basins came from."""
    stored = "the data set's stored per-frame physics" if timings.pop("stored per-frame physics", 0.0) else (
        "the machine's basin store (no stored per-frame physics: python jobs/frame_physics.py --data ...)")
    parts = [f"loading the model {load_seconds:.1f}"] + [f"{k} {v:.1f}" for k, v in timings.items()]
    return f"time (s): {', '.join(parts)}; basins from {stored}"


def equivariance(model, cfg, args) -> dict:
    """The equivariance error of `model` over --equivariance random rotations on --windows
    windows of the model's training horizons over the evaluated molecules, and its noise floor."""
    import torch

    from atomray.data.dataset import read_molecules
    from atomray.data.pipeline import fixed_windows
    from atomray.evaluate import equivariance_error, eval_transform, noise_floor, rotation_set, with_paths
    from atomray.priors.frames import FramePhysics

    molecules = args.molecules or read_molecules(args.data).column("molecule_id").to_pylist()
    windows = fixed_windows(args.data, molecules, args.windows, cfg.data, args.seed)
    windows = with_paths(windows, eval_transform(cfg, FramePhysics.load(args.data, molecules), floors=()))
    rotations = rotation_set(args.equivariance, torch.Generator().manual_seed(args.seed))
    out, lines = {}, []
    for autocast, suffix in ((None, ""), (torch.bfloat16, "_bf16")):  # the model's precision, then bf16 autocast
        err = equivariance_error(model, windows, rotations, autocast, batch_size=args.batch_size)
        floor = noise_floor(getattr(model, "model", model), windows, rotations, autocast, batch_size=args.batch_size)
        lines.append(f"equivariance error over {args.equivariance} rotations ({err.precision}): mean {err.mean:.3g}, "
                     f"max {err.max:.3g}; noise floor (exactly equivariant twin, same precision) {floor.mean:.3g} "
                     f"= {err.mean / max(floor.mean, 1e-300):.3g}x")
        out.update({f"equivariance_error{suffix}": err.mean, f"equivariance_error_max{suffix}": err.max,
                    f"equivariance_noise_floor{suffix}": floor.mean})
    return {**out, "line": "\n".join(lines)}


if __name__ == "__main__":
    sys.exit(main())
