"""Five-fold UMAP-cluster cross-validation (paper §4.2, Table 3), one MLflow parent run with a
child run per fold (and per repeat).

Fold f holds out clusters {2f, 2f+1} for testing (out-of-domain, OOD) and {2f+2, 2f+3} for
validation; the other six clusters train, on the first 80 % of each trajectory. The
in-distribution (ID) test uses the training molecules' last 10 %. Every fold reports test
S2T / S2S, ID and OOD, at its best-validation-S2S epoch; the parent gets the summary table
(mean ± 2σ over repeats per fold, as the paper's Table 3) as metrics and artifacts.

    parent, rows, table = run_cv(resolve(cfg), name="cv-atom")        # after ray.init
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from atomray import tracking
from atomray.config import RunConfig
from atomray.data.splits import Split, default_eval_sets, make_split, usable_molecules, with_training_range
from atomray.evaluate import FLOORS, comparison
from atomray.report import write_csv
from atomray.tune.runner import open_parent, run_trials, runs_table

TRAIN_FRACTION = (0.0, 0.8)
METRICS = {"ID S2T": "best_test_id_s2t", "OOD S2T": "best_test_s2t", "ID S2S": "best_test_id_s2s",
           "OOD S2S": "best_test_s2s",
           # the physics floors on the same test windows (atomray.evaluate): what the model must beat
           **{f"{kind} S2T {floor}": f"test{suffix}_s2t_{floor}" for floor in FLOORS
              for kind, suffix in (("OOD", ""), ("ID", "_id"))}}


@dataclasses.dataclass(frozen=True)
class FoldInputs:
    """`prepare` for the fold trials: each fold's split (computed once on the driver, shipped
    with the trainable rather than in the trial's parameters, which Tune prints in full in
    its status lines) and its evaluation sets."""

    splits: dict[int, dict[str, Any]]

    def __call__(self, cfg: RunConfig, trial: dict[str, Any]) -> dict[str, Any]:
        split = Split.from_dict(self.splits[int(trial["overrides"]["data.fold"])])
        return {"split": split, "eval_sets": default_eval_sets(split, cfg.data, in_distribution=True)}


def fold_splits(cfg: RunConfig, folds: Sequence[int]) -> dict[int, Split]:
    """Each fold's split, training on the first 80 % of every trajectory (one UMAP for all)."""
    molecules = usable_molecules(cfg.data)
    ids, smiles = molecules.column("molecule_id").to_pylist(), molecules.column("smiles").to_pylist()
    return {f: with_training_range(make_split(ids, smiles, dataclasses.replace(cfg.data, fold=f)), TRAIN_FRACTION)
            for f in folds}


def summarise(rows: Sequence[dict[str, Any]], folds: Sequence[int]) -> list[dict[str, Any]]:
    """Per metric: per fold mean and 2σ over repeats (×10⁻² Å²), and the mean over folds."""
    table = []
    for label, key in METRICS.items():
        row: dict[str, Any] = {"metric": label}
        means = []
        for f in folds:
            values = np.array([100 * r[key] for r in rows if int(r.get("data.fold", -1)) == f and key in r
                               and math.isfinite(r[key])])
            if len(values):
                mean = float(values.mean())
                row[f"fold {f}"] = f"{mean:.2f}" + (f" ± {2 * values.std(ddof=1):.2f}" if len(values) > 1 else "")
                row[f"fold {f} mean"] = mean
                means.append(mean)
            else:
                row[f"fold {f}"] = "n/a"
        row["mean over folds"] = float(np.mean(means)) if means else math.nan
        table.append(row)
    return table


def per_fold_verdict(table: list[dict[str, Any]], folds: Sequence[int], kind: str) -> str:
    """How the model fares against each fold's own strongest floor (a mean can hide a fold
    where a floor wins)."""
    model = next(r for r in table if r["metric"] == f"{kind} S2T")
    floors = [r for r in table if r["metric"].startswith(f"{kind} S2T ")]
    parts, wins, scored = [], 0, 0
    for f in folds:
        value = model.get(f"fold {f} mean")
        present = [(r["metric"].split()[-1], r[f"fold {f} mean"]) for r in floors if f"fold {f} mean" in r]
        if value is None or not present:
            continue
        name, floor = min(present, key=lambda nv: nv[1])
        ratio = value / floor if floor > 0 else math.inf
        scored += 1
        wins += comparison(ratio) == "beats"
        parts.append(f"fold {f} {ratio:.2f}x {name}")
    return f"per fold, against that fold's strongest floor: beats it on {wins} of {scored} ({'; '.join(parts)})"


