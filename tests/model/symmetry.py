"""Equivariance / invariance test helpers (one home, like e3nn's `e3nn/util/test.py`).

Random group elements (rotations, reflections, permutations), generic random molecules as
padded batches — with the prior paths the data path would attach, from a synthetic basin per
molecule (a minimum near x0 and random orthonormal normal modes) — and assertions that a model
commutes with a group action.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import Tensor, nn

from atomray.data.augment import KEY_KINDS, random_rotation
from atomray.data.augment import rotate_batch as turn
from atomray.elements import atomic_masses
from atomray.model.registry import model_inputs
from atomray.priors.compose import PATH_KEYS
from atomray.priors.modes import Basin
from atomray.priors.paths import PriorPaths

__all__ = ["irreps_matrix", "random_rotation", "random_reflection", "random_permutation", "random_batch", "call",
           "rotate_batch", "permute_batch", "pad_atoms", "with_paths", "assert_equivariant_output",
           "randomise_parameters"]


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


class SyntheticBasins:
    """A basin source for generic random molecules: each window's basin is a minimum 0.05 Å from
    its own x0 with random orthonormal modes (30–3000 cm⁻¹-like frequencies), seeded by the window."""

    def __call__(self, molecule_id, segment, frame, x, z, n_model):
        out = []
        for state in x:
            g = np.random.default_rng(zlib.crc32(molecule_id.encode()))
            n = len(state)
            k = max(3 * n - 6, 1)
            modes, _ = np.linalg.qr(g.normal(size=(3 * n, k)))
            out.append(Basin(np.asarray(z), state + g.normal(scale=0.05, size=state.shape), g.uniform(0.01, 0.5, k),
                             modes, g.normal(scale=1e-4, size=k)))
        return out


def with_paths(batch: dict, parts=("rigid", "rotor", "vibration", "md")) -> dict:
    """The batch with the prior paths of `parts` (no MMFF94 for random molecules: md_ok False)."""
    dtype = batch["x0"].dtype
    batch = {k: v for k, v in batch.items() if k not in PATH_KEYS}  # recomputed (e.g. for other lags)
    arrays = {k: v.numpy() for k, v in batch.items() if isinstance(v, Tensor)}
    arrays["molecule_id"] = np.array([f"random-{i}" for i in range(len(batch["x0"]))], dtype=object)
    out = PriorPaths(set(parts) - {"md"}, SyntheticBasins(), dtype=np.float64)(arrays)
    full = dict(batch)
    for key, value in out.items():
        if key not in batch and key != "molecule_id":
            full[key] = torch.from_numpy(value).to(dtype)
    if "md" in parts:  # a molecule MMFF94 cannot type: the anharmonic prior falls back to the harmonic one
        full["md_path"] = torch.zeros_like(full["rotor_path"])
        full["md_ok"] = torch.zeros(len(batch["x0"]), dtype=torch.bool)
    return full


def random_batch(generator: torch.Generator, b: int = 3, n: int = 6, p: int = 4, rwpe_dim: int = 0,
                 dtype: torch.dtype = torch.float64, pad: int = 0) -> dict[str, Tensor | None]:
    """A padded batch of generic random molecules: x0 centred (Å, spread ~1.2 Å, no
    degenerate inertia), v0 ~ 0.01 Å/fs, Z ∈ {6, 7, 8}, increasing lags (fs), optional RWPE,
    masses, and every prior path (`with_paths`). The last `pad` atoms of sample 0 are padding
    (zeros, Z = 0, mask False)."""
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
    mass = torch.from_numpy(atomic_masses(z.numpy())).to(dtype)
    batch = {"x0": x0, "v0": v0, "z": z, "mass": mass, "lags_fs": lags, "mask": mask, "target": target}
    out = with_paths(batch)
    out["rwpe"] = rwpe
    return out


def call(model: nn.Module, batch: dict[str, Tensor | None], **extra) -> Tensor:
    """The model on a batch dict: model(x0, v0, z, lags_fs, mask, rwpe, paths)."""
    return model(**model_inputs({k: v for k, v in batch.items() if v is not None}), **extra)


def rotate_batch(batch: dict, rotation: Tensor, shift: Tensor | None = None) -> dict:
    """x ↦ x Rᵀ + t for every position key (padding atoms stay 0), v ↦ v Rᵀ for every vector
    key, R(Δt) ↦ R R(Δt) Rᵀ (`atomray.data.augment.rotate_batch` about the origin, then the shift)."""
    turned = turn({k: v for k, v in batch.items() if v is not None}, rotation.to(batch["x0"].dtype), about="origin")
    if batch.get("rwpe", 0) is None:
        turned["rwpe"] = None
    if shift is not None:
        m = batch["mask"].to(batch["x0"].dtype)[..., None]
        for key, kind in KEY_KINDS.items():
            if kind == "position" and turned.get(key) is not None:
                mm = m if turned[key].dim() == 3 else m[:, None]
                turned[key] = (turned[key] + shift) * (mm if key in ("x0", "target") else 1)
    return turned


def atom_axis(key: str, value: Tensor) -> int | None:
    """The atom axis of a batch key (None: it has none)."""
    if key in ("lags_fs", "md_ok") or KEY_KINDS.get(key) == "rotation":
        return None
    return 2 if value.dim() == 4 else 1  # (B, P, N, 3) paths and targets, (B, N, …) the rest


def pad_atoms(key: str, value: Tensor | None, extra: int) -> Tensor | None:
    """`value` with `extra` padding atoms (zeros; False in the mask) appended on its atom axis."""
    axis = None if value is None else atom_axis(key, value)
    if axis is None:
        return value
    shape = list(value.shape)
    shape[axis] = extra
    return torch.cat((value, torch.zeros(shape, dtype=value.dtype)), dim=axis)


def permute_batch(batch: dict, perm: Tensor) -> dict:
    """Reorder the atoms of every sample by `perm` (N,)."""
    out = dict(batch)
    for key, value in batch.items():
        axis = atom_axis(key, value) if isinstance(value, Tensor) else None
        if axis is not None:
            out[key] = value.index_select(axis, perm)
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
