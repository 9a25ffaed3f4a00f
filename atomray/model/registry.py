"""The model registry: `ModelConfig.name` → class, and `build_model`.

    model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k)
    pred = model(x0, v0, z, lags_fs, mask, rwpe)        # (B, P, N, 3) Å, centred frame

Every registered class takes (cfg: ModelConfig, num_lags: int, rwpe_dim: int) and has the
same forward signature. `rwpe_dim` is the RWPE length the data pipeline produces (0 = off:
then `rwpe` must be None).
"""

from __future__ import annotations

from torch import nn

from atomray.config import ConfigError, ModelConfig
from atomray.model.atom import ATOM
from atomray.model.egnn import EGNNRollout, EGNNSequential
from atomray.model.egno import EGNO

MODELS: dict[str, type[nn.Module]] = {
    "atom": ATOM,
    "egno": EGNO,
    "egnn_r": EGNNRollout,
    "egnn_s": EGNNSequential,
}


def build_model(cfg: ModelConfig, num_lags: int, rwpe_dim: int = 0) -> nn.Module:
    """Instantiate the model named by `cfg.name` for P = `num_lags` lags and RWPE length K."""
    cls = MODELS.get(cfg.name)
    if cls is None:
        raise ConfigError(f"config key 'model.name': expected one of {', '.join(sorted(MODELS))}, found {cfg.name!r}")
    if num_lags < 1:
        raise ConfigError(f"model: num_lags must be at least 1, found {num_lags}")
    if rwpe_dim < 0:
        raise ConfigError(f"model: rwpe_dim must be >= 0, found {rwpe_dim}")
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
