"""ATOM's transformer block: heterogeneous temporal attention with T-RoPE, SwiGLU MLP, RMSNorm.

Paper §3.2.2. Tokens are (slot s, atom i) pairs flattened to T = S·N, slot-major. The
residual stream is the phase-feature stream Z; X and V are the lifted position and velocity
embeddings, constant across blocks (duplicated over slots). One head computes

    Σ_{F ∈ {X, V, Z}} γ_F · softmax( T-RoPE(Q(Z)) T-RoPE(K(F))ᵀ / √d_h + B ) V(F)

with one set of Q/K/V/O projections shared by the three streams and γ_F learned (init 1/3)
or fixed at 1/3. The three softmaxes are separate (this is a sum of three attentions, not one
attention over 3T keys) and run in ONE `scaled_dot_product_attention` call by stacking F into
the head axis: queries (B, 3H, T, D) repeat Q(Z) three times, keys/values stack K(F), V(F).
Because X and V are identical in every slot, K(X), V(X), K(V), V(V) are projected once per
atom (N tokens, not S·N) and only broadcast over slots (keys then get their slot's rotation).

Value residual (App. D.3): block l mixes its values with block 1's, v ← λ v + (1 − λ) v_1,
λ = σ(α) learned (α = 0 ⇒ 0.5), or fixed at 0.5, or off. Block 1's λ is locked at 0.5, where
the mix is the identity (v = v_1).

B is the `AttentionBias` shared by all blocks: it hides padded atoms from every query (padded
query rows still see the real atoms, so no row is empty and nothing becomes NaN) and, with
`ModelConfig.distance_bias`, adds the `DistanceBias` term b_h(d_ij) of the start frame's
interatomic distances to every token pair of atoms i and j (an addition to the paper, see
`atomray.model.atom`).

Attention dropout (Table 19: 0.2) acts on the attention probabilities after the softmax and
rescales the kept ones by 1/(1 − p), as SDPA's `dropout_p` does. On CUDA, in eval mode and
at p = 0 the attention is one SDPA call per stream, all three on the same queries (one call
on the streams stacked as 3H heads copied q three times and concatenated the keys and
values: about 9 % slower per MD17 block at N = 9 and at N = 21, CPU inference, 1 thread).
On CPU, SDPA with dropout_p > 0 falls back to its unfused math path (a per-entry Bernoulli
draw, ~190 ms per MD17 block), so training on CPU uses `atomray.model.dropout_attention`
instead, with the keys and values of the X, V, Z streams side by side, (B, H, 3T, D): one
(T × 3T) score matrix per head holds the three softmaxes, and γ_F / (1 − p) is folded into
the values. Each block owns the workspace that
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

    forward(h (B,T,d) normed Z stream, ctx (B,2,N,d) lifted X,V or None, rope (B,S,D/2)
    complex slot rotations or None, bias: the AttentionBias of this forward (slot count, padded
    keys, optional pair term), v1 = block 1's values or None,
    keep = an attention-dropout mask (B,H,T,F·T) 0/1 to use instead of a fresh one, tests only)
    → (out (B,T,d), values for the value residual).
    """

    def __init__(self, dim: int, num_heads: int, heterogeneous: bool = True,
                 gamma: str = "learned", value_residual: str = "learned", first: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(
                f"attention: embed_dim {dim} must split into {num_heads} heads of even size"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"attention: attn_dropout must be in [0, 1), found {dropout}")
        self.dim, self.heads, self.head_dim = dim, num_heads, dim // num_heads
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

    def forward(self, h: Tensor, ctx: Tensor | None, rope: Tensor | None, bias: "AttentionBias",
                v1: tuple[Tensor, ...] | None, keep: Tensor | None = None):
        b, t, d = h.shape
        s, hh, dh = bias.slots, self.heads, self.head_dim
        n = t // s
        streams = 3 if self.heterogeneous else 1
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
                return self.out(self._dropout_streams(q, k, v, kc, vc, rope, bias.explicit(streams, q.dtype), keep)), values
            if rope is not None:
                q, k, kc = apply_rope(q, rope), apply_rope(k, rope), apply_rope(kc, rope)
            else:
                kc = kc.expand(b, 2 * hh, s, n, dh)
            # one SDPA call per stream on the same queries: no 3x copy of q, no key/value concatenation
            q, kc = q.reshape(b, hh, t, dh), kc.reshape(b, 2, hh, t, dh)
            vc = vc.expand(b, 2 * hh, s, n, dh).reshape(b, 2, hh, t, dh)
            kv = ((kc[:, 0], vc[:, 0]), (kc[:, 1], vc[:, 1]), (k.reshape(b, hh, t, dh), v.reshape(b, hh, t, dh)))
            mask, p, gamma = bias.sdpa(q.dtype), self.dropout if self.training else 0.0, self.gamma.to(q.dtype)
            o = sum(gamma[f] * F.scaled_dot_product_attention(q, kf, vf, attn_mask=mask, dropout_p=p)
                    for f, (kf, vf) in enumerate(kv))  # (B, H, T, D)
            o = o.transpose(1, 2)  # (B, T, H, D)
        else:
            if v1 is not None and self.mix != "off":
                lam = self._lam()
                v = lam * v + (1 - lam) * v1[0]
            values = (v,)
            if self._explicit(h):
                q = apply_rope(q, rope * dh**-0.5) if rope is not None else q * dh**-0.5
                k = apply_rope(k, rope) if rope is not None else k
                o = dropout_attention(q.reshape(b, hh, t, dh), k.reshape(b, hh, t, dh), v.reshape(b, hh, t, dh),
                                      self.dropout, 1, bias.explicit(1, q.dtype), keep, workspace=self.workspace)
                return self.out(o.transpose(1, 2).reshape(b, t, d)), values
            if rope is not None:
                q, k = apply_rope(q, rope), apply_rope(k, rope)
            o = F.scaled_dot_product_attention(
                q.reshape(b, hh, t, dh), k.reshape(b, hh, t, dh), v.reshape(b, hh, t, dh),
                attn_mask=bias.sdpa(q.dtype), dropout_p=self.dropout if self.training else 0.0,
            ).transpose(1, 2)  # (B, T, H, D)
        return self.out(o.reshape(b, t, d)), values

    def _dropout_streams(self, q: Tensor, k: Tensor, v: Tensor, kc: Tensor, vc: Tensor, rope: Tensor | None,
                         bias: Tensor | None, keep: Tensor | None) -> Tensor:
        """Heterogeneous attention with dropout through `dropout_attention`: keys and values
        of the X, V, Z streams side by side, (B, H, 3T, D), so one (T × 3T) score matrix per
        head holds the three softmaxes; γ_F and 1/(1 − p) are folded into the values and
        1/√D into the query rotation. q, k, v (B, H, S, N, D); kc, vc (B, 2H, 1, N, D)
        per-atom X/V keys and values; bias (B, 1|H, 1|T, 3T) additive. Returns (B, T, d) before
        the output projection."""
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
                              self.dropout, 3, bias, keep, scaled_values=True,
                              workspace=self.workspace)
        return o.transpose(1, 2).reshape(b, t, hh * dh)  # (B, T, d)


