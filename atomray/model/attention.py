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

Attention dropout (Table 19: 0.2) acts on the attention probabilities after the softmax and
rescales the kept ones by 1/(1 − p), as SDPA's `dropout_p` does. On CUDA, in eval mode and
at p = 0 the attention is one SDPA call. On CPU, SDPA with dropout_p > 0 falls back to its
unfused math path (a per-entry Bernoulli draw, ~190 ms per MD17 block), so training on CPU
uses `atomray.model.dropout_attention` instead, with the keys and values of the X, V, Z
streams side by side, (B, H, 3T, D): one (T × 3T) score matrix per head holds the three
softmaxes, and γ_F / (1 − p) is folded into the values. Each block owns the workspace that
carries the probabilities and mask from its forward to its backward.

Parameters per block (d = model width, h = SwiGLU width ≈ 5d/3, a multiple of 8):
    Q, K, V (one fused d×3d matrix) 3d², O d², SwiGLU 3dh ≈ 5d², RMSNorm 2d, γ 3, α 1
    ≈ 9d² (d = 128: 148 740; d = 256: 594 436).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atomray.model.dropout_attention import AttentionWorkspace, dropout_attention, value_scale
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
    complex slot rotations or None, key_mask (B,1,1,T) bool or None, v1 = block 1's values or None,
    keep = an attention-dropout mask (B,H,T,F·T) 0/1 to use instead of a fresh one, tests only)
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
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"attention: attn_dropout must be in [0, 1), found {dropout}")
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
        self.workspace = AttentionWorkspace()  # CPU dropout: forward → backward memory (not state)

    def _lam(self) -> Tensor | float:
        return torch.sigmoid(self.alpha) if self.mix == "learned" else 0.5

    def _heads(self, t: Tensor, b: int, s: int) -> Tensor:
        """(B, S·N, d) → (B, H, S, N, D)."""
        return t.view(b, s, -1, self.heads, self.head_dim).permute(0, 3, 1, 2, 4)

    def _explicit(self, h: Tensor) -> bool:
        """Attention dropout on CPU runs `dropout_attention`, not SDPA's unfused math path
        (under torch.compile SDPA stays: the compiler generates its own dropout)."""
        return (self.training and self.dropout > 0 and h.device.type == "cpu"
                and not torch.compiler.is_compiling())

    def forward(self, h: Tensor, ctx: Tensor | None, rope: Tensor | None,
                key_mask: Tensor | None, v1: tuple[Tensor, ...] | None, keep: Tensor | None = None):
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
            if self._explicit(h):
                return self.out(self._dropout_streams(q, k, v, kc, vc, rope, key_mask, keep)), values
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
            if self._explicit(h):
                q = apply_rope(q, rope * dh**-0.5) if rope is not None else q * dh**-0.5
                k = apply_rope(k, rope) if rope is not None else k
                o = dropout_attention(q.reshape(b, hh, t, dh), k.reshape(b, hh, t, dh), v.reshape(b, hh, t, dh),
                                      self.dropout, 1, _key_bias(key_mask, 1, q.dtype), keep,
                                      workspace=self.workspace)
                return self.out(o.transpose(1, 2).reshape(b, t, d)), values
            if rope is not None:
                q, k = apply_rope(q, rope), apply_rope(k, rope)
            o = F.scaled_dot_product_attention(
                q.reshape(b, hh, t, dh), k.reshape(b, hh, t, dh), v.reshape(b, hh, t, dh),
                attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0,
            ).transpose(1, 2)  # (B, T, H, D)
        return self.out(o.reshape(b, t, d)), values

    def _dropout_streams(self, q: Tensor, k: Tensor, v: Tensor, kc: Tensor, vc: Tensor, rope: Tensor | None,
                         key_mask: Tensor | None, keep: Tensor | None) -> Tensor:
        """Heterogeneous attention with dropout through `dropout_attention`: keys and values
        of the X, V, Z streams side by side, (B, H, 3T, D), so one (T × 3T) score matrix per
        head holds the three softmaxes; γ_F and 1/(1 − p) are folded into the values and
        1/√D into the query rotation. q, k, v (B, H, S, N, D); kc, vc (B, 2H, 1, N, D)
        per-atom X/V keys and values. Returns (B, T, d) before the output projection."""
        b, hh, s, n, dh = q.shape
        t = s * n
        if rope is not None:
            q, k, kc = apply_rope(q, rope * dh**-0.5), apply_rope(k, rope), apply_rope(kc, rope)
        else:
            q, kc = q * dh**-0.5, kc.expand(b, 2 * hh, s, n, dh)
        keys = torch.cat((kc.reshape(b, 2, hh, s, n, dh).transpose(1, 2), k.unsqueeze(2)), dim=2)  # (B, H, 3, S, N, D)
        g = self.gamma.to(q.dtype) * value_scale(self.dropout)  # (3,) γ_F / (1 − p)
        vx = (vc.reshape(b, 2, hh, 1, n, dh) * g[:2].view(1, 2, 1, 1, 1, 1)).transpose(1, 2)  # (B, H, 2, 1, N, D)
        vals = torch.cat((vx.expand(b, hh, 2, s, n, dh), (v * g[2]).unsqueeze(2)), dim=2)  # (B, H, 3, S, N, D)
        o = dropout_attention(q.reshape(b, hh, t, dh), keys.view(b, hh, 3 * t, dh), vals.view(b, hh, 3 * t, dh),
                              self.dropout, 3, _key_bias(key_mask, 3, q.dtype), keep, scaled_values=True,
                              workspace=self.workspace)
        return o.transpose(1, 2).reshape(b, t, hh * dh)  # (B, T, d)


def _key_bias(key_mask: Tensor | None, segments: int, dtype: torch.dtype) -> Tensor | None:
    """(B, 1, 1, T) bool key mask → (B, 1, 1, F·T) additive bias: 0 at real keys, the most
    negative finite number at padded ones (exp underflows to exactly 0, and a row with no
    real key would stay finite instead of NaN)."""
    if key_mask is None:
        return None
    bias = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device)
    return bias.masked_fill_(~key_mask, torch.finfo(dtype).min).repeat(1, 1, 1, segments)


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
