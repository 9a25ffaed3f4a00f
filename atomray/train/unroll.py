"""Rollout fine-tuning: an unrolled K-step loss on positions and velocities, from a pretrained
checkpoint with a velocity head (`ModelConfig.predict_velocity`).

    windows = unroll_windows(cfg, molecules, n=64, steps=4, step_fs=50.0, seed=0)
    loss, per_step = unrolled_loss(model, windows, cfg, transform)

A window starts at a trajectory frame (x0, v0) and holds the frames and velocities K strides on
(`steps` × `step_fs`). The model predicts (x, v) one stride ahead from the current state; that
prediction is the next step's state, as in `atomray.rollout`: re-centred on its centroid, RWPE
of its radius graph, and prior paths computed on the host (`atomray.priors.paths.PriorPaths`)
with the basin of the trajectory's own frame at that time, read from the stored per-frame
physics (no minimisation in the loop; a predicted state stays in its frame's basin over a
few strides). The loss is the mean over the K steps of

    S2T(x̂_k, x_k) + velocity_weight × velocity_loss(v̂_k, v_k)          (`atomray.train.loss`)

over every real atom, plus `width_weight` × `width_loss`: how far the spread of each bond length
and bond angle over the batch's predicted states (every window of a molecule, every step) is from
the spread of the same coordinate in the reference frames, relative to the latter. An MSE alone
is minimised by the conditional mean, whose chained steps lose the spread a sample would have
(measured in docs/experiments.md: too narrow hydrogen bends in rollouts); the width term asks
for the reference's spread instead. Gradients flow through the chain of model inputs (each step's
x and v are the previous step's outputs); the prior paths of each step are constants, computed
from the detached state. Single process, any device: `finetune` is what `jobs/finetune_rollout.py` runs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from atomray.config import RunConfig
from atomray.data.frames import DataError
from atomray.data.pipeline import fixed_windows, scan_segments, to_torch
from atomray.data.windows import rwpe_of_frames
from atomray.metrics import masked_mse
from atomray.model.registry import model_inputs
from atomray.priors.paths import PriorPaths
from atomray.priors.rigid import internal_velocity
from atomray.structure import bonds_from_geometry
from atomray.train.loss import velocity_loss


HELD_OUT_SEED = 10_000  # the held-out windows `finetune` scores, whatever the training seed


def unroll_windows(cfg: RunConfig, molecules: Sequence[str], n: int, steps: int, step_fs: float, seed: int,
                   frame_fraction: tuple[float, float] = (0.0, 1.0)) -> dict[str, np.ndarray]:
    """`n` windows of `molecules` (spread evenly, drawn with `seed`) whose P = `steps` lags are the
    strides `step_fs`, 2 `step_fs`, …: a padded numpy batch with target / target_v (W, K, N, 3) and
    `lag_frames` (W, K), each lag in frames of its molecule's trajectory."""
    if steps < 1 or step_fs <= 0:
        raise DataError(f"unrolled windows: expected steps >= 1 and a stride > 0 fs, found {steps} and {step_fs}")
    data = replace(cfg.data, horizon="fixed", horizon_fs=steps * step_fs, num_lags=steps, discretisation="uniform")
    windows = fixed_windows(data.path, list(molecules), n, data, seed, frame_fraction)
    dt = {(s.molecule_id, s.segment): s.dt_fs for s in scan_segments(data.path, list(molecules))}  # metadata only
    step_dt = np.array([dt[m, int(g)] for m, g in zip(windows["molecule_id"], windows["segment"])])[:, None]
    lag_frames = np.rint(windows["lags_fs"] / step_dt).astype(np.int64)
    realised = lag_frames * step_dt
    if not np.allclose(realised, step_fs * np.arange(1, steps + 1)[None], atol=0.5 * step_dt.max()):
        raise DataError(f"{data.path}: a stride of {step_fs} fs is not a whole number of frames for every molecule "
                        f"(time steps {sorted(set(dt.values()))} fs)")
    windows["lag_frames"] = lag_frames
    return windows


def step_batch(cfg: RunConfig, windows: dict[str, np.ndarray], x: np.ndarray, v: np.ndarray, lag_fs: np.ndarray,
               frame: np.ndarray, transform: PriorPaths) -> dict[str, Any]:
    """The model inputs of one unrolled step (numpy, with prior paths): state x (centred), v of the
    windows' model atoms, one lag `lag_fs` (W, 1), the basins of frames `frame` (W,)."""
    batch = {"x0": x, "v0": v, "z": windows["z"], "mass": windows["mass"], "mask": windows["mask"],
             "lags_fs": lag_fs.astype(np.float32), "molecule_id": windows["molecule_id"],
             "segment": windows["segment"], "frame": frame}
    if cfg.data.rwpe_k > 0:  # each molecule's RWPE on its real atoms (padding at the origin would join the graph)
        rwpe = np.zeros((*x.shape[:2], cfg.data.rwpe_k), np.float32)
        for mid in dict.fromkeys(windows["molecule_id"]):
            rows = np.flatnonzero(windows["molecule_id"] == mid)
            k = int(windows["mask"][rows[0]].sum())
            rwpe[rows, :k] = rwpe_of_frames(x[rows, :k], cfg.data.rwpe_k, cfg.data.radius)
        batch["rwpe"] = rwpe
    return transform(batch)


