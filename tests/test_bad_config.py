"""jobs/pretrain.py refuses a bad config value before anything starts: the message names the
key and the value, Ray is never initialised and nothing is written under storage_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobrun import job_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override, key, found", [
    ("data.batch_size=0", "data.batch_size", "found 0"),
    ("optim.lr=-0.01", "optim.lr", "found -0.01"),
    ("data.horizon_min_fs=500", "data.horizon_min_fs", "found 500.0"),
    ("data.num_lags=0", "data.num_lags", "found 0"),
    ("train.epochs=0", "train.epochs", "found 0"),
], ids=["batch_size", "lr", "horizon_min_above_max", "num_lags", "epochs"])
def test_pretrain_refuses_bad_value_before_ray_starts(capsys, tmp_path, override, key, found):
    import ray

    results = tmp_path / "results"
    out = job_main(capsys, "pretrain.py", "--config", ROOT / "jobs/configs/tiny.yaml", override,
                   f"storage_path={results}", expect=2)
    assert f"config key '{key}'" in out.err and found in out.err, out.err
    assert "tiny.yaml" in out.err  # the file the value came from
    assert "Traceback" not in out.err
    assert not ray.is_initialized()
    assert not results.exists()


def test_cv_refuses_a_fold_outside_the_folds_before_ray_starts(capsys, tmp_path):
    import ray

    out = job_main(capsys, "cv.py", f"storage_path={tmp_path / 'results'}", "--folds", "0", "7", expect=2)
    assert "--folds: expected folds in [0, data.num_folds) = [0, 5), found [7]" in out.err
    assert not ray.is_initialized() and not (tmp_path / "results").exists()


def test_cv_checks_the_cluster_counts_even_when_the_config_splits_at_random(capsys, tmp_path):
    out = job_main(capsys, "cv.py", "data.split=random", "data.num_clusters=4", "data.num_folds=2",
                   f"storage_path={tmp_path / 'results'}", expect=2)
    assert "config key 'data.num_clusters'" in out.err and "found 4" in out.err
