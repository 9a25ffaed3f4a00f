"""Rotations of window batches: SO(3) augmentation and the rotated copies every evaluation scores.

    batch = rotate_windows(batch, generator)        # each window by its own random rotation
    batch = rotate_batch(batch, rotation)           # every window by a given rotation (B, 3, 3) or (3, 3)

A window turns about the centroid of its real atoms, and every key turns the way what it
holds does (`KEY_KINDS`): positions about the centroid, vectors (velocities, displacements)
without translation, rotations by conjugation (R → Q R Qᵀ), and everything else stays. A key
this table does not know is an error, not silently passed through: a new vector key that
stayed unrotated would quietly break the equivariance the canonical model is built on. Pure
PyTorch, on the batch's device; rotations are drawn on the CPU from the given generator.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

# How each batch key turns with its window.
KEY_KINDS: dict[str, str] = {
    "x0": "position", "target": "position", "ctx_x0": "position",
    "v0": "vector", "ctx_v0": "vector", "target_v": "vector",
    # the prior paths the data path attaches (`atomray.priors.paths`)
    "rigid_path": "position", "rotor_path": "position", "md_path": "position",
    "rigid_rot": "rotation", "rotor_rot": "rotation",
    "vib_osc": "vector", "vib_d0": "vector", "vib_vel": "vector",
    # invariant under rotation about the centroid
    "z": "scalar", "mass": "scalar", "score": "scalar", "mask": "scalar", "lags_fs": "scalar", "rwpe": "scalar",
    "ctx_mass": "scalar", "start": "scalar", "segment": "scalar", "frame": "scalar", "md_ok": "scalar",
    "molecule_id": "scalar",
    # the lab-frame centroid a centred window was moved by: a translation, unchanged
    "origin": "scalar",
}


def random_rotation(generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """(3, 3) Haar-random proper rotation (det +1), drawn on the CPU from `generator`."""
    a = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # unique QR ⇒ Haar measure on O(3)
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def random_rotations(n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """(n, 3, 3) independent Haar-random proper rotations, drawn on the CPU from `generator`
    (one batched QR; signs fixed so the distribution is uniform on SO(3))."""
    a = torch.randn(n, 3, 3, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q[:, :, 0] *= torch.sign(torch.linalg.det(q))[:, None]  # det −1 → flip one axis
    return q.to(dtype)


def rotate_batch(batch: Mapping[str, Any], rotation: Tensor, about: str = "centroid") -> dict[str, Any]:
    """Every window of `batch` turned by `rotation` Q ((B, 3, 3) or (3, 3), acting on column
    vectors: x → Q x) about the centroid of its real atoms (`about="centroid"`) or the origin
    (`"origin"`); every key as `KEY_KINDS` says. Raises KeyError for a key it does not know."""
    unknown = sorted(k for k in batch if k not in KEY_KINDS)
    if unknown:
        raise KeyError(f"rotate_batch: no rule for the batch keys {unknown}; add them to "
                       "atomray.data.augment.KEY_KINDS (position, vector, rotation or scalar)")
    x0 = batch["x0"]
    b = len(x0)
    r = rotation.to(device=x0.device).expand(b, 3, 3).transpose(1, 2)  # (B, 3, 3) = Qᵀ: row vectors x Qᵀ
    if "mask" in batch:
        m = batch["mask"].to(x0.dtype)[..., None]  # (B, N, 1)
    else:
        m = torch.ones(*x0.shape[:2], 1, dtype=x0.dtype, device=x0.device)
    if about == "centroid":
        c = (x0 * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)  # (B, 1, 3)
    elif about == "origin":
        c = torch.zeros(b, 1, 3, dtype=x0.dtype, device=x0.device)
    else:
        raise ValueError(f"rotate_batch: about must be 'centroid' or 'origin', found {about!r}")
    out = dict(batch)
    for key, value in batch.items():
        kind = KEY_KINDS[key]
        if kind == "scalar":
            continue
        rr = r.to(value.dtype)
        extra = value.dim() - 3  # leading lag axes after B (vectors, positions and rotations alike)
        shape = (b,) + (1,) * max(extra, 0) + (3, 3)
        rb = rr.view(shape)
        if kind == "position":
            cc = c.to(value.dtype).view((b,) + (1,) * max(extra, 0) + (1, 3))
            turned = (value - cc) @ rb + cc
            if key in ("x0", "target"):  # padding stays exactly 0
                mm = m.to(value.dtype).view((b,) + (1,) * max(extra, 0) + m.shape[1:])
                turned = turned * mm
            out[key] = turned
        elif kind == "vector":
            out[key] = value @ rb
        else:  # rotation R (…, 3, 3) acting on column vectors → Q R Qᵀ = rᵀ R r
            out[key] = rb.transpose(-1, -2) @ value @ rb
    return out


def rotate_windows(batch: Mapping[str, Any], generator: torch.Generator) -> dict[str, Any]:
    """Each window turned about its centroid by its own uniformly random rotation drawn from
    `generator` (CPU): `train.augment=so3`, and the rotated copies every evaluation scores."""
    x0 = batch["x0"]
    q = random_rotations(len(x0), generator, x0.dtype)  # (B, 3, 3)
    return rotate_batch(batch, q)
