"""Presets and plans: tiny/mini/full have the sizes the issue asks for; a library that
cannot supply the requested compounds is an error that names the library and the yield."""

from __future__ import annotations

import pytest

from atomray.config import ConfigError
from atomray.tg80.library import select_library
from atomray.tg80.plan import BuildError, plan_molecules
from atomray.tg80.presets import preset_config


def test_preset_sizes():
    tiny, mini, full = (preset_config(n) for n in ("tiny", "mini", "full"))
    assert tiny.engine == "mmff" and tiny.n_seeds + tiny.n_selected <= 3 and tiny.md.production_fs <= 200
    assert mini.engine == "gfn2" and mini.n_seeds + mini.n_selected == 16 and mini.md.production_fs >= 5000
    assert mini.max_heavy_atoms == 15
    assert full.engine == "gfn2" and full.n_seeds + full.n_selected == 80 and full.md.production_fs == 31000
    assert (full.selection.similarity_min, full.selection.similarity_max) == (0.875, 0.925)  # the paper's window
    assert full.selection.max_similarity_to_selected == 0.2
    assert all(c.md.dt_fs == 1.0 and c.md.temperature_k == 300.0 and c.md.ensemble == "nve" for c in (tiny, mini, full))


def test_overrides_are_checked():
    assert preset_config("tiny", ["md.production_fs=400"]).md.production_fs == 400.0
    with pytest.raises(ConfigError, match="md.productoin_fs"):
        preset_config("tiny", ["md.productoin_fs=400"])
    with pytest.raises(BuildError, match="multiple of segment_fs"):
        preset_config("tiny", ["md.production_fs=150"])
    with pytest.raises(ConfigError, match="unknown TG80 preset 'huge'"):
        preset_config("huge")


def test_mini_plan_is_md17_plus_drugs_plus_selected_nci_compounds():
    specs, selection = plan_molecules(preset_config("mini"))
    assert len(specs) == 16 and [s.role for s in specs].count("selected") == 6
    assert all(s.heavy_atoms <= 15 for s in specs)
    assert all(s.molecule_id.startswith("lib-") and s.seed_parent for s in specs if s.role == "selected")
    assert selection.yields[-1]["remaining"] == 6


def test_full_preset_on_the_small_nci_library_says_what_is_missing():
    with pytest.raises(BuildError, match=r"first_5K.smi: only 0 of 40 requested compounds.*7_similarity_window -\d+.*--library"):
        plan_molecules(preset_config("full"))
    with pytest.raises(BuildError, match=r"seed_names: \['unobtainium'\] not in the seed file"):
        plan_molecules(preset_config("tiny", ["seed_names=ethanol,unobtainium"]))


def test_ray_selection_is_passed_in_by_the_caller():
    cfg = preset_config("mini", ["selection_backend=ray"])
    with pytest.raises(BuildError, match="no Ray selector was given.*select_library_ray"):
        plan_molecules(cfg)
    calls = []

    def select_ray(paths, seeds, scfg):  # stands in for cluster.select_library_ray (same signature)
        calls.append(scfg)
        return select_library(paths, seeds, scfg)

    specs, selection = plan_molecules(cfg, select_ray=select_ray)
    local_specs, local_selection = plan_molecules(preset_config("mini", ["selection_backend=local"]))
    assert len(calls) == 1 and calls[0].n_select == 6
    assert specs == local_specs and selection.rows() == local_selection.rows()
