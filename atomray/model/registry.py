"""The model registry: `ModelConfig.name` → class, `build_model`, and the one model interface.

    model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k)
    pred = model(**model_inputs(batch))      # (B, P, N, 3) Å, centred frame
    pred = model(x0, v0, z, lags_fs, mask, rwpe, paths)

Every registered class takes (cfg: ModelConfig, num_lags: int, rwpe_dim: int) and has the
same forward signature. `rwpe_dim` is the RWPE length the data pipeline produces (0 = off:
then `rwpe` must be None). `paths` holds the batch's prior paths (`atomray.priors.paths`),
which the data path attached: the forward only composes them (`atomray.priors.compose`).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from atomray.config import ConfigError, ModelConfig
from atomray.model.atom import ATOM
from atomray.model.egnn import EGNNRollout, EGNNSequential
from atomray.model.egno import EGNO
from atomray.priors.compose import PATH_KEYS

MODELS: dict[str, type[nn.Module]] = {
    "atom": ATOM,
    "egno": EGNO,
    "egnn_r": EGNNRollout,
    "egnn_s": EGNNSequential,
}


MODEL_INPUTS = ("x0", "v0", "z", "lags_fs", "mask")


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a model's forward from a window batch (torch tensors): the
    state, the lags, RWPE when present, and every prior path the batch carries."""
    missing = [k for k in MODEL_INPUTS if k not in batch]
    if missing:
        raise KeyError(f"model inputs: the batch lacks {missing} (it has {sorted(batch)})")
    out = {k: batch[k] for k in MODEL_INPUTS}
    out["rwpe"] = batch.get("rwpe")
    out["paths"] = {k: batch[k] for k in PATH_KEYS if k in batch}
    return out


def build_model(cfg: ModelConfig, num_lags: int, rwpe_dim: int = 0) -> nn.Module:
    """Instantiate the model named by `cfg.name` for P = `num_lags` lags and RWPE length K."""
    cls = MODELS.get(cfg.name)
    if cls is None:
        raise ConfigError(f"config key 'model.name': expected one of {', '.join(sorted(MODELS))}, found {cfg.name!r}")
    if num_lags < 1:
        raise ConfigError(f"model: num_lags must be at least 1, found {num_lags}")
    if rwpe_dim < 0:
        raise ConfigError(f"model: rwpe_dim must be >= 0, found {rwpe_dim}")
    if cfg.predict_velocity and cfg.name != "atom":
        raise ConfigError(f"config key 'model.predict_velocity': only ATOM has a velocity head; found model.name {cfg.name!r}")
    if cfg.name == "atom":
        head_dim, rem = divmod(cfg.embed_dim, cfg.num_heads)
        if rem or head_dim % 2:
            raise ConfigError(
                f"config keys 'model.embed_dim'/'model.num_heads': embed_dim {cfg.embed_dim} must "
                f"split into {cfg.num_heads} heads of even size"
            )
    return cls(cfg, num_lags, rwpe_dim)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
