"""Search spaces and ablation grids over whole training runs (paper §4.4, Figs. 5–6).

Keys are dotted RunConfig keys, so a trial's overrides apply with `apply_overrides`.

- `SEARCH_SPACE`: learning rate, width, depth, heads, label noise σ, the T-RoPE timescale τ
  and the log-uniform horizon's Δt_min and ΔT_max.
- `ABLATIONS`: each paper ablation and each of atomray's additions (prior, context atoms,
  augmentation, distance bias, lag-conditioned output, internal velocities, loss weighting,
  the relaxation and the harmonic prior as inputs) with its alternatives, the default first; `ablation_trials` makes the one-switch-at-a-time list (the
  default model plus one trial per alternative value), or the full factorial grid.
"""

from __future__ import annotations

import itertools
from typing import Any

from atomray.config import RunConfig, config_from_dict, to_dict

# The first value of each switch is the default model (jobs/configs/sweep.yaml), set alike in
# pretrain.yaml and cv.yaml: the harmonic prior, with the relaxation and the prior as inputs.
ABLATIONS: dict[str, list[Any]] = {
    "data.rwpe_k": [8, 0],
    "model.time_encoding": ["trope", "sinusoidal", "none"],
    "model.gamma": ["learned", "fixed"],
    "model.lifting": ["canonical", "equivariant", "linear"],
    "model.attention": ["self", "heterogeneous"],
    "model.prior": ["harmonic", "rotor", "rigid", "x0", "none"],
    "data.context_atoms": ["all", "heavy"],
    "train.augment": ["none", "so3"],
    "model.distance_bias": [True, False],
    "model.lag_conditioned_output": [True, False],
    "model.internal_velocity": [True, False],
    "train.loss_weighting": ["harmonic", "none"],
    "model.relaxed_input": [True, False],
    "model.prior_input": [True, False],
}
# Alternatives that only make sense together: the quasi-equivariant lifting learns rotations
# from augmented data (on the exactly equivariant default, augmentation changes nothing), the
# paper's own default (quasi-equivariant, heterogeneous attention, augmented), and the rotor
# prior without the inputs that read the harmonic prior.
COMBINED: list[dict[str, Any]] = [
    {"model.lifting": "equivariant", "train.augment": "so3"},
    {"model.lifting": "equivariant", "model.attention": "heterogeneous", "train.augment": "so3"},
    {"model.prior": "rotor", "model.relaxed_input": False},
]


def search_space() -> dict[str, Any]:
    """Ray Tune distributions for the hyperparameter search (imports Ray lazily)."""
    from ray import tune

    return {
        "optim.lr": tune.loguniform(1e-4, 3e-3),
        "model.embed_dim": tune.choice([64, 128, 256]),
        "model.num_layers": tune.choice([3, 4, 5, 6]),
        "model.num_heads": tune.choice([4, 8]),
        "train.label_noise_sigma": tune.choice([0.0, 0.05, 0.1]),
        "model.tau_fs": tune.loguniform(1.0, 100.0),
        "data.horizon_min_fs": tune.choice([4.0, 8.0, 16.0]),
        "data.horizon_max_fs": tune.choice([1000.0, 3000.0, 10000.0, 24000.0]),
    }


def ablation_trials(keys: list[str] | None = None, full_grid: bool = False) -> list[dict[str, Any]]:
    """Override dicts, one per trial. One at a time: the defaults (first values) plus each
    alternative of each switch, plus each COMBINED alternative whose switches are all among
    `keys`; `full_grid`: every combination."""
    keys = keys or list(ABLATIONS)
    unknown = [k for k in keys if k not in ABLATIONS]
    if unknown:
        raise KeyError(f"unknown ablation switch(es) {unknown}; known: {list(ABLATIONS)}")
    if full_grid:
        grid = [dict(zip(keys, combo)) for combo in itertools.product(*(ABLATIONS[k] for k in keys))]
        return [_compatible(t) for t in grid if _unchanged(t)]
    base = {k: ABLATIONS[k][0] for k in keys}
    trials = [dict(base)]
    for k in keys:
        for alt in ABLATIONS[k][1:]:
            trials.append({**base, k: alt})
    trials += [{**base, **combo} for combo in COMBINED if set(combo) <= set(keys)]
    unique = []
    for t in map(_compatible, trials):
        if t not in unique:
            unique.append(t)
    return unique


_BASE_PRIOR = ABLATIONS["model.prior"][0]  # sweep.yaml's prior, where a trial leaves it unset


def _unchanged(trial: dict[str, Any]) -> bool:
    """Whether the rules of `_compatible` leave every switch the trial sets as it is."""
    out = _compatible(trial)
    return all(out[k] == v for k, v in trial.items())


def _compatible(trial: dict[str, Any]) -> dict[str, Any]:
    """The trial made runnable (`atomray.config_ranges`): without the hydrogens
    (context_atoms=heavy) there are no normal modes, so the harmonic prior becomes rotor and
    the harmonic loss weighting none; the relaxation and prior inputs read the harmonic prior.
    Switches the trial does not set but the base config (sweep.yaml) turns on are set off
    explicitly where they cannot run."""
    out = dict(trial)
    if out.get("data.context_atoms") == "heavy":
        if out.get("model.prior", _BASE_PRIOR) == "harmonic":
            out["model.prior"] = "rotor"
        out["train.loss_weighting"] = "none"
    if out.get("model.prior", _BASE_PRIOR) != "harmonic":
        out.update({"model.prior_input": False, "model.relaxed_input": False})
    return out


def ablation_label(overrides: dict[str, Any]) -> str:
    """A short name of what a trial changes from the defaults ("default" if nothing)."""
    changed = [f"{k.split('.', 1)[1]}={v}" for k, v in overrides.items() if k in ABLATIONS and v != ABLATIONS[k][0]]
    return ", ".join(changed) or "default"


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A new RunConfig with dotted-key overrides applied (validated like any config)."""
    tree = to_dict(cfg)
    for key, value in overrides.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config_from_dict(tree)
