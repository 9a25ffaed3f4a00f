"""Data- and compute-scaling curves: does pretraining on more molecules pay on molecules no model saw?

    python jobs/scaling.py --data data/tg80 --out scaling/                       # the whole grid
    python jobs/scaling.py --data data/tg80 --out scaling/ --models atom --sizes 10 0 --dry-run
    python jobs/scaling.py --data data/tg80 --out scaling/ --compute 1 3 10      # + compute at the largest size
    python jobs/scaling.py --data data/tg80 --out scaling/ --compute 1 3 10 --report   # the points done so far

The held-out molecules (--holdout, default 10) are whole clusters of the data set's molecules
(ECFP-4 UMAP + Ward, `atomray.data.splits.cluster_molecules`, --clusters): clusters are taken
in a seeded order, each only if it still fits, until exactly --holdout molecules are out, so
they are unlike every training molecule. They are the same for every point. The rest form the pool; a
seeded order of the pool makes the training sets nested (the first 10 are inside the first 20,
...; size 0 means the whole pool).

Each point trains `jobs/pretrain.py --config <--config>` on its molecules with `data.split=all`
(every molecule trains, on the first 90 % of its frames; validation on the rest). An epoch is
`data.train_windows` windows whatever the molecule count, so every size takes the same number of
optimiser steps; --compute k multiplies the epochs by k at the largest size. Then
`jobs/evaluate.py` scores the best checkpoint on the held-out molecules at --horizons-fs beside the
physics floors on the same windows. Two seeds at the smallest and largest sizes (--seeds), one
elsewhere.

Resumable: a point whose checkpoint or evaluation exists is not run again, so a killed grid
continues where it stopped. Writes to --out: heldout.json (the held-out and pool molecules, in
order), runs/<point>/ (checkpoints), eval/<point>/ (evaluation.csv, ...), scaling.csv (one row
per point and ΔT: model S2T, each floor's, and model ÷ floor), scaling.png (model ÷ strongest
floor and ÷ harmonic_all against the number of training molecules, a panel per ΔT) and
verdict.txt (also printed: per ΔT ATOM's best compute point at the largest size against the
strongest floor and EGNO, the trend over sizes and the molecule count it would need to reach 0.9×;
then whether the targets hold).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Point(NamedTuple):
    model: str
    size: int  # training molecules
    seed: int
    compute: int  # epochs multiplier

    @property
    def name(self) -> str:
        return f"{self.model}-n{self.size}-s{self.seed}-x{self.compute}"


def choose_heldout(ids: list[str], smiles: list[str], n: int, clusters: int, seed: int) -> list[str]:
    """n molecules made of whole clusters: clusters taken in a seeded order, each only if it still
    fits, in the first of the seeded orders whose clusters add up to exactly n."""
    import numpy as np

    from atomray.data.frames import DataError
    from atomray.data.splits import cluster_molecules

    of = cluster_molecules(ids, smiles, clusters, seed)
    groups = {c: sorted(m for m in ids if of[m] == c) for c in set(of.values())}
    rng = np.random.default_rng(seed)
    for _ in range(1000):  # seeded orders until one adds up to exactly n
        out: list[str] = []
        for c in rng.permutation(sorted(groups)):
            if len(out) + len(groups[int(c)]) <= n:
                out += groups[int(c)]
        if len(out) == n:
            return sorted(out)
    sizes = sorted(len(g) for g in groups.values())
    raise DataError(f"no set of whole clusters makes {n} held-out molecules (cluster sizes {sizes}); "
                    f"choose another --holdout or --clusters")


def plan(sizes: list[int], pool: int, models: list[str], seeds: int, compute: list[int]) -> list[Point]:
    """Every point of the grid; size 0 is the whole pool."""
    from atomray.config import ConfigError

    sizes = sorted({pool if s == 0 else s for s in sizes})
    if sizes[-1] > pool or sizes[0] < 1:
        raise ConfigError(f"--sizes must be in 1..{pool} (the pool) or 0 (all), found {sizes}")
    points = []
    for model in models:
        for size in sizes:
            ends = size in (sizes[0], sizes[-1])
            for seed in range(seeds if ends else 1):
                points.append(Point(model, size, seed, 1))
        points += [Point(model, sizes[-1], 0, k) for k in compute if k != 1]
    return points


def run(cmd: list[str], log: Path) -> None:
    """Run a job script to completion, its output to `log`; a failure names the command and log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        status = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if status:
        tail = log.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {status}; see {log}:\n" + "\n".join(tail))