class AttentionBias:
    """The additive attention logits every block of one forward shares: padded keys (never
    attended) and, optionally, a per-head term between atoms i and j (B, H, N, N) that applies
    to every (slot, slot') pair of their tokens and to every stream. Built lazily, once per
    forward, in the layout each attention path needs: `sdpa` for SDPA's attn_mask (one SDPA
    call per stream, so one stream's T keys), `explicit` for `dropout_attention` (streams side
    by side on the key axis, F·T). Padded keys get the most negative finite number, so exp
    underflows to 0 and no row is empty."""

    def __init__(self, slots: int, key_mask: Tensor | None, pair: Tensor | None = None):
        self.slots, self.key_mask, self.pair = slots, key_mask, pair
        self._cache: dict = {}

    def _tokens(self, dtype: torch.dtype) -> Tensor | None:
        """(B, H|1, T|1, T) float: pair term over slot pairs plus the padding term, or None."""
        s = self.slots
        out = None
        if self.pair is not None:
            b, h, n, _ = self.pair.shape
            out = self.pair.to(dtype)[:, :, None, :, None, :].expand(b, h, s, n, s, n).reshape(b, h, s * n, s * n)
        if self.key_mask is not None:
            keys = self.key_mask[:, None, :].expand(-1, s, -1).reshape(len(self.key_mask), 1, 1, -1)  # (B, 1, 1, T)
            pad = torch.zeros(keys.shape, dtype=dtype, device=keys.device).masked_fill_(~keys, torch.finfo(dtype).min)
            out = pad if out is None else out.masked_fill(~keys, torch.finfo(dtype).min)
        return out

    def sdpa(self, dtype: torch.dtype) -> Tensor | None:
        key = ("sdpa", dtype)
        if key not in self._cache:
            if self.pair is None and self.key_mask is not None:  # bool keys: SDPA's cheapest mask
                keys = self.key_mask[:, None, :].expand(-1, self.slots, -1)
                self._cache[key] = keys.reshape(len(self.key_mask), 1, 1, -1)
            else:
                self._cache[key] = self._tokens(dtype)
        return self._cache[key]

    def explicit(self, streams: int, dtype: torch.dtype) -> Tensor | None:
        key = ("explicit", streams, dtype)
        if key not in self._cache:
            tok = self._tokens(dtype)
            self._cache[key] = None if tok is None else tok.repeat(1, 1, 1, streams)
        return self._cache[key]


