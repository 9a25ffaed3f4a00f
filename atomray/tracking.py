"""MLflow is the system of record: runs, per-epoch metrics, checkpoints, the model registry.

The default tracking store is a SQLite file `mlflow.db` in the working directory (made
absolute, because Ray workers run elsewhere); `MLFLOW_TRACKING_URI` or
`tracking.tracking_uri` point anywhere else, e.g. a shared `mlflow server`. Only the driver and
rank 0 of a training run write to MLflow, never concurrently with each other in practice, and
never from several workers.

A training run owns exactly one MLflow run. Its id is stored beside the Ray Train run
(`<storage>/<name>/mlflow_run_id`) and in every checkpoint, so a resubmitted or restarted run
continues the same MLflow run, and rank 0 logs each epoch's metrics exactly once (after the
epoch's checkpoint is committed; missing epochs are back-filled from the checkpoint's history).
"""

from __future__ import annotations

import os
import subprocess
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from atomray.config import RunConfig, TrackingConfig, flatten

RUN_ID_FILE = "mlflow_run_id"
TAG_RUN_NAME = "atomray.run_name"


def resolve_tracking_uri(cfg: TrackingConfig, cwd: str | Path | None = None) -> str:
    """`cfg.tracking_uri`, else $MLFLOW_TRACKING_URI, else sqlite:///<abs cwd>/mlflow.db."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        uri = f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"
    elif uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(Path(cwd or os.getcwd()) / uri[len('sqlite:///'):]).resolve()}"
    return uri


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(mlflow_client, name: str) -> str:
    exp = mlflow_client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else mlflow_client.create_experiment(name)


def git_revision(path: str | Path | None = None) -> str:
    """$ATOMRAY_GIT_REV if set (a `ray job submit` working_dir carries no .git: pass it with
    --runtime-env-json), else the checkout's commit (+ '-dirty' if modified), else 'unknown'."""
    if os.environ.get("ATOMRAY_GIT_REV"):
        return os.environ["ATOMRAY_GIT_REV"]
    try:
        cwd = str(path or Path.cwd())
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def source_digest(root: str | Path | None = None) -> str:
    """sha256 (first 16 hex) over atomray's source and the job configs: identifies the code
    a run used even where no .git travels with it (e.g. a `ray job submit` working_dir)."""
    import hashlib

    root = Path(root) if root else Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*root.glob("atomray/**/*.py"), *root.glob("jobs/**/*.py"), *root.glob("jobs/configs/*.yaml")]):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in ("atomray", "torch", "ray", "e3nn", "pytorch_optimizer", "mlflow", "numpy", "pyarrow", "rdkit"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def open_run(cfg: RunConfig, run_dir: str | Path, uri: str, tags: dict[str, str] | None = None,
             parent_run_id: str = "") -> str:
    """Create the MLflow run of a training run, or reopen it if `run_dir` (a path or URI)
    names one.

    Logs the resolved config as params (dotted keys) and `tags` (git revision, package
    versions, cluster resources...). Returns the run id, also written to run_dir/mlflow_run_id.
    """
    from atomray import storage

    c = client(uri)
    id_file = storage.join(run_dir, RUN_ID_FILE)
    run_id = storage.read_text(id_file).strip() if storage.is_file(id_file) else ""
    if run_id:
        try:
            c.get_run(run_id)
            c.update_run(run_id, status="RUNNING")
        except Exception:  # the store was reset: start over with a new run
            run_id = ""
    if not run_id:
        exp = experiment_id(c, cfg.tracking.experiment)
        all_tags = {TAG_RUN_NAME: cfg.name, "mlflow.runName": cfg.tracking.run_name or cfg.name}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run_id = c.create_run(exp, tags=all_tags, run_name=cfg.tracking.run_name or cfg.name).info.run_id
        storage.write_text(id_file, run_id)
        log_params(c, run_id, flatten(cfg))
    for key, value in (tags or {}).items():
        c.set_tag(run_id, key, str(value)[:5000])
    return run_id


def log_params(c, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i : i + 100])


def logged_steps(c, run_id: str, key: str) -> set[int]:
    return {m.step for m in c.get_metric_history(run_id, key)}


def log_epochs(c, run_id: str, history: Iterable[dict[str, float]], already: set[int]) -> set[int]:
    """Log every history row (one per epoch, with an 'epoch' key) whose epoch is not yet in
    `already`; return the updated set. Metrics are logged with step = epoch."""
    import time

    from mlflow.entities import Metric

    done = set(already)
    for row in history:
        epoch = int(row["epoch"])
        if epoch in done:
            continue
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in row.items() if k != "epoch"]
        c.log_batch(run_id, metrics=metrics)
        done.add(epoch)
    return done


def log_artifact_dir(uri: str, run_id: str, directory: str | Path, artifact_path: str) -> None:
    client(uri).log_artifacts(run_id, str(directory), artifact_path)


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


TAG_ERROR = "atomray.error"


def fail_run(uri: str, run_id: str, err: BaseException) -> None:
    """End a run that raised: FAILED (KILLED for Ctrl-C) with the error as the tag
    `atomray.error`. Never raises: the original error is what the caller must see."""
    status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
    try:
        c = client(uri)
        c.set_tag(run_id, TAG_ERROR, f"{type(err).__name__}: {err}"[:5000])
        c.set_terminated(run_id, status=status)
    except Exception as log_err:  # noqa: BLE001 - the tracking server may be what failed
        print(f"warning: could not mark MLflow run {run_id} {status} ({log_err})", flush=True)


# ---------------------------------------------------------------------------------------------
# models: log, find the best, register, load back (never unpickling anything)

