"""Ray Tune over whole training runs, each an MLflow child run of one parent.

A trial is a small driver function (`tune.with_resources(fn, {"cpu": 0.01})`) that builds its
RunConfig from the base config and the trial's overrides and calls `pretrain`, which fits its
own TorchTrainer (Ray 2.5x: Tune launches Train inside a function trainable);
`TuneReportCallback` forwards every epoch's metrics to Tune, so schedulers such as ASHA see
them. The trial's Train run is named after the trial, so a restarted sweep resumes it.

Both cross-validation (`atomray.tune.cv`) and sweeps (`atomray.tune.sweep`) run through
`run_trials`, so folds and trials run concurrently whenever the cluster has room.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from atomray import tracking
from atomray.config import RunConfig, flatten
from atomray.evaluate import FLOORS
from atomray.tune.space import apply_overrides

TAG_TRIAL = "atomray.trial"


def open_parent(cfg: RunConfig, kind: str, name: str, extra_tags: dict[str, str] | None = None) -> str:
    """Create the parent MLflow run of a sweep / cross-validation; returns its id."""
    c = tracking.client(cfg.tracking.tracking_uri)
    exp = tracking.experiment_id(c, cfg.tracking.experiment)
    tags = {tracking.TAG_KIND: kind, "mlflow.runName": name, "git_revision": tracking.git_revision(),
            "source_digest": tracking.source_digest(), **(extra_tags or {})}
    run_id = c.create_run(exp, run_name=name, tags=tags).info.run_id
    tracking.log_params(c, run_id, {f"base.{k}": v for k, v in flatten(cfg).items()})
    return run_id


def child_runs(uri: str, parent_run_id: str) -> list:
    c = tracking.client(uri)
    parent = c.get_run(parent_run_id)
    return c.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                         max_results=1000)


def close_children(uri: str, parent_run_id: str) -> int:
    """Mark children still RUNNING (stopped early by a scheduler) as KILLED; return how many."""
    c = tracking.client(uri)
    n = 0
    for run in child_runs(uri, parent_run_id):
        if run.info.status == "RUNNING":
            c.set_terminated(run.info.run_id, "KILLED")
            c.set_tag(run.info.run_id, "atomray.stopped_early", "true")
            n += 1
    return n


def _trial(trial: dict[str, Any], base: dict, parent_run_id: str, sweep: str, prepare: Callable | None) -> None:
    """The Tune trainable: one whole training run as an MLflow child run."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from atomray.config import config_from_dict
    from atomray.train.pretrain import pretrain

    trial_id = ray.tune.get_context().get_trial_id()
    overrides = dict(trial["overrides"])
    cfg = apply_overrides(config_from_dict(base), overrides)
    cfg = dataclasses.replace(cfg, name=f"{sweep}-{trial_id}",
                              tracking=dataclasses.replace(cfg.tracking, run_name=f"{sweep}-{trial.get('label') or trial_id}"))
    kwargs = prepare(cfg, trial) if prepare is not None else {}
    pretrain(cfg, parent_run_id=parent_run_id, callbacks=[TuneReportCallback()],
             extra_tags={TAG_TRIAL: trial_id, "atomray.overrides": json.dumps(overrides, sort_keys=True)},
             **kwargs)


TRIAL_CPUS = 0.01  # the trial's own driver function; its Train workers reserve their own


def trials_that_fit(cfg: RunConfig, resources: dict[str, float]) -> int:
    """How many trials' Train runs the cluster holds at once (at least 1).

    A trial reserves only a sliver for its driver function, so Tune alone would start every
    trial and their worker groups would then time out waiting for each other's CPUs. Each
    trial needs its workers' CPUs (and GPUs), plus room for one Ray Data read task.
    """
    from atomray.data.pipeline import DATA_TASK_CPUS

    s = cfg.scaling
    per_trial_cpu = s.num_workers * s.cpus_per_worker + DATA_TASK_CPUS + TRIAL_CPUS
    fit = int(resources.get("CPU", 0.0) // per_trial_cpu)
    if s.use_gpu:
        fit = min(fit, int(resources.get("GPU", 0.0) // (s.num_workers * s.gpus_per_worker)))
    return max(1, fit)


def run_trials(cfg: RunConfig, trials: list[dict[str, Any]] | dict[str, Any], sweep: str, parent_run_id: str,
               *, num_samples: int = 1, scheduler: Any = None, max_concurrent: int = 0,
               prepare: Callable | None = None, metric: str = "val_s2t"):
    """Run trials as Tune trials; returns Tune's ResultGrid.

    `trials` is a list of trial dicts {"overrides": {dotted key: value}, "label": str, ...}
    (grid), or a Tune search space over dotted keys (sampled `num_samples` times).
    `prepare(cfg, trial) -> dict` may add keyword arguments for `pretrain` (e.g. the split of
    a fold, computed once on the driver and carried in the trial dict). `max_concurrent` 0
    runs as many trials at once as the cluster fits (`trials_that_fit`).
    """
    import ray.tune
    from ray import tune

    from atomray.config import to_dict

    if isinstance(trials, list):
        param_space = {"trial": tune.grid_search(trials)}
        unpack = lambda c: c["trial"]  # noqa: E731
    else:
        param_space = dict(trials)
        unpack = lambda c: {"overrides": dict(c)}  # noqa: E731
    base = to_dict(cfg)
    # Every trial's floors (and the harmonic prior) read the data set's per-frame physics:
    # computed here once, as Ray tasks, not by each trial inside its placement group.
    from atomray.data.splits import usable_molecules
    from atomray.priors.frames import compute_missing

    compute_missing(cfg.data.path, usable_molecules(cfg.data).column("molecule_id").to_pylist())

    def trainable(config: dict[str, Any]) -> None:
        _trial(unpack(config), base, parent_run_id, sweep, prepare)

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": TRIAL_CPUS}),
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=num_samples, scheduler=scheduler,
                                    max_concurrent_trials=max_concurrent or trials_that_fit(cfg, ray.cluster_resources()),
                                    metric=metric if scheduler is None else None,
                                    mode="min" if scheduler is None else None),
        run_config=ray.tune.RunConfig(name=sweep, storage_path=cfg.storage_path, verbose=1),
    )
    return tuner.fit()


def runs_table(uri: str, parent_run_id: str) -> list[dict[str, Any]]:
    """One row per child run: its overrides, status and best/last metrics (from MLflow)."""
    c = tracking.client(uri)
    rows = []
    for run in child_runs(uri, parent_run_id):
        m = run.data.metrics
        row = {"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
               "trial": run.data.tags.get(TAG_TRIAL, ""),
               **json.loads(run.data.tags.get("atomray.overrides", "{}"))}
        for key in ("val_s2t", "val_s2s"):
            history = c.get_metric_history(run.info.run_id, key)
            row[f"best_{key}"] = m.get(f"best_{key}", min((h.value for h in history), default=float("nan")))
            row["epochs"] = max((h.step for h in history), default=-1) + 1
        for key in ("test_s2t", "test_s2s", "test_id_s2t", "test_id_s2s"):
            if f"best_{key}" in m:
                row[f"best_{key}"] = m[f"best_{key}"]
        for key in ("val_s2t", "test_s2t", "test_id_s2t"):  # the floors on the same windows
            row.update({f"{key}_{f}": m[f"{key}_{f}"] for f in FLOORS if f"{key}_{f}" in m})
        rows.append(row)
    return rows
