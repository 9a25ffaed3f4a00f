"""jobs/scaling.py's plan: held-out molecules are whole clusters, the training sets are nested,
two seeds at the ends, compute points at the largest size; bad sizes are refused before work."""

from __future__ import annotations

import importlib.util

import pytest
from jobrun import ROOT, job_main

from atomray.config import ConfigError


def scaling():
    spec = importlib.util.spec_from_file_location("job_scaling", ROOT / "jobs" / "scaling.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


def test_held_out_molecules_are_whole_clusters():
    from atomray.data.dataset import read_molecules
    from atomray.data.splits import cluster_molecules

    table = read_molecules(ROOT / "data" / "tg80-mini")
    ids, smiles = table.column("molecule_id").to_pylist(), table.column("smiles").to_pylist()
    held = scaling().choose_heldout(ids, smiles, 5, 5, seed=0)
    assert len(held) == 5
    of = cluster_molecules(ids, smiles, 5, 0)
    for c in {of[m] for m in held}:
        assert {m for m in ids if of[m] == c} <= set(held)  # no cluster is split between sides


def test_plan_nests_sizes_seeds_at_the_ends_and_compute_at_the_largest():
    points = scaling().plan([10, 20, 0], 50, ["atom", "egno"], seeds=2, compute=[1, 3, 10])
    atom = [(p.size, p.seed, p.compute) for p in points if p.model == "atom"]
    assert atom == [(10, 0, 1), (10, 1, 1), (20, 0, 1), (50, 0, 1), (50, 1, 1), (50, 0, 3), (50, 0, 10)]
    assert len({p.name for p in points}) == len(points) == 14
    with pytest.raises(ConfigError, match="--sizes must be in 1..50"):
        scaling().plan([10, 60], 50, ["atom"], seeds=1, compute=[1])


def test_dry_run_names_the_held_out_molecules_and_every_point(capsys, tmp_path):
    out = job_main(capsys, "scaling.py", "--data", ROOT / "data" / "tg80-mini", "--out", tmp_path / "s",
                   "--holdout", 4, "--clusters", 5, "--sizes", 3, 0, "--models", "atom", "--dry-run").out
    assert "held out (4):" in out and "4 points: atom-n3-s0-x1, atom-n3-s1-x1, atom-n11-s0-x1, atom-n11-s1-x1" in out
    assert not (tmp_path / "s").exists()


def test_report_trains_nothing_and_says_when_no_point_is_done(capsys, tmp_path):
    err = job_main(capsys, "scaling.py", "--data", ROOT / "data" / "tg80-mini", "--out", tmp_path / "s",
                   "--holdout", 4, "--clusters", 5, "--sizes", 3, 0, "--models", "atom", "--report", expect=2)
    assert "atom-n3-s0-x1: not done" in err.out and "no point of the plan is done yet" in err.err
    assert not (tmp_path / "s" / "runs").exists() and not (tmp_path / "s" / "scaling.csv").exists()


def test_an_impossible_held_out_size_is_refused(capsys, tmp_path):
    err = job_main(capsys, "scaling.py", "--data", ROOT / "data" / "tg80-mini", "--out", tmp_path / "s",
                   "--holdout", 16, "--clusters", 5, "--dry-run", expect=2).err
    assert "no set of whole clusters makes 16 held-out molecules" in err


def row(model: str, n: int, h: float, s2t: float, floor: float, compute: int = 1, seed: int = 0) -> dict:
    return {"model": model, "molecules": n, "seed": seed, "compute": compute, "horizon_fs": h, "model_s2t": s2t,
            "strongest_floor": "mmff_md", "ratio_strongest": s2t / floor}


def test_verdict_takes_the_best_compute_point_and_extrapolates_the_trend():
    """ATOM ÷ floor 2.0 at 10 molecules and 1.0 at 40 (∝ n^-0.5): 0.9× needs 10 (2 / 0.9)² ≈ 49
    molecules; the 3× compute point is the best at 40; a flat ΔT never gets there; one ΔT short
    means the whole verdict falls short, every ΔT below both targets means it holds."""
    rows = [row("atom", 10, 25.0, 2.0, 1.0), row("atom", 40, 25.0, 1.0, 1.0), row("atom", 40, 25.0, 0.95, 1.0, compute=3),
            row("egno", 40, 25.0, 2.0, 1.0),
            row("atom", 10, 1000.0, 3.0, 2.0), row("atom", 40, 1000.0, 3.0, 2.0), row("egno", 40, 1000.0, 3.0, 2.0)]
    lines = scaling().verdict(rows)
    assert lines[0].startswith("25 fs: atom 0.95x the strongest floor (mmff_md) at 40 molecules (compute 3x), 0.47x egno")
    assert "trend ∝ n^-0.50, 0.9x at ~49.4 molecules" in lines[0]
    assert "flat or rising: no molecule count reaches 0.9x" in lines[1] and "1.00x egno" in lines[1]
    slow = [row("atom", 10, 25.0, 2.0, 1.0), row("atom", 40, 25.0, 1.96, 1.0)]  # ∝ n^-0.015
    assert scaling().verdict(slow)[0].endswith("0.9x beyond 10^5 molecules")
    assert lines[-1].startswith("falls short")
    good = [row("atom", 10, 25.0, 0.8, 1.0), row("atom", 40, 25.0, 0.5, 1.0), row("egno", 40, 25.0, 1.0, 1.0)]
    assert scaling().verdict(good)[-1].startswith("holds")
    assert scaling().verdict([r for r in good if r["model"] == "atom"])[-1].startswith("falls short")  # no EGNO: unproven
