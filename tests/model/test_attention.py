"""Heterogeneous temporal attention equals the paper's formula (§3.2.2) written out with
einsum; T-RoPE depends only on time differences. float64 where exactness is claimed."""

from __future__ import annotations


import pytest
import torch
from symmetry import call, random_batch, randomise_parameters

from atomray.config import ModelConfig
from atomray.model import build_model
from atomray.model.attention import AttentionBias, TemporalAttention
from atomray.model.time_encoding import apply_rope, rope_tables

torch.set_num_threads(1)
B, S, N, D_MODEL, HEADS, BASE, TAU = 2, 3, 4, 16, 2, 1000.0, 10.0


def rotation_matrices(times: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, S, D, D) the paper's R_p = diag(R(θ_{p,0}), …): 2×2 rotations by
    θ_{p,k} = ω_k/τ · t_p, ω_k = b^(-2k/D), on the consecutive pairs (2k, 2k + 1)."""
    half = head_dim // 2
    omega = torch.tensor([BASE ** (-2.0 * k / head_dim) for k in range(half)], dtype=torch.float64) / TAU
    theta = times[..., None] * omega  # (B, S, D/2)
    r = torch.zeros(*times.shape, head_dim, head_dim, dtype=torch.float64)
    even = 2 * torch.arange(half)
    r[..., even, even] = theta.cos()
    r[..., even, even + 1] = -theta.sin()
    r[..., even + 1, even] = theta.sin()
    r[..., even + 1, even + 1] = theta.cos()
    return r


def reference(attn: TemporalAttention, h, ctx, times, mask, v1=None, lam=None, keep=None, p=0.0):
    """Σ_F γ_F softmax(T-RoPE(Q(Z)) T-RoPE(K(F))ᵀ/√d_h + mask) V(F), then W_o — by einsum.
    With `keep` (B, H, T, F·T) the probabilities of stream F are multiplied by its block of
    the mask and divided by 1 − p (dropout as SDPA's dropout_p defines it).

    Also returns the per-stream values (for the value-residual check)."""
    d, hh = D_MODEL, HEADS
    dh = d // hh
    wq, wk, wv = attn.qkv.weight[:d], attn.qkv.weight[d:2 * d], attn.qkv.weight[2 * d:]
    slot = lambda f: f[:, None].expand(B, S, N, d).reshape(B, S * N, d)  # noqa: E731
    streams = [slot(ctx[:, 0]), slot(ctx[:, 1]), h] if attn.heterogeneous else [h]
    rot = rotation_matrices(times, dh)  # (B, S, D, D)
    rot_tok = rot[:, :, None].expand(B, S, N, dh, dh).reshape(B, S * N, dh, dh)  # (B, T, D, D)
    heads = lambda t: t.reshape(B, S * N, hh, dh)  # noqa: E731
    q = torch.einsum("btij,bthj->bthi", rot_tok, heads(h @ wq.T))
    bias = torch.zeros(B, S * N, dtype=torch.float64).masked_fill(~mask.repeat(1, S), float("-inf"))
    gammas = attn.gamma if attn.heterogeneous else torch.ones(1, dtype=torch.float64)
    out, values = 0.0, []
    for f, feat in enumerate(streams):
        k = torch.einsum("btij,bthj->bthi", rot_tok, heads(feat @ wk.T))
        v = heads(feat @ wv.T)
        if v1 is not None:
            v = lam * v + (1 - lam) * v1[f]
        values.append(v)
        scores = torch.einsum("bthd,buhd->bhtu", q, k) / dh ** 0.5 + bias[:, None, None, :]
        probs = scores.softmax(-1)
        if keep is not None:
            probs = probs * keep[..., f * S * N:(f + 1) * S * N] / (1 - p)
        out = out + gammas[f] * torch.einsum("bhtu,buhd->bthd", probs, v)
    return out.reshape(B, S * N, d) @ attn.out.weight.T, values


@pytest.mark.parametrize("heterogeneous", [True, False], ids=["heterogeneous", "self"])
def test_attention_equals_einsum_reference(heterogeneous):
    g = torch.Generator().manual_seed(0)
    first = TemporalAttention(D_MODEL, HEADS, heterogeneous, "learned", "learned", first=True).double()
    later = TemporalAttention(D_MODEL, HEADS, heterogeneous, "learned", "learned", first=False).double()
    for module in (first, later):
        randomise_parameters(module)
    h = torch.randn(B, S * N, D_MODEL, generator=g, dtype=torch.float64)
    ctx = torch.randn(B, 2, N, D_MODEL, generator=g, dtype=torch.float64)
    times = torch.cumsum(torch.rand(B, S, generator=g, dtype=torch.float64) * 100, dim=1)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, -1] = False
    key_mask = AttentionBias(S, mask)
    rope = rope_tables(times, D_MODEL // HEADS, BASE, TAU)

    got1, values1 = first(h, ctx if heterogeneous else None, rope, key_mask, None)
    want1, ref_values = reference(first, h, ctx, times, mask)
    torch.testing.assert_close(got1, want1, atol=1e-12, rtol=1e-10)

    # a later block (other input h2) mixes its values with block 1's: v ← λ v + (1 − λ) v1
    h2 = torch.randn(B, S * N, D_MODEL, generator=g, dtype=torch.float64)
    got2, _ = later(h2, ctx if heterogeneous else None, rope, key_mask, values1)
    lam = torch.sigmoid(later.alpha)
    want2, _ = reference(later, h2, ctx, times, mask, v1=ref_values, lam=lam)
    torch.testing.assert_close(got2, want2, atol=1e-12, rtol=1e-10)
    assert (got2 - reference(later, h2, ctx, times, mask)[0]).abs().max() > 1e-6  # the mix matters


@pytest.mark.parametrize("heterogeneous", [True, False], ids=["heterogeneous", "self"])
@pytest.mark.parametrize("rope", [True, False], ids=["trope", "no_rope"])
def test_training_with_dropout_equals_reference_with_the_same_mask(heterogeneous, rope):
    """The CPU dropout path (explicit attention, not SDPA) with a given mask is the formula
    with the mask applied to each stream's probabilities, in value and in every gradient."""
    g = torch.Generator().manual_seed(4)
    p = 0.25
    streams = 3 if heterogeneous else 1
    first = TemporalAttention(D_MODEL, HEADS, heterogeneous, "learned", "learned", first=True, dropout=p).double()
    later = TemporalAttention(D_MODEL, HEADS, heterogeneous, "learned", "learned", first=False, dropout=p).double()
    for module in (first, later):
        randomise_parameters(module)
    h = torch.randn(B, S * N, D_MODEL, generator=g, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(B, 2, N, D_MODEL, generator=g, dtype=torch.float64, requires_grad=True)
    times = torch.cumsum(torch.rand(B, S, generator=g, dtype=torch.float64) * 100, dim=1)
    if not rope:
        times = torch.zeros_like(times)  # R = identity, the same as no T-RoPE
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, -1] = False
    key_mask = AttentionBias(S, mask)
    table = rope_tables(times, D_MODEL // HEADS, BASE, TAU) if rope else None
    keep = (torch.rand(B, HEADS, S * N, streams * S * N, generator=g) > p).to(torch.int16)
    realised = round(p * 65536) / 65536
    c = ctx if heterogeneous else None
    _, values1 = first(h, c, table, key_mask, None)
    got, _ = later(h, c, table, key_mask, values1, keep=keep)
    _, ref_values = reference(first, h, ctx, times, mask)
    want, _ = reference(later, h, ctx, times, mask, v1=ref_values, lam=torch.sigmoid(later.alpha),
                        keep=keep.double(), p=realised)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    w = torch.randn(got.shape, generator=g, dtype=torch.float64)
    wrt = [h, ctx] + list(first.parameters()) + list(later.parameters()) if heterogeneous else \
        [h] + list(first.parameters()) + list(later.parameters())
    grads = torch.autograd.grad((got * w).sum(), wrt, allow_unused=True)
    want_grads = torch.autograd.grad((want * w).sum(), wrt, allow_unused=True)
    for a, e in zip(grads, want_grads):
        assert (a is None) == (e is None)
        if a is not None:
            torch.testing.assert_close(a, e, atol=1e-11, rtol=1e-9)


def test_trope_dot_products_depend_only_on_time_differences():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, HEADS, S, N, 8, generator=g, dtype=torch.float64)
    k = torch.randn(B, HEADS, S, N, 8, generator=g, dtype=torch.float64)
    times = torch.rand(B, S, generator=g, dtype=torch.float64) * 24000
    def scores(t):
        qr, kr = apply_rope(q, rope_tables(t, 8, BASE, TAU)), apply_rope(k, rope_tables(t, 8, BASE, TAU))
        return torch.einsum("bhsnd,bhrmd->bhsnrm", qr, kr)
    torch.testing.assert_close(scores(times + 12345.678), scores(times), atol=1e-9, rtol=1e-9)
    assert (scores(times * 1.5) - scores(times)).abs().max() > 1e-3  # but differences matter


@pytest.mark.parametrize("attention", ["heterogeneous", "self"])
def test_shifting_every_timestamp_leaves_atom_unchanged(attention):
    g = torch.Generator().manual_seed(2)
    batch = random_batch(g, b=2, n=5, p=4, pad=1)
    cfg = ModelConfig(embed_dim=32, num_layers=2, num_heads=4, attn_dropout=0.0, attention=attention, lifting="equivariant")
    model = randomise_parameters(build_model(cfg, 4, 0).double()).eval()
    base = call(model, batch)
    torch.testing.assert_close(call(model, batch, t0_fs=777.25), base, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(call(model, batch, t0_fs=torch.tensor([[5000.0], [-30.0]], dtype=torch.float64)),
                               base, atol=1e-9, rtol=1e-9)
    # the output does depend on the lags themselves (slot 0 anchors the absolute lag)
    stretched = dict(batch, lags_fs=batch["lags_fs"] * 2)
    assert (call(model, stretched) - base).abs().max() > 1e-4


def test_dropout_is_active_only_in_training():
    g = torch.Generator().manual_seed(3)
    batch = random_batch(g, b=2, n=5, p=4, dtype=torch.float32)
    model = randomise_parameters(build_model(ModelConfig(embed_dim=32, num_layers=2, num_heads=4,
                                                         attn_dropout=0.5), 4, 0))
    model.eval()
    torch.testing.assert_close(call(model, batch), call(model, batch))
    model.train()
    assert (call(model, batch) - call(model, batch)).abs().max() > 1e-6
