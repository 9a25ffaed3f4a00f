"""Every model can fit a handful of tiny synthetic trajectories: the training loss falls below
1 % of its starting value within 300 Adam steps on CPU (tiny widths, 2 layers)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from symmetry import with_paths

from atomray.config import ModelConfig
from atomray.elements import atomic_masses
from atomray.model import build_model
from atomray.model.registry import model_inputs
from atomray.train.loss import trajectory_loss

torch.set_num_threads(1)
P, STEPS, LR, CLIP = 4, 300, 1e-2, 0.3


def harmonic_batch(seed: int = 0, b: int = 4, n: int = 5) -> dict[str, torch.Tensor]:
    """b small molecules of n atoms (the last has one padding atom), each atom in an isotropic
    harmonic trap about the centroid with an element-dependent period (C 300, N 450, O 600 fs):

        x_i(t) = x_i cos(ω_Z t) + v_i sin(ω_Z t) / ω_Z

    so the future is a function of the state (x0, v0, Z) and the lag. Atoms lie within 0.7 Å
    of the centroid (every pair inside the 1.6 Å graph radius), speeds ~0.003 Å/fs; P lags
    uniform up to ΔT = 200–400 fs, different per molecule."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[-1, -1] = False
    m = mask.float()[..., None]
    direction = torch.nn.functional.normalize(torch.randn(b, n, 3, generator=g), dim=-1)
    x0 = direction * (0.3 + 0.4 * torch.rand(b, n, 1, generator=g)) * m
    x0 = (x0 - (x0.sum(1, keepdim=True) / m.sum(1, keepdim=True))) * m
    v0 = torch.randn(b, n, 3, generator=g) * 0.003 * m
    z = torch.randint(6, 9, (b, n), generator=g) * mask
    period = torch.tensor([300.0, 450.0, 600.0])[(z - 6).clamp_min(0)]  # (b, n) fs
    omega = (2 * math.pi / period)[:, None, :, None]  # (b, 1, n, 1) rad/fs
    lags = (200 + 200 * torch.rand(b, 1, generator=g)) * torch.arange(1, P + 1) / P  # (b, P) fs
    t = lags[:, :, None, None]
    target = (x0[:, None] * torch.cos(omega * t) + v0[:, None] * torch.sin(omega * t) / omega) * m[:, None]
    return {"x0": x0, "v0": v0, "z": z, "lags_fs": lags, "mask": mask, "target": target}


TINY = ModelConfig(embed_dim=32, num_layers=2, num_heads=4, attn_dropout=0.0, gnn_hidden_dim=32, prior="none",
                   relaxed_input=False, prior_input=False, lifting="equivariant", attention="heterogeneous")


@pytest.mark.parametrize("variant", [
    {"name": "atom"},
    {"name": "atom", "prior": "rigid"},
    {"name": "atom", "lifting": "canonical"},
    {"name": "egno"},
    {"name": "egnn_r"},
    {"name": "egnn_s"},
], ids=["atom", "atom_rigid_prior", "atom_canonical", "egno", "egnn_r", "egnn_s"])
def test_model_overfits_a_few_trajectories(variant):
    torch.manual_seed(0)
    batch = harmonic_batch()
    batch = with_paths({**batch, "mass": torch.from_numpy(atomic_masses(batch["z"].numpy()))}, ("rigid",))
    model = build_model(replace(TINY, **variant), P, 0)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)
    losses = []
    for _ in range(STEPS):  # stops as soon as the loss is below 1 % of its start
        pred = model(**model_inputs(batch))
        loss = trajectory_loss(pred, batch["target"], batch["mask"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)  # rollouts need it (EGNN-R/S)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if losses[-1] < 0.01 * losses[0]:
            break
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.01 * losses[0], f"start {losses[0]:.4f}, end {losses[-1]:.5f}, best {min(losses):.5f}"
