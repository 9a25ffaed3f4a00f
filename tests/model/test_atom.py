"""ATOM and the baselines behind one interface: permutation equivariance and padding
invariance of every variant, every ablation switch acts, parameter counts (paper F.2),
precision switches and errors a user can act on."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from symmetry import (call, pad_atoms, permute_batch, random_batch, random_permutation, random_rotation,
                      randomise_parameters, with_paths)

from atomray.config import ConfigError, ModelConfig
from atomray.model.registry import model_inputs
from atomray.model import ATOM, EGNO, build_model, count_parameters

torch.set_num_threads(1)
TINY = ModelConfig(embed_dim=32, num_layers=2, num_heads=4, attn_dropout=0.0, gnn_hidden_dim=16,
                   lifting="equivariant", attention="heterogeneous")  # the paper's quasi-equivariant ATOM
P, K = 4, 3
NO_INPUTS = {"relaxed_input": False, "prior_input": False}  # they read the harmonic prior

VARIANTS = {
    "atom": {},
    "linear_lift": {"lifting": "linear"},
    "canonical": {"lifting": "canonical"},
    "self_attention": {"attention": "self"},
    "sinusoidal": {"time_encoding": "sinusoidal"},
    "no_time": {"time_encoding": "none"},
    "gamma_fixed": {"gamma": "fixed"},
    "value_residual_fixed": {"value_residual": "fixed"},
    "value_residual_off": {"value_residual": "off"},
    "prior_none": {"prior": "none", **NO_INPUTS},
    "prior_x0": {"prior": "x0", **NO_INPUTS},
    "prior_rotor": {"prior": "rotor", **NO_INPUTS},
    "prior_rigid": {"prior": "rigid", **NO_INPUTS},
    "anharmonic": {"anharmonic": True},
    "no_distance_bias": {"distance_bias": False},
    "no_lag_output": {"lag_conditioned_output": False},
    "gated_heads": {"output_heads": 3},
    "egno": {"name": "egno"},
    "egnn_r": {"name": "egnn_r"},
    "egnn_s": {"name": "egnn_s"},
    "egno_prior_none": {"name": "egno", "prior": "none", **NO_INPUTS},
}


def make(variant: str, rwpe_dim: int = K, dtype=torch.float64, **extra):
    cfg = replace(TINY, **VARIANTS[variant], **extra)
    return randomise_parameters(build_model(cfg, P, rwpe_dim).to(dtype)).eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_is_permutation_equivariant(variant):
    g = torch.Generator().manual_seed(10)
    batch = random_batch(g, b=2, n=6, p=P, rwpe_dim=K, pad=2)
    model = make(variant)
    perm = random_permutation(6, g)
    expected = call(model, batch).index_select(2, perm)
    torch.testing.assert_close(call(model, permute_batch(batch, perm)), expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padding_does_not_change_a_molecule(variant):
    """A molecule alone and the same molecule padded inside a batch with a larger one."""
    g = torch.Generator().manual_seed(11)
    small = random_batch(g, b=1, n=5, p=P, rwpe_dim=K, dtype=torch.float32)
    large = random_batch(g, b=1, n=8, p=P, rwpe_dim=K, dtype=torch.float32)
    padded = {key: torch.cat((large[key], pad_atoms(key, small[key], 3))) for key in small}
    model = make(variant, dtype=torch.float32)
    alone = call(model, small)[0]  # (P, 5, 3)
    together = call(model, padded)
    torch.testing.assert_close(together[1, :, :5], alone, atol=1e-5, rtol=1e-5)
    assert (together[1, :, 5:] == 0).all()  # padded atoms predict exactly 0
    assert torch.isfinite(together).all()


SWITCHES = {
    "lifting=linear": {"lifting": "linear"},
    "lifting=canonical": {"lifting": "canonical"},
    "attention=self": {"attention": "self"},
    "time_encoding=sinusoidal": {"time_encoding": "sinusoidal"},
    "time_encoding=none": {"time_encoding": "none"},
    "gamma=fixed": {"gamma": "fixed"},
    "value_residual=fixed": {"value_residual": "fixed"},
    "value_residual=off": {"value_residual": "off"},
    "prior=none": {"prior": "none", **NO_INPUTS},
    "prior=x0": {"prior": "x0", **NO_INPUTS},
    "prior=rotor": {"prior": "rotor", **NO_INPUTS},
    "relaxed_input=false": {"relaxed_input": False},
    "prior_input=false": {"prior_input": False},
    "distance_bias=false": {"distance_bias": False},
    "lag_conditioned_output=false": {"lag_conditioned_output": False},
    "output_heads=3": {"output_heads": 3},
}


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_each_ablation_switch_changes_the_output(switch):
    """Shared parameters get identical values in both models, so only the switch differs."""
    g = torch.Generator().manual_seed(12)
    batch = random_batch(g, b=2, n=5, p=P, rwpe_dim=K)
    base = randomise_parameters(build_model(TINY, P, K).double()).eval()
    other = randomise_parameters(build_model(replace(TINY, **SWITCHES[switch]), P, K).double()).eval()
    assert (call(base, batch) - call(other, batch)).abs().max() > 1e-3


def test_rwpe_length_switch_changes_the_output():
    g = torch.Generator().manual_seed(13)
    batch = random_batch(g, b=2, n=5, p=P, rwpe_dim=K)
    with_rwpe = randomise_parameters(build_model(TINY, P, K).double()).eval()
    without = randomise_parameters(build_model(TINY, P, 0).double()).eval()
    assert (call(with_rwpe, batch) - call(without, dict(batch, rwpe=None))).abs().max() > 1e-3


def test_interface_shapes_dtype_and_padding_zeros():
    g = torch.Generator().manual_seed(14)
    batch = random_batch(g, b=3, n=7, p=P, rwpe_dim=K, pad=3, dtype=torch.float32)
    for name in ("atom", "egno", "egnn_r", "egnn_s"):
        model = build_model(replace(TINY, name=name), P, K)
        out = call(model, batch)
        assert out.shape == (3, P, 7, 3) and out.dtype == torch.float32
        assert (out[0, :, 4:] == 0).all() and torch.isfinite(out).all()


def test_parameter_counts_match_the_paper():
    """Paper F.2: ATOM MD17 config 754 468, multitask 3 557 840 (within 10 %)."""
    paper = dict(lifting="equivariant", attention="heterogeneous", prior="rotor", relaxed_input=False, prior_input=False)
    md17 = count_parameters(build_model(ModelConfig(embed_dim=128, num_layers=5, num_heads=8, **paper), num_lags=8,
                                        rwpe_dim=8))
    multitask = count_parameters(build_model(ModelConfig(embed_dim=256, num_layers=6, num_heads=8, output_heads=8, **paper),
                                             num_lags=8, rwpe_dim=8))
    assert abs(md17 - 754_468) / 754_468 < 0.10, md17
    assert abs(multitask - 3_557_840) / 3_557_840 < 0.10, multitask
    egno = count_parameters(build_model(ModelConfig(name="egno", num_layers=5), num_lags=8, rwpe_dim=8))
    assert 200_000 < egno < 400_000, egno  # paper's EGNO: 335 770 (not a hard target)


def test_bf16_autocast_runs_and_stays_close():
    g = torch.Generator().manual_seed(15)
    batch = random_batch(g, b=2, n=6, p=P, rwpe_dim=K, dtype=torch.float32, pad=1)
    for variant in ("atom", "canonical", "egno"):
        model = make(variant, dtype=torch.float32)
        full = call(model, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = call(model, batch)
        assert half.dtype == torch.float32 and torch.isfinite(half).all()
        assert (half - full).norm() / full.norm() < 0.1, variant


def test_bad_inputs_name_what_is_wrong(monkeypatch):
    monkeypatch.setenv("ATOMRAY_DEBUG", "1")  # value checks inside forward (host syncs) only when debugging
    g = torch.Generator().manual_seed(16)
    batch = random_batch(g, b=2, n=5, p=P, rwpe_dim=K, dtype=torch.float32)
    model = build_model(TINY, P, K)
    with pytest.raises(ValueError, match="lags_fs"):
        call(model, dict(batch, lags_fs=batch["lags_fs"][0]))
    with pytest.raises(ValueError, match="RWPE"):
        call(model, dict(batch, rwpe=None))
    with pytest.raises(ValueError, match="atomic numbers"):
        call(model, dict(batch, z=batch["z"] + 20))
    with pytest.raises(ConfigError, match="model.name"):
        build_model(replace(TINY, name="transformer"), P, K)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="heads"):
        build_model(replace(TINY, num_heads=5), P, K)


def test_atom_predicts_any_number_of_lags_and_the_egnn_family_refuses_another():
    """§4.3: T-RoPE needs no retraining for other lags; EGNO's layers are tied to P."""
    g = torch.Generator().manual_seed(18)
    batch = random_batch(g, b=2, n=5, p=P, rwpe_dim=K)
    model = make("atom")
    full = call(model, batch)
    for lags in (batch["lags_fs"][:, :1], batch["lags_fs"][:, [1, 3]], torch.cat([batch["lags_fs"]] * 4, 1)):
        out = call(model, with_paths(dict(batch, lags_fs=lags)))  # the data path computes the prior at those lags
        assert out.shape == (2, lags.shape[1], 5, 3) and torch.isfinite(out).all()
    # a query slot sees the other slots, so a lag's prediction depends on its company, but the
    # same lags in the same order give the same prediction
    torch.testing.assert_close(call(model, with_paths(dict(batch, lags_fs=batch["lags_fs"].clone()))), full)
    two = with_paths(dict(batch, lags_fs=batch["lags_fs"][:, :2]))
    for name in ("egno", "egnn_r", "egnn_s"):
        with pytest.raises(ValueError, match=rf"built for P = {P} lags .* cannot predict P = 2"):
            call(make(name), two)
    with pytest.raises(ValueError, match="time_encoding=none .* cannot predict P = 2"):
        call(make("no_time"), two)


