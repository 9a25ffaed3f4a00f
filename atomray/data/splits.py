"""Which molecules (and which time ranges) train, validate and test a run.

Kinds (`DataConfig.split`):

- `umap_cluster` — the paper's out-of-domain protocol (§4.2): ECFP-4 fingerprints (Morgan
  radius 2, 2048 bits) → UMAP (Jaccard metric, seeded) → Ward agglomerative clustering into
  `num_clusters` (10) clusters → `num_folds` (5) folds. Fold f tests on clusters
  {2f, 2f+1}, validates on clusters {2f+2, 2f+3} (mod 10) and trains on the other six, so
  the three molecule sets occupy disjoint regions of chemical space. Clusters are numbered by
  size (largest first), ties by smallest molecule id, so numbering is reproducible.
- `random` — a seeded molecule-level split, 60 / 20 / 20 per fold (fold f rotates the
  test/validation blocks).
- `in_distribution` — the same molecules everywhere, disjoint time ranges: windows for
  training from the first 80 % of each trajectory, validation from 80–90 %, test from 90–100 %.
- `all` — every molecule trains and validates (time-disjoint like `in_distribution`); for a
  single-molecule data set or a final fit.

`make_split` returns a `Split`; `split_table` turns it into a table saved with every run.
Molecules without SMILES (imported MD files) cannot be fingerprinted; a cluster split then
raises an error naming them.

Stored folds. UMAP's embedding is not the same on every machine (numba compiles it for the
host CPU; the same packages gave other tg80-mini folds on two machines), so the folds a data
set's figures were measured on live with it: `<data.path>/cv_folds.json` (`FOLDS_FILE`) holds
the molecule groups fold f tests on (it validates on group f + 1, trains on the rest), for one
(split_seed, num_clusters, num_folds) and one molecule set. `umap_cluster` uses it whenever all
of these match, and computes UMAP otherwise (saying why). Write one for a data set with
`python -m atomray.data.splits DATA_DIR`.
"""

from __future__ import annotations

import argparse
import functools
import json
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from atomray import storage
from atomray.config import DataConfig
from atomray.data.frames import DataError
from atomray.data.dataset import read_molecules
from atomray.outputs import save_figure

FOLDS_FILE = "cv_folds.json"
FULL = (0.0, 1.0)
ID_RANGES = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}


@dataclass(frozen=True)
class Split:
    """Molecule ids per role and the fraction of each trajectory a role may use."""

    kind: str
    fold: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    ranges: dict[str, tuple[float, float]] = field(default_factory=lambda: {"train": FULL, "val": FULL, "test": FULL})
    clusters: dict[str, int] = field(default_factory=dict)
    embedding: dict[str, tuple[float, float]] = field(default_factory=dict)  # UMAP coordinates

    def to_dict(self) -> dict:
        return {"kind": self.kind, "fold": self.fold, "train": list(self.train), "val": list(self.val),
                "test": list(self.test), "ranges": {k: list(v) for k, v in self.ranges.items()},
                "clusters": dict(self.clusters), "embedding": {k: list(v) for k, v in self.embedding.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        return cls(d["kind"], int(d["fold"]), tuple(d["train"]), tuple(d["val"]), tuple(d["test"]),
                   {k: (float(v[0]), float(v[1])) for k, v in d["ranges"].items()},
                   {k: int(v) for k, v in d.get("clusters", {}).items()},
                   {k: (float(v[0]), float(v[1])) for k, v in d.get("embedding", {}).items()})


def ecfp4(smiles: Sequence[str], n_bits: int = 2048) -> np.ndarray:
    """(M, n_bits) bool Morgan fingerprints, radius 2 (ECFP-4)."""
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=n_bits)
    out = np.zeros((len(smiles), n_bits), dtype=bool)
    for i, smi in enumerate(smiles):
        mol = Chem.MolFromSmiles(smi) if smi else None
        if mol is None:
            raise DataError(f"cannot fingerprint SMILES {smi!r} (molecule #{i})")
        out[i] = gen.GetFingerprintAsNumPy(mol).astype(bool)
    return out


def umap_embedding(fingerprints: np.ndarray, seed: int) -> np.ndarray:
    """(M, 2) UMAP embedding of bit fingerprints with the Jaccard (= Tanimoto) metric."""
    import warnings

    import umap

    n = len(fingerprints)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=2, metric="jaccard", random_state=seed,
                            n_neighbors=max(2, min(15, n - 1)), min_dist=0.1, init="random")
        return reducer.fit_transform(fingerprints.astype(np.float32))


