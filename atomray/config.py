"""Typed, frozen run configuration: YAML + dotted overrides in, one resolved `RunConfig` out.

One dataclass per concern (model, data, optimiser, training, scaling, tracking), grouped in
`RunConfig`. A config is parsed once in a job, validated against these types, and never
mutated afterwards; `dataclasses.replace` makes modified copies. The defaults are the
recommended model and training run (those of `jobs/configs/pretrain.yaml`).

    cfg = load_config("jobs/configs/pretrain.yaml", ["model.num_layers=6", "optim.lr=3e-4"])
    cfg.model.num_layers   # 6
    dump_config(cfg)       # YAML text that load_config reads back to an equal config

Unknown keys, wrong types, values outside a field's allowed choices or numeric range
(`atomray.config_ranges`) and inconsistent values raise `ConfigError` naming the dotted key,
what was expected and what was found (and, for unknown keys, the closest valid ones).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from atomray.config_ranges import ConfigError, check_values, flatten, to_dict  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the operator (paper Table 19; baselines share the interface).

    Defaults are the measured best at the shipped CPU budget (`jobs/configs/pretrain.yaml`;
    docs/experiments.md): a config that sets only `data.path` trains the recommended model.
    `name` picks the class from the model registry: "atom", "egno", "egnn_r", "egnn_s".
    Every paper ablation is a switch here; RWPE length lives in `DataConfig.rwpe_k` because
    the data pipeline computes it (Table 19 lists it under training). Label noise σ lives in
    `TrainConfig.label_noise_sigma` (the loss applies it, not the model).

    Units: `tau_fs` is the T-RoPE / sinusoidal timescale τ in fs (the paper leaves its value
    open; 10 fs puts the slowest of the per-head frequencies ω_k/τ at a period of ~25–40 ps,
    so lags of 8–24 000 fs are all resolved). `velocity_scale_fs` is the fixed unit in which
    the model reads velocities: v [Å/fs] × 100 fs = Å per 100 fs, the same order as the
    centred positions. ATOM uses `embed_dim`/`num_layers`/`num_heads`; the EGNN-family
    baselines use `gnn_hidden_dim`/`num_layers` (EGNO: hidden 64, 5 layers).

    `prior` (every model): the physics extrapolation the model corrects (`atomray.priors.compose`)
    — "none" (absolute positions, the paper), "x0" (displacements, App. D.4), "rigid" (the
    molecule's rigid-body motion at constant ω), "rotor" (its exact torque-free rigid-body
    motion), or "harmonic" (rotor plus each atom's damped harmonic vibration about the
    molecule's nearest GFN2-xTB minimum, `atomray.priors.modes`; needs every atom in the model,
    `data.context_atoms: all`). The correction starts at zero. `anharmonic` (harmonic prior)
    hands the prior over from MMFF94 molecular dynamics of the start state
    (`atomray.priors.anharmonic`). The data path computes the prior's paths
    (`atomray.priors.paths`); the forward only composes them.
    `distance_bias`, `lag_conditioned_output` and `internal_velocity` are ATOM additions to the
    paper (see `atomray.model.atom`): a per-head attention term of interatomic distances, output
    features scaled by a learned function of each lag, and (with a rigid / rotor / harmonic
    prior) velocities read relative to the rigid-body motion the prior extrapolates.
    `relaxed_input` (ATOM, harmonic prior) lifts each atom's shift to the basin's minimum as a
    second position stream; `prior_input` (ATOM, harmonic prior) lifts the prior's internal
    displacement at each lag into that lag's slot tokens (with `anharmonic`, also where the
    MD departs from it). EGNO starts its coordinates from the prior.
    `predict_velocity` (ATOM): a second equivariant head predicts each atom's velocity at every
    lag, the prior's own velocity (its time derivative) plus a learned correction turned with the body
    (`ATOM.forward(..., with_velocity=True)`); trained with `TrainConfig.velocity_weight`, and
    what `atomray.rollout` starts each step from instead of differentiating the positions.
    `vib_damping` (harmonic prior): the vibration decays as exp(−Δt/τ) with τ learned from
    1000 fs (the ensemble average of dephasing); false keeps it undamped (τ = ∞, fixed). Measured
    for rollouts (docs/experiments.md, "Where the bonds go wrong"): undamped, a fine-tuned head's
    own velocities run warmer (278 against 251 K) but a flexible molecule breaks (stability 0.87
    against 1.00); one-shot val S2T 0.357 against 0.347. Damped stays the default.
    `rotor_circles` (harmonic prior; other priors have no vibration to bend): terminal groups'
    hydrogens (methyl, hydroxyl, amino) vibrate on circles about their group's axis, their
    velocities along the circles (`atomray.priors.modes.rotor_circles`), where the normal modes draw a turn as straight
    tangent lines that stretch the C–H bond at second order; a fast methyl's chain of rollout
    steps breaks that bond. Saved with the checkpoint: training, its floors and its rollouts use
    the same prior (a checkpoint saved before the key existed reads false,
    `atomray.checkpoint.PREDATED_MODEL_KEYS`). Measured (docs/experiments.md, "Where the
    rollouts break", "Why the methyls shrink"): one-shot validation the same (tg80-mini 0.347,
    cv fold 0 0.119 with and without), and the 100-ps rollouts of every methyl molecule hold
    (acetylacetone 0.40 → 1.00, N-methylacetamide 0.00 → 1.00); the default.
    """

    name: Literal["atom", "egno", "egnn_r", "egnn_s"] = "atom"
    embed_dim: int = 64
    num_layers: int = 3
    num_heads: int = 4
    output_heads: int = 1
    attn_dropout: float = 0.0
    mlp_dropout: float = 0.0
    rope_base: float = 1000.0
    tau_fs: float = 10.0
    velocity_scale_fs: float = 100.0
    max_atomic_number: int = 10
    lifting: Literal["equivariant", "linear", "canonical"] = "canonical"
    attention: Literal["heterogeneous", "self"] = "self"
    time_encoding: Literal["trope", "sinusoidal", "none"] = "trope"
    gamma: Literal["learned", "fixed"] = "learned"
    value_residual: Literal["learned", "fixed", "off"] = "learned"
    prior: Literal["none", "x0", "rigid", "rotor", "harmonic"] = "harmonic"
    distance_bias: bool = True
    lag_conditioned_output: bool = True
    internal_velocity: bool = True
    relaxed_input: bool = True
    prior_input: bool = True
    anharmonic: bool = False
    latent_equivariance_weight: float = 0.0
    predict_velocity: bool = False
    vib_damping: bool = True
    rotor_circles: bool = True
    # EGNO / EGNN baselines (the EGNO protocol, docs/architecture.md).
    gnn_hidden_dim: int = 64
    time_embed_dim: int = 32
    fourier_modes: int = 2
    radius: float = 1.6