def mean_rows(path: Path, num_lags: int) -> list[dict]:
    with open(path) as fh:
        return [r for r in csv.DictReader(fh) if r["molecule_id"] == "mean" and int(r["num_lags"]) == num_lags]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the data set (e.g. a --preset tg80 build)")
    parser.add_argument("--out", required=True, help="output directory; rerun to resume")
    parser.add_argument("--config", default=str(ROOT / "jobs/configs/pretrain.yaml"), help="training config")
    parser.add_argument("--models", nargs="+", default=["atom", "egno"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10, 20, 40, 0], help="training molecules (0: all)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds at the smallest and largest size (default 2)")
    parser.add_argument("--compute", nargs="+", type=int, default=[1], help="epoch multipliers at the largest size")
    parser.add_argument("--holdout", type=int, default=10, help="held-out molecules, whole clusters (default 10)")
    parser.add_argument("--clusters", type=int, default=10, help="clusters of the held-out choice (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out choice and the pool order")
    parser.add_argument("--horizons-fs", nargs="+", type=float, default=[25.0, 100.0, 400.0, 1000.0])
    parser.add_argument("--windows", type=int, default=200, help="evaluation windows per molecule and ΔT")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every training")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--report", action="store_true",
                        help="write the table, plot and verdict of the points already done; train nothing")
    args = parser.parse_args(argv)

    import numpy as np

    from atomray.config import ConfigError, load_config
    from atomray.data.frames import DataError
    from atomray.data.splits import usable_molecules
    from atomray.storage import StorageError

    out = Path(args.out)
    try:
        cfg = load_config(args.config, [f"data.path={args.data}", *args.set])
        table = usable_molecules(dataclasses.replace(cfg.data, molecules=()))
        ids, smiles = table.column("molecule_id").to_pylist(), table.column("smiles").to_pylist()
        heldout = choose_heldout(ids, smiles, args.holdout, args.clusters, args.seed)
        rest = [m for m in ids if m not in heldout]
        pool = [rest[i] for i in np.random.default_rng(args.seed).permutation(len(rest))]
        points = plan(args.sizes, len(pool), args.models, args.seeds, args.compute)
    except (ConfigError, DataError, StorageError) as err:
        print(f"scaling: error: {err}", file=sys.stderr)
        return 2
    print(f"scaling: {len(ids)} molecules in {args.data}; held out ({len(heldout)}): {', '.join(heldout)}")
    print(f"{len(points)} points: " + ", ".join(p.name for p in points), flush=True)
    if args.dry_run:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    (out / "heldout.json").write_text(json.dumps({"heldout": heldout, "pool": pool, "seed": args.seed}, indent=1))

    rows = []
    for i, p in enumerate(points, 1):
        t0 = time.perf_counter()
        best, evaluation = out / "runs" / p.name / "best", out / "eval" / p.name / "evaluation.csv"
        if args.report and not evaluation.is_file():
            print(f"[{i}/{len(points)}] {p.name}: not done", flush=True)
            continue
        if not best.is_dir():
            run([sys.executable, "jobs/pretrain.py", "--config", args.config, f"data.path={args.data}",
                 f"model.name={p.model}", f"data.molecules={pool[: p.size]}", "data.split=all",
                 f"train.seed={p.seed}", f"train.epochs={cfg.train.epochs * p.compute}", f"name={p.name}",
                 f"storage_path={out / 'runs'}", *args.set], out / "logs" / f"{p.name}.train.log")
        if not evaluation.is_file():
            run([sys.executable, "jobs/evaluate.py", "--model", str(best), "--data", args.data, "--molecules", *heldout,
                 "--horizons-fs", *map(str, args.horizons_fs), "--windows", str(args.windows),
                 "--num-lags", str(cfg.data.num_lags), "--no-mlflow",
                 "--out", str(evaluation.parent)], out / "logs" / f"{p.name}.eval.log")
        for r in mean_rows(evaluation, cfg.data.num_lags):
            floors = {k[: -len("_s2t")]: float(v) for k, v in r.items()
                      if k.endswith("_s2t") and not k.startswith("model")}
            model = float(r["model_s2t"])
            rows.append({"model": p.model, "molecules": p.size, "seed": p.seed, "compute": p.compute,
                         "horizon_fs": float(r["horizon_fs"]), "model_s2t": model, **{f"{f}_s2t": v for f, v in floors.items()},
                         "strongest_floor": r["strongest_floor"], "ratio_strongest": float(r["ratio_strongest"]),
                         **{f"ratio_{f}": model / v for f, v in floors.items() if v > 0}})
        print(f"[{i}/{len(points)}] {p.name}: " + ", ".join(
            f"{r['horizon_fs']:g} fs {r['ratio_strongest']:.2f}x {r['strongest_floor']}" for r in rows if
            (r["model"], r["molecules"], r["seed"], r["compute"]) == (p.model, p.size, p.seed, p.compute))
            + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not rows:
        print(f"scaling: error: {out}: no point of the plan is done yet; run it without --report", file=sys.stderr)
        return 2
    with open(out / "scaling.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "scaling.png")
    lines = verdict(rows)
    (out / "verdict.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'scaling.csv'}, {out / 'scaling.png'} and {out / 'verdict.txt'}")
    return 0


def verdict(rows: list[dict], model: str = "atom", rival: str = "egno", floor_target: float = 0.9,
            rival_target: float = 0.8) -> list[str]:
    """Issue 32's test, one line per ΔT and a last line: at the largest size, `model`'s best compute
    point (seeds averaged) against the strongest floor and against `rival`'s compute-1 point at that
    size; and the trend of model ÷ strongest floor over the compute-1 sizes (a power law
    fitted in log-log) with the molecule count at which it would reach `floor_target`."""
    import numpy as np

    def mean_of(key: str, pick) -> float:
        return float(np.mean([r[key] for r in rows if pick(r)]))

    mine = [r for r in rows if r["model"] == model]
    if not mine:
        return [f"no {model} points: no verdict"]
    largest = max(r["molecules"] for r in mine)
    lines, holds = [], True
    for h in sorted({r["horizon_fs"] for r in mine}):
        at = [r for r in mine if r["horizon_fs"] == h]
        computes = sorted({r["compute"] for r in at if r["molecules"] == largest})
        best_k = min(computes, key=lambda k: mean_of("model_s2t", lambda r: r in at and r["molecules"] == largest
                                                     and r["compute"] == k))
        best = [r for r in at if r["molecules"] == largest and r["compute"] == best_k]
        s2t, ratio = mean_of("model_s2t", best.__contains__), mean_of("ratio_strongest", best.__contains__)
        line = f"{h:g} fs: {model} {ratio:.2f}x the strongest floor ({best[0]['strongest_floor']}) at {largest} molecules"
        line += f" (compute {best_k}x)"
        theirs = [r for r in rows if r["model"] == rival and r["horizon_fs"] == h and r["molecules"] == largest
                  and r["compute"] == 1]
        against = s2t / mean_of("model_s2t", theirs.__contains__) if theirs else None
        line += f", {against:.2f}x {rival}" if against is not None else f", no {rival} point"
        sizes = sorted({r["molecules"] for r in at if r["compute"] == 1})
        if len(sizes) >= 2:
            ys = [np.log(mean_of("ratio_strongest", lambda r: r in at and r["compute"] == 1 and r["molecules"] == n))
                  for n in sizes]
            slope, icept = np.polyfit(np.log(sizes), ys, 1)
            line += f"; trend ∝ n^{slope:+.2f}"
            if ratio <= floor_target:
                pass
            elif slope < -1e-3 and (need := np.exp((np.log(floor_target) - icept) / slope)) < 1e5:
                line += f", {floor_target}x at ~{need:.3g} molecules"
            elif slope < -1e-3:
                line += f", {floor_target}x beyond 10^5 molecules"
            else:
                line += f", flat or rising: no molecule count reaches {floor_target}x"
        holds &= ratio <= floor_target and against is not None and against <= rival_target
        lines.append(line)
    lines.append(f"{'holds' if holds else 'falls short'}: {model} ≤ {floor_target}x the strongest floor and "
                 f"≤ {rival_target}x {rival} at every ΔT at the largest size")
    return lines


def plot(rows: list[dict], path: Path) -> Path:
    """Model ÷ strongest floor (solid) and ÷ harmonic_all (dashed) against training molecules,
    a panel per ΔT, a colour per model, lines through the seeds' mean with each seed as a dot
    where a size has several; compute points as open markers at the largest size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from atomray.outputs import save_figure

    horizons = sorted({r["horizon_fs"] for r in rows})
    fig, axes = plt.subplots(1, len(horizons), figsize=(4.2 * len(horizons), 3.8), squeeze=False)
    for ax, h in zip(axes[0], horizons):
        for colour, model in zip(("tab:blue", "tab:orange", "tab:green"), sorted({r["model"] for r in rows})):
            mine = [r for r in rows if r["horizon_fs"] == h and r["model"] == model]
            base = [r for r in mine if r["compute"] == 1]
            sizes = sorted({r["molecules"] for r in base})
            for key, style in (("ratio_strongest", "o-"), ("ratio_harmonic_all", "s--")):
                ys = [np.mean([r[key] for r in base if r["molecules"] == n]) for n in sizes]
                ax.plot(sizes, ys, style, color=colour, label=f"{model} / {'strongest' if key == 'ratio_strongest' else 'harmonic_all'}")
                seeds = [r for r in base if sum(q["molecules"] == r["molecules"] for q in base) > 1]
                ax.plot([r["molecules"] for r in seeds], [r[key] for r in seeds], ".", ms=4, alpha=0.6, color=colour)
            for r in mine:
                if r["compute"] != 1:
                    ax.plot(r["molecules"], r["ratio_strongest"], "o", mfc="none", color=colour)
                    ax.annotate(f"{r['compute']}x", (r["molecules"], r["ratio_strongest"]), fontsize=7)
        ax.axhline(1.0, color="grey", lw=1.0)
        ax.set_xscale("log")
        ax.minorticks_off()
        sizes = sorted({r["molecules"] for r in rows})
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("training molecules")
        ax.set_title(f"ΔT = {h:g} fs", fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("S2T model / floor (held-out molecules)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