def ward_clusters(embedding: np.ndarray, n_clusters: int, ids: Sequence[str]) -> np.ndarray:
    """Ward agglomerative clusters, renumbered by size (largest 0) then by first molecule id."""
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(n_clusters=n_clusters, linkage="ward").fit_predict(embedding)
    keys = sorted(set(labels), key=lambda c: (-int(np.sum(labels == c)), min(i for i, l in zip(ids, labels) if l == c)))
    renumber = {c: k for k, c in enumerate(keys)}
    return np.array([renumber[c] for c in labels])


def cluster_molecules(ids: Sequence[str], smiles: Sequence[str], n_clusters: int, seed: int) -> dict[str, int]:
    """Cluster number (0 = largest) of each molecule."""
    missing = [i for i, s in zip(ids, smiles) if not s]
    if missing:
        raise DataError(
            f"molecules {missing[:5]} have no SMILES, so a UMAP cluster split cannot fingerprint "
            f"them; use data.split=random or in_distribution"
        )
    if len(ids) < n_clusters:
        raise DataError(f"{len(ids)} molecules are too few for {n_clusters} clusters (data.num_clusters)")
    emb = umap_coordinates(ids, smiles, seed)
    return dict(zip(ids, (int(c) for c in ward_clusters(emb, n_clusters, ids))))


def umap_coordinates(ids: Sequence[str], smiles: Sequence[str], seed: int) -> np.ndarray:
    """(M, 2) UMAP embedding of the molecules' ECFP-4 fingerprints; cached, since every fold
    of a cross-validation (and its figure) asks for the same embedding."""
    return _umap_coordinates(tuple(ids), tuple(smiles), seed).copy()


@functools.lru_cache(maxsize=8)
def _umap_coordinates(ids: tuple[str, ...], smiles: tuple[str, ...], seed: int) -> np.ndarray:
    return umap_embedding(ecfp4(smiles), seed)


def plot_split(split: "Split", path) -> None:
    """PNG of the split's UMAP embedding: colour = cluster, marker = role in this fold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = {m: np.asarray(xy) for m, xy in split.embedding.items()}
    fig, ax = plt.subplots(figsize=(6.5, 5))
    cmap = plt.get_cmap("tab10")
    for role, marker in (("train", "o"), ("val", "s"), ("test", "^")):
        members = [m for m in getattr(split, role) if m in pos]
        if not members:
            continue
        xy = np.array([pos[m] for m in members])
        colours = [cmap(split.clusters.get(m, 0) % 10) for m in members]
        ax.scatter(xy[:, 0], xy[:, 1], c=colours, marker=marker, s=60 if role != "train" else 30,
                   edgecolors="k" if role != "train" else "none", label=f"{role} ({len(members)})")
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(f"ECFP-4 UMAP, Ward clusters (colour); fold {split.fold} roles (marker)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def fold_clusters(fold: int, n_clusters: int, n_folds: int) -> dict[str, list[int]]:
    """Cluster numbers per role for one fold: test {2f, 2f+1}, val the next pair, train the rest."""
    per = n_clusters // n_folds
    if per < 1 or not 0 <= fold < n_folds:
        raise DataError(f"fold {fold} of {n_folds} folds over {n_clusters} clusters is not valid")
    test = [(fold * per + k) % n_clusters for k in range(per)]
    val = [((fold + 1) * per + k) % n_clusters for k in range(per)]
    train = [c for c in range(n_clusters) if c not in test and c not in val]
    return {"train": train, "val": val, "test": test}


def make_split(ids: Sequence[str], smiles: Sequence[str], cfg: DataConfig) -> Split:
    """The split `cfg.split` for fold `cfg.fold` over the data set's molecules."""
    ids = list(ids)
    if not ids:
        raise DataError("the data set has no molecules")
    if cfg.split in ("in_distribution", "all"):
        a, b = cfg.time_split
        if not 0.0 < a < b < 1.0:
            raise DataError(f"data.time_split: expected 0 < train end < test start < 1, found {list(cfg.time_split)}")
        ranges = ({"train": (0.0, a), "val": (a, b), "test": (b, 1.0)} if cfg.split == "in_distribution"
                  else {"train": (0.0, b), "val": (b, 1.0), "test": (b, 1.0)})
        return Split(cfg.split, cfg.fold, tuple(ids), tuple(ids), tuple(ids), ranges)
    if len(ids) < 3:
        raise DataError(
            f"{len(ids)} molecule(s) cannot be split into disjoint train/val/test molecule sets; "
            f"use data.split=in_distribution"
        )
    if cfg.split == "random":
        order = list(np.random.default_rng(cfg.split_seed).permutation(len(ids)))
        n = len(ids)
        k_test = max(1, round(0.2 * n))
        k_val = max(1, round(0.2 * n))
        shift = (cfg.fold % cfg.num_folds) * k_test
        rolled = order[shift:] + order[:shift]
        test, val, train = rolled[:k_test], rolled[k_test : k_test + k_val], rolled[k_test + k_val :]
        pick = lambda idx: tuple(sorted(ids[i] for i in idx))  # noqa: E731
        return Split("random", cfg.fold, pick(train), pick(val), pick(test))
    if cfg.split == "umap_cluster":
        stored = stored_folds(cfg, ids)
        if stored is not None:  # clusters: each molecule's fold group, one group per fold
            clusters = {m: g for g, group in enumerate(stored) for m in group}
            roles = fold_clusters(cfg.fold, len(stored), len(stored))
        else:
            clusters = cluster_molecules(ids, smiles, cfg.num_clusters, cfg.split_seed)
            roles = fold_clusters(cfg.fold, cfg.num_clusters, cfg.num_folds)
        members = {r: tuple(sorted(m for m in ids if clusters[m] in cs)) for r, cs in roles.items()}
        empty = [r for r, m in members.items() if not m]
        if empty:
            raise DataError(f"fold {cfg.fold}: no molecules in the {empty} clusters")
        emb = umap_coordinates(ids, smiles, cfg.split_seed)  # for the split figure
        embedding = {m: (float(x), float(y)) for m, (x, y) in zip(ids, emb)}
        return Split("umap_cluster", cfg.fold, members["train"], members["val"], members["test"],
                     clusters=clusters, embedding=embedding)
    raise DataError(f"data.split: unknown split {cfg.split!r}")


