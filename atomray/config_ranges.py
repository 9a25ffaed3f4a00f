"""The allowed range of every numeric `RunConfig` value, and the checks across values.

`check_values(cfg)` runs inside `config_from_dict` (so `load_config` too): every entry point
(jobs/pretrain.py, cv.py, tune.py, a Tune trial's overrides, a checkpoint's config.yaml)
refuses a bad value on the driver, before Ray starts and before anything is written. A value
out of range raises `ConfigError` naming the dotted key, what was expected and what was found:

    config key 'data.batch_size': expected an integer >= 1, found 0
    config key 'data.horizon_min_fs': expected a number <= data.horizon_max_fs = 200.0, found 500.0

`RANGES` covers every int and float field (a test holds it to that); the cross-field checks
are the assumptions of the model, the data pipeline and Ray Train that would otherwise fail
only inside a Ray worker. This module sits below `atomray.config` (which imports it): it
defines `ConfigError` and reads a config through `dataclasses` alone.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # for annotations only: atomray.config imports this module
    from atomray.config import RunConfig


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or an invalid value."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of a config dataclass (tuples become lists), ready for YAML or MLflow."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def flatten(cfg: Any) -> dict[str, Any]:
    """Dotted keys to leaf values, e.g. {"model.num_layers": 5, ...} (for MLflow params)."""
    out: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, Mapping):
                walk(v, f"{prefix}{k}.")
            else:
                out[prefix + k] = v

    walk(to_dict(cfg), "")
    return out

# Dotted key -> allowed range: ">= a", "> a", or an interval "[a, b)" / "(a, b)" etc.; for a
# list-valued key the range applies to every item.
RANGES: dict[str, str] = {
    "model.embed_dim": ">= 4",  # the lifting's layout m×0e + n×1o needs n = d // 4 >= 1
    "model.num_layers": ">= 1",
    "model.num_heads": ">= 1",
    "model.output_heads": ">= 1",
    "model.attn_dropout": "[0, 1)",
    "model.mlp_dropout": "[0, 1)",
    "model.rope_base": "> 0",
    "model.tau_fs": "> 0",
    "model.velocity_scale_fs": "> 0",
    "model.max_atomic_number": ">= 1",
    "model.latent_equivariance_weight": ">= 0",
    "train.velocity_weight": ">= 0",
    "model.gnn_hidden_dim": ">= 1",
    "model.time_embed_dim": ">= 2",  # and even: sin and cos features in pairs
    "model.fourier_modes": ">= 1",
    "model.radius": "> 0",
    "data.num_lags": ">= 1",
    "data.horizon_fs": "> 0",
    "data.horizon_min_fs": "> 0",
    "data.horizon_max_fs": "> 0",
    "data.tail_offset_fs": ">= 0",
    "data.rwpe_k": ">= 0",  # 0: no RWPE
    "data.radius": "> 0",
    "data.time_split": "(0, 1)",
    "data.fold": ">= 0",
    "data.num_folds": ">= 1",
    "data.num_clusters": ">= 1",
    "data.train_windows": ">= 1",
    "data.val_windows": ">= 1",
    "data.test_windows": ">= 0",  # 0: no test set
    "data.batch_size": ">= 1",
    "data.split_seed": ">= 0",  # NumPy seeds are non-negative
    "data.chunk_frames": ">= 1",
    "data.read_tasks": ">= 0",  # 0: one per training worker
    "optim.lr": "> 0",
    "optim.weight_decay": ">= 0",
    "optim.betas": "[0, 1)",
    "optim.eps": "> 0",  # 0 divides 0 by 0 for a parameter whose gradient is still 0
    "optim.warmup_steps": ">= 0",
    "optim.step_size": ">= 1",
    "optim.step_gamma": "> 0",
    "optim.grad_clip": ">= 0",  # 0: no clipping
    "train.epochs": ">= 1",
    "train.label_noise_sigma": ">= 0",
    "train.loss_weight_floor": "> 0",
    "train.seed": ">= 0",
    "train.max_failures": ">= -1",  # Ray Train's FailureConfig: -1 retries without limit
    "scaling.num_workers": ">= 1",
    "scaling.cpus_per_worker": ">= 0",
    "scaling.gpus_per_worker": ">= 0",
}


def _inside(value: float, spec: str) -> bool:
    """Whether `value` lies in the range `spec` (NaN and ±inf never do)."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if spec.startswith(">="):
        return value >= float(spec[2:])
    if spec.startswith(">"):
        return value > float(spec[1:])
    lo, hi = (float(b) for b in spec[1:-1].split(","))
    above = value >= lo if spec[0] == "[" else value > lo
    below = value <= hi if spec[-1] == "]" else value < hi
    return above and below


def _error(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"config key {key!r}: expected {expected}, found {value!r}")


def _check_range(key: str, value: Any, spec: str) -> None:
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    for i, item in items:
        if not _inside(item, spec):
            noun = "an integer" if isinstance(item, int) else "a number"
            where = key if i is None else f"{key}[{i}]"
            raise _error(where, f"{noun} {spec if spec[0] in '<>' else 'in ' + spec}", item)


