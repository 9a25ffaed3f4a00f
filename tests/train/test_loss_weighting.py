"""`train.loss_weighting=rigid`: each window's error counts in proportion to how far the
rigid-body floor misses it, so short horizons are not drowned by long ones."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import torch
from model.symmetry import random_batch

from atomray import physics
from atomray.config import RunConfig
from atomray.data.windows import atomic_masses
from atomray.metrics import masked_mse
from atomray.train.loss import training_loss, window_weights

torch.set_num_threads(1)


def batch_with_floor_errors(errors: list[float]) -> dict:
    """Windows whose targets miss the rigid-body extrapolation by exactly `errors` (Å², S2T)."""
    g = torch.Generator().manual_seed(7)
    b = random_batch(g, b=len(errors), n=5, p=3, pad=1)
    b["mass"] = torch.from_numpy(atomic_masses(b["z"].numpy())) * b["mask"]
    base = physics.rigid(b["x0"], b["v0"], b["mass"], b["lags_fs"])
    noise = torch.randn(base.shape, generator=g, dtype=base.dtype) * b["mask"][:, None, :, None]
    per = masked_mse(noise, torch.zeros_like(noise), b["mask"])
    scale = (torch.tensor(errors, dtype=base.dtype) / per).sqrt()
    b["target"] = base + noise * scale[:, None, None, None]
    return b


def test_weights_are_inverse_to_the_rigid_floors_error_and_average_one():
    errors = [1e-4, 1e-3, 1e-2, 1e-1]
    b = batch_with_floor_errors(errors)
    w = window_weights(b, floor=5e-3)
    expect = 1 / (torch.tensor(errors, dtype=torch.float64) + 5e-3)
    torch.testing.assert_close(w.double(), expect / expect.mean(), rtol=1e-4, atol=0)
    assert w[0] > w[1] > w[2] > w[3]  # the window the floor predicts best weighs most


def test_the_weighted_loss_is_the_weighted_mean_of_per_window_errors_and_none_is_the_plain_mean():
    b = batch_with_floor_errors([2e-3, 5e-2, 3e-1])
    cfg = RunConfig()
    model = lambda x0, v0, z, lags, mask, rwpe: x0[:, None].expand(-1, lags.shape[1], -1, -1)  # noqa: E731 no motion
    per = masked_mse(model(b["x0"], None, None, b["lags_fs"], None, None), b["target"], b["mask"])
    plain = training_loss(model, b, cfg, torch.Generator(), nullcontext())
    torch.testing.assert_close(plain.double(), per.mean(), rtol=1e-5, atol=0)
    weighted_cfg = replace(cfg, train=replace(cfg.train, loss_weighting="rigid", loss_weight_floor=1e-2))
    weighted = training_loss(model, b, weighted_cfg, torch.Generator(), nullcontext())
    torch.testing.assert_close(weighted.double(), (per * window_weights(b, 1e-2)).mean(), rtol=1e-5, atol=0)
    assert weighted < plain  # the window with the largest error weighs least


def test_loss_atoms_score_trains_only_on_the_scored_atoms_and_all_on_every_real_atom():
    b = batch_with_floor_errors([2e-3, 5e-2, 3e-1])
    score = b["mask"].clone()
    score[:, 0] = False  # the first atom of every window is a "hydrogen": predicted, not scored
    b["score"] = score
    model = lambda x0, v0, z, lags, mask, rwpe: x0[:, None].expand(-1, lags.shape[1], -1, -1)  # noqa: E731 no motion
    cfg = RunConfig()
    scored_cfg = replace(cfg, train=replace(cfg.train, loss_atoms="score"))
    pred = model(b["x0"], None, None, b["lags_fs"], None, None)
    every = training_loss(model, b, cfg, torch.Generator(), nullcontext())
    scored = training_loss(model, b, scored_cfg, torch.Generator(), nullcontext())
    torch.testing.assert_close(every.double(), masked_mse(pred, b["target"], b["mask"]).mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(scored.double(), masked_mse(pred, b["target"], score).mean(), rtol=1e-5, atol=0)
    # an error on the unscored atom changes the `all` loss and leaves the `score` loss exactly as it was
    b2 = dict(b, target=b["target"].clone())
    b2["target"][:, :, 0] += 0.5
    assert training_loss(model, b2, cfg, torch.Generator(), nullcontext()) > every + 0.01
    assert training_loss(model, b2, scored_cfg, torch.Generator(), nullcontext()) == scored
