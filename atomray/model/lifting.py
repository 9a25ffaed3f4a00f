"""Lifting: per-atom inputs (x, v, Z[, RWPE]) → three d-dimensional embeddings X, V, Z.

Paper §3.2.1 ("E(3) equivariant lifting"): each atom's position and velocity are augmented
with their norms, (x, ‖x‖) and (v, ‖v‖), and lifted by E(3)-equivariant linear layers (e3nn
`o3.Linear`); phase-space features — position and velocity, "augmented with atomic number"
(and, in the multitask setting, the random-walk positional encoding of App. D.2) — are
lifted by a learnable equivariant map. The lifted features use the irreps `m×0e + n×1o` with
n = d // 4 and m = d − 3n (d = 128: 32 scalars + 32 vectors), flattened to d numbers per atom.

    X = Linear_x([x, ‖x‖])                                (1o + 0e → m×0e + n×1o)
    V = Linear_v([v, ‖v‖])                                (1o + 0e → m×0e + n×1o)
    Z = TP([x, v, ‖x‖, ‖v‖, 1] ⊗ [onehot(Z), RWPE])       (2×1o + 3×0e) ⊗ (S×0e) → m×0e + n×1o

The phase map is a fully connected tensor product: a bilinear fusion of the phase-space
features with the (invariant) chemistry features, so vector channels are x·f(Z, RWPE) +
v·g(Z, RWPE) and scalar channels ‖x‖·h + ‖v‖·k + l (all functions of Z, RWPE). The phase
stream is the attention query and the residual stream (§3.2.2), so it must hold the position:
without it no query knows where its atom is, and attention cannot weigh neighbours by
distance (the authors' code also forms the phase as a product of lifted x with lifted (v, Z);
docs/reference.md). All three maps are exactly E(3)-equivariant (x and v are polar vectors, 1o);
tests check `lift(x Rᵀ) = lift(x) D(R)ᵀ` with reflections.

`LinearLifting` is the "no equivariant lift" ablation (§4.4): plain `nn.Linear` layers on
the same concatenated inputs. Velocities arrive already scaled to the model's unit (the
caller multiplies Å/fs by `ModelConfig.velocity_scale_fs`).

Parameter count (d = 128, 10 elements, RWPE 8): X 64, V 64, Z (2·32 + 3·32)·18 = 2 880.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn


def hidden_irreps(dim: int) -> o3.Irreps:
    """The lifted feature layout m×0e + n×1o of total dimension `dim` (n = dim // 4)."""
    if dim < 4:
        raise ValueError(f"embedding dimension must be at least 4, found {dim}")
    n = dim // 4
    return o3.Irreps(f"{dim - 3 * n}x0e + {n}x1o")


def check_atomic_numbers(z: Tensor, max_atomic_number: int) -> None:
    """ValueError unless every Z lies in 0..max_atomic_number (checked on the host; skipped
    while `torch.compile` traces)."""
    if torch.compiler.is_compiling() or not z.numel():
        return
    lo, hi = int(z.min()), int(z.max())
    if hi > max_atomic_number or lo < 0:
        raise ValueError(f"atomic numbers must lie in 0..{max_atomic_number} (0 = padding; "
                         f"ModelConfig.max_atomic_number), found {lo}..{hi}")


def chemistry_features(z: Tensor, max_atomic_number: int, rwpe: Tensor | None, dtype: torch.dtype) -> Tensor:
    """(B, N, Zmax [+ K]) invariant per-atom features: one-hot Z (index Z−1) and RWPE.

    Padding atoms (Z = 0) get an all-zero one-hot. Built by comparison, not `one_hot` (whose
    range check synchronises with the host): the jobs refuse a Z above `max_atomic_number` before
    any forward pass (`atomray.model.atom`), and `ATOMRAY_DEBUG=1` checks it there too.
    """
    elements = torch.arange(1, max_atomic_number + 1, device=z.device)
    onehot = (z.long()[..., None] == elements).to(dtype)  # (B, N, Zmax)
    if rwpe is None:
        return onehot
    return torch.cat((onehot, rwpe.to(dtype)), dim=-1)


def with_norm(vec: Tensor) -> Tensor:
    """(..., 3) → (..., 4) [vec, ‖vec‖] in e3nn layout "1x1o + 1x0e"."""
    return torch.cat((vec, torch.linalg.vector_norm(vec, dim=-1, keepdim=True)), dim=-1)


class EquivariantLifting(nn.Module):
    """E(3)-equivariant lift of (x, v, chemistry) to X, V, Z ∈ R^{B×N×d} (paper §3.2.1).

    forward(x (B,N,3) Å, v (B,N,3) scaled velocity, chem (B,N,S)) → (X, V, Z), each (B,N,d)
    with irreps `hidden_irreps(d)`.
    """

    def __init__(self, dim: int, chem_dim: int):
        super().__init__()
        self.irreps = hidden_irreps(dim)
        self.lift_x = o3.Linear("1x1o + 1x0e", self.irreps)
        self.lift_v = o3.Linear("1x1o + 1x0e", self.irreps)
        self.lift_z = o3.FullyConnectedTensorProduct("2x1o + 3x0e", f"{chem_dim}x0e", self.irreps)

    def forward(self, x: Tensor, v: Tensor, chem: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        xv = with_norm(x)  # (B, N, 4)
        vv = with_norm(v)  # (B, N, 4)
        return self.lift_x(xv), self.lift_v(vv), self.lift_z(phase_features(xv, vv), chem)


def phase_features(xv: Tensor, vv: Tensor) -> Tensor:
    """(B, N, 9) [x, v, ‖x‖, ‖v‖, 1] in e3nn layout "2x1o + 3x0e" from [x, ‖x‖] and [v, ‖v‖]."""
    return torch.cat((xv[..., :3], vv[..., :3], xv[..., 3:], vv[..., 3:], torch.ones_like(xv[..., :1])), dim=-1)


class LinearLifting(nn.Module):
    """The "no equivariant lift" ablation: unconstrained linear maps of the same inputs."""

    def __init__(self, dim: int, chem_dim: int):
        super().__init__()
        self.irreps = hidden_irreps(dim)
        self.lift_x = nn.Linear(4, dim)
        self.lift_v = nn.Linear(4, dim)
        self.lift_z = nn.Linear(9 + chem_dim, dim)

    def forward(self, x: Tensor, v: Tensor, chem: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        xv, vv = with_norm(x), with_norm(v)
        return self.lift_x(xv), self.lift_v(vv), self.lift_z(torch.cat((phase_features(xv, vv), chem), dim=-1))
