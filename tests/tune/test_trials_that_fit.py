"""Concurrent trials are limited by what the cluster holds, so Train worker groups never wait
on each other (Tune alone would start every trial: a trial's driver reserves almost nothing)."""

from __future__ import annotations

from atomray.config import RunConfig, load_config
from atomray.tune.runner import trials_that_fit


def config(*overrides: str) -> RunConfig:
    return load_config(None, list(overrides))


def test_two_half_cpu_workers_on_two_cpus_run_one_trial_at_a_time():
    # 2 x 0.5 CPU of workers + a Ray Data task: a second trial's workers would not fit
    cfg = config("scaling.num_workers=2", "scaling.cpus_per_worker=0.5")
    assert trials_that_fit(cfg, {"CPU": 2.0}) == 1
    assert trials_that_fit(cfg, {"CPU": 16.0}) == 12


def test_small_trials_share_the_cluster():
    cfg = config("scaling.num_workers=1", "scaling.cpus_per_worker=0.25")
    assert trials_that_fit(cfg, {"CPU": 2.0}) == 3


def test_gpus_bound_gpu_trials():
    cfg = config("scaling.num_workers=2", "scaling.use_gpu=true", "scaling.cpus_per_worker=4")
    assert trials_that_fit(cfg, {"CPU": 64.0, "GPU": 4.0}) == 2
    assert trials_that_fit(cfg, {"CPU": 64.0, "GPU": 1.0}) == 1  # never zero: Tune queues it


def test_a_cluster_too_small_still_runs_one_trial():
    assert trials_that_fit(config(), {"CPU": 0.5}) == 1