@dataclass(frozen=True)
class DataConfig:
    """Where trajectories come from and how training windows are cut from them.

    Times are physical (fs). A window starts at frame t and targets P lags inside a horizon
    ΔT: fixed (`horizon="fixed"`, ΔT = `horizon_fs`) or per window
    ΔT ~ LogUniform(`horizon_min_fs`, `horizon_max_fs`) for multitask pretraining.

    Atoms: `context_atoms` are the atoms the model sees and predicts (heavy atoms, as in the
    EGNO/ATOM benchmarks, or all atoms, hydrogens included); `score_atoms` are the atoms the
    metrics score (heavy by default, so figures compare with the papers). Scoring hydrogens
    needs `context_atoms: all`.

    Training windows: `train_feed: stream` cuts `train_windows` fresh windows every epoch from
    the Ray Data stream of trajectory chunks; `fixed` draws `train_windows` windows once
    (seeded) and trains on the same set every epoch (the EGNO/MD17 protocol's fixed 500
    training samples). `molecules` restricts every split to those ids; `time_split` sets the
    in-distribution split's time fractions (train before the first, test after the second).
    """

    path: str = "data/tg80-mini"
    num_lags: int = 8
    horizon: Literal["fixed", "loguniform"] = "loguniform"
    horizon_fs: float = 1000.0
    horizon_min_fs: float = 8.0
    horizon_max_fs: float = 1000.0
    discretisation: Literal["uniform", "tail"] = "uniform"
    tail_offset_fs: float = 0.0
    context_atoms: Literal["heavy", "all"] = "all"
    score_atoms: Literal["heavy", "all"] = "heavy"
    centre: bool = True
    rwpe_k: int = 8
    radius: float = 1.6
    molecules: tuple[str, ...] = ()  # restrict the data set to these molecule ids (empty: all)
    split: Literal["umap_cluster", "random", "in_distribution", "all"] = "random"
    time_split: tuple[float, float] = (0.8, 0.9)  # in_distribution: train | val | test boundaries
    fold: int = 0
    num_folds: int = 5
    num_clusters: int = 10
    train_windows: int = 2048
    val_windows: int = 512
    test_windows: int = 1000
    batch_size: int = 64
    split_seed: int = 0
    train_feed: Literal["stream", "fixed"] = "stream"
    chunk_frames: int = 4096
    read_tasks: int = 0  # read+chunk tasks in flight per epoch; 0: one per training worker
    include_unstable: bool = False


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule (Table 19): AdamW-AMSGrad single-task, Muon multitask."""

    name: Literal["adamw_amsgrad", "adamw", "muon"] = "adamw_amsgrad"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-10
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    warmup_steps: int = 20
    step_size: int = 2500
    step_gamma: float = 0.5
    grad_clip: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: epochs, label noise (paper §3.2.3), augmentation, loss weighting, seeds.

    `augment: so3` rotates every training window (x0, v0, targets and prior paths about the
    centroid) by a fresh uniformly random rotation each epoch (seeded by seed, epoch and rank),
    so a quasi-equivariant model learns the dynamics in every orientation instead of memorising
    the orientations it was trained on.

    `loss_weighting: harmonic` divides each window's squared error by the harmonic_all floor's
    error on that window (the harmonic prior's own error) plus `loss_weight_floor` (Å²), weights
    normalised to mean 1 per batch (`atomray.train.loss.window_weights`): windows the prior
    nearly solves weigh more, so the model does not add error to rigid molecules. `anharmonic`
    uses the anharmonic_all floor instead. `none` is the paper's plain mean (eq. 1).

    `loss_atoms: score` averages the loss over the atoms the metrics score (`data.score_atoms`,
    heavy atoms by default) instead of every atom the model sees: with `data.context_atoms=all`
    the hydrogens still enter as tokens/nodes and are still predicted, but their large-amplitude
    motion no longer dominates the objective. `all` (the default) trains every predicted atom.

    Label noise perturbs the model's inputs and targets, not the prior, which the data path
    computed from the clean start state. Every epoch is validated and checkpointed;
    `max_failures` is Ray Train's FailureConfig (-1: retry without limit).

    `velocity_weight` (with `model.predict_velocity`): the weight of the velocity loss, the mean
    squared error of the predicted velocities at every lag in (Å/fs × 10 fs)² — the distance each
    error carries an atom in 10 fs, so it reads in Å² beside the position loss
    (`atomray.train.loss.velocity_loss`)."""

    epochs: int = 12
    label_noise_sigma: float = 0.0
    augment: Literal["none", "so3"] = "none"
    loss_weighting: Literal["none", "harmonic", "anharmonic"] = "harmonic"
    loss_weight_floor: float = 0.001
    loss_atoms: Literal["all", "score"] = "all"
    velocity_weight: float = 1.0
    seed: int = 0
    max_failures: int = 3


