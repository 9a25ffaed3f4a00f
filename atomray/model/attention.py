"""ATOM's transformer block: heterogeneous temporal attention with T-RoPE, SwiGLU MLP, RMSNorm.

Paper §3.2.2. Tokens are (slot s, atom i) pairs flattened to T = S·N, slot-major. The
residual stream is the phase-feature stream Z; X and V are the lifted position and velocity
embeddings, constant across blocks (duplicated over slots). One head computes

    Σ_{F ∈ {X, V, Z}} γ_F · softmax( T-RoPE(Q(Z)) T-RoPE(K(F))ᵀ / √d_h + mask ) V(F)

with one set of Q/K/V/O projections shared by the three streams and γ_F learned (init 1/3)
or fixed at 1/3. The three softmaxes are separate (this is a sum of three attentions, not one
attention over 3T keys) and run in ONE `scaled_dot_product_attention` call by stacking F into
the head axis: queries (B, 3H, T, D) repeat Q(Z) three times, keys/values stack K(F), V(F).
Because X and V are identical in every slot, K(X), V(X), K(V), V(V) are projected once per
atom (N tokens, not S·N) and only broadcast over slots (keys then get their slot's rotation).

Value residual (App. D.3): block l mixes its values with block 1's, v ← λ v + (1 − λ) v_1,
λ = σ(α) learned (α = 0 ⇒ 0.5), or fixed at 0.5, or off. Block 1's λ is locked at 0.5, where
the mix is the identity (v = v_1).

Padding: a boolean key mask (B, 1, 1, T) hides padded atoms from every query; padded query
rows still see the real atoms, so no row is empty and nothing becomes NaN.

Parameters per block (d = model width, h = SwiGLU width ≈ 5d/3, a multiple of 8):
    Q, K, V (one fused d×3d matrix) 3d², O d², SwiGLU 3dh ≈ 5d², RMSNorm 2d, γ 3, α 1
    ≈ 9d² (d = 128: 148 740; d = 256: 594 436).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atomray.model.time_encoding import apply_rope


def swiglu_width(dim: int) -> int:
    """SwiGLU hidden width: 5d/3 rounded up to a multiple of 8 (keeps a block at ≈ 9d²)."""
    return 8 * math.ceil(5 * dim / 24)


class SwiGLU(nn.Module):
    """x → W_out( silu(W_a x) ⊙ W_b x ), (…, d) → (…, d); W_a, W_b fused in one matmul."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.w_out = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.w_out.weight)  # block starts as the identity (modded-nanogpt style)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w_in(x).chunk(2, dim=-1)  # (…, h) each
        return self.dropout(self.w_out(F.silu(a) * b))