def _fold_settings(cfg: DataConfig) -> dict[str, int]:
    return {"split_seed": cfg.split_seed, "num_clusters": cfg.num_clusters, "num_folds": cfg.num_folds}


def stored_folds(cfg: DataConfig, ids: Sequence[str]) -> list[list[str]] | None:
    """The molecule groups of `<cfg.path>/cv_folds.json` (group f: fold f's test molecules) when
    the file exists and its settings and molecules match `cfg` and `ids`; None otherwise (the
    reason printed when the file exists). DataError naming the file and key for a malformed one."""
    path = storage.join(cfg.path, FOLDS_FILE)
    if not storage.is_file(path):
        return None
    try:
        stored = json.loads(storage.read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    groups = stored.get("groups") if isinstance(stored, dict) else None
    if not (isinstance(groups, list) and all(isinstance(g, list) and all(isinstance(m, str) for m in g) for g in groups)):
        raise DataError(f"{path}: key 'groups' must be a list of lists of molecule ids, one list per fold")
    settings = {k: stored.get(k) for k in _fold_settings(cfg)}
    members = [m for g in groups for m in g]
    why = ""
    if settings != _fold_settings(cfg):
        why = f"it is for {settings}, this run asks for {_fold_settings(cfg)}"
    elif len(groups) != cfg.num_folds:
        raise DataError(f"{path}: key 'groups' has {len(groups)} groups; expected one per fold ({cfg.num_folds})")
    elif len(members) != len(set(members)):
        raise DataError(f"{path}: key 'groups' lists a molecule twice")
    elif set(members) != set(ids):
        why = (f"it covers other molecules (only there: {sorted(set(members) - set(ids))[:5]}, only in this run: "
               f"{sorted(set(ids) - set(members))[:5]})")
    if why:
        print(f"{path} not used ({why}): computing UMAP folds, which differ between machines", flush=True)
        return None
    return groups


def write_folds(cfg: DataConfig, molecules=None) -> str:
    """Compute this machine's UMAP folds for the usable molecules of `cfg.path` (`molecules`, that
    table, when the caller has it) and store them there (`FOLDS_FILE`, replacing any); returns
    the file's path."""
    molecules = usable_molecules(cfg) if molecules is None else molecules
    ids, smiles = molecules.column("molecule_id").to_pylist(), molecules.column("smiles").to_pylist()
    clusters = cluster_molecules(ids, smiles, cfg.num_clusters, cfg.split_seed)
    tested = [fold_clusters(f, cfg.num_clusters, cfg.num_folds)["test"] for f in range(cfg.num_folds)]
    groups = [sorted(m for m in ids if clusters[m] in cs) for cs in tested]
    record = {**_fold_settings(cfg), "groups": groups, "clusters": clusters,
              "provenance": "UMAP (atomray.data.splits.cluster_molecules) on this machine"}
    return storage.write_text(storage.join(cfg.path, FOLDS_FILE), json.dumps(record, indent=1) + "\n")


def ensure_folds(cfg: DataConfig) -> str | None:
    """The data set's stored folds file: kept when it matches the usable molecules of `cfg.path`
    (a resumed or repeated build must not move the folds), written (`write_folds`) when there is
    none that matches; None when the molecules are too few for `cfg.num_clusters` clusters or
    some have no SMILES (no cluster split is possible)."""
    molecules = usable_molecules(cfg)
    ids, smiles = molecules.column("molecule_id").to_pylist(), molecules.column("smiles").to_pylist()
    if stored_folds(cfg, ids) is not None:
        return storage.join(cfg.path, FOLDS_FILE)
    if len(ids) < cfg.num_clusters or not all(smiles):
        return None
    return write_folds(cfg, molecules)


def run_split(cfg: DataConfig) -> Split:
    """The split a run with data config `cfg` trains, validates and tests on: `make_split` of the
    data set's usable molecules (`usable_molecules`)."""
    molecules = usable_molecules(cfg)
    return make_split(molecules.column("molecule_id").to_pylist(), molecules.column("smiles").to_pylist(), cfg)


def usable_molecules(cfg: DataConfig):
    """The molecules table of `cfg.path`, restricted to `cfg.molecules` when given, without
    molecules the data set's stability report flagged (column `stable` False) unless
    `cfg.include_unstable`; the excluded ones are printed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    molecules = read_molecules(cfg.path)
    if cfg.molecules:
        ids = molecules.column("molecule_id").to_pylist()
        unknown = [m for m in cfg.molecules if m not in ids]
        if unknown:
            raise DataError(f"data.molecules: {unknown} not in {cfg.path} (it holds {', '.join(ids[:20])})")
        molecules = molecules.filter(pc.is_in(molecules.column("molecule_id"), pa.array(list(cfg.molecules))))
    if cfg.include_unstable or "stable" not in molecules.column_names:
        return molecules
    stable = pc.fill_null(molecules.column("stable"), True)
    dropped = molecules.filter(pc.invert(stable))
    if dropped.num_rows:
        reasons = dropped.column("stability_reason").to_pylist() if "stability_reason" in dropped.column_names else [""] * dropped.num_rows
        print("excluding molecules flagged by the stability report (data.include_unstable=true keeps them): "
              + "; ".join(f"{m} ({r})" for m, r in zip(dropped.column("molecule_id").to_pylist(), reasons)), flush=True)
    return molecules.filter(stable)


@dataclass(frozen=True)
class EvalSet:
    """A fixed set of evaluation windows: `n` windows over `molecules`, inside the
    `frame_fraction` of each trajectory, drawn once with `seed`. Metrics are logged as
    <name>_s2t / <name>_s2s every epoch."""

    name: str
    molecules: tuple[str, ...]
    frame_fraction: tuple[float, float]
    n: int
    seed: int

    def to_dict(self) -> dict:
        return {"name": self.name, "molecules": list(self.molecules), "frame_fraction": list(self.frame_fraction),
                "n": self.n, "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict) -> "EvalSet":
        return cls(d["name"], tuple(d["molecules"]), tuple(d["frame_fraction"]), int(d["n"]), int(d["seed"]))


def default_eval_sets(split: Split, cfg: DataConfig, in_distribution: bool = False) -> list[EvalSet]:
    """The test set of a split (out-of-domain molecules for molecule splits), and with
    `in_distribution` also `test_id`: the training molecules at a held-out time range."""
    sets = []
    if split.test and cfg.test_windows > 0:
        sets.append(EvalSet("test", split.test, split.ranges["test"], cfg.test_windows, cfg.split_seed + 2))
    if in_distribution and cfg.test_windows > 0:
        sets.append(EvalSet("test_id", split.train, ID_RANGES["test"], cfg.test_windows, cfg.split_seed + 3))
    return sets


def with_training_range(split: Split, fraction: tuple[float, float]) -> Split:
    """The same split, with training windows restricted to `fraction` of each trajectory
    (so the rest can serve in-distribution tests)."""
    ranges = dict(split.ranges)
    ranges["train"] = fraction
    return Split(split.kind, split.fold, split.train, split.val, split.test, ranges, split.clusters, split.embedding)


def split_rows(split: Split) -> list[dict]:
    """One row per (molecule, role) for the run's split table."""
    rows = []
    for role in ("train", "val", "test"):
        lo, hi = split.ranges[role]
        for mid in getattr(split, role):
            rows.append({"molecule_id": mid, "role": role, "fold": split.fold, "kind": split.kind,
                         "cluster": split.clusters.get(mid, -1), "frame_fraction_lo": lo, "frame_fraction_hi": hi})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Store this machine's UMAP-cluster CV folds with a data set "
                                             f"(DATA_DIR/{FOLDS_FILE}), so every machine runs the same folds.")
    ap.add_argument("data_dir")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--num-clusters", type=int, default=10)
    ap.add_argument("--num-folds", type=int, default=5)
    args = ap.parse_args(argv)
    cfg = DataConfig(path=args.data_dir, split="umap_cluster", split_seed=args.split_seed,
                     num_clusters=args.num_clusters, num_folds=args.num_folds)
    path = write_folds(cfg)
    for f, group in enumerate(json.loads(storage.read_text(path))["groups"]):
        print(f"fold {f} tests on {', '.join(group)}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