@dataclass(frozen=True)
class ScalingConfig:
    """How many Ray Train workers and what each one gets."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    gpus_per_worker: float = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    placement_strategy: Literal["PACK", "SPREAD"] = "PACK"


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: where runs go. An empty `tracking_uri` means $MLFLOW_TRACKING_URI if set,
    else a SQLite file `mlflow.db` in the working directory (made absolute)."""

    tracking_uri: str = ""
    experiment: str = "atomray-pretrain"
    run_name: str = ""
    enabled: bool = True


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs, resolved once and saved with every checkpoint."""

    name: str = ""
    storage_path: str = "ray_results"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass with type checking


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return "a list of " + ", ".join(_type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, found {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"config key {key!r}: expected {tp}, found {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"config key {key!r}: expected a list of {_type_name(args[0])}, found {value!r}")
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(
                f"config key {key!r}: expected {_type_name(tp)} ({len(args)} items), found {value!r}"
            )
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, Mapping):
            return _from_dict(tp, value, prefix=key + ".")
        if isinstance(value, tp):
            return value
    raise ConfigError(
        f"config key {key!r}: expected {_type_name(tp)}, found {type(value).__name__} {value!r}"
    )


def _unknown_key_error(key: str, valid: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=3, cutoff=0.5)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
    return ConfigError(
        f"unknown config key {key!r}{hint} (valid keys here: {', '.join(sorted(valid))})"
    )


def _from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise _unknown_key_error(prefix + str(key), names)
        kwargs[key] = _coerce(prefix + key, value, hints[key])
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any, cls: type) -> None:
    parts = key.split(".")
    node, node_cls = tree, cls
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(node_cls)
        if part not in hints:
            raise _unknown_key_error(".".join(parts[: i + 1]), list(hints))
        if i == len(parts) - 1:
            node[part] = value
            return
        node_cls = hints[part]
        if not dataclasses.is_dataclass(node_cls):
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is a value, not a group")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} must be a mapping")


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """Parse `key=value` strings; values are read as YAML scalars (`3e-4`, `true`, `[1, 2]`)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return parsed


def config_from_dict(data: Mapping[str, Any] | None, overrides: Sequence[str] = (), cls: type = RunConfig) -> Any:
    """Build a validated config of type `cls` from a nested dict plus dotted overrides.

    A RunConfig's values are also range-checked (`atomray.config_ranges.check_values`)."""
    tree = _deep_copy(dict(data or {}))
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value, cls)
    cfg = _from_dict(cls, tree)
    return check_values(cfg) if isinstance(cfg, RunConfig) else cfg


def _deep_copy(d: Any) -> Any:
    if isinstance(d, Mapping):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), cls: type = RunConfig) -> Any:
    """Read a YAML file (or nothing: the defaults), apply `key=value` overrides, validate."""
    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {str(path)!r}: expected a mapping at top level, found {type(data).__name__}")
    try:
        return config_from_dict(data, overrides, cls)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None


def dump_config(cfg: Any) -> str:
    """YAML text of a config; `load_config` of it gives back an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dump_config(cfg))
    tmp.replace(path)
