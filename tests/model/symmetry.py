"""Equivariance / invariance test helpers (one home, like e3nn's `e3nn/util/test.py`).

Random group elements (rotations, reflections, permutations), generic random molecules as
padded batches, and assertions that a model commutes with a group action.
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor, nn

from atomray.metrics import random_rotation

__all__ = ["irreps_matrix", "random_rotation", "random_reflection", "random_permutation", "random_batch", "call",
           "rotate_batch", "permute_batch", "assert_equivariant_output", "randomise_parameters"]


def random_reflection(generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    """(3, 3) random improper orthogonal matrix (det −1): a rotation times a mirror."""
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    return (random_rotation(generator) @ mirror).to(dtype)


def irreps_matrix(irreps, matrix: Tensor) -> Tensor:
    """Exact representation D(M) of an orthogonal 3×3 `matrix` on e3nn irreps with l ≤ 1.

    0e ↦ 1, 0o ↦ det M, 1o ↦ M (polar vectors), 1e ↦ det(M)·M (axial vectors). e3nn's own
    `Irreps.D_from_matrix` goes through Euler angles and is only accurate to ~1e-7.
    """
    det = torch.linalg.det(matrix)
    blocks = []
    for mul, ir in irreps:
        if ir.l > 1:
            raise ValueError(f"irreps_matrix: only l <= 1 supported, found {ir}")
        sign = det if ir.p == -1 and ir.l == 0 or ir.p == 1 and ir.l == 1 else torch.ones_like(det)
        block = sign.reshape(1, 1) if ir.l == 0 else sign * matrix
        blocks += [block] * mul
    return torch.block_diag(*blocks)


def random_permutation(n: int, generator: torch.Generator) -> Tensor:
    """(n,) random permutation that moves at least one index."""
    while True:
        perm = torch.randperm(n, generator=generator)
        if n < 2 or not torch.equal(perm, torch.arange(n)):
            return perm


def random_batch(generator: torch.Generator, b: int = 3, n: int = 6, p: int = 4, rwpe_dim: int = 0,
                 dtype: torch.dtype = torch.float64, pad: int = 0) -> dict[str, Tensor | None]:
    """A padded batch of generic random molecules: x0 centred (Å, spread ~1.2 Å, no
    degenerate inertia), v0 ~ 0.01 Å/fs, Z ∈ {6, 7, 8}, increasing lags (fs), optional RWPE.
    The last `pad` atoms of sample 0 are padding (zeros, Z = 0, mask False)."""
    x0 = torch.randn(b, n, 3, generator=generator, dtype=dtype) * torch.tensor([1.6, 1.1, 0.7], dtype=dtype)
    mask = torch.ones(b, n, dtype=torch.bool)
    if pad:
        mask[0, n - pad:] = False
    m = mask.to(dtype)[..., None]
    x0 = x0 * m
    x0 = (x0 - (x0.sum(1, keepdim=True) / m.sum(1, keepdim=True))) * m
    v0 = torch.randn(b, n, 3, generator=generator, dtype=dtype) * 0.01 * m
    z = torch.randint(6, 9, (b, n), generator=generator) * mask
    lags = torch.cumsum(torch.rand(b, p, generator=generator, dtype=dtype) * 300 + 20, dim=1)
    rwpe = torch.rand(b, n, rwpe_dim, generator=generator, dtype=dtype) * m if rwpe_dim else None
    target = x0[:, None] + torch.randn(b, p, n, 3, generator=generator, dtype=dtype) * 0.1 * m[:, None]
    return {"x0": x0, "v0": v0, "z": z, "lags_fs": lags, "mask": mask, "rwpe": rwpe, "target": target}


def call(model: nn.Module, batch: dict[str, Tensor | None], **extra) -> Tensor:
    """model(x0, v0, z, lags_fs, mask, rwpe) on a batch dict."""
    return model(batch["x0"], batch["v0"], batch["z"], batch["lags_fs"], batch["mask"], batch["rwpe"], **extra)


def rotate_batch(batch: dict, rotation: Tensor, shift: Tensor | None = None) -> dict:
    """x ↦ x Rᵀ + t (padding atoms stay 0), v ↦ v Rᵀ, target ↦ target Rᵀ + t."""
    out = dict(batch)
    m = batch["mask"].to(batch["x0"].dtype)[..., None]
    t = torch.zeros(3, dtype=batch["x0"].dtype) if shift is None else shift
    out["x0"] = (batch["x0"] @ rotation.T + t) * m
    out["v0"] = batch["v0"] @ rotation.T
    out["target"] = (batch["target"] @ rotation.T + t) * m[:, None]
    return out


def permute_batch(batch: dict, perm: Tensor) -> dict:
    """Reorder the atoms of every sample by `perm` (N,)."""
    out = dict(batch)
    for key, axis in (("x0", 1), ("v0", 1), ("z", 1), ("mask", 1), ("rwpe", 1), ("target", 2)):
        if out.get(key) is not None:
            out[key] = out[key].index_select(axis, perm)
    return out


def assert_equivariant_output(model: nn.Module, batch: dict, rotation: Tensor, shift: Tensor | None = None,
                              atol: float = 1e-9, rtol: float = 1e-9) -> None:
    """Assert f(x Rᵀ + t, v Rᵀ) = f(x, v) Rᵀ + t on real atoms."""
    m = batch["mask"].to(batch["x0"].dtype)[:, None, :, None]
    t = torch.zeros(3, dtype=batch["x0"].dtype) if shift is None else shift
    expected = (call(model, batch) @ rotation.T + t) * m
    got = call(model, rotate_batch(batch, rotation, shift)) * m
    torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)


def randomise_parameters(model: nn.Module, scale: float = 1.0) -> nn.Module:
    """Overwrite every parameter with random values drawn from a generator seeded by the
    parameter's NAME, so two variants of a model share the values of shared parameters (an
    ablation test then sees only the switch). Matrices get N(0, scale²/fan_in), vectors and
    scalars (norm weights, biases, e3nn weights, γ, α) N(0, 1). This also lifts the
    zero-initialised output projections, so every block actually acts."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            std = scale / p.shape[-1] ** 0.5 if p.dim() > 1 else 1.0
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std)
    return model
