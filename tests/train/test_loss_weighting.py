"""`train.loss_weighting=harmonic` (the default) and `anharmonic`: each window's error counts in
inverse proportion to how far its prior's floor misses it, composed from the batch's prior paths,
so the windows the prior nearly solves are not drowned by the rest."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch
from model.symmetry import random_batch

from atomray.config import RunConfig
from atomray.metrics import masked_mse
from atomray.priors.compose import floor_predictions
from atomray.train.loss import training_loss, window_weights

torch.set_num_threads(1)


def batch_with_floor_errors(errors: list[float], floor: str = "harmonic_all") -> dict:
    """Windows whose targets miss the floor `floor` (composed from their prior paths) by exactly
    `errors` (Å², S2T)."""
    g = torch.Generator().manual_seed(7)
    b = random_batch(g, b=len(errors), n=5, p=3, pad=1)
    base = floor_predictions(b, [floor])[floor]
    noise = torch.randn(base.shape, generator=g, dtype=base.dtype) * b["mask"][:, None, :, None]
    per = masked_mse(noise, torch.zeros_like(noise), b["mask"])
    scale = (torch.tensor(errors, dtype=base.dtype) / per).sqrt()
    b["target"] = base + noise * scale[:, None, None, None]
    return b


@pytest.mark.parametrize("kind,floor", [("harmonic", "harmonic_all"), ("anharmonic", "anharmonic_all")])
def test_weights_are_inverse_to_the_priors_floors_error_and_average_one(kind, floor):
    errors = [1e-4, 1e-3, 1e-2, 1e-1]
    b = batch_with_floor_errors(errors, floor)
    w = window_weights(b, floor=5e-3, kind=kind)
    expect = 1 / (torch.tensor(errors, dtype=torch.float64) + 5e-3)
    torch.testing.assert_close(w.double(), expect / expect.mean(), rtol=1e-4, atol=0)
    assert w[0] > w[1] > w[2] > w[3]  # the window the floor predicts best weighs most


def test_the_harmonic_floor_differs_from_the_rigid_one_so_the_weights_read_the_vibration():
    b = batch_with_floor_errors([1e-4, 1e-3, 1e-2])
    rotor, harmonic = (floor_predictions(b, [f])[f] for f in ("rotor_all", "harmonic_all"))
    assert (rotor - harmonic).abs().max() > 1e-3
    with pytest.raises(ValueError, match="loss_weighting"):
        window_weights(b, 1e-3, kind="rigid")


def test_the_weighted_loss_is_the_weighted_mean_of_per_window_errors_and_none_is_the_plain_mean():
    b = batch_with_floor_errors([2e-3, 5e-2, 3e-1])
    cfg = replace(RunConfig(), train=replace(RunConfig().train, loss_weighting="none"))
    model = lambda x0, v0, z, lags_fs, mask, rwpe, paths: x0[:, None].expand(-1, lags_fs.shape[1], -1, -1)  # noqa: E731
    per = masked_mse(model(b["x0"], None, None, b["lags_fs"], None, None, None), b["target"], b["mask"])
    plain = training_loss(model, b, cfg, torch.Generator(), nullcontext())
    torch.testing.assert_close(plain.double(), per.mean(), rtol=1e-5, atol=0)
    weighted_cfg = replace(cfg, train=replace(cfg.train, loss_weighting="harmonic", loss_weight_floor=1e-2))
    weighted = training_loss(model, b, weighted_cfg, torch.Generator(), nullcontext())
    torch.testing.assert_close(weighted.double(), (per * window_weights(b, 1e-2)).mean(), rtol=1e-5, atol=0)
    assert weighted < plain  # the window with the largest error weighs least


def test_loss_atoms_score_trains_only_on_the_scored_atoms_and_all_on_every_real_atom():
    b = batch_with_floor_errors([2e-3, 5e-2, 3e-1])
    score = b["mask"].clone()
    score[:, 0] = False  # the first atom of every window is a "hydrogen": predicted, not scored
    b["score"] = score
    model = lambda x0, v0, z, lags_fs, mask, rwpe, paths: x0[:, None].expand(-1, lags_fs.shape[1], -1, -1)  # noqa: E731
    cfg = replace(RunConfig(), train=replace(RunConfig().train, loss_weighting="none"))
    scored_cfg = replace(cfg, train=replace(cfg.train, loss_atoms="score"))
    pred = model(b["x0"], None, None, b["lags_fs"], None, None, None)
    every = training_loss(model, b, cfg, torch.Generator(), nullcontext())
    scored = training_loss(model, b, scored_cfg, torch.Generator(), nullcontext())
    torch.testing.assert_close(every.double(), masked_mse(pred, b["target"], b["mask"]).mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(scored.double(), masked_mse(pred, b["target"], score).mean(), rtol=1e-5, atol=0)
    # an error on the unscored atom changes the `all` loss and leaves the `score` loss exactly as it was
    b2 = dict(b, target=b["target"].clone())
    b2["target"][:, :, 0] += 0.5
    assert training_loss(model, b2, cfg, torch.Generator(), nullcontext()) > every + 0.01
    assert training_loss(model, b2, scored_cfg, torch.Generator(), nullcontext()) == scored
