"""The training objective (paper eq. 1) and label-noise regularisation (paper §3.2.3).

    trajectory_loss = mean over samples of  1/(P·N_b·3) Σ_p Σ_i∈real ‖x̂_p,i − x_p,i‖²     (Å²)

Each sample is averaged over its own real atoms, frames and xyz, then samples are averaged,
so a molecule counts the same whatever its size (the multitask objective of §3.3 averages
over molecules). For single-molecule batches this is exactly EGNO's MSE.

`train.loss_weighting=rigid` weights each sample by 1 / (the rigid-body floor's error on it + ε),
normalised to mean 1 over the batch (`window_weights`). The plain mean is dominated by the
longest horizons, where vibrations have dephased and little is predictable from (x0, v0); the
weighted loss lets the short and middle horizons steer training. On five-fold CV it did not
lower the mean out-of-domain S2T (README, "Cross-validation"), so the shipped configs keep none.
`harmonic` weights by the harmonic_all floor's error instead (the floor of the harmonic prior),
`anharmonic` by the anharmonic_all floor's (the floor of the anharmonic prior, `atomray.anharmonic`).
`train.loss_atoms=score` averages over the scored atoms only (heavy atoms by default).

Label noise (§3.2.3): during training the inputs x, v and every target frame get independent
Gaussian noise, x + ξ_x, v + ξ_v, x^{(t+Δt_p)} + ξ_x^p. The model never adds noise itself.
The latent-equivariance regulariser lives on the model (`ATOM.latent_equivariance_loss`);
the loop adds `ModelConfig.latent_equivariance_weight` × that loss when the weight is > 0.
Augmentation (`train.augment=so3`, `atomray.metrics.rotate_windows`) turns every training window by a random
rotation before noise and loss, so orientation carries no information to memorise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from atomray import physics
from atomray.checkpoint import unwrap
from atomray.config import RunConfig
from atomray.metrics import masked_mse, random_rotation


def trajectory_loss(pred: Tensor, target: Tensor, mask: Tensor, weights: Tensor | None = None) -> Tensor:
    """Scalar L2 objective (Å²) of pred/target (B, P, N, 3) over real atoms (mask (B, N)),
    optionally weighted per sample by `weights` (B,)."""
    per_sample = masked_mse(pred, target, mask)
    return per_sample.mean() if weights is None else (per_sample * weights).mean()


@torch.no_grad()
def window_weights(batch: dict[str, Tensor], floor: float, kind: str = "rigid") -> Tensor:
    """(B,) weights 1 / (S2T of a physics floor on the window's atoms + floor Å²), scaled to
    mean 1: `kind` rigid is the rigid-body extrapolation of the window's atoms, harmonic the
    harmonic_all floor (`atomray.evaluate.harmonic_floor`, GFN2-xTB normal modes; needs z).
    Needs x0, v0, target, mask, mass and lags_fs in the batch."""
    x0, v0, mask = batch["x0"].double(), batch["v0"].double(), batch["mask"]
    mass, lags = batch["mass"].double() * mask, batch["lags_fs"].double()
    if kind == "rigid":
        base = physics.rigid(x0, v0, mass, lags)
    elif kind == "harmonic":
        from atomray.evaluate import harmonic_floor  # evaluation sits beside training; imported when used

        base = harmonic_floor(batch, x0, v0, mass, lags)
    elif kind == "anharmonic":
        from atomray.evaluate import floor_predictions

        base = floor_predictions(batch, ["anharmonic_all"])["anharmonic_all"]
    else:
        raise ValueError(f"train.loss_weighting: unknown floor {kind!r}; expected rigid, harmonic or anharmonic")
    w = 1.0 / (masked_mse(base.float(), batch["target"].float(), mask) + floor)
    return w / w.mean()


def add_label_noise(x0: Tensor, v0: Tensor, target: Tensor, mask: Tensor, sigma: float,
                    generator: torch.Generator | None = None,
                    velocity_sigma: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Noisy copies (x0 + ξ_x, v0 + ξ_v, target + ξ_x^p) for training (paper §3.2.3).

    x0 (B,N,3) Å, v0 (B,N,3) Å/fs, target (B,P,N,3) Å, mask (B,N) bool; `sigma` Å is the
    noise scale of positions and targets (Table 19: 0.1). `velocity_sigma` (Å/fs) defaults
    to sigma / 100 fs: the same relative noise in the model's velocity unit (Å per 100 fs,
    `ModelConfig.velocity_scale_fs`); the paper's raw σ = 0.1 applied to Å/fs velocities
    (~0.01 Å/fs) would bury them. Padded atoms stay exactly zero. Noise is drawn on the
    generator's device, then moved to the tensors' device. sigma = 0 returns the inputs.
    """
    if sigma < 0 or (velocity_sigma is not None and velocity_sigma < 0):
        raise ValueError(f"label noise: sigma must be >= 0, found sigma={sigma}, velocity_sigma={velocity_sigma}")
    sv = sigma / 100.0 if velocity_sigma is None else velocity_sigma
    if sigma == 0 and sv == 0:
        return x0, v0, target
    gdev = generator.device if generator is not None else x0.device

    def noise(like: Tensor, scale: float) -> Tensor:
        n = torch.randn(like.shape, generator=generator, device=gdev, dtype=torch.float32)
        return (n * scale).to(device=like.device, dtype=like.dtype)

    m = mask.to(x0.dtype)[..., None]  # (B, N, 1)
    return (x0 + noise(x0, sigma) * m, v0 + noise(v0, sv) * m, target + noise(target, sigma) * m[:, None])


def epoch_generator(seed: int, epoch: int, rank: int, purpose: str) -> torch.Generator:
    """A CPU generator for one (seed, epoch, rank, purpose): label noise and augmentation draw
    fresh values every epoch and on every rank, and the same values when a run is repeated."""
    from atomray.data.pipeline import window_seed

    return torch.Generator(device="cpu").manual_seed(int(window_seed(seed, epoch, rank, purpose).integers(2**62)))


def training_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: RunConfig,
                  generator: torch.Generator, autocast: Any) -> torch.Tensor:
    """The training objective on one batch: label noise (paper §3.2.3), the L2 trajectory
    loss (eq. 1; per-window weights with `train.loss_weighting`), plus the optional
    latent-equivariance regulariser."""
    kind = cfg.train.loss_weighting
    weights = None if kind == "none" else window_weights(batch, cfg.train.loss_weight_floor, kind)
    loss_mask = batch["mask"] & batch["score"].bool() if cfg.train.loss_atoms == "score" else batch["mask"]
    x0, v0, target = add_label_noise(batch["x0"], batch["v0"], batch["target"], batch["mask"],
                                     cfg.train.label_noise_sigma, generator)
    with autocast:
        pred = model(x0, v0, batch["z"], batch["lags_fs"], batch["mask"], batch.get("rwpe"))
        loss = trajectory_loss(pred.float(), target, loss_mask, weights)
        weight = cfg.model.latent_equivariance_weight
        if weight > 0:
            rot = random_rotation(generator, dtype=torch.float32).to(x0.device)
            loss = loss + weight * unwrap(model).latent_equivariance_loss(
                x0, v0, batch["z"], batch["lags_fs"], batch["mask"], batch.get("rwpe"), rot)
    return loss
