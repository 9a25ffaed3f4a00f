"""Encodings of physical time (fs): T-RoPE (paper §3.2.2) and a sinusoidal embedding.

T-RoPE rotates each head's query/key pairs by angles θ_{s,k} = ω_k / τ · t_s with
ω_k = b^{-2k/d_h}, k = 0 … d_h/2 − 1 (b = `rope_base`, τ = `tau_fs`). One rotation per time
slot s is shared by all N atoms of that slot, so a rotary dot product q_s·k_{s'} depends only
on t_{s'} − t_s: attention is translation invariant in time and permutation equivariant over
atoms. The pairs are adjacent dimensions (2k, 2k + 1), i.e. exactly the paper's
R_p = diag(R(θ_{p,0}), …, R(θ_{p,d_h/2−1})); the rotation is applied as one complex
multiplication per pair (view_as_complex), the cheapest form on CPU.

The sinusoidal embedding (EGNO-style, and the "sinusoidal" ablation of §4.4) uses the same
geometric frequency ladder ω_k/τ so both encodings resolve the same range of lags.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def time_frequencies(dim: int, base: float, tau_fs: float, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """(dim // 2,) angular frequencies ω_k / τ in rad/fs, ω_k = base^{-2k/dim}."""
    k = torch.arange(dim // 2, device=device, dtype=torch.float64)
    return (base ** (-2.0 * k / dim) / tau_fs).to(dtype)


def rope_tables(times_fs: Tensor, head_dim: int, base: float, tau_fs: float) -> Tensor:
    """Complex rotations e^{iθ_{s,k}}, θ_{s,k} = ω_k/τ · t_s: (B, S, head_dim // 2).

    `times_fs` (B, S): the time of every slot in fs. Angles are formed in float64 when the
    input is float64 (exactness tests; complex128 out) and in float32 otherwise (complex64):
    at 24 000 fs and τ = 10 fs the largest angle is 2 400 rad, whose float32 rounding error
    (~1e-4 rad) is harmless.
    """
    work = torch.float64 if times_fs.dtype == torch.float64 else torch.float32
    freqs = time_frequencies(head_dim, base, tau_fs, times_fs.device, work)  # (D/2,)
    theta = times_fs.to(work)[..., None] * freqs  # (B, S, D/2)
    return torch.polar(torch.ones_like(theta), theta)


def apply_rope(x: Tensor, rot: Tensor) -> Tensor:
    """Rotate the (2k, 2k+1) pairs of `x` (B, H, S', N, D) by the slot rotations `rot`
    (B, S, D/2) complex; S' is S, or 1 for a per-atom quantity shared by all slots (it is
    broadcast). Returns (B, H, S, N, D) in x's dtype (half precision is rotated in float32).
    """
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    xc = torch.view_as_complex(work.unflatten(-1, (-1, 2)))  # (B, H, S', N, D/2)
    out = torch.view_as_real(xc * rot[:, None, :, None].to(xc.dtype)).flatten(-2)  # (B, H, S, N, D)
    return out.to(x.dtype)


def sinusoidal_embedding(times_fs: Tensor, dim: int, base: float, tau_fs: float) -> Tensor:
    """(..., dim) [sin(ω_k t/τ), cos(ω_k t/τ)] of times (...) in fs; `dim` must be even."""
    work = torch.float64 if times_fs.dtype == torch.float64 else torch.float32
    freqs = time_frequencies(dim, base, tau_fs, times_fs.device, work)
    theta = times_fs.to(work)[..., None] * freqs
    return torch.cat((theta.sin(), theta.cos()), dim=-1).to(times_fs.dtype)


class SinusoidalTimeEmbedding(nn.Module):
    """Lag (fs) → learned projection of its sinusoidal features: (...,) → (..., out_dim).

    The "sinusoidal" time-encoding ablation of ATOM (§4.4, "EGNO-style sinusoidal positional
    encoding") and the EGNO / EGNN time embedding (dim 32, docs/reference.md).
    """

    def __init__(self, feature_dim: int, out_dim: int, base: float, tau_fs: float):
        super().__init__()
        if feature_dim % 2:
            raise ValueError(f"sinusoidal time embedding: feature_dim must be even, found {feature_dim}")
        self.feature_dim, self.base, self.tau_fs = feature_dim, base, tau_fs
        self.proj = nn.Linear(feature_dim, out_dim)

    def forward(self, times_fs: Tensor) -> Tensor:
        feats = sinusoidal_embedding(times_fs, self.feature_dim, self.base, self.tau_fs)
        return self.proj(feats.to(self.proj.weight.dtype))