def test_latent_equivariance_regulariser():
    g = torch.Generator().manual_seed(17)
    batch = random_batch(g, b=2, n=5, p=P, rwpe_dim=K, dtype=torch.float32)
    plain = build_model(TINY, P, K)
    assert not any("latent_map" in n for n, _ in plain.named_parameters())  # weight 0: no extra params
    with pytest.raises(RuntimeError, match="latent_equivariance_weight"):
        plain.latent_equivariance_loss(*(batch[k] for k in ("x0", "v0", "z", "lags_fs", "mask", "rwpe")),
                                       torch.eye(3), model_inputs(batch)["paths"])
    model = build_model(replace(TINY, latent_equivariance_weight=0.1), P, K)
    args = [batch[k] for k in ("x0", "v0", "z", "lags_fs", "mask", "rwpe")]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    r = random_rotation(g, torch.float32)
    losses = []
    for _ in range(40):
        loss = model.latent_equivariance_loss(*args, r, model_inputs(batch)["paths"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model.latent_map[0].weight.grad is not None
    assert losses[-1] < 0.5 * losses[0]  # τ learns how the rotation acts on the embedding


def test_registry_classes():
    assert isinstance(build_model(TINY, P, 0), ATOM)
    assert isinstance(build_model(replace(TINY, name="egno"), P, 0), EGNO)
