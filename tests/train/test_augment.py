"""`train.augment=so3`: every training window turns by its own random rotation, fresh every
epoch; an exactly equivariant model (EGNO, canonical ATOM) sees the same loss either way."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from model.symmetry import call, random_batch

from atomray.config import ModelConfig
from atomray.model import build_model
from atomray.data.augment import rotate_windows
from atomray.train.loss import epoch_generator, trajectory_loss

torch.set_num_threads(1)


def rotations_of(before: dict, after: dict) -> torch.Tensor:
    """(B, 3, 3) the rotation R with after = before Rᵀ, per window (least squares on x0, v0)."""
    a = torch.cat((before["x0"], before["v0"] * 100), 1)  # (B, M, 3)
    b = torch.cat((after["x0"], after["v0"] * 100), 1)
    return torch.linalg.lstsq(a, b).solution.transpose(1, 2)


def test_each_window_gets_its_own_rotation_and_each_epoch_fresh_ones():
    g = torch.Generator().manual_seed(40)
    batch = random_batch(g, b=6, n=7, p=4)
    epoch1 = rotations_of(batch, rotate_windows(batch, epoch_generator(0, 1, 0, "augment")))
    again = rotations_of(batch, rotate_windows(batch, epoch_generator(0, 1, 0, "augment")))
    epoch2 = rotations_of(batch, rotate_windows(batch, epoch_generator(0, 2, 0, "augment")))
    other_rank = rotations_of(batch, rotate_windows(batch, epoch_generator(0, 1, 1, "augment")))
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(epoch1 @ epoch1.transpose(1, 2), eye.expand(6, 3, 3), atol=1e-9, rtol=0)
    assert torch.allclose(torch.linalg.det(epoch1), torch.ones(6, dtype=torch.float64))  # proper rotations
    torch.testing.assert_close(epoch1, again)  # seeded: a repeated run draws the same
    distinct = lambda r: min((r[i] - r[j]).abs().max() for i in range(6) for j in range(i))  # noqa: E731
    assert distinct(epoch1) > 0.1  # every window of the batch turns differently
    assert (epoch1 - epoch2).abs().amax((1, 2)).min() > 0.1  # every window turns anew next epoch
    assert (epoch1 - other_rank).abs().amax((1, 2)).min() > 0.1
    # targets turn with their window, about the centroid
    turned = rotate_windows(batch, epoch_generator(0, 1, 0, "augment"))
    expect = torch.einsum("bij,bpnj->bpni", epoch1, batch["target"]) * batch["mask"][:, None, :, None]
    torch.testing.assert_close(turned["target"], expect, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("variant", [{"name": "egno"}, {"name": "atom", "lifting": "canonical"}], ids=["egno", "canonical"])
def test_augmentation_leaves_an_exactly_equivariant_models_loss_unchanged(variant):
    g = torch.Generator().manual_seed(41)
    batch = random_batch(g, b=4, n=6, p=4, pad=1)
    cfg = replace(ModelConfig(embed_dim=32, num_layers=2, num_heads=4, attn_dropout=0.0, gnn_hidden_dim=16,
                              lifting="equivariant", attention="heterogeneous"), **variant)
    torch.manual_seed(0)
    model = build_model(cfg, 4, 0).double().eval()
    with torch.no_grad():  # lift the zero-initialised output so the network, not only the prior, acts
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.3)

    def loss(b):
        return trajectory_loss(call(model, b), b["target"], b["mask"])

    turned = rotate_windows(batch, epoch_generator(0, 3, 0, "augment"))
    assert (turned["x0"] - batch["x0"]).abs().max() > 0.1
    torch.testing.assert_close(loss(turned), loss(batch), atol=1e-10, rtol=1e-9)
