"""Attention dropout on CPU (`dropout_attention`): the SDPA semantics (dropout on the softmax
probabilities, kept ones scaled by 1/(1 − p)) hold exactly with a given mask and in
distribution with fresh ones; the backward sees the forward's mask; eval mode has no dropout."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from symmetry import call, random_batch, randomise_parameters

from atomray.config import ModelConfig
from atomray.model import build_model
import atomray.model.dropout_attention as kernel
from atomray.model.dropout_attention import (AttentionWorkspace, dropout_attention, dropout_levels, keep_mask,
                                             value_scale)

torch.set_num_threads(1)
P_DROP = 13107 / 65536  # the realised rate for p = 0.2


def reference(q, k, v, p, segments, bias, keep):
    """Σ_F (softmax_F(q kᵀ + bias) ⊙ keep) v_F / (1 − p), written out per segment."""
    tk = k.shape[2] // segments
    out = 0.0
    for f in range(segments):
        cols = slice(f * tk, (f + 1) * tk)
        scores = torch.einsum("bhtd,bhud->bhtu", q, k[:, :, cols])
        if bias is not None:
            scores = scores + bias[..., cols]
        probs = scores.softmax(-1) * keep[..., cols] / (1 - p)
        out = out + torch.einsum("bhtu,bhud->bhtd", probs, v[:, :, cols])
    return out


def test_dropout_levels_give_the_documented_rate():
    assert dropout_levels(0.2) == 13107
    assert value_scale(0.2) == pytest.approx(1 / (1 - P_DROP), rel=1e-15)
    assert dropout_levels(1e-9) == 1 and dropout_levels(1 - 1e-9) == 65535
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="dropout"):
            dropout_levels(bad)


def test_keep_mask_drops_at_rate_p_in_every_lane_and_is_fresh():
    n = 1 << 21
    first = keep_mask((n,), 13107)
    second = keep_mask((n,), 13107)
    assert first.dtype == torch.int16 and set(first.unique().tolist()) == {0, 1}
    sigma = math.sqrt(P_DROP * (1 - P_DROP) / n)
    assert abs((1 - first.double().mean()).item() - P_DROP) < 5 * sigma
    # each of the four int16 lanes of a 64-bit word drops at the same rate (the top lane too)
    lanes = 1 - first.view(-1, 4).double().mean(0)
    assert (lanes - P_DROP).abs().max().item() < 5 * sigma * 2
    # a second draw is new and independent: agreement = p² + (1 − p)²
    agree = (first == second).double().mean().item()
    assert abs(agree - (P_DROP**2 + (1 - P_DROP) ** 2)) < 5 * math.sqrt(0.68 * 0.32 / n)
    # neighbouring entries are uncorrelated
    x = first.double() - first.double().mean()
    assert abs((x[1:] * x[:-1]).mean().item()) < 5 * P_DROP * (1 - P_DROP) / math.sqrt(n)


@pytest.mark.parametrize("segments", [1, 3])
def test_given_mask_equals_formula_with_gradients(segments):
    g = torch.Generator().manual_seed(0)
    b, h, t, d, p = 3, 2, 6, 4, 0.3
    q = torch.randn(b, h, t, d, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, h, segments * t, d, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, h, segments * t, d, generator=g, dtype=torch.float64, requires_grad=True)
    keep = (torch.rand(b, h, t, segments * t, generator=g) > p).to(torch.int16)
    bias = torch.zeros(b, 1, 1, segments * t, dtype=torch.float64)
    bias[0, ..., t - 2:t] = torch.finfo(torch.float64).min  # two padded keys in the first segment
    realised = dropout_levels(p) / 65536
    ref_bias = bias.masked_fill(bias < 0, float("-inf"))
    got = dropout_attention(q, k, v, p, segments, bias, keep)
    want = reference(q, k, v, realised, segments, ref_bias, keep.double())
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    w = torch.randn(got.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * w).sum(), (q, k, v))
    want_grads = torch.autograd.grad((want * w).sum(), (q, k, v))
    for name, a, e in zip("qkv", grads, want_grads):
        torch.testing.assert_close(a, e, atol=1e-12, rtol=1e-10, msg=name)
    assert torch.autograd.gradcheck(lambda *x: dropout_attention(*x, p, segments, bias, keep), (q, k, v))


def probe_masks(batch: int = 48, heads: int = 4, tokens: int = 32, threads: int = 1, seed: int = 5,
                workspace: AttentionWorkspace | None = None):
    """Read back the masks a fresh forward draws: q = 0 gives uniform probabilities 1/L and
    one-hot values give out = keep / (L (1 − p)). Also returns v's gradient for a random
    output gradient, which the backward computes from the stored or regenerated masks."""
    old, old_chunk = torch.get_num_threads(), kernel._CHUNK_ENTRIES
    torch.set_num_threads(threads)
    kernel._CHUNK_ENTRIES = 5 * heads * tokens * tokens  # 10 chunks of 5 samples (the last of 3)
    try:
        torch.manual_seed(seed)
        q = torch.zeros(batch, heads, tokens, 8, dtype=torch.float64, requires_grad=True)
        k = torch.randn(batch, heads, tokens, 8, dtype=torch.float64)
        v = torch.eye(tokens, dtype=torch.float64).expand(batch, heads, tokens, tokens).clone().requires_grad_()
        out = dropout_attention(q, k, v, 0.2, 1, workspace=workspace)
        keep = out.detach() * tokens / value_scale(0.2)
        grad_out = torch.randn(out.shape, dtype=torch.float64)
        out.backward(grad_out)
    finally:
        torch.set_num_threads(old)
        kernel._CHUNK_ENTRIES = old_chunk
    return keep, v.grad, grad_out


@pytest.mark.parametrize("stored", [False, True], ids=["recomputed", "workspace"])
def test_fresh_masks_in_forward_drop_at_rate_p_and_backward_reuses_them(stored):
    workspace = AttentionWorkspace() if stored else None
    keep, grad_v, grad_out = probe_masks(workspace=workspace)
    assert workspace is None or workspace.probs is not None  # the workspace was used
    torch.testing.assert_close(keep, keep.round(), atol=1e-12, rtol=0)  # exactly 0 or 1
    n = keep.numel()
    assert n > 190_000
    assert abs(1 - keep.mean().item() - P_DROP) < 5 * math.sqrt(P_DROP * (1 - P_DROP) / n)
    # the backward regenerated the same mask: ∂L/∂v = scale · (keep / L)ᵀ ∂L/∂out
    tokens = keep.shape[-1]
    expected = value_scale(0.2) * (keep / tokens).transpose(-1, -2) @ grad_out
    torch.testing.assert_close(grad_v, expected, atol=1e-12, rtol=1e-10)
    # a new call draws a new, independent mask
    again, _, _ = probe_masks(seed=6, workspace=workspace)
    agree = (again == keep).double().mean().item()
    assert abs(agree - (P_DROP**2 + (1 - P_DROP) ** 2)) < 5 * math.sqrt(0.68 * 0.32 / n)


def test_masks_follow_the_seed_not_the_thread_count_or_workspace():
    one, grad_one, _ = probe_masks(threads=1)
    two, grad_two, _ = probe_masks(threads=2, workspace=AttentionWorkspace())
    assert torch.equal(one, two) and torch.equal(grad_one, grad_two)


def test_a_workspace_held_by_a_pending_graph_is_not_overwritten():
    """Two forwards share a workspace before either backward (the second must recompute), and
    a retained graph is differentiated twice (the second time from recomputed masks): every
    gradient is the formula's with that forward's own mask. One-hot values make the output
    the scaled dropped probabilities, so the mask is read back as out > 0."""
    workspace, eye = AttentionWorkspace(), torch.eye(12, dtype=torch.float64)
    runs = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(4, 2, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
        k = torch.randn(4, 2, 12, 5, generator=g, dtype=torch.float64, requires_grad=True)
        v = eye.expand(4, 2, 12, 12).clone().requires_grad_()
        runs.append((q, k, v, dropout_attention(q, k, v, 0.4, 2, workspace=workspace)))
    assert workspace.probs is not None
    w = torch.randn(4, 2, 6, 12, dtype=torch.float64)
    for q, k, v, out in reversed(runs):
        keep = (out.detach() > 0).to(torch.int16)
        want = dropout_attention(q, k, v, 0.4, 2, keep=keep)
        torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-10)
        want_grads = torch.autograd.grad((want * w).sum(), (q, k, v))
        for _ in range(2):
            grads = torch.autograd.grad((out * w).sum(), (q, k, v), retain_graph=True)
            for name, got, expected in zip("qkv", grads, want_grads):
                torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10, msg=name)


def test_dropout_is_unbiased():
    """E[out] over masks equals the attention without dropout: one sample repeated over a
    large batch gets an independent mask per copy."""
    g = torch.Generator().manual_seed(7)
    copies, h, t, d = 2000, 2, 5, 3
    q = torch.randn(1, h, t, d, generator=g, dtype=torch.float64).expand(copies, -1, -1, -1)
    k = torch.randn(1, h, 3 * t, d, generator=g, dtype=torch.float64).expand(copies, -1, -1, -1)
    v = torch.randn(1, h, 3 * t, d, generator=g, dtype=torch.float64).expand(copies, -1, -1, -1)
    torch.manual_seed(8)
    out = dropout_attention(q, k, v, 0.2, 3)
    exact = reference(q[:1], k[:1], v[:1], 0.0, 3, None, torch.ones(1, h, t, 3 * t, dtype=torch.float64))
    spread = out.std(0) / math.sqrt(copies)
    assert ((out.mean(0) - exact[0]).abs() < 5 * spread + 1e-12).all()
    assert (out.std(0) > 0).all()  # and each copy really is dropped differently


@pytest.mark.parametrize("attention", ["heterogeneous", "self"])
def test_eval_mode_ignores_dropout(attention):
    g = torch.Generator().manual_seed(9)
    batch = random_batch(g, b=2, n=5, p=4, pad=1)
    cfg = ModelConfig(embed_dim=32, num_layers=2, num_heads=4, attn_dropout=0.2, attention=attention, lifting="equivariant")
    model = randomise_parameters(build_model(cfg, 4, 0).double()).eval()
    plain = randomise_parameters(build_model(replace(cfg, attn_dropout=0.0), 4, 0).double()).eval()
    torch.testing.assert_close(call(model, batch), call(plain, batch), atol=0, rtol=0)
    model.train()
    torch.manual_seed(0)
    first = call(model, batch)
    torch.manual_seed(0)
    assert torch.equal(call(model, batch), first)  # reproducible under a seed
    assert (call(model, batch) - first).abs().max() > 1e-6  # and fresh on the next call


def test_dropout_runs_under_inference_mode_on_several_threads():
    """A train-mode forward under torch.inference_mode (e.g. a rollout of a model left in train
    mode): the worker threads that run the batch chunks must inherit inference mode, or writing
    their chunk of the (inference) output tensor fails. Same mask and result as under no_grad."""
    old, old_chunk = torch.get_num_threads(), kernel._CHUNK_ENTRIES
    torch.set_num_threads(2)
    kernel._CHUNK_ENTRIES = 2 * 2 * 6 * 12  # 3 chunks of 2 samples: both workers get one
    try:
        g = torch.Generator().manual_seed(11)
        q, k, v = (torch.randn(6, 2, n, 5, generator=g, dtype=torch.float64) for n in (6, 12, 12))
        torch.manual_seed(12)
        with torch.no_grad():
            want = dropout_attention(q, k, v, 0.2, 2)
        torch.manual_seed(12)
        with torch.inference_mode():
            got = dropout_attention(q, k, v, 0.2, 2)
    finally:
        torch.set_num_threads(old)
        kernel._CHUNK_ENTRIES = old_chunk
    assert got.is_inference()
    torch.testing.assert_close(got, want, atol=0, rtol=0)
