"""The unrolled K-step loss (`atomray.train.unroll`): each step starts from the state the model
predicted the step before, so a rigid-prior model with zero corrections and a velocity head carries
a freely spinning molecule along its exact motion for every step (loss 0), and the loss grows as soon
as a step starts from anything else."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_rollout import RIGID, Z, spinning_molecule

from atomray.config import RunConfig
from atomray.data.frames import DataError
from atomray.elements import atomic_masses
from atomray.model import build_model
from atomray.priors.paths import PriorPaths, StateBasins
from atomray.train.unroll import unrolled_loss

torch.set_num_threads(1)
STEP, K = 50.0, 4


def spinning_windows(velocity_scale: float = 1.0) -> dict:
    """One window of the spinning molecule: its start, then its exact frames and velocities K strides on
    (the start's velocities scaled by `velocity_scale`, a state off the exact motion when not 1)."""
    state, exact = spinning_molecule()
    times = STEP * np.arange(1, K + 1)
    origin = state.positions.mean(0)
    h = 1e-3
    target = np.stack([exact(t) for t in times]) - origin
    target_v = np.stack([(exact(t + h) - exact(t - h)) / (2 * h) for t in times])
    n = len(Z)
    return {"x0": (state.positions - origin)[None], "v0": (state.velocities * velocity_scale)[None],
            "target": target[None], "target_v": target_v[None], "z": Z[None].astype(np.int64),
            "mass": atomic_masses(Z)[None], "mask": np.ones((1, n), bool), "lags_fs": times[None],
            "lag_frames": np.arange(1, K + 1)[None], "molecule_id": np.array(["spinner"], dtype=object),
            "segment": np.zeros(1, np.int64), "frame": np.zeros(1, np.int64)}


def rigid_model(head: bool = True):
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, embed_dim=16, num_layers=1, num_heads=2,
                                                             predict_velocity=head, **RIGID),
                              data=dataclasses.replace(cfg.data, context_atoms="all", num_lags=K, rwpe_k=4))
    torch.manual_seed(0)
    return build_model(cfg.model, num_lags=K, rwpe_dim=4).double(), cfg


def test_a_zero_correction_carries_a_rigid_molecule_along_its_exact_motion_at_every_step():
    model, cfg = rigid_model()
    transform = PriorPaths({"rigid"}, StateBasins(), dtype=np.float64)
    loss, per_step = unrolled_loss(model, spinning_windows(), cfg, transform, velocity_weight=1.0)
    assert len(per_step) == K
    assert float(loss.detach()) < 1e-12, per_step
    off, per_step_off = unrolled_loss(model, spinning_windows(velocity_scale=1.05), cfg, transform, 1.0)
    assert per_step_off[-1] > per_step_off[0] > 1e-6  # a state off the motion: the error grows step by step


def test_the_unrolled_loss_trains_and_needs_a_velocity_head():
    model, cfg = rigid_model()
    transform = PriorPaths({"rigid"}, StateBasins(), dtype=np.float64)
    windows = spinning_windows(velocity_scale=1.05)
    loss, _ = unrolled_loss(model, windows, cfg, transform)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and max(float(g.abs().max()) for g in grads) > 0  # the chain reaches the weights
    plain, cfg_plain = rigid_model(head=False)
    with pytest.raises(DataError, match="velocity head"):
        unrolled_loss(plain, windows, cfg_plain, transform)


def test_position_noise_displaces_every_state_after_the_first_and_leaves_the_first_step_alone():
    """The noise of a rollout (`--position-noise`) in the unrolled loss: the first step starts from
    the window's own start (its S2T as without noise, ~0 for the exact rigid model); every later
    step starts from a displaced prediction, so its S2T is no longer 0."""
    model, cfg = rigid_model()
    transform = PriorPaths({"rigid"}, StateBasins(), dtype=np.float64)
    torch.manual_seed(0)
    _, per_step = unrolled_loss(model, spinning_windows(), cfg, transform, 1.0, position_noise=0.01)
    assert per_step[0] < 1e-10
    assert min(per_step[1:]) > 1e-4, per_step  # 0.01 Å per axis on 5 of 8 atoms: ~1e-4 Å² × 100