def internal_coordinates(x: Tensor, bonds: Tensor, angles: Tensor) -> tuple[Tensor, Tensor]:
    """Bond lengths (…, n_b) Å and bond angles (…, n_a) rad of positions x (…, N, 3); `bonds`
    (n_b, 2) and `angles` (n_a, 3) i-j-k (j the centre) index the atoms. The angle is
    atan2(|u × w|, u · w), whose gradient stays finite at 0 and 180°."""
    lengths = (x[..., bonds[:, 0], :] - x[..., bonds[:, 1], :]).norm(dim=-1)
    u = x[..., angles[:, 0], :] - x[..., angles[:, 1], :]
    w = x[..., angles[:, 2], :] - x[..., angles[:, 1], :]
    return lengths, torch.atan2(torch.linalg.cross(u, w).norm(dim=-1), (u * w).sum(-1))


SPREAD_FLOOR = 1e-6  # Å or rad: spreads below it count as it (a rigid state has none)


def width_loss(pred: Tensor, target: Tensor, windows: dict[str, np.ndarray]) -> Tensor:
    """How far the spread of the internal coordinates of `pred` is from that of `target` (both
    (W, K, N, 3): every window's states at its K steps). For each molecule of the batch, each bond
    length and bond angle (bonds from covalent radii at its first window's start) has a standard
    deviation over that molecule's W_m × K states, predicted s and reference r; the term is the
    mean of (log s − log r)² per molecule and kind (X–H bonds, heavy–heavy bonds, angles),
    averaged over the molecules and kinds (a molecule with one state has no spread and is left
    out): every coordinate counts alike, too narrow as much as too wide by the same factor. 0 when
    the spreads agree; dimensionless. (Measured against Σ (s − r)² / Σ r², which the widest
    coordinates dominate: that one narrowed the angles and cost 28–49 % of the unrolled S2T;
    docs/experiments.md.)"""
    terms = []
    for mid in dict.fromkeys(windows["molecule_id"]):
        rows = np.flatnonzero(windows["molecule_id"] == mid)
        if len(rows) * pred.shape[1] < 2:  # one state has no spread
            continue
        n = int(windows["mask"][rows[0]].sum())
        z = windows["z"][rows[0], :n]
        top = bonds_from_geometry(z, windows["x0"][rows[0], :n])
        with_h = (z[top.bonds] == 1).any(1)
        bonds = torch.as_tensor(top.bonds, device=pred.device)
        angles = torch.as_tensor(top.angles, device=pred.device)
        idx = torch.as_tensor(rows, device=pred.device)
        spreads = []
        for states in (pred, target):
            lengths, theta = internal_coordinates(states[idx, :, :n].reshape(-1, n, 3), bonds, angles)
            spreads.append((lengths.std(0), theta.std(0)))
        (s_len, s_ang), (r_len, r_ang) = spreads
        for s, r in ((s_len[with_h], r_len[with_h]), (s_len[~with_h], r_len[~with_h]), (s_ang, r_ang)):
            if r.numel():
                log_ratio = torch.log(s.clamp_min(SPREAD_FLOOR)) - torch.log(r.clamp_min(SPREAD_FLOOR))  # (n_kind,)
                terms.append(log_ratio.pow(2).mean())
    return torch.stack(terms).mean() if terms else pred.new_zeros(())


