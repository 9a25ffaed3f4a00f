"""Padding-aware trajectory metrics (paper §4), quasi-equivariance ε (App. E.3) and the
rotation penalty (Table 4). Pure PyTorch: the training loss, the training loop's validation
and `atomray.evaluate` all score with these functions.

S2T ("state to trajectory") is the mean squared error over all P predicted frames, S2S
("state to state") the same for the last frame only (REFERENCE.md: mean over frames, atoms
and xyz; Å², papers report ×10⁻²). Each sample is averaged over its own real atoms; the
functions return per-sample values (reduction="none"), their sum ("sum") or their mean
("mean", default). A data-set figure over many batches of different sizes is
Σ s2t(…, reduction="sum") / Σ B — the batch-size-weighted mean:

    total, count = 0.0, 0
    for batch in loader:
        total += float(s2t(pred, batch["target"], batch["mask"], reduction="sum")); count += len(pred)
    s2t_value = total / count
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

_KEYS = ("x0", "v0", "z", "lags_fs", "mask")


def lag_errors(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """(B, P) squared error (Å²) of pred/target (B, P, N, 3) at each lag, mean over the real
    atoms (mask (B, N) True) and xyz."""
    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[-1] != 3:
        raise ValueError(f"metrics: pred and target must both be (B, P, N, 3), found "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if mask.shape != (pred.shape[0], pred.shape[2]):
        raise ValueError(f"metrics: mask must be (B, N) = {(pred.shape[0], pred.shape[2])}, found {tuple(mask.shape)}")
    m = mask.to(pred.dtype)[:, None, :, None]  # (B, 1, N, 1)
    sq = ((pred - target.to(pred.dtype)) ** 2 * m).sum((2, 3))  # (B, P)
    return sq / (m.sum((2, 3)).clamp_min(1.0) * 3)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """(B,) per-sample squared error (Å²) of pred/target (B, P, N, 3), mean over the P
    frames, the real atoms (mask (B, N) True) and xyz."""
    return lag_errors(pred, target, mask).mean(1)


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.mean()
    raise ValueError(f"metrics: reduction must be 'mean', 'sum' or 'none', found {reduction!r}")


def s2t(pred: Tensor, target: Tensor, mask: Tensor, reduction: str = "mean") -> Tensor:
    """State-to-trajectory MSE (Å²) over all P frames; (B,) for reduction="none"."""
    return _reduce(masked_mse(pred, target, mask), reduction)


def s2s(pred: Tensor, target: Tensor, mask: Tensor, reduction: str = "mean") -> Tensor:
    """State-to-state MSE (Å²) of the last frame only; (B,) for reduction="none"."""
    return _reduce(masked_mse(pred[:, -1:], target[:, -1:], mask), reduction)


# ---------------------------------------------------------------------------------------------
# symmetry diagnostics


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


def rotate_windows(batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """Each window's x0, v0 and targets rotated about its centroid (of the real atoms) by its own
    uniformly random rotation drawn from `generator` (CPU): `train.augment=so3`, and the rotated
    copies every evaluation scores beside the originals. Context atoms, if present, turn with
    their window. Other keys are passed through unchanged."""
    x0, mask = batch["x0"], batch["mask"]
    r = random_rotations(len(x0), generator, x0.dtype).to(x0.device).transpose(1, 2)  # (B, 3, 3) = Rᵀ
    m = mask.to(x0.dtype)[..., None]  # (B, N, 1)
    c = (x0 * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)  # (B, 1, 3)
    out = dict(batch)
    out["x0"] = ((x0 - c) @ r + c) * m
    out["v0"] = batch["v0"] @ r
    out["target"] = (((batch["target"] - c[:, None]) @ r[:, None] + c[:, None]) * m[:, None]).to(x0.dtype)
    if "ctx_x0" in batch:
        out["ctx_x0"] = (batch["ctx_x0"] - c) @ r + c
        out["ctx_v0"] = batch["ctx_v0"] @ r
    return out


def _inputs(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Tensor]:
    missing = [k for k in (*_KEYS, "target") if k not in batch]
    if missing:
        raise KeyError(f"metrics: batch is missing {missing} (has {sorted(batch)})")
    device = next(model.parameters()).device
    out = {k: torch.as_tensor(batch[k], device=device) for k in (*_KEYS, "target")}
    out["rwpe"] = torch.as_tensor(batch["rwpe"], device=device) if batch.get("rwpe") is not None else None
    out["mask"] = out["mask"].bool()
    return out


def _predict(model: nn.Module, b: Mapping[str, Tensor], x0: Tensor, v0: Tensor) -> Tensor:
    return model(x0, v0, b["z"], b["lags_fs"], b["mask"], b["rwpe"])


class _EvalMode:
    """Context: model.eval() and no_grad, restoring the training flag afterwards."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training
        self.no_grad = torch.no_grad()

    def __enter__(self) -> None:
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def quasi_equivariance_epsilon(model: nn.Module, batch: Mapping[str, Any], n_rotations: int = 20,
                               generator: torch.Generator | None = None, reduction: str = "mean") -> Tensor:
    """Monte-Carlo ε of App. E.3 (Å): for every sample x_n of the batch and R random rotations g,

        ε ≈ 1/N Σ_n ‖ 1/R Σ_r ( f(g·x_n) − g·f(x_n) ) ‖₂

    where g rotates x0 and v0 about the origin (the centroid of a centred batch) and the norm
    runs over the P frames, real atoms and xyz. 0 for an exactly rotation-equivariant model.
    reduction "none" returns the (B,) per-sample values (for mean ± 2 SD as in Table 14).
    """
    if n_rotations < 1:
        raise ValueError(f"quasi_equivariance_epsilon: n_rotations must be >= 1, found {n_rotations}")
    b = _inputs(model, batch)
    x0, v0 = b["x0"], b["v0"]
    m = b["mask"].to(x0.dtype)[:, None, :, None]
    with _EvalMode(model):
        base = _predict(model, b, x0, v0)  # (B, P, N, 3)
        acc = torch.zeros_like(base)
        for _ in range(n_rotations):  # one forward per rotation keeps memory at one batch
            r = random_rotation(generator, x0.dtype).to(x0.device)
            acc += _predict(model, b, x0 @ r.T, v0 @ r.T) - base @ r.T
    per_sample = ((acc / n_rotations) ** 2 * m).sum((1, 2, 3)).sqrt()  # (B,)
    return _reduce(per_sample, reduction)


def rotation_penalty(model: nn.Module, batch: Mapping[str, Any], rotation: Tensor) -> dict[str, float]:
    """Table 4: S2T (Å²) of the batch as given and with inputs and targets rotated by
    `rotation` (3, 3), their difference and ratio ("rotation penalty", ×)."""
    b = _inputs(model, batch)
    r = torch.as_tensor(rotation, dtype=b["x0"].dtype, device=b["x0"].device)
    with _EvalMode(model):
        plain = s2t(_predict(model, b, b["x0"], b["v0"]), b["target"], b["mask"])
        turned = s2t(_predict(model, b, b["x0"] @ r.T, b["v0"] @ r.T), b["target"] @ r.T, b["mask"])
    plain, turned = float(plain), float(turned)
    return {"unrotated": plain, "rotated": turned, "increase": turned - plain,
            "ratio": turned / plain if plain > 0 else float("inf")}
