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
uses `dropout_attention` instead: an explicit attention in batch chunks with the three
streams side by side in one (T × 3T) matrix and 16 random bits per entry drawn in bulk. The
probabilities and mask the backward needs live in a per-module workspace reused every step
(or are recomputed from per-chunk seeds), so nothing of size B·H·T·3T is allocated per step.

Parameters per block (d = model width, h = SwiGLU width ≈ 5d/3, a multiple of 8):
    Q, K, V (one fused d×3d matrix) 3d², O d², SwiGLU 3dh ≈ 5d², RMSNorm 2d, γ 3, α 1
    ≈ 9d² (d = 128: 148 740; d = 256: 594 436).
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from atomray.model.time_encoding import apply_rope


def swiglu_width(dim: int) -> int:
    """SwiGLU hidden width: 5d/3 rounded up to a multiple of 8 (keeps a block at ≈ 9d²)."""
    return 8 * math.ceil(5 * dim / 24)


# -- attention dropout on CPU ------------------------------------------------------------

_LEVELS = 1 << 16  # one 16-bit random integer decides each attention entry
_CHUNK_ENTRIES = 1 << 19  # attention entries per batch chunk (~2 MB fp32: stays in cache)


def dropout_levels(p: float) -> int:
    """How many of the 65 536 values of a 16-bit random integer drop an entry:
    round(p · 65 536), kept in [1, 65 535]. The realised drop probability is this / 65 536
    (p = 0.2 → 13 107 → 0.19999695) and kept entries are scaled by 65 536 / (65 536 − levels)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"attention dropout: p must be in (0, 1), found {p}")
    return min(_LEVELS - 1, max(1, round(p * _LEVELS)))


def keep_mask(shape: tuple[int, ...], levels: int, generator: torch.Generator | None = None,
              words: Tensor | None = None) -> Tensor:
    """int16 tensor of `shape`: 1 = keep, 0 = drop, i.i.d. with P(drop) = levels / 65 536.

    One 64-bit Mersenne-twister word (`random_` over the full int64 range) gives four
    entries, viewed as int16; an entry drops when its int16 is below −32 768 + levels.
    clamp + subtract turns that into 0/1 in place: int16 × float multiplies ~3× faster on
    CPU than a bool mask does, and no Bernoulli draw per entry is made (~10× cheaper).
    `words` (≥ numel/4 int64) is memory to build the mask in; by default it is allocated.
    """
    numel = math.prod(shape)
    n_words = -(-numel // 4)
    words = torch.empty(n_words, dtype=torch.int64) if words is None else words[:n_words]
    words.random_(-(1 << 63), None, generator=generator)
    lo = -(1 << 15) + levels
    return words.view(torch.int16)[:numel].view(shape).clamp_(lo - 1, lo).sub_(lo - 1)


class _ChunkThreads:
    """Runs independent batch chunks on `torch.get_num_threads()` threads, each of which runs
    its ops single-threaded. Why not OpenMP inside each op: the chunk ops are small (~1 ms),
    so splitting each across the cores and meeting at a barrier costs more than it gains (and
    on a shared machine one descheduled thread stalls the barrier for a whole time slice); the
    Mersenne twister is serial per generator, so one generator per chunk runs in parallel."""

    def __init__(self) -> None:
        self.executor: ThreadPoolExecutor | None = None
        self.size, self.pid = 0, 0
        self.lock = threading.Lock()

    def _start(self, size: int) -> ThreadPoolExecutor:
        if self.executor is not None:
            self.executor.shutdown(wait=False)
        main = torch.get_num_threads()
        ready = threading.Barrier(size + 1)

        def single_threaded() -> None:
            torch.get_num_threads()  # initialise this thread's intra-op setting first ...
            torch.set_num_threads(1)  # ... then make it 1 (sticks to this thread)
            ready.wait()

        executor = ThreadPoolExecutor(size, thread_name_prefix="atomray-attention",
                                      initializer=single_threaded)
        for _ in range(size):
            executor.submit(lambda: None)
        ready.wait()
        torch.set_num_threads(main)  # the global default is restored for every other thread
        self.executor, self.size, self.pid = executor, size, os.getpid()
        return executor

    def map(self, fn, starts: range) -> None:
        """fn(start) for every start, under no_grad; serial when one thread is allowed."""
        size = min(torch.get_num_threads(), len(starts))
        if size <= 1:
            for i in starts:
                fn(i)
            return
        with self.lock:  # a forked child (pid differs) or a new thread count needs new threads
            executor = self.executor
            if executor is None or self.size != torch.get_num_threads() or self.pid != os.getpid():
                executor = self._start(torch.get_num_threads())

        def run(i: int) -> None:
            with torch.no_grad():
                fn(i)

        for _ in executor.map(run, starts):
            pass


_THREADS = _ChunkThreads()


class _Lease:
    """Held by the autograd context that uses an `AttentionWorkspace`; free once it is gone."""


class AttentionWorkspace:
    """Memory, reused from step to step, for what `dropout_attention` keeps from the forward
    for the backward: the probabilities (B·H·Tq·L in the compute dtype) and the dropout mask
    (16 bits per entry). Why reuse: a fresh buffer of that size pays a page fault per 4 KiB
    on first touch (~2 µs each here: ~35 ms per MD17 block and step) on top of writing it.
    Without a workspace, while it is still held by an earlier graph, or above
    `budget_bytes`, the backward recomputes the scores, softmax and mask instead."""

    def __init__(self, budget_bytes: int = 256 << 20):
        self.budget_bytes, self.probs, self.words = budget_bytes, None, None
        self._lease = lambda: None

    def take(self, numel: int, dtype: torch.dtype, chunks: int, chunk_words: int):
        """(probs (numel,), words (chunks, chunk_words) int64, lease) or None when in use / too big."""
        if self._lease() is not None or numel * (dtype.itemsize + 2) > self.budget_bytes:
            return None
        if self.probs is None or self.probs.dtype != dtype or self.probs.numel() < numel:
            self.probs = torch.empty(numel, dtype=dtype)
        if self.words is None or self.words.numel() < chunks * chunk_words:
            self.words = torch.empty(chunks * chunk_words, dtype=torch.int64)
        lease = _Lease()
        self._lease = weakref.ref(lease)
        return self.probs[:numel], self.words[:chunks * chunk_words].view(chunks, chunk_words), lease

    def __getstate__(self) -> dict:  # copies and pickles of a model start empty
        return {"budget_bytes": self.budget_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["budget_bytes"])


class _DropoutAttention(torch.autograd.Function):
    """O = Σ_F (softmax_F(q kᵀ + bias) ⊙ keep) v over `segments` key blocks F (see
    `dropout_attention`; v arrives already scaled by 1/(1 − p)). Batch chunks run
    independently. With a free workspace the forward writes the probabilities and mask there
    for the backward; otherwise only q, k, v and per-chunk seeds are kept and the backward
    recomputes the probabilities and regenerates the same mask."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, segments: int, levels: int,
                keep: Tensor | None, workspace: AttentionWorkspace | None) -> Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        b, h, tq, length = *q.shape[:3], k.shape[2]
        chunk = max(1, _CHUNK_ENTRIES // (h * tq * length))
        chunks, chunk_words = -(-b // chunk), -(-chunk * h * tq * length // 4)
        seeds = torch.empty(chunks, dtype=torch.int64).random_().tolist()
        kept = None  # (probabilities (B·H·Tq·L,), mask words (chunks, chunk_words), lease)
        if workspace is not None and any(ctx.needs_input_grad[:3]):
            kept = workspace.take(b * h * tq * length, q.dtype, chunks, chunk_words)
        probs, words = (None, None) if kept is None else kept[:2]
        out = q.new_empty(b, h, tq, v.shape[-1])

        def forward_chunk(i: int) -> None:
            p = _probabilities(q, k, bias, segments, i, i + chunk, probs)  # (c, H, Tq, L)
            m = _chunk_keep(keep, seeds, levels, p.shape, i, chunk, words)
            torch.matmul(p.mul_(m) if probs is None else p * m, v[i:i + chunk], out=out[i:i + chunk])

        _THREADS.map(forward_chunk, range(0, b, chunk))
        ctx.save_for_backward(q, k, v, bias, keep)
        ctx.segments, ctx.levels, ctx.seeds, ctx.chunk, ctx.kept = segments, levels, seeds, chunk, kept
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, bias, keep = ctx.saved_tensors
        segments, chunk, kept = ctx.segments, ctx.chunk, ctx.kept
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

        def backward_chunk(i: int) -> None:
            j = i + chunk
            if kept is None:  # recompute
                p = _probabilities(q, k, bias, segments, i, j, None)  # (c, H, Tq, L)
                m = _chunk_keep(keep, ctx.seeds, ctx.levels, p.shape, i, chunk, None)
            else:  # read back what the forward stored
                p = kept[0].view(q.shape[0], *q.shape[1:3], k.shape[2])[i:j]
                m = keep[i:j] if keep is not None else _mask_view(kept[1][i // chunk], p.shape)
            c, h, tq, length = p.shape
            pk = p * m  # (c, H, Tq, L) dropped probabilities
            torch.matmul(pk.transpose(-1, -2), grad_out[i:j], out=dv[i:j])
            g = torch.matmul(grad_out[i:j], v[i:j].transpose(-1, -2)).mul_(pk)  # p ⊙ ∂L/∂p
            g5 = g.view(c, h, tq, segments, length // segments)
            # softmax backward per segment: ∂s = p ⊙ (∂p − Σ_F p ⊙ ∂p)
            g5.addcmul_(p.view(g5.shape), g5.sum(-1, keepdim=True), value=-1)
            torch.matmul(g, k[i:j], out=dq[i:j])
            torch.matmul(g.transpose(-1, -2), q[i:j], out=dk[i:j])

        _THREADS.map(backward_chunk, range(0, q.shape[0], chunk))
        ctx.kept = None  # hands the workspace back (a second backward recomputes)
        return dq, dk, dv, None, None, None, None, None


def _probabilities(q: Tensor, k: Tensor, bias: Tensor | None, segments: int, i: int, j: int,
                   store: Tensor | None) -> Tensor:
    """Per-segment softmax of the scores of batch rows i:j, (c, H, Tq, L); written into
    `store` (the flat workspace of all rows) when given, else in place of the scores."""
    s = torch.matmul(q[i:j], k[i:j].transpose(-1, -2))  # (c, H, Tq, L)
    if bias is not None:
        s.add_(bias[i:j])
    s5 = s.view(*s.shape[:3], segments, -1)  # (c, H, Tq, F, L/F)
    out = s5 if store is None else store[i * s[0].numel():i * s[0].numel() + s.numel()].view(s5.shape)
    return torch.softmax(s5, -1, out=out).view(s.shape)


def _mask_view(words: Tensor, shape: torch.Size) -> Tensor:
    """The 0/1 int16 mask `keep_mask` left in a chunk's row of workspace words."""
    return words.view(torch.int16)[:math.prod(shape)].view(shape)


def _chunk_keep(keep: Tensor | None, seeds: list[int], levels: int, shape: torch.Size, i: int, chunk: int,
                words: Tensor | None) -> Tensor:
    """Keep mask (c, H, Tq, L) of the chunk starting at batch row i: the given one, or drawn
    from the chunk's seed (into the chunk's row of the workspace words when given)."""
    if keep is not None:
        return keep[i:i + shape[0]]
    n = i // chunk
    return keep_mask(tuple(shape), levels, torch.Generator().manual_seed(seeds[n]),
                     None if words is None else words[n])


def value_scale(p: float) -> float:
    """1/(1 − p_realised), the factor kept attention probabilities are scaled by."""
    levels = dropout_levels(p)
    return _LEVELS / (_LEVELS - levels)


def dropout_attention(q: Tensor, k: Tensor, v: Tensor, p: float, segments: int = 1,
                      key_bias: Tensor | None = None, keep: Tensor | None = None,
                      scaled_values: bool = False, workspace: AttentionWorkspace | None = None) -> Tensor:
    """Attention with dropout on the probabilities, for CPU training.

        out = Σ_F dropout_p( softmax( q k_Fᵀ + bias_F ) ) v_F

    q (B, H, Tq, D) already multiplied by the softmax scale (e.g. 1/√D); k (B, H, L, D) and
    v (B, H, L, Dv) hold `segments` blocks of L/F keys each, every block with its own softmax
    (F = 1 is ordinary attention); key_bias (B, 1, 1, L) additive (a large negative number at
    padded keys) or None. Dropout zeroes each probability independently with probability
    dropout_levels(p)/65 536 and scales the rest by `value_scale(p)`; the mask is fresh on
    every call (drawn from torch's default generator, so reproducible under
    `torch.manual_seed`) unless `keep` (B, H, Tq, L) 0/1 is given (tests). With
    `scaled_values` the caller has already multiplied v by value_scale(p). A `workspace`
    (one per call site, reused every step) lets the backward read the forward's
    probabilities and mask instead of recomputing them (~25 % less work). Returns
    (B, H, Tq, Dv). Works in any float dtype; gradients reach q, k and v.
    """
    levels = dropout_levels(p)
    if not scaled_values:
        v = v * (_LEVELS / (_LEVELS - levels))
    if keep is not None:
        keep = keep.to(torch.int16)
    if k.shape[2] % segments:
        raise ValueError(f"dropout_attention: {k.shape[2]} keys do not split into {segments} segments")
    return _DropoutAttention.apply(q, k, v, key_bias, segments, levels, keep, workspace)


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
