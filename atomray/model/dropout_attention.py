"""Attention with dropout on the probabilities, for training on CPU (issue 4).

SDPA with dropout_p > 0 has no fused CPU kernel: it falls back to the unfused math path,
whose per-entry Bernoulli draw alone took ~190 ms per MD17 block (train utilisation
0.07–0.11). `dropout_attention` keeps SDPA's semantics (each probability after the softmax
is zeroed independently with probability p, the rest are scaled by 1/(1 − p)). At the MD17
shapes (B 100, H 8, T 81, three streams) forward + backward of one block take 79 ms on 2
threads (SDPA math path with dropout 420 ms, SDPA flash *without* dropout 106 ms; 1 thread:
131 / 600 / 140 ms), because

- the batch is cut into chunks whose (H, Tq, L) score blocks stay in cache, and the chunks
  run on one single-threaded worker per allowed thread (no per-op fork/join);
- the mask costs 16 random bits per entry, drawn in bulk (one 64-bit Mersenne-twister word
  per four entries), instead of a Bernoulli draw per entry;
- several softmaxes over key segments (ATOM's X, V, Z streams) share one (Tq × L) matrix;
- the backward reads the forward's probabilities and mask from a workspace that is reused
  every step (or, without one, recomputes them from per-chunk seeds), so no tensor of size
  B·H·Tq·L is allocated per step.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

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
        """fn(start) for every start, under no_grad and in the caller's inference mode (both
        are per thread: a worker outside inference mode may not write into the inference
        tensors the caller made under torch.inference_mode); serial when one thread is allowed."""
        size = min(torch.get_num_threads(), len(starts))
        if size <= 1:
            for i in starts:
                fn(i)
            return
        with self.lock:  # a forked child (pid differs) or a new thread count needs new threads
            executor = self.executor
            if executor is None or self.size != torch.get_num_threads() or self.pid != os.getpid():
                executor = self._start(torch.get_num_threads())
        inference = torch.is_inference_mode_enabled()

        def run(i: int) -> None:
            with torch.inference_mode(inference), torch.no_grad():
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
    `budget_bytes`, the backward recomputes the scores, softmax and mask instead. The default
    budget, 1 GiB per block, keeps them for batch 100 of 21 atoms at P = 8 (514 MB per MD17
    block; 2.6 GB for the five): recomputing instead cost 23 % more attention time per
    training step there (1 thread, 931 vs 718 ms per block)."""

    def __init__(self, budget_bytes: int = 1 << 30):
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
