"""The lifting is exactly E(3)-equivariant; the canonical variant makes ATOM exactly
SE(3)-equivariant (paper §3.2.1, App. D.1). float64 throughout."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from symmetry import (assert_equivariant_output, call, irreps_matrix, random_batch, random_reflection, random_rotation,
                      randomise_parameters)

from atomray.config import ModelConfig
from atomray.model import build_model
from atomray.model.canonical import canonical_frame, canonicalise
from atomray.model.lifting import EquivariantLifting, LinearLifting, chemistry_features, hidden_irreps

torch.set_num_threads(1)
TINY = ModelConfig(embed_dim=32, num_layers=2, num_heads=4, attn_dropout=0.0, lifting="equivariant",
                   attention="heterogeneous")


def lifted(lift, batch, r=None):
    x, v = batch["x0"], batch["v0"] * 100.0
    if r is not None:
        x, v = x @ r.T, v @ r.T
    chem = chemistry_features(batch["z"], 10, batch["rwpe"], x.dtype)
    return torch.cat(lift(x, v, chem), dim=-1)  # (B, N, 3d)


@pytest.mark.parametrize("improper", [False, True], ids=["rotation", "reflection"])
def test_equivariant_lifting_is_exactly_e3_equivariant(improper):
    g = torch.Generator().manual_seed(0)
    batch = random_batch(g, rwpe_dim=4)
    lift = EquivariantLifting(32, 10 + 4).double()
    r = random_reflection(g) if improper else random_rotation(g)
    irreps = hidden_irreps(32)
    d_one = irreps_matrix(irreps, r)
    torch.testing.assert_close(d_one, irreps.D_from_matrix(r), atol=1e-6, rtol=0)  # e3nn convention
    d = torch.block_diag(*[d_one] * 3)  # X, V, Z blocks
    got = lifted(lift, batch, r)
    expected = lifted(lift, batch) @ d.T
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
    # the lift is not trivially invariant: the vector channels really move
    assert (got - lifted(lift, batch)).abs().max() > 1e-3


def test_linear_lifting_is_not_equivariant():
    """The ablation really drops the constraint (and the test above can fail)."""
    g = torch.Generator().manual_seed(1)
    batch = random_batch(g)
    lift = LinearLifting(32, 10).double()
    r = random_rotation(g)
    d = torch.block_diag(*[irreps_matrix(hidden_irreps(32), r)] * 3)
    assert (lifted(lift, batch, r) - lifted(lift, batch) @ d.T).abs().max() > 1e-2


def test_canonical_frame_is_a_rotation_and_invariant_coordinates():
    g = torch.Generator().manual_seed(2)
    batch = random_batch(g, b=4, n=7, pad=2)
    r, t = random_rotation(g), torch.randn(3, generator=g, dtype=torch.float64)
    q, _ = canonical_frame(batch["x0"], batch["v0"], batch["mask"])
    torch.testing.assert_close(q.transpose(1, 2) @ q, torch.eye(3, dtype=torch.float64).expand(4, 3, 3))
    torch.testing.assert_close(torch.linalg.det(q), torch.ones(4, dtype=torch.float64))
    m = batch["mask"].double()[..., None]
    xt, vt, _, _ = canonicalise(batch["x0"], batch["v0"], batch["mask"])
    xr, vr, _, _ = canonicalise((batch["x0"] @ r.T + t) * m, batch["v0"] @ r.T, batch["mask"])
    torch.testing.assert_close(xr, xt, atol=1e-12, rtol=0)
    torch.testing.assert_close(vr, vt, atol=1e-12, rtol=0)
    assert (xt[0, -2:] == 0).all()  # padding stays zero


def test_canonical_frame_without_velocities_uses_the_third_moment():
    g = torch.Generator().manual_seed(3)
    batch = random_batch(g)
    zero_v = torch.zeros_like(batch["v0"])
    r = random_rotation(g)
    xt, _, _, _ = canonicalise(batch["x0"], zero_v, batch["mask"])
    xr, _, _, _ = canonicalise(batch["x0"] @ r.T, zero_v, batch["mask"])
    torch.testing.assert_close(xr, xt, atol=1e-12, rtol=0)


@pytest.mark.parametrize("prior", ["none", "x0", "rigid"])
def test_canonical_atom_is_exactly_se3_equivariant(prior):
    g = torch.Generator().manual_seed(4)
    batch = random_batch(g, b=3, n=6, p=4, rwpe_dim=3, pad=1)
    cfg = replace(TINY, lifting="canonical", prior=prior, relaxed_input=False, prior_input=False)
    model = randomise_parameters(build_model(cfg, 4, 3).double()).eval()
    r, t = random_rotation(g), torch.randn(3, generator=g, dtype=torch.float64) * 3
    assert_equivariant_output(model, batch, r, t, atol=1e-10, rtol=1e-10)


def test_default_atom_is_only_quasi_equivariant():
    """Without canonicalisation the trunk is unconstrained: the same check fails."""
    g = torch.Generator().manual_seed(5)
    batch = random_batch(g)
    model = randomise_parameters(build_model(TINY, 4, 0).double()).eval()
    r = random_rotation(g)
    with pytest.raises(AssertionError):
        assert_equivariant_output(model, batch, r)
    assert torch.isfinite(call(model, batch)).all()
