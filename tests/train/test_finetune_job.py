"""jobs/finetune_rollout.py end to end: a checkpoint with a velocity head, tg80-mini's training
molecules, a real `mlflow server` on 127.0.0.1; it writes a loadable checkpoint whose weights
moved, and an MLflow run with the held-out unrolled S2T per step and epoch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from jobrun import ROOT, job_main

pytestmark = pytest.mark.slow


def head_checkpoint(path, head: bool = True):
    """A small rigid-prior ATOM with (or without) a velocity head, untrained, saved to path."""
    from atomray.checkpoint import TrainState, save_checkpoint
    from atomray.config import RunConfig
    from atomray.model import build_model

    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, prior="rigid", relaxed_input=False,
                                                             prior_input=False, embed_dim=16, num_layers=1,
                                                             num_heads=2, predict_velocity=head),
                              data=dataclasses.replace(cfg.data, path=str(ROOT / "data/tg80-mini"),
                                                       context_atoms="all", num_lags=8, rwpe_k=4))
    model = build_model(cfg.model, num_lags=8, rwpe_dim=4)
    return save_checkpoint(path, model, cfg, TrainState(elements=[1, 6, 7, 8]))


def test_finetune_job_writes_a_checkpoint_that_moved_and_an_mlflow_run(servers, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from atomray.checkpoint import load_model, read_state

    src = head_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "ft"
    printed = job_main(capsys, "finetune_rollout.py", "--model", src, "--out", out, "--steps", 2, "--step-fs", 50,
                       "--epochs", 1, "--batches", 2, "--batch-size", 4, "--lr", 1e-3,
                       "--tracking-uri", servers["mlflow"], "--experiment", "finetune-job").out
    assert "held-out unrolled S2T per step" in printed
    before, _ = load_model(src)
    after, cfg = load_model(out)
    assert cfg.model.predict_velocity
    moved = max(float((a - b).abs().max()) for a, b in zip(after.state_dict().values(), before.state_dict().values())
                if a.numel())
    assert moved > 0  # the fine-tuning trained the weights
    state = read_state(out)
    assert [row["epoch"] for row in state.history] == [0, 1] and state.mlflow_run_id
    run = MlflowClient(servers["mlflow"]).get_run(state.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert {"held_out_s2t_step1", "held_out_s2t_step2", "train_loss"} <= set(run.data.metrics)


def test_finetune_job_refuses_a_model_without_a_velocity_head(tmp_path, capsys):
    src = head_checkpoint(tmp_path / "ckpt", head=False)
    printed = job_main(capsys, "finetune_rollout.py", "--model", src, "--out", tmp_path / "ft",
                       "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", expect=2)
    assert "no velocity head" in printed.err and "model.predict_velocity=true" in printed.err
    assert not (tmp_path / "ft").exists()  # nothing half-written


@pytest.mark.parametrize("flag, message", [("--position-noise", "--position-noise must be >= 0"),
                                           ("--width-weight", "--width-weight must be >= 0")])
def test_finetune_job_refuses_a_negative_noise_or_width_weight(tmp_path, capsys, flag, message):
    src = head_checkpoint(tmp_path / "ckpt", head=True)
    printed = job_main(capsys, "finetune_rollout.py", "--model", src, "--out", tmp_path / "ft", flag, -0.01,
                       "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", expect=2)
    assert message in printed.err
    assert not (tmp_path / "ft").exists()
