"""Hyperparameter sweeps and ablation studies of ATOM with Ray Tune, recorded in MLflow.

    parent, rows, figure = run_sweep(cfg, ablation_trials(), name="ablation")     # after ray.init
    parent, rows, figure = run_sweep(cfg, search_space(), name="search", num_samples=16, asha=True)

Every trial is an MLflow child run of the sweep's parent run. With `asha`, ASHA stops
trials whose validation S2T lags (their child runs end as KILLED, tagged
atomray.stopped_early). The sweep ends with a results table (CSV) and an ablation bar chart
(PNG) logged to the parent, whose `best_val_s2t` is the best trial's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from atomray import tracking
from atomray.config import RunConfig
from atomray.evaluate import FLOORS
from atomray.outputs import save_figure
from atomray.report import write_csv
from atomray.tune.runner import close_children, open_parent, run_trials, runs_table
from atomray.tune.space import ablation_label


def ablation_chart(rows: list[dict[str, Any]], path: Path, metric: str = "best_val_s2t") -> Path:
    """Bar chart of `metric` (×10⁻² Å²) per trial label, best first; the default model's bar
    is highlighted, and a black tick on each bar marks that trial's strongest physics floor
    on the same validation windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = sorted((r for r in rows if math.isfinite(r.get(metric, math.nan))), key=lambda r: r[metric])
    labels = [r["label"] for r in done]
    values = [100 * r[metric] for r in done]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(done) + 1.5))
    colours = ["tab:orange" if lab == "default" else "tab:blue" for lab in labels]
    ax.barh(range(len(done)), values, color=colours)
    ax.set_yticks(range(len(done)), labels, fontsize=8)
    ax.invert_yaxis()
    log = bool(values) and max(values) > 10 * min(values)  # one failed setting must not flatten the rest
    if log:
        ax.set_xscale("log")
    if values:  # room for the labels at the bars' ends
        ax.set_xlim(right=max(values) * (4 if log else 1.3))
    ax.set_xlabel(f"{metric.replace('best_', 'best ')} (x1e-2 A^2, lower is better{', log scale' if log else ''})")
    for i, r in enumerate(done):
        note = "  stopped early" if r.get("status") == "KILLED" else ""
        floors = {f: r[f"val_s2t_{f}"] for f in FLOORS if f"val_s2t_{f}" in r}
        if floors:  # each trial's strongest floor on its own validation windows
            name = min(floors, key=floors.get)
            ax.plot([100 * floors[name]] * 2, [i - 0.4, i + 0.4], color="k", lw=1.5)
            if i == 0:
                ax.text(100 * floors[name], -0.6, f"strongest floor ({name})", fontsize=7, ha="center")
            if metric.endswith("val_s2t") and floors[name] > 0:
                note = f"  {r[metric] / floors[name]:.2f}x{note}"
        ax.text(values[i], i, f"  {values[i]:.3g}{note}", va="center", fontsize=7)
    ax.set_title("ATOM ablations / trials")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return path


def run_sweep(cfg: RunConfig, trials: list[dict[str, Any]] | dict[str, Any], name: str = "sweep", *,
              num_samples: int = 1, asha: bool = False, grace_period: int = 1, max_concurrent: int = 0,
              out_dir: str | Path | None = None) -> tuple[str, list[dict[str, Any]], Path]:
    """Run a sweep (a list of override dicts, or a Tune search space); returns (parent run
    id, results rows, chart path). `cfg` must be resolved (`atomray.train.pretrain.resolve`)."""
    scheduler = None
    if asha:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(metric="val_s2t", mode="min", time_attr="training_iteration",
                                  max_t=cfg.train.epochs, grace_period=grace_period, reduction_factor=2)
    if isinstance(trials, list):
        trials = [{"overrides": t, "label": ablation_label(t)} for t in trials]
    uri = cfg.tracking.tracking_uri
    parent = open_parent(cfg, "sweep", name, {"sweep.trials": str(len(trials) if isinstance(trials, list) else num_samples)})
    status = "FAILED"
    try:
        run_trials(cfg, trials, name, parent, num_samples=num_samples, scheduler=scheduler,
                   max_concurrent=max_concurrent)
        status = "FINISHED"
    finally:
        close_children(uri, parent)
        rows = runs_table(uri, parent)
        for r in rows:
            r["label"] = ablation_label({k: v for k, v in r.items() if "." in k}) if isinstance(trials, list) else r["name"]
        out = Path(out_dir or Path(cfg.storage_path) / name)
        out.mkdir(parents=True, exist_ok=True)
        table = write_csv(sorted(rows, key=lambda r: r.get("best_val_s2t", math.inf)), out / "results.csv") if rows else None
        chart = ablation_chart(rows, out / "ablation.png")
        c = tracking.client(uri)
        if table is not None:
            c.log_artifact(parent, str(table), "sweep")
        c.log_artifact(parent, str(chart), "sweep")
        finite = [r["best_val_s2t"] for r in rows if math.isfinite(r.get("best_val_s2t", math.nan))]
        if finite:
            c.log_metric(parent, "best_val_s2t", min(finite))
        c.set_terminated(parent, status)
    return parent, rows, chart
