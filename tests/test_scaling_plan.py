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


def test_an_impossible_held_out_size_is_refused(capsys, tmp_path):
    err = job_main(capsys, "scaling.py", "--data", ROOT / "data" / "tg80-mini", "--out", tmp_path / "s",
                   "--holdout", 16, "--clusters", 5, "--dry-run", expect=2).err
    assert "no set of whole clusters makes 16 held-out molecules" in err