TAG_KIND = "atomray.kind"  # "train" for a training run; "cv" / "sweep" for parents
MODEL_FILE_PY = Path(__file__).with_name("mlflow_model.py")


def log_checkpoint_model(uri: str, run_id: str, checkpoint_dir: str | Path) -> str:
    """Log a checkpoint directory as an MLflow pyfunc model (named "model") in `run_id`,
    from code (atomray/mlflow_model.py) with the checkpoint files as artifacts. Returns the
    model URI to register."""
    import mlflow

    checkpoint_dir = Path(checkpoint_dir)
    artifacts = {name.split(".")[0]: str(checkpoint_dir / name) for name in ("model.pt", "config.yaml", "state.json")}
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # The pyfunc takes a dict of arrays on purpose (no schema to infer from type hints).
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method", category=UserWarning)
        info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_FILE_PY), artifacts=artifacts,
                                       pip_requirements=[f"atomray=={package_versions()['atomray']}"])
    return info.model_uri


def best_run(uri: str, experiment: str, metric: str = "best_val_s2t", mode: str = "min"):
    """The finished training run of `experiment` with the best `metric` (MLflow ranks it)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    order = "ASC" if mode == "min" else "DESC"
    runs = mlflow.search_runs(
        experiment_names=[experiment], filter_string=f"tags.`{TAG_KIND}` = 'train' and attributes.status = 'FINISHED'",
        order_by=[f"metrics.`{metric}` {order}"], max_results=50, output_format="list")
    runs = [r for r in runs if metric in r.data.metrics]
    if not runs:
        raise LookupError(f"MLflow experiment {experiment!r} at {uri} has no finished training run with metric {metric!r}")
    return runs[0]


def download_checkpoint(uri: str, source: str, dst: str | Path | None = None) -> Path:
    """A local checkpoint directory for `source`: a directory path or storage URI (s3://...,
    e.g. a run's exported `best/`), runs:/<id>/<path>, or models:/<name>@<alias> /
    models:/<name>/<version> (the pyfunc's artifacts). A remote source is copied under `dst`
    (default: a new temporary directory, the caller's to remove); a failed copy leaves nothing."""
    import shutil
    import tempfile

    path = Path(source).expanduser()
    if "://" not in source and ":/" not in source:
        if not (path / "model.pt").is_file():
            raise FileNotFoundError(f"{source}: not a checkpoint directory (no model.pt)")
        return path
    made = dst is None
    dst = Path(dst or tempfile.mkdtemp(prefix="atomray-ckpt-"))
    try:
        return _download(uri, source, dst)
    except BaseException:
        if made:
            shutil.rmtree(dst, ignore_errors=True)
        raise


def _download(uri: str, source: str, dst: Path) -> Path:
    import mlflow

    from atomray import storage

    if storage.is_uri(source) and not source.startswith(("runs:", "models:", "mlflow-artifacts:")):
        if not storage.is_file(storage.join(source, "model.pt")):
            raise FileNotFoundError(f"{source}: not a checkpoint directory (no model.pt)")
        return storage.download_dir(source, dst)
    mlflow.set_tracking_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(source, dst_path=str(dst)))
    except Exception as err:  # MlflowException: unknown model, alias, version or run
        raise LookupError(f"{source}: cannot be resolved at {uri} ({err})") from None
    if (local / "artifacts" / "model.pt").is_file():
        local = local / "artifacts"
    if not (local / "model.pt").is_file():
        raise FileNotFoundError(f"{source}: downloaded to {local}, but it holds no model.pt")
    return local


def load_model_uri(uri: str, source: str, prior_only: bool = False):
    """(model in eval mode, RunConfig, TrainState) for any `download_checkpoint` source.
    Weights load with torch.load(weights_only=True); a remote checkpoint is read from a
    temporary copy that is removed afterwards. `prior_only`: the checkpoint's architecture
    untrained instead — its output projections start at zero, so it predicts its prior alone
    (the floor a trained model must beat; `jobs/rollout.py --prior-only`)."""
    import tempfile

    from atomray.checkpoint import load_model, prior_model, read_state

    with tempfile.TemporaryDirectory(prefix="atomray-ckpt-") as tmp:
        directory = download_checkpoint(uri, source, tmp)
        model, cfg = load_model(directory)
        if prior_only:
            model = prior_model(cfg)
        return model, cfg, read_state(directory)


def load_best(experiment: str, metric: str = "best_val_s2t", mode: str = "min", tracking_uri: str = ""):
    """The best training run of `experiment` by `metric`: (model ready for inference, its
    resolved RunConfig, run id)."""
    uri = tracking_uri or resolve_tracking_uri(TrackingConfig())
    run = best_run(uri, experiment, metric, mode)
    model, cfg, _ = load_model_uri(uri, f"runs:/{run.info.run_id}/checkpoint")
    return model, cfg, run.info.run_id


def register_best(experiment: str, name: str, alias: str = "champion", metric: str = "best_val_s2t",
                  mode: str = "min", tracking_uri: str = "") -> str:
    """Register the best run's model as a new version of `name` and point `alias` at it.
    Returns 'models:/<name>@<alias>'."""
    uri = tracking_uri or resolve_tracking_uri(TrackingConfig())
    run = best_run(uri, experiment, metric, mode)
    c = client(uri)
    models = [m for m in c.search_logged_models(experiment_ids=[run.info.experiment_id],
                                                filter_string=f"source_run_id = '{run.info.run_id}'")]
    if not models:
        raise LookupError(f"run {run.info.run_id} has no logged model to register")
    import mlflow

    mlflow.set_tracking_uri(uri)
    version = mlflow.register_model(models[0].model_uri, name)
    c.set_registered_model_alias(name, alias, version.version)
    return f"models:/{name}@{alias}"
