"""Splits: cluster-disjoint UMAP folds, random molecule folds, time-disjoint in-distribution."""

from __future__ import annotations

import pytest

from atomray.config import DataConfig
from atomray.data.frames import DataError
from atomray.data.splits import Split, fold_clusters, make_split, split_rows

# 30 small C/H/O/N molecules in a few chemical families, so clusters are meaningful.
SMILES = [
    "CCO", "CCCO", "CCCCO", "CC(C)O", "CC(C)CO", "OCCO",                  # alcohols
    "c1ccccc1", "Cc1ccccc1", "CCc1ccccc1", "Oc1ccccc1", "Nc1ccccc1", "c1ccc2ccccc2c1",  # aromatics
    "CC(=O)O", "CCC(=O)O", "OC(=O)CC(=O)O", "OC(=O)c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "O=CCC=O",  # acids
    "CN", "CCN", "CCCN", "NCCN", "CNC", "CN(C)C",                          # amines
    "O=c1cc[nH]c(=O)[nH]1", "Cc1c[nH]c(=O)[nH]c1=O", "c1ccncc1", "Cc1ccncc1", "c1cnccn1", "c1ccc(nc1)C(=O)N",  # N-heterocycles
]
IDS = [f"mol{i:02d}" for i in range(len(SMILES))]


@pytest.mark.parametrize("fold", range(5))
def test_umap_cluster_folds_are_cluster_disjoint(fold):
    split = make_split(IDS, SMILES, DataConfig(split="umap_cluster", fold=fold, split_seed=0))
    train, val, test = set(split.train), set(split.val), set(split.test)
    assert train and val and test
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(IDS)
    clusters = lambda ms: {split.clusters[m] for m in ms}  # noqa: E731
    assert not (clusters(train) & clusters(test)) and not (clusters(val) & clusters(test))
    assert clusters(test) == set(fold_clusters(fold, 10, 5)["test"])


def test_umap_clusters_are_reproducible():
    a = make_split(IDS, SMILES, DataConfig(split="umap_cluster", fold=2, split_seed=3))
    b = make_split(IDS, SMILES, DataConfig(split="umap_cluster", fold=2, split_seed=3))
    assert a == b


def test_each_cluster_is_tested_in_exactly_one_fold():
    tested = [c for f in range(5) for c in fold_clusters(f, 10, 5)["test"]]
    assert sorted(tested) == list(range(10))


def test_random_split_folds_rotate_test_molecules():
    cfgs = [DataConfig(split="random", fold=f) for f in range(5)]
    splits = [make_split(IDS, SMILES, c) for c in cfgs]
    for s in splits:
        assert not (set(s.train) & set(s.test)) and not (set(s.val) & set(s.test))
    tested = [m for s in splits for m in s.test]
    assert sorted(tested) == sorted(IDS)  # every molecule is a test molecule once


def test_in_distribution_uses_disjoint_time_ranges():
    s = make_split(IDS, SMILES, DataConfig(split="in_distribution"))
    assert s.train == s.val == s.test == tuple(IDS)
    (a0, a1), (b0, b1), (c0, c1) = s.ranges["train"], s.ranges["val"], s.ranges["test"]
    assert a1 <= b0 and b1 <= c0


def test_cluster_split_needs_smiles():
    with pytest.raises(DataError, match="no SMILES"):
        make_split(IDS, [""] * len(IDS), DataConfig(split="umap_cluster"))


def test_split_round_trips_and_tabulates():
    s = make_split(IDS, SMILES, DataConfig(split="umap_cluster", fold=1))
    assert Split.from_dict(s.to_dict()) == s
    rows = split_rows(s)
    assert len(rows) == len(IDS) and {r["role"] for r in rows} == {"train", "val", "test"}


def test_in_distribution_time_split_is_configurable_and_checked():
    s = make_split(IDS[:1], SMILES[:1], DataConfig(split="in_distribution", time_split=(0.5, 0.75)))
    assert s.ranges == {"train": (0.0, 0.5), "val": (0.5, 0.75), "test": (0.75, 1.0)}
    for bad in ((0.8, 0.5), (0.0, 0.5), (0.5, 1.0)):
        with pytest.raises(DataError, match="data.time_split"):
            make_split(IDS[:1], SMILES[:1], DataConfig(split="in_distribution", time_split=bad))


def test_data_molecules_restricts_the_data_set_and_names_unknown_ids(repo_root):
    from atomray.data.splits import usable_molecules

    path = str(repo_root / "data" / "tg80-mini")
    table = usable_molecules(DataConfig(path=path, molecules=("aspirin", "benzene")))
    assert sorted(table.column("molecule_id").to_pylist()) == ["aspirin", "benzene"]
    with pytest.raises(DataError, match=r"data.molecules: \['caffeine'\] not in"):
        usable_molecules(DataConfig(path=path, molecules=("aspirin", "caffeine")))
