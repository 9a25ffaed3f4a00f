"""Numerical-stability report of built trajectories (the paper's App. C.3 / Fig. 8 checks).

Per molecule: centre-of-mass drift, per-step motion, the largest bond stretch and the
temperature. Each threshold is a setting; a molecule past any threshold is flagged
(`stable` False with a reason), never silently kept. Written as a CSV and a PNG figure.
"""

from __future__ import annotations

import csv
import os
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from atomray.outputs import save_figure
from atomray.tg80.dynamics import temperature


@dataclass(frozen=True)
class StabilityConfig:
    """Thresholds (Å, K). A molecule is flagged when
    com_drift_a > max_com_drift_a (largest distance of the centre of mass from its start),
    max_step_motion_a > max_step_a (largest displacement of any atom in one stored step),
    max_bond_stretch > max_bond_stretch (largest bond length / its length at frame 0), or
    its mean temperature is outside target · (1 ± temperature_tolerance)."""

    max_com_drift_a: float = 1.0
    max_step_a: float = 0.25
    max_bond_stretch: float = 1.5
    temperature_tolerance: float = 0.25


@dataclass
class StabilityRow:
    """Stability metrics of one molecule (lengths Å, temperatures K)."""

    molecule_id: str
    n_frames: int
    com_drift_a: float
    mean_step_motion_a: float
    max_step_motion_a: float
    max_bond_stretch: float
    temperature_mean_k: float
    temperature_std_k: float
    energy_drift_ev: float
    stable: bool = True
    reason: str = ""


def stability_metrics(
    molecule_id: str,
    positions: np.ndarray,
    velocities: np.ndarray,
    masses: np.ndarray,
    bonds: np.ndarray,
    dof: int,
    energy_drift_ev: float = float("nan"),
) -> StabilityRow:
    """Metrics of one trajectory: positions/velocities (F, N, 3) in Å and Å/fs, masses (N,)
    amu, bonds (B, 2) atom-index pairs, dof = kinetic degrees of freedom for temperature."""
    pos = np.asarray(positions, np.float64)
    com = np.einsum("fnk,n->fk", pos, masses) / masses.sum()  # (F, 3)
    drift = float(np.linalg.norm(com - com[0], axis=1).max())
    steps = np.linalg.norm(np.diff(pos, axis=0), axis=2) if len(pos) > 1 else np.zeros((1, pos.shape[1]))
    if len(bonds):
        b = np.asarray(bonds)
        lengths = np.linalg.norm(pos[:, b[:, 0]] - pos[:, b[:, 1]], axis=2)  # (F, B)
        stretch = float((lengths / lengths[0]).max())
    else:
        stretch = 1.0
    temps = np.array([temperature(masses, v, dof) for v in np.asarray(velocities, np.float64)])
    return StabilityRow(
        molecule_id, len(pos), drift, float(steps.mean()), float(steps.max()), stretch,
        float(temps.mean()), float(temps.std()), float(energy_drift_ev),
    )


def flag(row: StabilityRow, cfg: StabilityConfig, target_k: float) -> StabilityRow:
    """Set `stable` and `reason` from the thresholds (every violated threshold is listed)."""
    reasons = []
    if row.com_drift_a > cfg.max_com_drift_a:
        reasons.append(f"com_drift {row.com_drift_a:.3g} Å > {cfg.max_com_drift_a}")
    if row.max_step_motion_a > cfg.max_step_a:
        reasons.append(f"max_step {row.max_step_motion_a:.3g} Å > {cfg.max_step_a}")
    if row.max_bond_stretch > cfg.max_bond_stretch:
        reasons.append(f"bond_stretch {row.max_bond_stretch:.3g} > {cfg.max_bond_stretch}")
    lo, hi = target_k * (1 - cfg.temperature_tolerance), target_k * (1 + cfg.temperature_tolerance)
    if not lo <= row.temperature_mean_k <= hi:
        reasons.append(f"temperature {row.temperature_mean_k:.1f} K outside [{lo:.0f}, {hi:.0f}] K")
    row.stable = not reasons
    row.reason = "; ".join(reasons)
    return row


def write_report(rows: Sequence[StabilityRow], out_dir: str | Path, cfg: StabilityConfig, target_k: float) -> tuple[Path, Path]:
    """Write `stability.csv` and `stability.png` into out_dir (atomically); return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / "stability.csv", out_dir / "stability.png"
    names = [f.name for f in fields(StabilityRow)]
    tmp = csv_path.with_name(f".{csv_path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for r in rows:
            writer.writerow([getattr(r, n) for n in names])
    os.replace(tmp, csv_path)
    _plot(rows, png_path, cfg, target_k)
    return csv_path, png_path


def _plot(rows: Sequence[StabilityRow], path: Path, cfg: StabilityConfig, target_k: float) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    ids = [r.molecule_id for r in rows]
    colours = ["tab:blue" if r.stable else "tab:red" for r in rows]
    panels = [
        ("centre-of-mass drift (Å)", [r.com_drift_a for r in rows], cfg.max_com_drift_a),
        ("largest per-step motion (Å)", [r.max_step_motion_a for r in rows], cfg.max_step_a),
        ("largest bond stretch (ratio)", [r.max_bond_stretch for r in rows], cfg.max_bond_stretch),
        ("mean temperature (K)", [r.temperature_mean_k for r in rows], None),
    ]
    fig, axes = plt.subplots(4, 1, figsize=(max(6.0, 0.35 * len(rows) + 2), 11), sharex=True)
    x = np.arange(len(rows))
    for ax, (title, values, limit) in zip(axes, panels):
        ax.bar(x, values, color=colours)
        ax.set_ylabel(title, fontsize=8)
        if limit is not None:
            ax.axhline(limit, color="tab:red", ls="--", lw=1)
    tol = cfg.temperature_tolerance
    for level in (target_k * (1 - tol), target_k, target_k * (1 + tol)):
        axes[3].axhline(level, color="tab:red" if level != target_k else "grey", ls="--", lw=1)
    axes[-1].set_xticks(x, ids, rotation=75, fontsize=7)
    axes[0].set_title("TG80 stability (red: flagged)")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
