"""The velocity head (`model.predict_velocity`): at initialisation the velocity it predicts is the
exact time derivative of the prior's positions (the torque-free rotor's precessing ω and the
damped normal-mode vibration included), the velocities turn with the molecule, and `train.velocity_weight` trains the head on
the trajectory's own velocities."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch
from model.symmetry import call, random_batch, rotate_batch, with_paths

from atomray.config import ConfigError, ModelConfig, RunConfig
from atomray.data.augment import random_rotation
from atomray.model import build_model
from atomray.train.loss import training_loss, velocity_loss

torch.set_num_threads(1)

SMALL = dict(embed_dim=16, num_layers=1, num_heads=2, relaxed_input=False, prior_input=False, predict_velocity=True)
DIFF = (-2.0, -1.0, 1.0, 2.0)  # lags about t, in δ


def difference_batch(prior: str, t: float = 120.0, delta: float = 0.1) -> dict:
    """Random molecules spinning off their principal axes, asked for the lags t ± δ, t ± 2δ and t."""
    b = random_batch(torch.Generator().manual_seed(3), b=3, n=7, p=5)
    lags = torch.tensor([t + delta * d for d in DIFF] + [t], dtype=torch.float64).expand(3, 5).clone()
    parts = {"rigid": ("rigid",), "rotor": ("rotor",), "harmonic": ("rotor", "vibration")}[prior]
    return with_paths({**b, "lags_fs": lags}, parts=parts)


@pytest.mark.parametrize("prior", ["rigid", "rotor", "harmonic"])
def test_at_init_the_velocity_is_the_time_derivative_of_the_prior_positions(prior):
    delta = 0.1  # fourth-order error (ωδ)⁴/30: 4e-7 for the fastest synthetic mode
    b = difference_batch(prior, delta=delta)
    model = build_model(ModelConfig(prior=prior, **SMALL), num_lags=5).double()
    x, v = call(model, b, with_velocity=True)
    fd = (x[:, 0] - 8 * x[:, 1] + 8 * x[:, 2] - x[:, 3]) / (12 * delta)  # fourth-order centred difference
    scale = v[:, 4].abs().max()
    assert scale > 1e-3  # the molecules move
    error = (v[:, 4] - fd).abs().max() / scale
    assert error < 1e-5, f"{prior}: velocity head at init {error:.2e} (relative) from d/dt of the prior"


def test_the_velocities_turn_with_the_molecule():
    b = random_batch(torch.Generator().manual_seed(5), b=2, n=6, p=3, pad=1)
    model = build_model(ModelConfig(prior="rotor", **SMALL), num_lags=3).double()
    with torch.no_grad():  # a head that is not zero, so its internal velocity is tested too
        for prm in model.velocity_head.parameters():
            prm.normal_(0.0, 0.3)
    rot = random_rotation(torch.Generator().manual_seed(1))
    _, v = call(model, b, with_velocity=True)
    _, v_turned = call(model, rotate_batch(b, rot), with_velocity=True)
    assert (v - v @ rot.T).abs().max() > 1e-4  # the rotation is not trivial for these velocities
    torch.testing.assert_close(v_turned, v @ rot.T, rtol=0, atol=1e-9)


def test_the_velocity_loss_trains_the_head_toward_the_trajectorys_velocities():
    b = random_batch(torch.Generator().manual_seed(2), b=4, n=5, p=3)
    b["target_v"] = b["v0"][:, None].expand(-1, 3, -1, -1) * 1.5  # velocities with no rigid-body prior
    cfg = RunConfig()
    cfg = replace(cfg, model=replace(cfg.model, prior="x0", internal_velocity=False, **SMALL),
                  train=replace(cfg.train, loss_weighting="none", velocity_weight=1.0))
    torch.manual_seed(0)
    model = build_model(cfg.model, num_lags=3).double()
    plain = replace(cfg, train=replace(cfg.train, velocity_weight=0.0))
    _, v = call(model, b, with_velocity=True)
    extra = velocity_loss(v, b["target_v"], b["mask"])
    both = training_loss(model, b, cfg, torch.Generator(), nullcontext())
    without = training_loss(model, b, plain, torch.Generator(), nullcontext())
    torch.testing.assert_close(both, without + extra.float())
    assert extra > 1e-3  # the head has something to learn
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        training_loss(model, b, cfg, torch.Generator(), nullcontext()).backward()
        opt.step()
    _, v = call(model, b, with_velocity=True)
    assert velocity_loss(v, b["target_v"], b["mask"]) < 0.5 * extra


def test_only_atom_has_a_velocity_head_and_only_a_model_built_with_it_returns_velocities():
    with pytest.raises(ConfigError, match="predict_velocity"):
        build_model(ModelConfig(name="egno", predict_velocity=True), num_lags=4)
    b = random_batch(torch.Generator().manual_seed(0), b=1, n=4, p=2)
    model = build_model(ModelConfig(prior="rotor", **{**SMALL, "predict_velocity": False}), num_lags=2).double()
    with pytest.raises(ValueError, match="predict_velocity"):
        call(model, b, with_velocity=True)
