"""The training objective (paper eq. 1) and label-noise regularisation (paper §3.2.3).

    trajectory_loss = mean over samples of  1/(P·N_b·3) Σ_p Σ_i∈real ‖x̂_p,i − x_p,i‖²     (Å²)

Each sample is averaged over its own real atoms, frames and xyz, then samples are averaged,
so a molecule counts the same whatever its size (the multitask objective of §3.3 averages
over molecules). For single-molecule batches this is exactly EGNO's MSE.

`train.loss_weighting=harmonic` (the default) weights each sample by 1 / (the harmonic_all
floor's error on it + ε), normalised to mean 1 over the batch (`window_weights`): the plain mean
is dominated by the windows the prior gets worst, and a model trained on it adds error to the
rigid molecules its prior nearly solves (docs/experiments.md, "Rigid molecules"). `anharmonic`
weights by the anharmonic_all floor's error (the floor of the anharmonic prior). The floors
are composed from the batch's prior paths (`atomray.priors.compose.floor_predictions`).
`train.loss_atoms=score` averages over the scored atoms only (heavy atoms by default).

Label noise (§3.2.3): during training the inputs x, v and every target frame get independent
Gaussian noise, x + ξ_x, v + ξ_v, x^{(t+Δt_p)} + ξ_x^p. The model never adds noise itself.
With `model.predict_velocity`, `train.velocity_weight` × `velocity_loss` (the velocities at every
lag, against the trajectory's own velocities `target_v`) joins the objective.
The latent-equivariance regulariser lives on the model (`ATOM.latent_equivariance_loss`);
the loop adds `ModelConfig.latent_equivariance_weight` × that loss when the weight is > 0.
Augmentation (`train.augment=so3`, `atomray.data.augment.rotate_windows`) turns every training window,
its prior paths included, by a random rotation before noise and loss, so orientation carries no
information to memorise. The noise perturbs the model's inputs and targets, not the prior paths:
the data path computed them from the clean start state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from atomray.checkpoint import unwrap
from atomray.config import RunConfig
from atomray.data.augment import random_rotation
from atomray.metrics import masked_mse
from atomray.model.registry import model_inputs
from atomray.data.frames import DataError
from atomray.priors.compose import floor_parts, floor_predictions, prior_parts
from atomray.priors.frames import FramePhysics
from atomray.priors.paths import PriorPaths, basin_source


def trajectory_loss(pred: Tensor, target: Tensor, mask: Tensor, weights: Tensor | None = None) -> Tensor:
    """Scalar L2 objective (Å²) of pred/target (B, P, N, 3) over real atoms (mask (B, N)),
    optionally weighted per sample by `weights` (B,)."""
    per_sample = masked_mse(pred, target, mask)
    return per_sample.mean() if weights is None else (per_sample * weights).mean()


VELOCITY_LOSS_FS = 10.0  # the velocity loss reads errors as the distance they carry an atom in 10 fs


def velocity_loss(pred_v: Tensor, target_v: Tensor, mask: Tensor) -> Tensor:
    """Scalar velocity objective (Å²): the mean squared error of velocities (B, P, N, 3) Å/fs over
    real atoms, each times `VELOCITY_LOSS_FS` — the distance the error carries an atom in 10 fs —
    so that it reads on the scale of the position loss. Samples count equally, unweighted."""
    return masked_mse(pred_v * VELOCITY_LOSS_FS, target_v * VELOCITY_LOSS_FS, mask).mean()


LOSS_FLOORS = {"harmonic": "harmonic_all", "anharmonic": "anharmonic_all"}


def training_parts(cfg: RunConfig) -> frozenset[str]:
    """The prior path parts a training batch needs: the model's prior and the loss weights' floor."""
    parts = set(prior_parts(cfg.model.prior, cfg.model.anharmonic))
    if cfg.train.loss_weighting in LOSS_FLOORS:
        parts |= floor_parts([LOSS_FLOORS[cfg.train.loss_weighting]])
    return frozenset(parts)


def training_transform(cfg: RunConfig, molecules: list[str]) -> tuple[PriorPaths, FramePhysics | None]:
    """The data-path transform of training batches (`atomray.priors.paths.PriorPaths`) and the
    stored per-frame physics it reads (None when no part needs a basin). The driver made sure
    the physics exists (`atomray.priors.frames.compute_missing`); a data set without it is
    an error here, not minutes of minimisation inside every worker."""
    parts = training_parts(cfg)
    physics = None
    if "vibration" in parts:
        physics = FramePhysics.load(cfg.data.path, molecules)
        if physics is None:
            raise DataError(f"{cfg.data.path}: the {cfg.model.prior} prior needs the data set's per-frame physics, "
                            "which is not stored for every training molecule; compute it first "
                            f"(python jobs/frame_physics.py --data {cfg.data.path})")
    context = cfg.data.context_atoms == "heavy" and bool(parts)
    return PriorPaths(parts, basin_source(physics), context=context, circles=cfg.model.rotor_circles), physics


@torch.no_grad()
def window_weights(batch: dict[str, Tensor], floor: float, kind: str = "harmonic") -> Tensor:
    """(B,) weights 1 / (S2T of a physics floor on the window's atoms + floor Å²), scaled to
    mean 1: `kind` harmonic is the harmonic_all floor, anharmonic the anharmonic_all floor,
    composed from the batch's prior paths. Needs x0, v0, target, mask, mass, lags_fs."""
    if kind not in LOSS_FLOORS:
        raise ValueError(f"train.loss_weighting: unknown floor {kind!r}; expected one of {', '.join(LOSS_FLOORS)}")
    name = LOSS_FLOORS[kind]
    base = floor_predictions(batch, [name])[name]
    w = 1.0 / (masked_mse(base.float(), batch["target"].float(), batch["mask"]) + floor)
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
    loss (eq. 1; per-window weights with `train.loss_weighting`), plus the optional velocity
    loss (`model.predict_velocity`) and latent-equivariance regulariser."""
    kind = cfg.train.loss_weighting
    weights = None if kind == "none" else window_weights(batch, cfg.train.loss_weight_floor, kind)
    loss_mask = batch["mask"] & batch["score"].bool() if cfg.train.loss_atoms == "score" else batch["mask"]
    x0, v0, target = add_label_noise(batch["x0"], batch["v0"], batch["target"], batch["mask"],
                                     cfg.train.label_noise_sigma, generator)
    inputs = {**model_inputs(batch), "x0": x0, "v0": v0}
    velocity = cfg.model.predict_velocity and cfg.train.velocity_weight > 0
    with autocast:
        if velocity:
            pred, pred_v = model(**inputs, with_velocity=True)
        else:
            pred = model(**inputs)
        loss = trajectory_loss(pred.float(), target, loss_mask, weights)
        if velocity:
            loss = loss + cfg.train.velocity_weight * velocity_loss(pred_v.float(), batch["target_v"].float(), loss_mask)
        weight = cfg.model.latent_equivariance_weight
        if weight > 0:
            rot = random_rotation(generator, dtype=torch.float32).to(x0.device)
            loss = loss + weight * unwrap(model).latent_equivariance_loss(
                x0, v0, batch["z"], batch["lags_fs"], batch["mask"], batch.get("rwpe"), rot, inputs["paths"])
    return loss
