"""One training run end to end, from the driver: split, MLflow run, Ray Train fit, best
checkpoint logged. `jobs/pretrain.py` is a thin wrapper around `pretrain`.

    cfg = load_config("jobs/configs/pretrain.yaml", ["train.epochs=5"])
    result = pretrain(resolve(cfg))      # after ray.init()
    result.best["val_s2t"], result.run_id, result.checkpoint
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomray import storage, tracking
from atomray.config import RunConfig
from atomray.config_ranges import check_values
from atomray.data.frames import DataError
from atomray.data.pipeline import build_train_dataset, count_starts, scan_segments
from atomray.data.splits import EvalSet, Split, default_eval_sets, make_split, plot_split, split_rows, usable_molecules


@dataclass
class PretrainResult:
    """What a finished run produced. Metrics are Å² (multiply by 100 for the paper's ×10⁻²)."""

    run_id: str
    tracking_uri: str
    checkpoint: str  # directory (path or URI) of the best-by-validation checkpoint (exported copy)
    best: dict[str, float]  # history row of the best validation S2S epoch
    final: dict[str, float]  # last epoch's row
    history: list[dict[str, float]] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def init_ray(address: str | None = None, verbose: bool = False, **kwargs: Any):
    """`ray.init` for atomray's jobs: `address` defaults to $RAY_ADDRESS; unset, Ray joins the
    cluster the last `ray start` on this machine started, if any, or else starts a local instance.
    Unless `verbose`, Ray's and MLflow's informational logs are turned down (`quiet_logs`).

    Starting a local instance, keep up to 4 idle worker processes per CPU alive
    ($RAY_num_workers_soft_limit, unless already set). Ray keeps only as many idle workers as
    there are unreserved CPUs; with the Train workers holding most of a small machine's CPUs,
    the processes that ran one epoch's Ray Data tasks were killed and restarted the next epoch
    (interpreter start and imports every epoch: 0.84 → 0.88 of the in-memory feed's samples/s
    on 2 cores, benchmarks/bench_pipeline.py). Clusters started with `ray start` take the same
    environment variable.
    """
    import os

    import ray

    quiet_logs(verbose)
    address = address if address is not None else os.environ.get("RAY_ADDRESS")
    if not address or address == "local":
        os.environ.setdefault("RAY_num_workers_soft_limit", str(4 * (os.cpu_count() or 1)))
    return ray.init(address=address, **kwargs)


LOG_LEVEL_ENV = "ATOMRAY_LOG_LEVEL"  # Ray Train's console log level for the runs this process starts


def quiet_logs(verbose: bool = False) -> None:
    """Leave a job's log to its epoch lines, summary and real warnings, through the switches Ray
    and MLflow provide (environment variables read by this process and the Ray processes it
    starts; an explicit setting wins): Ray Train's console level (`ray.train.LoggingConfig`, see
    `atomray.train.loop.fit`), Ray Data's log level, MLflow's log level and artifact progress
    bars. `verbose` keeps everything at INFO. On a cluster started elsewhere, Ray Data's actors
    take RAY_DATA_LOG_LEVEL from the job's runtime_env (cluster/runtime_env.yaml sets it)."""
    import os

    level = "INFO" if verbose else "WARNING"
    for key, value in ((LOG_LEVEL_ENV, level), ("RAY_DATA_LOG_LEVEL", level), ("MLFLOW_LOGGING_LEVEL", level),
                       ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true" if verbose else "false")):
        os.environ.setdefault(key, value)


def read_tasks(cfg: RunConfig) -> int:
    """Ray Data read+chunk tasks in flight per epoch: `data.read_tasks`, or one per training
    worker when 0 (enough to stay an epoch ahead; each more costs a process on the node).
    A negative value is refused by the config checks (`atomray.config_ranges`)."""
    return cfg.data.read_tasks or cfg.scaling.num_workers


def resolve(cfg: RunConfig, cwd: str | Path | None = None) -> RunConfig:
    """Make paths absolute (Ray workers run in other directories), name the run if unnamed,
    pin the tracking URI. The result is what gets saved with the run.

    The values are checked again (`check_values`): a config built with `dataclasses.replace`
    never went through `load_config`, and a bad value must fail here, before a run directory
    or MLflow run exists."""
    check_values(cfg)
    base = Path(cwd or Path.cwd())
    name = cfg.name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking, base) if cfg.tracking.enabled else ""
    return dataclasses.replace(
        cfg,
        name=name,
        storage_path=storage.absolute(cfg.storage_path, base),
        data=dataclasses.replace(cfg.data, path=storage.absolute(cfg.data.path, base)),
        tracking=dataclasses.replace(cfg.tracking, tracking_uri=tracking_uri),
    )


def split_csv(split: Split) -> str:
    rows = split_rows(split)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def run_tags(cfg: RunConfig, split: Split) -> dict[str, str]:
    import ray

    tags = {tracking.TAG_KIND: "train", "git_revision": tracking.git_revision(), "source_digest": tracking.source_digest(), "split": f"{split.kind}/fold{split.fold}",
            "molecules.train": str(len(split.train)), "molecules.val": str(len(split.val)),
            "molecules.test": str(len(split.test))}
    tags.update({f"version.{k}": v for k, v in tracking.package_versions().items()})
    if ray.is_initialized():
        tags["ray.cluster_resources"] = json.dumps(ray.cluster_resources(), sort_keys=True)
    return tags


def pretrain(cfg: RunConfig, *, split: Split | None = None, eval_sets: list[EvalSet] | None = None,
             parent_run_id: str = "", callbacks: list | None = None,
             extra_tags: dict[str, str] | None = None) -> PretrainResult:
    """Train `cfg` (already `resolve`d) on the current Ray cluster; returns the summary.

    `split` defaults to `make_split` of the data set's (stable) molecules; `eval_sets`
    defaults to the split's test set; each is evaluated every epoch, and `best` holds the
    epoch with the best validation S2S (the paper's early-stopping rule). Training windows
    stream through Ray Data, or with `data.train_feed=fixed` are drawn once into memory."""
    from atomray.checkpoint import export_checkpoint, read_state
    from atomray.train.loop import fit

    t0 = time.perf_counter()
    molecules = usable_molecules(cfg.data)
    ids = molecules.column("molecule_id").to_pylist()
    z_of = dict(zip(ids, molecules.column("atomic_numbers").to_pylist()))
    too_heavy = {m: max(z) for m, z in z_of.items() if max(z) > cfg.model.max_atomic_number}
    if too_heavy:  # the model's one-hot chemistry has max_atomic_number slots: refuse before any work
        mid, zmax = next(iter(too_heavy.items()))
        raise DataError(f"{cfg.data.path}: molecule {mid!r} has atomic number {zmax}, above "
                        f"model.max_atomic_number={cfg.model.max_atomic_number}; raise it or leave the molecule out "
                        f"(data.molecules)")
    if split is None:
        split = make_split(ids, molecules.column("smiles").to_pylist(), cfg.data)
    if eval_sets is None:
        eval_sets = default_eval_sets(split, cfg.data)
    segments = scan_segments(cfg.data.path, split.train)
    total_starts = count_starts(segments, cfg.data, split.ranges["train"])
    if total_starts == 0:
        raise DataError(f"{cfg.data.path}: the training molecules have no trajectory long enough for the horizon")

    ensure_physics(cfg, split)
    elements = sorted({int(z) for m in split.train for z in z_of[m] if z > 1 or cfg.data.context_atoms == "all"})
    run_dir = storage.join(cfg.storage_path, cfg.name)
    run_id = ""
    if cfg.tracking.enabled:
        tags = {**run_tags(cfg, split), **(extra_tags or {})}
        run_id = tracking.open_run(cfg, run_dir, cfg.tracking.tracking_uri, tags, parent_run_id)
    try:
        if run_id:
            log_split(cfg.tracking.tracking_uri, run_id, split)
            print(f"MLflow run {run_id} at {cfg.tracking.tracking_uri}", flush=True)
        dataset = None
        if cfg.data.train_feed == "stream":
            dataset = build_train_dataset(cfg.data.path, split.train, cfg.data, z_of, seed=cfg.train.seed,
                                          fraction=split.ranges["train"], concurrency=read_tasks(cfg))
        result = fit(cfg, split, dataset, total_starts, run_dir, cfg.tracking.tracking_uri, run_id,
                     eval_sets, callbacks, elements)
        if result.error is not None:  # Ray versions that return the error instead of raising it
            raise RuntimeError(f"training run {cfg.name!r} failed") from result.error
        best_ckpt = min(result.best_checkpoints, key=lambda cm: cm[1]["val_s2s"])[0] if result.best_checkpoints else result.checkpoint
        if best_ckpt is None:
            raise RuntimeError(f"training run {cfg.name!r} produced no checkpoint")
        with result.checkpoint.as_directory() as d:
            history = read_state(d).history
        export_dir = storage.join(run_dir, "best")
        with best_ckpt.as_directory() as d, tempfile.TemporaryDirectory(prefix="atomray-best-") as tmp:
            best_state = read_state(d)
            staged = Path(export_dir) if not storage.is_uri(export_dir) else Path(tmp) / "best"
            export_checkpoint(d, staged)
            if storage.is_uri(export_dir):
                storage.upload_dir(staged, export_dir)
            best = next(r for r in history if r["epoch"] == best_state.epoch)
            if run_id:
                record_best(cfg.tracking.tracking_uri, run_id, staged, history, best)
    except BaseException as err:
        if run_id:
            tracking.fail_run(cfg.tracking.tracking_uri, run_id, err)
        raise
    return PretrainResult(run_id, cfg.tracking.tracking_uri, export_dir, best, history[-1], history,
                          split.to_dict(), time.perf_counter() - t0)


def ensure_physics(cfg: RunConfig, split: Split) -> None:
    """Compute the data set's per-frame physics before training, once (`atomray.priors.frames`;
    Ray tasks, one per molecule), when the run's prior or loss weights need basins; a data set
    that has it (tg80-mini ships with it) costs nothing here."""
    from atomray.priors.frames import compute_missing
    from atomray.train.loss import training_parts

    if "vibration" in training_parts(cfg):
        compute_missing(cfg.data.path, list(dict.fromkeys([*split.train, *split.val, *split.test])))


def log_split(uri: str, run_id: str, split: Split) -> None:
    """The split as CSV and JSON artifacts of the run, with its UMAP figure when it has one."""
    c = tracking.client(uri)
    c.log_text(run_id, split_csv(split), "split/split.csv")
    c.log_dict(run_id, split.to_dict(), "split/split.json")
    if split.embedding:
        with tempfile.TemporaryDirectory(prefix="atomray-split-") as tmp:
            figure = Path(tmp) / "split_umap.png"
            plot_split(split, figure)
            c.log_artifact(run_id, str(figure), "split")


def record_best(uri: str, run_id: str, export_dir: Path, history: list[dict[str, float]],
                best: dict[str, float]) -> None:
    """Finish the MLflow record of a run that ended well: any committed epoch the controller
    could not log, the best checkpoint (files and pyfunc model), best_* metrics; FINISHED."""
    c = tracking.client(uri)
    tracking.log_epochs(c, run_id, history, tracking.logged_steps(c, run_id, "val_s2t"))
    tracking.log_artifact_dir(uri, run_id, export_dir, "checkpoint")
    tracking.log_checkpoint_model(uri, run_id, export_dir)
    for key in sorted(k for k in best if k.endswith(("_s2t", "_s2s"))):
        c.log_metric(run_id, f"best_{key}", best[key])
    c.set_tag(run_id, "best_epoch", str(best["epoch"]))
    tracking.finish_run(uri, run_id)
