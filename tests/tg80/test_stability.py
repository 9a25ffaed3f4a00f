"""Stability report: hand-made trajectories past each threshold are flagged, a calm one is
not, and the report is written as CSV + PNG."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from atomray.tg80.dynamics import maxwell_boltzmann
from atomray.tg80.stability import StabilityConfig, flag, stability_metrics, write_report

MASSES = np.array([12.011, 15.999, 1.008, 1.008])
BONDS = np.array([[0, 1], [0, 2], [0, 3]])
X0 = np.array([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [-0.5, 0.9, 0.0], [-0.5, -0.9, 0.0]])


def trajectory(kind: str, frames: int = 50):
    rng = np.random.default_rng(0)
    pos = np.repeat(X0[None], frames, axis=0) + rng.normal(0, 0.01, (frames, 4, 3))
    vel = np.stack([maxwell_boltzmann(MASSES, 300.0, rng) for _ in range(frames)])
    if kind == "drift":
        pos += np.linspace(0, 3.0, frames)[:, None, None]  # the whole molecule slides 3 Å per axis
    elif kind == "jump":
        pos[25:, 2] += 0.6  # an H jumps 0.6 Å in one step and stays there
    elif kind == "break":
        pos[:, 1, 0] += np.linspace(0, 1.5, frames)  # the C=O bond is pulled apart slowly
    elif kind == "cold":
        vel *= 0.5  # a quarter of the kinetic energy: 75 K
    return pos, vel


@pytest.mark.parametrize("kind, reason", [("drift", "com_drift"), ("jump", "max_step"), ("break", "bond_stretch"), ("cold", "temperature")])
def test_each_threshold_flags_its_counterexample(kind, reason):
    cfg = StabilityConfig()
    calm = flag(stability_metrics("calm", *trajectory("calm"), MASSES, BONDS, dof=9), cfg, 300.0)
    assert calm.stable and calm.reason == ""
    bad = flag(stability_metrics(kind, *trajectory(kind), MASSES, BONDS, dof=9), cfg, 300.0)
    assert not bad.stable
    assert bad.reason.startswith(reason), bad.reason


def test_report_writes_csv_and_png(tmp_path):
    cfg = StabilityConfig()
    rows = [flag(stability_metrics(k, *trajectory(k), MASSES, BONDS, dof=9), cfg, 300.0) for k in ("calm", "drift")]
    csv_path, png_path = write_report(rows, tmp_path, cfg, 300.0)
    with csv_path.open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["molecule_id"] for r in table] == ["calm", "drift"]
    assert [r["stable"] for r in table] == ["True", "False"]
    assert float(table[1]["com_drift_a"]) == pytest.approx(3.0 * np.sqrt(3), rel=0.02)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 10_000
    assert not list(tmp_path.glob(".*tmp*"))  # no temporaries left behind
