"""The record of an evaluation (`atomray.evaluate`): CSV rows, the markdown tables a person
reads, the S2T-against-ΔT plot, and the MLflow run that keeps them.

    rows, _ = evaluate_dataset(model, cfg, "data/tg80-mini")
    write_evaluation(rows, "eval/", title)   # evaluation.csv, evaluation.md, s2t_vs_dt.png
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

from atomray.evaluate import FLOORS, PREDICTORS
from atomray.outputs import remove_made_dirs, save_figure


def log_evaluation(uri: str, experiment: str, params: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                   files: Sequence[Path]) -> str:
    """One MLflow run in `experiment`: `params`, the mean S2T of the model and every floor and
    their ratio per P and ΔT as metrics (`s2t_P8_dt100fs`, `s2t_rigid_all_P8_dt100fs`,
    `ratio_strongest_P8_dt100fs`, ...) and `files` as artifacts. Returns the run id."""
    from atomray import tracking

    c = tracking.client(uri)
    run_id = c.create_run(tracking.experiment_id(c, experiment), run_name=f"eval-{params.get('model_name', '')}",
                          tags={tracking.TAG_KIND: "evaluate"}).info.run_id
    try:
        tracking.log_params(c, run_id, dict(params))
        for r in (r for r in rows if r["molecule_id"] == "mean"):
            tag = f"P{r['num_lags']}_dt{r['horizon_fs']:g}fs"
            for name in PREDICTORS:
                if f"{name}_s2t" in r:
                    c.log_metric(run_id, f"s2t_{tag}" if name == "model" else f"s2t_{name}_{tag}", r[f"{name}_s2t"])
            if "ratio_strongest" in r:
                c.log_metric(run_id, f"ratio_strongest_{tag}", r["ratio_strongest"])
        for f in files:
            c.log_artifact(run_id, str(f))
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
    c.set_terminated(run_id, "FINISHED")
    return run_id


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    import csv

    path = Path(path)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


def markdown(rows: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """Tables a person reads: per number of lags, the mean over molecules per ΔT (model, every
    floor, model / strongest floor), then model and floors per molecule (S2T, ×10⁻² Å²)."""
    lines = [f"# {title}" if title else "# Evaluation", "",
             "S2T = mean squared error over the P lags, the scored atoms and xyz, in 10^-2 A^2. "
             "Floors: no_motion x0; linear x0 + v0 dt; rigid_heavy / rigid_all the rigid-body motion "
             "at constant w = I^-1 L (centre of mass drift, rotation exp(w dt)) told by the heavy atoms / "
             "all atoms; rotor_all the exact torque-free rigid-body motion (L conserved) of all atoms; "
             "relaxed_all rotor_all moved a fraction 1 - exp(-dt / 250 fs) toward the nearest (GFN2-xTB) minimum; "
             "harmonic_all rotor_all plus the GFN2-xTB normal-mode vibration about that minimum, damped with "
             "tau = 1000 fs; mmff_md classical MMFF94 molecular dynamics from x0 and v0; anharmonic_all "
             "harmonic_all + exp(-dt / 150 fs) (mmff_md - harmonic_all). "
             "model_rotated: the model on the same windows, each turned by a random rotation (the gap to "
             "model measures orientation memorisation; floors are unchanged by it).", ""]
    has_model = any("model_s2t" in r for r in rows)
    cols = (["model", "model_rotated"] if has_model else []) + list(FLOORS)
    for p in sorted({r["num_lags"] for r in rows}):
        group = [r for r in rows if r["num_lags"] == p]
        lines += [f"## P = {p} lags: mean over molecules", "",
                  "| dT (fs) | " + " | ".join(cols) + (" | model / strongest floor |" if has_model else " |"),
                  "|" + "---|" * (len(cols) + 1 + has_model)]
        for r in (r for r in group if r["molecule_id"] == "mean"):
            cells = [f"{100 * r[c + '_s2t']:.3f}" for c in cols]
            tail = f" | {r['ratio_strongest']:.2f} ({r['strongest_floor']})" if has_model else ""
            lines.append(f"| {r['horizon_fs']:g} | " + " | ".join(cells) + tail + " |")
        lines += ["", f"## P = {p} lags: per molecule", "",
                  "| molecule | dT (fs) | windows | " + " | ".join(cols) + (" | model / strongest |" if has_model else " |"),
                  "|" + "---|" * (len(cols) + 3 + has_model)]
        for r in (r for r in group if r["molecule_id"] != "mean"):
            cells = [f"{100 * r[c + '_s2t']:.3f}" for c in cols]
            tail = f" | {r['ratio_strongest']:.2f}" if has_model else ""
            lines.append(f"| {r['molecule_id']} | {r['horizon_fs']:g} | {r['windows']} | " + " | ".join(cells) + tail + " |")
        lines.append("")
    return "\n".join(lines)


def plot_s2t_vs_dt(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Log–log S2T against ΔT: per number of lags one panel; the model per molecule (thin) and
    its mean (thick), each floor's mean (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lag_counts = sorted({r["num_lags"] for r in rows})
    fig, axes = plt.subplots(1, len(lag_counts), figsize=(5.5 * len(lag_counts), 4.5), squeeze=False)
    colours = {"no_motion": "tab:grey", "linear": "tab:purple", "rigid_heavy": "tab:orange", "rigid_all": "tab:red",
               "rotor_all": "tab:green", "relaxed_all": "tab:brown",
               "harmonic_all": "tab:cyan", "mmff_md": "tab:olive", "anharmonic_all": "tab:pink"}
    for ax, p in zip(axes[0], lag_counts):
        group = [r for r in rows if r["num_lags"] == p]
        mean = sorted((r for r in group if r["molecule_id"] == "mean"), key=lambda r: r["horizon_fs"])
        dts = [r["horizon_fs"] for r in mean]
        if any("model_s2t" in r for r in group):
            for mid in sorted({r["molecule_id"] for r in group} - {"mean"}):
                mol = sorted((r for r in group if r["molecule_id"] == mid), key=lambda r: r["horizon_fs"])
                ax.plot([r["horizon_fs"] for r in mol], [100 * r["model_s2t"] for r in mol], color="tab:blue",
                        alpha=0.25, lw=0.8)
            ax.plot(dts, [100 * r["model_s2t"] for r in mean], color="tab:blue", lw=2.5, marker="o", label="model (mean)")
        for f in FLOORS:
            ax.plot(dts, [100 * r[f"{f}_s2t"] for r in mean], color=colours[f], ls="--", marker=".", label=f)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("horizon dT (fs)")
        ax.set_ylabel("S2T (x1e-2 A^2)")
        ax.set_title(f"P = {p} lags (thin: model per molecule)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=120)
    return path


def write_evaluation(rows: Sequence[Mapping[str, Any]], out: str | Path, title: str = "") -> list[Path]:
    """evaluation.csv, evaluation.md and s2t_vs_dt.png in directory `out`, all three or none:
    each is written under a temporary name and renamed once all exist; on failure the
    temporaries and any directory made for them are removed. Returns the three paths."""
    out = Path(out)
    made = [d for d in (out, *out.parents) if not d.exists()]
    final = [out / "evaluation.csv", out / "evaluation.md", out / "s2t_vs_dt.png"]
    tmp = [out / f".{uuid.uuid4().hex[:8]}.{f.name}" for f in final]  # the suffix picks the plot's format
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(rows, tmp[0])
        tmp[1].write_text(markdown(rows, title))
        plot_s2t_vs_dt(rows, tmp[2])
        for t, f in zip(tmp, final):
            os.replace(t, f)
    except BaseException:
        for t in tmp:
            t.unlink(missing_ok=True)
        remove_made_dirs(made)  # innermost first: undo our mkdir -p
        raise
    return final
