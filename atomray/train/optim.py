"""Optimisers and the learning-rate schedule (paper Table 19 / Table 20).

- `adamw_amsgrad` (single-task): AdamW with AMSGrad, lr 1e-3, wd 1e-5, ε 1e-10 (App. F.4:
  the tiny ε avoids instability from zero-initialised weight matrices early in training).
- `muon` (multitask): Muon (pytorch_optimizer) on the hidden weight matrices of the
  transformer blocks, AdamW on everything else (lifting, projection, norms, gains, biases),
  lr 1e-3, wd 1e-5, ε 1e-5. Muon's update is rescaled to AdamW's RMS (`use_adjusted_lr`) so
  one learning rate serves both groups.
- `adamw`: plain AdamW.

`lr_at(step, total_steps, cfg)` is a pure function: linear warm-up, then cosine to 0,
constant, or StepLR (EGNO's schedule: ×γ every `step_size` epochs, given in steps here).
`train_step` is one optimiser step on one batch, the same in the Ray Train loop and in
in-process experiments (`benchmarks/probe_fold.py`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from atomray.config import OptimConfig, RunConfig
from atomray.data.augment import rotate_windows
from atomray.train.loss import training_loss


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """Muon's parameters: ≥2-D weights inside the transformer blocks (not the lifting,
    the projection or output heads, whose inputs/outputs are not hidden features)."""
    return param.ndim >= 2 and ".blocks." in f".{name}"


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser named by `cfg.name` over `model`'s trainable parameters."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    if cfg.name == "adamw_amsgrad":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, amsgrad=True)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                 weight_decay=cfg.weight_decay)
    if cfg.name == "muon":
        from pytorch_optimizer import Muon

        hidden = [p for n, p in named if is_hidden_matrix(n, p)]
        rest = [p for n, p in named if not is_hidden_matrix(n, p)]
        groups = []
        if hidden:
            groups.append(dict(params=hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, use_muon=True))
        if rest:
            groups.append(dict(params=rest, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                               weight_decay=cfg.weight_decay, use_muon=False))
        return Muon(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, use_adjusted_lr=True,
                    adamw_lr=cfg.lr, adamw_betas=cfg.betas, adamw_wd=cfg.weight_decay,
                    adamw_eps=cfg.eps)
    raise ValueError(f"optim.name: unknown optimiser {cfg.name!r}")


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate at optimiser step `step` (0-based) of `total_steps`."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** (step // max(cfg.step_size, 1))
    progress = (step - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        if "adamw_lr" in group:
            group["adamw_lr"] = lr


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any], cfg: RunConfig,
               step: int, total_steps: int, noise_gen: torch.Generator, augment_gen: torch.Generator,
               autocast: Any) -> torch.Tensor:
    """Optimiser step `step` of `total_steps` on `batch`: scheduled learning rate, the run's
    augmentation, the training loss (label noise, weighting), gradient clipping. Returns the
    loss, detached."""
    set_lr(optimizer, lr_at(step, total_steps, cfg.optim))
    if cfg.train.augment == "so3":
        batch = rotate_windows(batch, augment_gen)
    loss = training_loss(model, batch, cfg, noise_gen, autocast)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    return loss.detach()
