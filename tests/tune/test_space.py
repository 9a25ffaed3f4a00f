"""`atomray.tune.space`: the ablation grid holds only configs that validate."""

from __future__ import annotations

from atomray.config import load_config
from atomray.tune.space import ABLATIONS, ablation_trials, apply_overrides


def test_every_ablation_trial_is_a_valid_config_and_the_prior_switches_are_in_it():
    cfg = load_config("jobs/configs/sweep.yaml")
    trials = ablation_trials()
    assert {"model.prior", "model.relaxed_input", "model.prior_input", "train.loss_weighting"} <= set(ABLATIONS)
    assert any(t["model.prior"] == "rotor" and not t["model.relaxed_input"] for t in trials)
    for trial in trials:
        apply_overrides(cfg, trial)  # raises ConfigError on an invalid combination


def test_the_full_grid_drops_what_needs_the_hydrogens_where_the_model_has_none():
    grid = ablation_trials(["model.prior", "model.relaxed_input", "data.context_atoms"], full_grid=True)
    # 5 priors x 2 x 2 = 20; dropped: the relaxation input without the harmonic prior (4 priors x
    # 2 atom sets: it reads the harmonic prior's d0) and the harmonic prior with heavy atoms (2: the
    # normal modes need the hydrogens)
    assert len(grid) == 20 - 8 - 2
    cfg = load_config("jobs/configs/sweep.yaml")
    for trial in grid:
        apply_overrides(cfg, trial)
