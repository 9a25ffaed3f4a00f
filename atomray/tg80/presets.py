"""Named build presets: tiny (tests, seconds), mini (the shipped data set), full (paper scale).

Each preset is a nested dict of `BuildConfig` settings; `preset_config` applies dotted
overrides (e.g. "md.production_fs=2000") and validates the result.

mini: RDKit's NCI list has 5,000 compounds, ~35,000× fewer than the PubChem library of the
paper, and none of them lies in the paper's similarity window (0.875, 0.925) to a seed. So
mini widens the window's lower edge to 0.5 (recorded in its provenance); every other
criterion is the paper's (App. C.4, diversity ≤ 0.2). `full` keeps the paper's window and
needs a PubChem-size library (`--library`).
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
