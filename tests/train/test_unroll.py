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
from atomray.train.unroll import unrolled_loss, width_loss

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


def thermal_states(n_states: int = 24, scale: float = 0.03, seed: int = 0) -> tuple[np.ndarray, dict]:
    """States (1, n_states, N, 3) of the test molecule: its start with a Gaussian draw of `scale` Å
    per axis on every atom, and a one-window batch holding it."""
    state, _ = spinning_molecule()
    rng = np.random.default_rng(seed)
    states = state.positions[None] + rng.normal(0, scale, (n_states, len(Z), 3))
    windows = {"x0": state.positions[None], "z": Z[None].astype(np.int64), "mask": np.ones((1, len(Z)), bool),
               "molecule_id": np.array(["spinner"], dtype=object)}
    return states[None], windows


def test_the_width_term_is_zero_for_the_reference_and_grows_as_the_spread_shrinks_toward_the_mean():
    """`width_loss` compares spreads, not states: the reference against itself, or moved rigidly
    (each state turned and shifted), costs nothing; the same states pulled toward their mean (what
    a conditional mean does) cost more the further they are pulled, and far more than a mean
    geometry moved with its spread kept; its gradient on the pulled
    states points away from the mean (it widens them)."""
    states, windows = thermal_states()
    ref = torch.as_tensor(states)
    assert float(width_loss(ref, ref, windows)) == 0.0
    rng = np.random.default_rng(1)
    moved = []
    for s in states[0]:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        moved.append(s @ (q * np.sign(np.linalg.det(q))) + rng.normal(size=3))
    assert float(width_loss(torch.as_tensor(np.array(moved))[None], ref, windows)) < 1e-20
    mean = states.mean(1, keepdims=True)
    costs = [float(width_loss(torch.as_tensor(mean + f * (states - mean)), ref, windows)) for f in (0.9, 0.7, 0.5)]
    assert 0 < costs[0] < costs[1] < costs[2], costs
    shifted = states.copy()
    shifted[..., 0, :] += 0.03  # one atom 0.03 Å off in every state: another mean, the same spread
    assert float(width_loss(torch.as_tensor(shifted), ref, windows)) < 0.1 * costs[0]
    narrow = torch.as_tensor(mean + 0.5 * (states - mean)).requires_grad_(True)
    width_loss(narrow, ref, windows).backward()
    outward = (-narrow.grad * (narrow.detach() - torch.as_tensor(mean))).sum()
    assert float(outward) > 0  # a step down the gradient moves the states away from their mean


def test_the_width_term_joins_the_unrolled_loss_only_with_a_weight():
    """With `width_weight`, the unrolled loss is its plain loss plus the weighted width term: here
    the reference frames vibrate (a draw of 0.02 Å per axis) while the rigid model's K states keep
    every bond length and angle, so their spreads sit at the floor and the term is large."""
    model, cfg = rigid_model()
    transform = PriorPaths({"rigid"}, StateBasins(), dtype=np.float64)
    windows = spinning_windows()
    windows["target"] = windows["target"] + np.random.default_rng(0).normal(0, 0.02, windows["target"].shape)
    plain, _, states = unrolled_loss(model, windows, cfg, transform, 1.0, return_states=True)
    width = width_loss(states.detach().float(), torch.as_tensor(windows["target"]).float(), windows)
    weighted, _ = unrolled_loss(model, windows, cfg, transform, 1.0, width_weight=2.0)
    assert float(width) > 10  # (log(0.02 / 1e-6))² ~ 100 at most; the rigid states' spreads are round-off
    assert float(weighted.detach()) == pytest.approx(float(plain.detach()) + 2.0 * float(width), rel=1e-6)
