"""Search spaces and ablation grids over whole training runs (paper §4.4, Figs. 5–6).

Keys are dotted RunConfig keys, so a trial's overrides apply with `apply_overrides`.

- `SEARCH_SPACE`: learning rate, width, depth, heads, label noise σ, the T-RoPE timescale τ
  and the log-uniform horizon's Δt_min and ΔT_max.
- `ABLATIONS`: each paper ablation and each of atomray's additions (prior, context atoms,
  augmentation, distance bias, lag-conditioned output, internal velocities, loss weighting,
  relaxation in the prior and as an input, the harmonic prior as an input) with its
  alternatives, the default first; `ablation_trials` makes the one-switch-at-a-time list (the
  default model plus one trial per alternative value), or the full factorial grid.
"""

from __future__ import annotations

import itertools
from typing import Any

from atomray.config import RunConfig, config_from_dict, to_dict

# The first value of each switch is the default model (jobs/configs/sweep.yaml). pretrain.yaml and
# cv.yaml set every switch alike except the relaxation, which they turn on (README, ablation table).
ABLATIONS: dict[str, list[Any]] = {
    "data.rwpe_k": [8, 0],
    "model.time_encoding": ["trope", "sinusoidal", "none"],
    "model.gamma": ["learned", "fixed"],
    "model.lifting": ["canonical", "equivariant", "linear"],
    "model.attention": ["self", "heterogeneous"],
    "model.prior": ["rotor", "rigid", "x0", "none", "harmonic"],
    "data.context_atoms": ["all", "heavy"],
    "train.augment": ["none", "so3"],
    "model.distance_bias": [True, False],
    "model.lag_conditioned_output": [True, False],
    "model.internal_velocity": [True, False],
    "train.loss_weighting": ["none", "rigid"],
    "model.relaxed_prior": [False, True],
    "model.relaxed_input": [False, True],
    "model.prior_input": [False, True],
}
# Alternatives that only make sense together: the quasi-equivariant lifting learns rotations
# from augmented data (on the exactly equivariant default, augmentation changes nothing), and
# the paper's own default (quasi-equivariant, heterogeneous attention, augmented).
COMBINED: list[dict[str, Any]] = [
    {"model.lifting": "equivariant", "train.augment": "so3"},
    {"model.lifting": "equivariant", "model.attention": "heterogeneous", "train.augment": "so3"},
    {"model.prior": "harmonic", "model.prior_input": True},  # the input needs the harmonic prior
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
        return [t for t in grid if t == _compatible(t)]
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


def _compatible(trial: dict[str, Any]) -> dict[str, Any]:
    """The trial with the relaxation switched off where it cannot run: without the
    hydrogens (context_atoms=heavy) the force field has no molecule (and the harmonic prior
    becomes rotor), without a prior (prior=none) the relaxed prior has nothing to add to, the
    harmonic prior relaxes already, and prior_input needs the harmonic prior
    (`atomray.config_ranges`)."""
    out = dict(trial)
    if out.get("data.context_atoms") == "heavy":
        out.update({k: False for k in ("model.relaxed_prior", "model.relaxed_input") if k in out})
        if out.get("model.prior") == "harmonic":
            out["model.prior"] = "rotor"
    if out.get("model.prior") in ("none", "harmonic") and "model.relaxed_prior" in out:
        out["model.relaxed_prior"] = False
    if out.get("model.prior", "harmonic") != "harmonic" and out.get("model.prior_input"):
        out["model.prior_input"] = False
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
