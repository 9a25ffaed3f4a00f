"""Padding-aware S2T / S2S, the L2 objective, label noise, quasi-equivariance ε (App. E.3)
and the rotation penalty (Table 4)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from model.symmetry import random_batch

from atomray.config import ModelConfig
from atomray.model import build_model
from atomray.train.loss import add_label_noise, trajectory_loss
from atomray.data.augment import random_rotation
from atomray.equivariance import quasi_equivariance_epsilon, rotation_penalty
from atomray.metrics import s2s, s2t

torch.set_num_threads(1)


def hand_batch():
    """Two samples, P = 2, N = 3; sample 1 has one padding atom whose 'prediction' is wild."""
    target = torch.zeros(2, 2, 3, 3)
    pred = torch.zeros(2, 2, 3, 3)
    pred[0, 0, 0] = torch.tensor([1.0, 0, 0])  # sq. error 1 in frame 0
    pred[0, 1, 1] = torch.tensor([0.0, 2, 0])  # sq. error 4 in frame 1 (last)
    pred[1, 1, 0] = torch.tensor([0.0, 0, 3])  # sq. error 9 in the last frame
    pred[1, :, 2] = 100.0  # padding atom: must not count
    mask = torch.tensor([[True, True, True], [True, True, False]])
    return pred, target, mask


def test_s2t_and_s2s_by_hand():
    pred, target, mask = hand_batch()
    # sample 0: (1 + 4) / (P=2 · N=3 · 3) ; sample 1: 9 / (2 · 2 · 3)
    per_s2t = torch.tensor([5 / 18, 9 / 12])
    torch.testing.assert_close(s2t(pred, target, mask, reduction="none"), per_s2t)
    torch.testing.assert_close(s2t(pred, target, mask), per_s2t.mean())
    torch.testing.assert_close(s2t(pred, target, mask, reduction="sum"), per_s2t.sum())
    # S2S: last frame only: sample 0: 4 / 9 ; sample 1: 9 / 6
    torch.testing.assert_close(s2s(pred, target, mask, reduction="none"), torch.tensor([4 / 9, 9 / 6]))
    torch.testing.assert_close(trajectory_loss(pred, target, mask), per_s2t.mean())


def test_batch_size_weighted_aggregate_equals_one_big_batch():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(7, 4, 5, 3, generator=g), torch.randn(7, 4, 5, 3, generator=g)
    mask = torch.rand(7, 5, generator=g) > 0.3
    mask[:, 0] = True
    whole = s2t(pred, target, mask)
    parts = [slice(0, 2), slice(2, 7)]
    total = sum(float(s2t(pred[s], target[s], mask[s], reduction="sum")) for s in parts)
    assert total / 7 == pytest.approx(float(whole), rel=1e-6)


def test_metrics_reject_mismatched_shapes():
    pred, target, mask = hand_batch()
    with pytest.raises(ValueError, match="pred and target"):
        s2t(pred, target[:, :1], mask)
    with pytest.raises(ValueError, match="mask"):
        s2t(pred, target, mask[:, :2])
    with pytest.raises(ValueError, match="reduction"):
        s2t(pred, target, mask, reduction="median")


def test_label_noise_statistics_and_padding():
    x0 = torch.zeros(400, 6, 3)
    v0 = torch.zeros(400, 6, 3)
    target = torch.zeros(400, 8, 6, 3)
    mask = torch.ones(400, 6, dtype=torch.bool)
    mask[:, -1] = False
    g = torch.Generator().manual_seed(1)
    nx, nv, nt = add_label_noise(x0, v0, target, mask, 0.1, g)
    assert nx[:, :-1].std().item() == pytest.approx(0.1, rel=0.05)
    assert nt[:, :, :-1].std().item() == pytest.approx(0.1, rel=0.05)
    assert nv[:, :-1].std().item() == pytest.approx(0.001, rel=0.05)  # σ per 100 fs
    assert (nx[:, -1] == 0).all() and (nv[:, -1] == 0).all() and (nt[:, :, -1] == 0).all()
    # independent draws for x0 and every target frame
    assert (nt[:, 0] - nx).abs().max() > 0.01 and (nt[:, 0] - nt[:, 1]).abs().max() > 0.01
    # reproducible with the same seed; σ = 0 is the identity; σ < 0 is an error
    again = add_label_noise(x0, v0, target, mask, 0.1, torch.Generator().manual_seed(1))
    torch.testing.assert_close(again[0], nx)
    assert add_label_noise(x0, v0, target, mask, 0.0, g)[0] is x0
    with pytest.raises(ValueError, match="sigma"):
        add_label_noise(x0, v0, target, mask, -1.0, g)


def molecule_batch(seed: int = 2):
    """Three random molecules of six atoms with every prior path (the default model's harmonic prior)."""
    return random_batch(torch.Generator().manual_seed(seed), b=3, n=6, p=2)


def tiny(**switches):
    cfg = replace(ModelConfig(embed_dim=32, num_layers=2, num_heads=4, attn_dropout=0.0, gnn_hidden_dim=16,
                              lifting="equivariant", attention="heterogeneous"), **switches)
    torch.manual_seed(0)
    model = build_model(cfg, 2, 0).double()
    with torch.no_grad():  # lift the zero-initialised projections (and output head) so the trunk acts
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.2)
    return model


def test_quasi_equivariance_epsilon_separates_the_variants():
    batch = molecule_batch()
    exact = quasi_equivariance_epsilon(tiny(lifting="canonical"), batch, 5, torch.Generator().manual_seed(3))
    egno = quasi_equivariance_epsilon(tiny(name="egno"), batch, 5, torch.Generator().manual_seed(3))
    quasi = quasi_equivariance_epsilon(tiny(), batch, 5, torch.Generator().manual_seed(3))
    assert float(exact) < 1e-9 and float(egno) < 1e-9
    assert float(quasi) > 1e-4
    per = quasi_equivariance_epsilon(tiny(), batch, 5, torch.Generator().manual_seed(3), reduction="none")
    assert per.shape == (3,) and float(per.mean()) == pytest.approx(float(quasi))


def test_rotation_penalty():
    batch = molecule_batch()
    r = random_rotation(torch.Generator().manual_seed(4))
    model = tiny(lifting="canonical")
    model.train()
    exact = rotation_penalty(model, batch, r)
    assert model.training  # the training flag is restored
    assert exact["ratio"] == pytest.approx(1.0, abs=1e-9) and abs(exact["increase"]) < 1e-9
    linear = rotation_penalty(tiny(lifting="linear"), batch, r)
    assert linear["rotated"] != pytest.approx(linear["unrotated"], rel=1e-3)
    assert linear["ratio"] == pytest.approx(linear["rotated"] / linear["unrotated"])
