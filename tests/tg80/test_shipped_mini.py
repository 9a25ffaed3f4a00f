"""The shipped data set data/tg80-mini (made once by the `mini` preset) passes the reader's
validation, stays under 40 MB and records how it was made."""

from __future__ import annotations

import json
from pathlib import Path

from atomray.data.dataset import read_molecules, validate_dataset
from atomray.tg80.seeds import MD17_NAMES

MINI = Path(__file__).resolve().parents[2] / "data" / "tg80-mini"


def test_mini_is_valid_small_and_has_provenance():
    info = validate_dataset(MINI)
    assert info["molecules"] >= 16
    assert info["simulated_fs"] >= 5000 * info["molecules"]  # ≥ 5 ps per molecule
    size = sum(p.stat().st_size for p in MINI.rglob("*") if p.is_file())
    assert size <= 40 * 2**20, f"{size / 2**20:.1f} MiB"
    rows = read_molecules(MINI).to_pylist()
    assert set(MD17_NAMES) <= {r["molecule_id"] for r in rows}
    assert sum(r["role"] == "selected" for r in rows) >= 1
    for r in rows:
        assert r["theory"] == "GFN2-xTB" and r["dt_fs"] == 1.0 and r["temperature_k"] == 300.0
        assert r["n_frames"] >= 5000 and isinstance(r["stable"], bool)
        prov = json.loads(r["provenance"])
        assert prov["engine"] == "gfn2" and "--preset mini" in prov["command"] and prov["build_wall_s"] > 0
        assert prov["seed"] == 0 and prov["md"]["ensemble"] == "nve"
    selection = json.loads((MINI / "selection.json").read_text())
    assert [y["criterion"] for y in selection["yields"]][0] == "1_valid_smiles"
    assert (MINI / "stability.csv").is_file() and (MINI / "stability.png").is_file()
