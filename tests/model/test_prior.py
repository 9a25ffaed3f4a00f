"""`model.prior`: every model starts at its physics prior (the correction is zero at step 0),
and the prior equals the floor of the same name (atomray.physics)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from symmetry import call, random_batch

from atomray import physics
from atomray.config import ModelConfig
from atomray.data.windows import atomic_masses
from atomray.model import build_model

torch.set_num_threads(1)
TINY = ModelConfig(embed_dim=32, num_layers=2, num_heads=4, attn_dropout=0.0, gnn_hidden_dim=16)


def expected(prior: str, batch: dict) -> torch.Tensor:
    x0, v0, lags = batch["x0"], batch["v0"], batch["lags_fs"]
    mass = torch.from_numpy(atomic_masses(batch["z"].numpy())).double() * batch["mask"]
    out = {"x0": lambda: physics.no_motion(x0, lags), "rigid": lambda: physics.rigid(x0, v0, mass, lags),
           "rotor": lambda: physics.rotor(x0, v0, mass, lags)}[prior]()
    return out * batch["mask"][:, None, :, None]


@pytest.mark.parametrize("prior", ["x0", "rigid", "rotor"])
@pytest.mark.parametrize("name", ["atom", "egno", "egnn_r", "egnn_s"])
def test_a_fresh_model_predicts_its_prior_exactly(name, prior):
    g = torch.Generator().manual_seed(30)
    batch = random_batch(g, b=3, n=6, p=4, rwpe_dim=2, pad=2)
    batch["v0"] = batch["v0"] * 5  # a visible rotation over the lags
    torch.manual_seed(0)
    model = build_model(replace(TINY, name=name, prior=prior), 4, 2).double().eval()
    torch.testing.assert_close(call(model, batch), expected(prior, batch), atol=1e-10, rtol=1e-10)


def test_priors_differ_and_the_rotor_is_not_the_constant_omega_rigid_body():
    g = torch.Generator().manual_seed(31)
    batch = random_batch(g, b=2, n=7, p=4, rwpe_dim=0)
    batch["v0"] = batch["v0"] * 20
    batch["lags_fs"] = batch["lags_fs"] * 3  # ~1–4 ps: the body turns far enough to precess
    outs = {p: call(build_model(replace(TINY, prior=p), 4, 0).double().eval(), batch) for p in ("x0", "rigid", "rotor")}
    assert (outs["rigid"] - outs["x0"]).abs().max() > 0.1
    assert (outs["rotor"] - outs["rigid"]).abs().max() > 1e-3