class DistanceBias(nn.Module):
    """A per-head attention term from the start frame's interatomic distances d_ij (Å):

        b_h(d) = −s_h d,   s_h = 2^(1 − 8h/H) per Å (h = 0 … H−1: 2, 0.5, 0.125, … for H = 4)

    the 3-D analogue of ALiBi's fixed geometric slopes. It is invariant under rotations,
    translations and reflections, and it is how interatomic geometry reaches the trunk in a
    form attention can use: steep heads attend to bonded neighbours, shallow heads to the whole
    molecule, and every query weighs its keys by distance. The slopes are fixed, not learned:
    a learned term needs the gradient of the full (B, 3H, T, T) bias, which takes SDPA off its
    fused path (3x slower per step on CPU, measured); what attends to what is still learned by
    the queries and keys, which hold the positions. forward(x (B,N,3), mask) → (B, H, N, N).
    """

    def __init__(self, heads: int):
        super().__init__()
        slopes = 2.0 ** (1.0 - 8.0 * torch.arange(heads, dtype=torch.float64) / heads)
        self.register_buffer("slopes", slopes.float(), persistent=False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            xw = x.float() * mask.float()[..., None]
            d = torch.cdist(xw, xw)  # (B, N, N)
            return -self.slopes[:, None, None] * d[:, None]


class Block(nn.Module):
    """Pre-norm transformer block: z ← z + Attn(RMSNorm(z)); z ← z + SwiGLU(RMSNorm(z))."""

    def __init__(self, dim: int, num_heads: int, heterogeneous: bool, gamma: str,
                 value_residual: str, first: bool, attn_dropout: float, mlp_dropout: float):
        super().__init__()
        self.norm1 = nn.RMSNorm(dim, eps=1e-6)
        self.attn = TemporalAttention(dim, num_heads, heterogeneous, gamma, value_residual,
                                      first, attn_dropout)
        self.norm2 = nn.RMSNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, swiglu_width(dim), mlp_dropout)

    def forward(self, z: Tensor, ctx: Tensor | None, rope: Tensor | None,
                bias: AttentionBias, v1: tuple[Tensor, ...] | None):
        a, values = self.attn(self.norm1(z), ctx, rope, bias, v1)
        z = z + a
        return z + self.mlp(self.norm2(z)), values