def _check_model(cfg: RunConfig) -> None:
    m = cfg.model
    if m.time_embed_dim % 2:
        raise _error("model.time_embed_dim", "an even integer (sin and cos features in pairs)", m.time_embed_dim)
    if m.name == "atom" and m.embed_dim % (2 * m.num_heads):
        raise _error("model.embed_dim", f"a multiple of 2 × model.num_heads = {2 * m.num_heads} (ATOM splits it "
                                        f"into {m.num_heads} heads of even size for T-RoPE)", m.embed_dim)
    if m.prior == "harmonic" and cfg.data.context_atoms != "all":
        raise _error("data.context_atoms", "'all' with model.prior=harmonic (the normal modes need every atom, "
                                           "hydrogens included)", cfg.data.context_atoms)
    if m.prior == "harmonic" and cfg.train.label_noise_sigma > 0:
        warnings.warn(f"train.label_noise_sigma={cfg.train.label_noise_sigma} with model.prior=harmonic: the noise "
                      "moves the model's inputs away from the state the prior was computed from (vibrations are "
                      "~0.05 Å); 0 is the measured choice (aspirin_single.yaml with σ = 0.1: validation 1.00x → "
                      "1.38x harmonic_all in five epochs, when the prior saw the noise)", stacklevel=3)
    for key in ("anharmonic", "prior_input", "relaxed_input"):
        if getattr(m, key) and m.prior != "harmonic":
            raise _error("model.prior", f"harmonic with model.{key}=true (it reads the harmonic prior's vibration"
                                        f"{' and hands over from MMFF94 MD to it' if key == 'anharmonic' else ''})",
                         m.prior)
    if not m.vib_damping and m.prior != "harmonic":
        raise _error("model.prior", "harmonic with model.vib_damping=false (only the harmonic prior vibrates)", m.prior)
    if cfg.train.loss_weighting in ("harmonic", "anharmonic") and cfg.data.context_atoms != "all":
        raise _error("data.context_atoms", f"'all' with train.loss_weighting={cfg.train.loss_weighting} (its floor's "
                                           "normal modes need every atom, hydrogens included)", cfg.data.context_atoms)


def _check_data(cfg: RunConfig) -> None:
    d, workers = cfg.data, cfg.scaling.num_workers
    if d.horizon_min_fs > d.horizon_max_fs:
        raise _error("data.horizon_min_fs", f"a number <= data.horizon_max_fs = {d.horizon_max_fs}", d.horizon_min_fs)
    if d.time_split[0] >= d.time_split[1]:
        raise _error("data.time_split", "0 < train end < test start < 1", list(d.time_split))
    if d.fold >= d.num_folds:
        raise _error("data.fold", f"an integer in [0, data.num_folds) = [0, {d.num_folds})", d.fold)
    if d.split == "umap_cluster":
        held_out = d.num_clusters // d.num_folds  # clusters a fold tests on, and as many it validates on
        if held_out < 1:
            raise _error("data.num_clusters", f"an integer >= data.num_folds = {d.num_folds} with "
                                              "data.split=umap_cluster (each fold tests on clusters of its own)",
                         d.num_clusters)
        if d.num_clusters <= 2 * held_out:
            raise _error("data.num_clusters", f"more than 2 × (num_clusters // num_folds) = {2 * held_out} with "
                                              "data.split=umap_cluster (a fold holds out that many clusters for "
                                              "test and validation and trains on the rest)", d.num_clusters)
    if d.batch_size < workers:
        raise _error("data.batch_size", f"an integer >= scaling.num_workers = {workers} (each worker takes "
                                        "batch_size // num_workers windows a step)", d.batch_size)
    global_batch = (d.batch_size // workers) * workers
    if d.train_windows < global_batch:
        raise _error("data.train_windows", f"an integer >= one global batch = {global_batch} (data.batch_size "
                                           f"{d.batch_size} over {workers} worker(s))", d.train_windows)
    if d.val_windows < workers:
        raise _error("data.val_windows", f"an integer >= scaling.num_workers = {workers} (each worker scores "
                                         "a share of the windows)", d.val_windows)
    if 0 < d.test_windows < workers:
        raise _error("data.test_windows", f"0 or an integer >= scaling.num_workers = {workers} (each worker "
                                          "scores a share of the windows)", d.test_windows)


def _check_scaling(cfg: RunConfig) -> None:
    s = cfg.scaling
    if s.use_gpu and s.gpus_per_worker <= 0:
        raise _error("scaling.gpus_per_worker", "a number > 0 with scaling.use_gpu=true", s.gpus_per_worker)


def check_values(cfg: RunConfig) -> RunConfig:
    """Raise ConfigError at the first value of `cfg` outside its range (`RANGES`) or
    inconsistent with another value; returns `cfg` unchanged."""
    values = flatten(cfg)
    for key, spec in RANGES.items():
        _check_range(key, values[key], spec)
    _check_model(cfg)
    _check_data(cfg)
    _check_scaling(cfg)
    return cfg