def markdown(table: list[dict[str, Any]], folds: Sequence[int], model: str, cfg: RunConfig,
             splits: dict[int, Split]) -> str:
    """The Table-3 style summary; `splits` (fold → Split, as `fold_splits` gives) names each
    fold's molecules."""
    head = "| metric (x1e-2 A^2) | " + " | ".join(f"fold {f}" for f in folds) + " | mean |"
    lines = [f"Cross-validation of `{model}` on `{cfg.data.path}` (UMAP clusters: {cfg.data.num_clusters}, "
             f"folds: {cfg.data.num_folds}; mean ± 2σ over repeats where there are several)", "", head,
             "|" + "---|" * (len(folds) + 2)]
    for row in table:
        lines.append(f"| {row['metric']} | " + " | ".join(row.get(f"fold {f}", "n/a") for f in folds)
                     + f" | {row['mean over folds']:.2f} |")
    lines.append("")
    for kind in ("OOD", "ID"):
        model = next(r for r in table if r["metric"] == f"{kind} S2T")["mean over folds"]
        floors = [(r["metric"].split()[-1], r["mean over folds"]) for r in table
                  if r["metric"].startswith(f"{kind} S2T ") and math.isfinite(r["mean over folds"])]
        if floors and math.isfinite(model):
            name, value = min(floors, key=lambda nv: nv[1])
            lines.append(f"- {kind}: mean S2T {model:.3f} = {model / value:.2f}x the strongest floor ({name} "
                         f"{value:.3f}): the model {comparison(model / value)} it")
            lines.append(f"  {per_fold_verdict(table, folds, kind)}")
    lines.append("")
    for f in folds:  # the molecules say more than cluster numbers (stored folds have none)
        lines.append(f"- fold {f}: test {', '.join(splits[f].test)}; validation {', '.join(splits[f].val)}")
    return "\n".join(lines) + "\n"


def run_cv(cfg: RunConfig, folds: Sequence[int] | None = None, repeats: int = 1, name: str = "cv",
           max_concurrent: int = 0, out_dir: str | Path | None = None) -> tuple[str, list[dict], list[dict]]:
    """Cross-validate `cfg` (resolved); returns (parent run id, child rows, summary table)."""
    folds = list(range(cfg.data.num_folds)) if folds is None else list(folds)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, split="umap_cluster"))
    splits = fold_splits(cfg, folds)
    trials = [{"overrides": {"data.fold": f, "train.seed": cfg.train.seed + r}, "label": f"fold{f}-repeat{r}"}
              for f in folds for r in range(repeats)]
    uri = cfg.tracking.tracking_uri
    parent = open_parent(cfg, "cv", name, {"cv.model": cfg.model.name, "cv.folds": str(folds),
                                             "cv.repeats": str(repeats)})
    status = "FAILED"
    try:
        run_trials(cfg, trials, name, parent, prepare=FoldInputs({f: s.to_dict() for f, s in splits.items()}),
                   max_concurrent=max_concurrent)
        status = "FINISHED"
    finally:
        rows = runs_table(uri, parent)
        table = summarise(rows, folds)
        out = Path(out_dir or Path(cfg.storage_path) / name)
        out.mkdir(parents=True, exist_ok=True)
        c = tracking.client(uri)
        if rows:
            c.log_artifact(parent, str(write_csv(rows, out / "cv_runs.csv")), "cv")
        c.log_artifact(parent, str(write_csv(table, out / "cv_summary.csv")), "cv")
        (out / "cv_summary.md").write_text(markdown(table, folds, cfg.model.name, cfg, splits))
        c.log_artifact(parent, str(out / "cv_summary.md"), "cv")
        for row in table:
            key = row["metric"].lower().replace(" ", "_")
            for f in folds:
                if f"fold {f} mean" in row:
                    c.log_metric(parent, f"fold{f}_{key}", row[f"fold {f} mean"])
            if math.isfinite(row["mean over folds"]):
                c.log_metric(parent, f"mean_{key}", row["mean over folds"])
        c.set_terminated(parent, status)
    return parent, rows, table
