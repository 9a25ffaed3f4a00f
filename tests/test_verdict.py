"""The printed verdict says what the numbers say: a model within 1 % of the strongest floor is
level with it (a 0.1 % difference on a few hundred windows is noise), not "beats" it."""

from __future__ import annotations

import pytest

from atomray.evaluate import verdict


@pytest.mark.parametrize("model, word", [(0.90, "beats"), (0.995, "is level with"), (1.0, "is level with"),
                                         (1.008, "is level with"), (1.05, "does NOT beat")])
def test_verdict_against_the_strongest_floor(model, word):
    metrics = {"val_s2t": model, "val_s2t_no_motion": 5.0, "val_s2t_rotor_all": 1.0, "val_s2t_rigid_all": 1.2}
    line = verdict(metrics, "val_s2t")
    assert f"the model {word}" in line and "(rotor_all)" in line, line
    assert f"{model:.2f}x" in line


def test_verdict_of_the_aspirin_run_that_printed_beats_at_1_00x():
    """jobs/pretrain.py printed "beats ... 1.00x" for val S2T 1.483 against rotor_all 1.485."""
    line = verdict({"val_s2t": 0.01483, "val_s2t_rotor_all": 0.01485}, "val_s2t")
    assert "beats" not in line and "level with" in line, line
