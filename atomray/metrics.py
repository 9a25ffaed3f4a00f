"""Padding-aware trajectory metrics (paper §4). Pure PyTorch: the training loss, the training
loop's validation and `atomray.evaluate` all score with these functions (the symmetry
diagnostics, which run a model, are in `atomray.equivariance`).

S2T ("state to trajectory") is the mean squared error over all P predicted frames, S2S
("state to state") the same for the last frame only (the EGNO/ATOM benchmarks' definition: mean
over frames, atoms and xyz; Å², papers report ×10⁻²). Each sample is averaged over its own real atoms; the
functions return per-sample values (reduction="none"), their sum ("sum") or their mean
("mean", default). A data-set figure over many batches of different sizes is
Σ s2t(…, reduction="sum") / Σ B — the batch-size-weighted mean:

    total, count = 0.0, 0
    for batch in loader:
        total += float(s2t(pred, batch["target"], batch["mask"], reduction="sum")); count += len(pred)
    s2t_value = total / count
"""

from __future__ import annotations

from torch import Tensor


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


def reduce_samples(values: Tensor, reduction: str) -> Tensor:
    """Per-sample values (B,) as they are ("none"), summed ("sum") or averaged ("mean")."""
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.mean()
    raise ValueError(f"metrics: reduction must be 'mean', 'sum' or 'none', found {reduction!r}")


def s2t(pred: Tensor, target: Tensor, mask: Tensor, reduction: str = "mean") -> Tensor:
    """State-to-trajectory MSE (Å²) over all P frames; (B,) for reduction="none"."""
    return reduce_samples(masked_mse(pred, target, mask), reduction)


def s2s(pred: Tensor, target: Tensor, mask: Tensor, reduction: str = "mean") -> Tensor:
    """State-to-state MSE (Å²) of the last frame only; (B,) for reduction="none"."""
    return reduce_samples(masked_mse(pred[:, -1:], target[:, -1:], mask), reduction)
