"""Named build presets: tiny (tests, seconds), mini (the shipped data set), tg80 (60 molecules
from the same library), full (paper scale).

Each preset is a nested dict of `BuildConfig` settings; `preset_config` applies dotted
overrides (e.g. "md.production_fs=2000") and validates the result.

mini: RDKit's NCI list has 5,000 compounds, ~35,000× fewer than the PubChem library of the
paper, and none of them lies in the paper's similarity window (0.875, 0.925) to a seed. So
mini widens the window's lower edge to 0.5 (recorded in its provenance); every other
criterion is the paper's (App. C.4, diversity ≤ 0.2). `full` keeps the paper's window and
needs a PubChem-size library (`--library`).

tg80: the 40 seeds + 20 NCI compounds = 60 molecules × 5 ps, with the window's lower edge
widened only as far as 20 compounds need. Compounds the selection accepts from the NCI
list (build seed 0, all 40 seeds as parents, diversity ≤ 0.2, upper edge 0.925) by the
window's lower edge, measured 2026-12-06 with `run_selection(preset_config("tg80",
["selection.similarity_min=<m>"]), 0)` (0: every compound that passes; the command is in
docs/data.md):

    similarity_min      0.50  0.45  0.40  0.35  0.34  0.33  0.32  0.31  0.30  0.29  0.25  0.20
    pass criteria 1–7     30    48    76   151   170   200   223   252   272   312   453   752
    accepted (1–8)         6     8     8    13    14    17    17    19    20    21    31    44

Diversity, not the window, limits the yield: most compounds that enter a wider window are
within 0.2 of one accepted before. 0.30 is the highest two-decimal edge with 20 accepted
(40 + 20 = 60); the accepted compounds lie 0.303–0.520 from their seed parent and at most
0.200 from each other, so diversity stays the paper's 0.2.

What the 60 molecules cover:
- flexible chains and soft torsions (≥ 4 rotatable bonds): ibuprofen, guaifenesin,
  mephenesin, pregabalin, valproic acid, lib-1075 (5-methylhexanoic acid), lib-3652
  (4-nitroheptane); the biaryl torsion of lib-2148 (2-methoxybiphenyl);
- ring systems beyond one benzene ring: naphthalene, coumarin, serotonin and lib-1964
  (indoles), camphor (bicyclic), memantine (adamantane), nicotine, antipyrine, lib-2359
  (N-phenylsuccinimide), lib-2148 (biphenyl); non-aromatic rings in menthol, gabapentin,
  ethosuximide, lib-2330, lib-1182, lib-1020 (a hydantoin);
- proton transfer: the O=C–C=C–O–H motif of malonaldehyde's enol, an O–H···O=C hydrogen
  bond closing a six-membered ring, in salicylic acid, methyl salicylate, salicylamide and
  lib-3785 (2'-hydroxypropiophenone). The seed file's malonaldehyde is the dialdehyde
  O=CCC=O, not MD17's enol, so it has no such proton.
"""

from __future__ import annotations

from typing import Any, Sequence

from atomray.config import ConfigError, config_from_dict
from atomray.tg80.plan import BuildConfig
from atomray.tg80.seeds import MD17_NAMES

PRESETS: dict[str, dict[str, Any]] = {
    # 3 small molecules, MMFF94, 200 fs in two segments: a build in about a second.
    "tiny": dict(
        engine="mmff",
        seed_names="ethanol,malonaldehyde,benzene",
        n_seeds=3,
        n_selected=0,
        md=dict(equilibration_fs=100.0, production_fs=200.0, segment_fs=100.0, relax_steps=200),
    ),
    # 10 seeds (the 8 MD17 compounds + 2 drug-like) + 6 NCI compounds, GFN2-xTB, 5 ps each.
    "mini": dict(
        engine="gfn2",
        seed_names=",".join(MD17_NAMES + ("paracetamol", "nicotinamide")),
        n_seeds=10,
        n_selected=6,
        selection=dict(similarity_min=0.5),
        md=dict(equilibration_fs=1000.0, production_fs=5000.0, segment_fs=1000.0),
    ),
    # All 40 seeds + 20 NCI compounds, GFN2-xTB, 5 ps each; the window's lower edge at 0.30
    # is the highest (two decimals) that yields 20 compounds at diversity ≤ 0.2 (table above).
    "tg80": dict(
        engine="gfn2",
        n_seeds=40,
        n_selected=20,
        selection=dict(similarity_min=0.3),
        md=dict(equilibration_fs=1000.0, production_fs=5000.0, segment_fs=1000.0),
    ),
    # The paper's scale: 40 seeds + 40 selected compounds, 31 ps each (≈ 2.5 million fs).
    "full": dict(
        engine="gfn2",
        n_seeds=40,
        n_selected=40,
        md=dict(equilibration_fs=1000.0, production_fs=31000.0, segment_fs=1000.0),
    ),
}


def preset_config(name: str, overrides: Sequence[str] = ()) -> BuildConfig:
    """The BuildConfig of preset `name` with dotted `key=value` overrides applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown TG80 preset {name!r}; expected one of {', '.join(PRESETS)}")
    return config_from_dict(PRESETS[name], overrides, cls=BuildConfig).check()