class TemporalAttention(nn.Module):
    """Heterogeneous (or, as the ablation, plain self-) attention over S·N tokens with T-RoPE.

    forward(h (B,T,d) normed Z stream, ctx (B,2,N,d) normed X,V or None, rope (B,S,D/2)
    complex slot rotations or None, key_mask (B,1,1,T) bool or None, v1 = block 1's values or None)
    → (out (B,T,d), values for the value residual).
    """

    def __init__(self, dim: int, num_heads: int, slots: int, heterogeneous: bool = True,
                 gamma: str = "learned", value_residual: str = "learned", first: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(
                f"attention: embed_dim {dim} must split into {num_heads} heads of even size"
            )
        self.dim, self.heads, self.head_dim, self.slots = dim, num_heads, dim // num_heads, slots
        self.heterogeneous, self.dropout = heterogeneous, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.out.weight)
        if heterogeneous:
            if gamma == "learned":
                self.gamma = nn.Parameter(torch.full((3,), 1.0 / 3.0))
            else:
                self.register_buffer("gamma", torch.full((3,), 1.0 / 3.0), persistent=False)
        self.mix = "off" if value_residual == "off" or first else value_residual
        if self.mix == "learned":
            self.alpha = nn.Parameter(torch.zeros(()))  # λ = σ(α) = 0.5 at init

    def _lam(self) -> Tensor | float:
        return torch.sigmoid(self.alpha) if self.mix == "learned" else 0.5

    def _heads(self, t: Tensor, b: int, s: int) -> Tensor:
        """(B, S·N, d) → (B, H, S, N, D)."""
        return t.view(b, s, -1, self.heads, self.head_dim).permute(0, 3, 1, 2, 4)

    def forward(self, h: Tensor, ctx: Tensor | None, rope: Tensor | None,
                key_mask: Tensor | None, v1: tuple[Tensor, ...] | None):
        b, t, d = h.shape
        s, hh, dh = self.slots, self.heads, self.head_dim
        n = t // s
        q, k, v = self.qkv(h).chunk(3, dim=-1)  # (B, T, d) each
        q, k, v = self._heads(q, b, s), self._heads(k, b, s), self._heads(v, b, s)  # (B, H, S, N, D)
        if self.heterogeneous:
            kv_ctx = F.linear(ctx, self.qkv.weight[d:])  # (B, 2, N, 2d): shared K/V projections
            kc, vc = kv_ctx.view(b, 2, n, 2, hh, dh).permute(3, 0, 1, 4, 2, 5)  # (B, 2, H, N, D) each
            kc = kc.reshape(b, 2 * hh, 1, n, dh)  # (B, 2H, 1, N, D)
            vc = vc.reshape(b, 2 * hh, 1, n, dh)
            if v1 is not None and self.mix != "off":
                lam = self._lam()
                vc = lam * vc + (1 - lam) * v1[0]
                v = lam * v + (1 - lam) * v1[1]
            values = (vc, v)
            if rope is not None:
                q, k, kc = apply_rope(q, rope), apply_rope(k, rope), apply_rope(kc, rope)
            else:
                kc = kc.expand(b, 2 * hh, s, n, dh)
            keys = torch.cat((kc, k), dim=1).reshape(b, 3 * hh, t, dh)  # (B, 3H, T, D): X, V, Z
            vals = torch.cat((vc.expand(b, 2 * hh, s, n, dh), v), dim=1).reshape(b, 3 * hh, t, dh)
            qs = q.reshape(b, 1, hh, t, dh).expand(b, 3, hh, t, dh).reshape(b, 3 * hh, t, dh)
            o = F.scaled_dot_product_attention(
                qs, keys, vals, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0
            )  # (B, 3H, T, D)
            o = torch.einsum("f,bfhtd->bthd", self.gamma.to(o.dtype), o.view(b, 3, hh, t, dh))
        else:
            if v1 is not None and self.mix != "off":
                lam = self._lam()
                v = lam * v + (1 - lam) * v1[0]
            values = (v,)
            if rope is not None:
                q, k = apply_rope(q, rope), apply_rope(k, rope)
            o = F.scaled_dot_product_attention(
                q.reshape(b, hh, t, dh), k.reshape(b, hh, t, dh), v.reshape(b, hh, t, dh),
                attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0,
            ).transpose(1, 2)  # (B, T, H, D)
        return self.out(o.reshape(b, t, d)), values


class Block(nn.Module):
    """Pre-norm transformer block: z ← z + Attn(RMSNorm(z)); z ← z + SwiGLU(RMSNorm(z))."""

    def __init__(self, dim: int, num_heads: int, slots: int, heterogeneous: bool, gamma: str,
                 value_residual: str, first: bool, attn_dropout: float, mlp_dropout: float):
        super().__init__()
        self.norm1 = nn.RMSNorm(dim, eps=1e-6)
        self.attn = TemporalAttention(dim, num_heads, slots, heterogeneous, gamma, value_residual,
                                      first, attn_dropout)
        self.norm2 = nn.RMSNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, swiglu_width(dim), mlp_dropout)

    def forward(self, z: Tensor, ctx: Tensor | None, rope: Tensor | None,
                key_mask: Tensor | None, v1: tuple[Tensor, ...] | None):
        a, values = self.attn(self.norm1(z), ctx, rope, key_mask, v1)
        z = z + a
        return z + self.mlp(self.norm2(z)), values
