"""Canonicalisation (paper App. D.1): remove the Euclidean gauge before the trunk, restore it after.

    μ = mean_i x_i,  x̄_i = x_i − μ                                   (eq. 2, real atoms only)
    S = 1/N Σ x̄_i x̄_iᵀ = Σ_k λ_k e_k e_kᵀ,  λ_1 ≥ λ_2 ≥ λ_3            (eq. 3)
    Q = [e_1, e_2, e_3],  e_3 = e_1 × e_2  (so Q ∈ SO(3))             (eq. 4)
    x̃_i = (x_i − μ) Q,  ṽ_i = v_i Q                                    (eq. 5)
    y_i = ŷ_i Qᵀ + μ                                                  (eq. 6)

Eigenvector signs: the paper flips e_1 so that e_1·c_0 ≥ 0 with the chirality pseudovector
c_0 = Σ_i x̄_i × v_i, and "adjusts e_2, e_3 jointly to keep right-handedness". Flipping e_1
alone leaves e_2's sign (a rotation by π about e_1) to the eigensolver, which would break
exact equivariance, so we fix e_2 the same way (e_2·c_0 ≥ 0) and then set e_3 = e_1 × e_2.
When c_0 has (almost) no component along e_k — e.g. zero velocities — the sign of the third
moment Σ_i (x̄_i·e_k)³ decides instead. Both references rotate with the molecule, so the
canonical coordinates are exactly invariant under proper rotations and translations, and any
trunk becomes exactly SE(3)-equivariant. Degenerate inputs (λ_1 = λ_2 or λ_2 = λ_3, e.g.
linear or highly symmetric molecules, fewer than three atoms) have no unique frame; there the
result is only as equivariant as the eigensolver is stable.

The frame is computed in float32/float64 with autocast disabled and is detached: it is a
gauge choice, and eigenvector gradients are undefined at degenerate spectra.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _sign(a: Tensor) -> Tensor:
    return torch.where(a < 0, -torch.ones_like(a), torch.ones_like(a))


def canonical_frame(x: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rotation Q (B, 3, 3) with columns e_1, e_2, e_3, and centroid μ (B, 3) of real atoms.

    x (B, N, 3) Å, v (B, N, 3) any velocity unit, mask (B, N) bool (True = real atom).
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        x, v = x.detach().to(work), v.detach().to(work)
        m = mask.to(work)[..., None]  # (B, N, 1)
        count = m.sum(1).clamp_min(1.0)  # (B, 1)
        mu = (x * m).sum(1) / count  # (B, 3)
        xb = (x - mu[:, None]) * m  # (B, N, 3)
        cov = xb.transpose(1, 2) @ xb / count[..., None]  # (B, 3, 3)
        _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues; columns are eigenvectors
        e1, e2 = vecs[..., 2], vecs[..., 1]  # (B, 3) largest, middle
        c0 = torch.linalg.cross(xb, v * m, dim=-1).sum(1)  # (B, 3) chirality pseudovector
        scale = xb.square().sum((1, 2)).sqrt() * (v * m).square().sum((1, 2)).sqrt()  # (B,)
        tiny = 1e-6 * scale + torch.finfo(work).tiny
        out = []
        for e in (e1, e2):
            by_c0 = (e * c0).sum(-1)  # (B,)
            by_skew = ((xb * e[:, None]).sum(-1) ** 3).sum(-1)  # (B,) third moment along e
            ref = torch.where(by_c0.abs() > tiny, by_c0, by_skew)
            out.append(e * _sign(ref)[:, None])
        e1, e2 = out
        e3 = torch.linalg.cross(e1, e2, dim=-1)
        q = torch.stack((e1, e2, e3), dim=-1)  # (B, 3, 3), columns e_k
    return q, mu


def canonicalise(x: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x̃, ṽ, Q, μ): canonical coordinates (B, N, 3) (padding stays 0) and the frame."""
    q, mu = canonical_frame(x, v, mask)
    q, mu = q.to(x.dtype), mu.to(x.dtype)
    m = mask.to(x.dtype)[..., None]
    return ((x - mu[:, None]) @ q) * m, (v @ q) * m, q, mu


def decanonicalise(y: Tensor, q: Tensor, mu: Tensor) -> Tensor:
    """y (B, P, N, 3) in the canonical frame → ŷ Qᵀ + μ in the input frame (eq. 6)."""
    return y @ q.transpose(1, 2)[:, None].to(y.dtype) + mu[:, None, None].to(y.dtype)
