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


@pytest.mark.parametrize("name", ["atom", "egno"])
def test_the_correction_onset_scales_a_trained_correction_by_r2_over_1_plus_r2(name):
    """`correction_onset_fs`: the same (non-zero) correction, multiplied per lag by r²/(1+r²),
    r = Δt / t_c — negligible at 1 fs, half at t_c, almost all of it at 10 t_c."""
    g = torch.Generator().manual_seed(32)
    batch = random_batch(g, b=2, n=6, p=4, rwpe_dim=2, pad=1)
    batch["lags_fs"] = torch.tensor([[1.0, 10.0, 50.0, 500.0], [50.0, 2.0, 500.0, 25.0]], dtype=torch.float64)
    torch.manual_seed(0)
    plain = build_model(replace(TINY, name=name, prior="rotor"), 4, 2).double().eval()
    with torch.no_grad():  # a "trained" model: every parameter moved, so the correction is not zero
        for p in plain.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    gated = build_model(replace(TINY, name=name, prior="rotor", correction_onset_fs=50.0), 4, 2).double().eval()
    gated.load_state_dict(plain.state_dict())
    prior = expected("rotor", batch)
    c_plain, c_gated = call(plain, batch) - prior, call(gated, batch) - prior
    r2 = (batch["lags_fs"] / 50.0) ** 2
    assert c_plain.abs().amax(dim=(2, 3)).min() > 1e-3  # a visible correction at every lag
    torch.testing.assert_close(c_gated, c_plain * (r2 / (1 + r2))[:, :, None, None], atol=1e-10, rtol=1e-8)
    assert c_gated[0, 0].abs().max() < 1e-3 * c_plain[0, 0].abs().max()  # 1 fs: 4e-4 of it