def unrolled_loss(model: torch.nn.Module, windows: dict[str, np.ndarray], cfg: RunConfig, transform: PriorPaths,
                  velocity_weight: float = 1.0, device: Any = "cpu",
                  position_noise: float = 0.0, width_weight: float = 0.0, return_states: bool = False):
    """(the unrolled loss, S2T of each step ×10⁻² Å²) of `model` over the K strides of `windows`
    (`unroll_windows`); see the module docstring. `position_noise` (Å per axis): each predicted
    state's heavy atoms move by a Gaussian draw, less its rigid-body part, before the next step,
    as a rollout with `atomray.rollout.Control(position_noise_a=(position_noise, 0))` does.
    `width_weight` > 0 adds `width_loss` of the K predicted states against the reference frames
    (it needs ≥ 2 states per molecule: K ≥ 2 or several windows of it). `return_states` adds the
    predicted states (W, K, N, 3) to what it returns."""
    if not cfg.model.predict_velocity:
        raise DataError("unrolled fine-tuning needs a model with a velocity head (model.predict_velocity=true)")
    dtype = next(model.parameters()).dtype
    t = {k: torch.as_tensor(windows[k], device=device) for k in ("target", "target_v", "mask", "x0", "v0")}
    mask = t["mask"].bool()
    m = mask.to(dtype)[..., None]
    x = t["x0"].to(dtype)  # the state, in the window's frame (centred on the start's centroid)
    v = t["v0"].to(dtype)
    lags, offsets = windows["lags_fs"], windows["lag_frames"]
    total, per_step, states = torch.zeros((), dtype=dtype, device=device), [], []
    if position_noise > 0:  # the heavy atoms the noise moves, and the masses that take out its rigid-body part
        heavy = (torch.as_tensor(windows["z"], device=device) > 1) & mask
        mass = torch.as_tensor(windows["mass"], device=device).double() * mask
    for k in range(lags.shape[1]):
        stride = lags[:, k:k + 1] - (lags[:, k - 1:k] if k else 0.0)
        frame = windows["frame"] + (offsets[:, k - 1] if k else 0)
        centre = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
        x_in = (x - centre) * m
        host = step_batch(cfg, windows, x_in.detach().cpu().numpy().astype(np.float32),
                          v.detach().cpu().numpy().astype(np.float32), stride, frame, transform)
        inputs = model_inputs({k2: (val.to(dtype) if val.is_floating_point() else val)
                               for k2, val in to_torch(host, device).items()})
        inputs.update(x0=x_in, v0=v)
        pos, vel = model(**inputs, with_velocity=True)
        x = (pos[:, 0] + centre) * m
        v = vel[:, 0] * m
        s2t = masked_mse(x[:, None].float(), t["target"][:, k:k + 1].float(), mask).mean()
        total = total + s2t + velocity_weight * velocity_loss(v[:, None].float(), t["target_v"][:, k:k + 1].float(), mask)
        per_step.append(float(s2t.detach()) * 100)
        states.append(x)
        if position_noise > 0 and k + 1 < lags.shape[1]:  # the next step starts from a noisy state
            draw = torch.randn(x.shape, dtype=torch.float64, device=device) * position_noise * heavy[..., None]
            x = x + internal_velocity(x.detach(), draw, mass).to(dtype)  # a displacement's internal part
    total = total / lags.shape[1]
    if width_weight > 0:
        total = total + width_weight * width_loss(torch.stack(states, 1).float(), t["target"].float(), windows)
    if return_states:
        return total, per_step, torch.stack(states, 1)
    return total, per_step


def finetune(model: torch.nn.Module, cfg: RunConfig, train: Sequence[str], held_out: Sequence[str],
             transform: PriorPaths, steps: int, step_fs: float, epochs: int, batches: int, batch_size: int,
             lr: float, velocity_weight: float = 1.0, seed: int = 0,
             log: Callable[[dict], None] = print, position_noise: float = 0.0,
             width_weight: float = 0.0) -> list[dict[str, Any]]:
    """Fine-tune `model` in place with the unrolled loss: each epoch `batches` batches of fresh
    windows of the `train` molecules (AdamW, `lr`), then the unrolled S2T per step on fixed windows
    of the `held_out` molecules (before the first epoch too; without noise). With `position_noise`,
    each training step's state is displaced as in `unrolled_loss`; with `width_weight`, the loss
    adds the width term. The held-out rows report the width term of the held-out windows too
    (`held_out_width`), whatever the weight. Returns one row per epoch."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    check = unroll_windows(cfg, held_out, 64, steps, step_fs, HELD_OUT_SEED)  # the same for every seed

    def held_out_row(epoch: int, train_loss: float) -> dict[str, Any]:
        model.eval()
        with torch.no_grad():
            loss, per_step, states = unrolled_loss(model, check, cfg, transform, velocity_weight, return_states=True)
            width = float(width_loss(states.float(), torch.as_tensor(check["target"]).float(), check))
        row = {"epoch": epoch, "train_loss": train_loss, "held_out_loss": float(loss), "held_out_width": width,
               **{f"held_out_s2t_step{k + 1}": s for k, s in enumerate(per_step)}}
        log(row)
        return row

    rows = [held_out_row(0, float("nan"))]
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        pool = unroll_windows(cfg, train, batches * batch_size, steps, step_fs, seed + epoch)  # fresh every epoch
        order = np.random.default_rng(seed + epoch).permutation(len(pool["x0"]))
        for b in range(batches):
            rows_b = order[b * batch_size:(b + 1) * batch_size]
            windows = {k: val[rows_b] for k, val in pool.items()}
            loss, _ = unrolled_loss(model, windows, cfg, transform, velocity_weight, position_noise=position_noise,
                                    width_weight=width_weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
        rows.append(held_out_row(epoch, float(np.mean(losses))))
    return rows
