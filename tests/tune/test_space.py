"""`atomray.tune.space`: the ablation grid holds only configs that validate."""

from __future__ import annotations

from atomray.config import load_config
from atomray.tune.space import ABLATIONS, ablation_trials, apply_overrides


def test_every_ablation_trial_is_a_valid_config_and_the_relaxation_switches_are_in_it():
    cfg = load_config("jobs/configs/sweep.yaml")
    trials = ablation_trials()
    assert {"model.relaxed_prior", "model.relaxed_input"} <= set(ABLATIONS)
    assert any(t["model.relaxed_prior"] != ABLATIONS["model.relaxed_prior"][0] for t in trials)
    for trial in trials:
        apply_overrides(cfg, trial)  # raises ConfigError on an invalid combination


def test_the_full_grid_drops_relaxation_where_the_force_field_has_no_molecule():
    grid = ablation_trials(["model.prior", "model.relaxed_prior", "data.context_atoms"], full_grid=True)
    # dropped: the relaxed prior on none (2) or on harmonic (2: it replaces the vibration, so that
    # trial is rotor's), on rotor / rigid / x0 with heavy atoms (3), and harmonic with heavy atoms
    # (1: the normal modes need the hydrogens)
    assert len(grid) == 5 * 2 * 2 - 8
    cfg = load_config("jobs/configs/sweep.yaml")
    for trial in grid:
        apply_overrides(cfg, trial)
