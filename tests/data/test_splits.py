"""Splits: cluster-disjoint UMAP folds, random molecule folds, time-disjoint in-distribution."""

from __future__ import annotations

import dataclasses
import json

import pytest

from atomray.config import DataConfig
from atomray.data.frames import DataError
from atomray.data.splits import (FOLDS_FILE, Split, cluster_molecules, fold_clusters, make_split, split_rows,
                                 ensure_folds, stored_folds, usable_molecules, write_folds)

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
    path = str(repo_root / "data" / "tg80-mini")
    table = usable_molecules(DataConfig(path=path, molecules=("aspirin", "benzene")))
    assert sorted(table.column("molecule_id").to_pylist()) == ["aspirin", "benzene"]
    with pytest.raises(DataError, match=r"data.molecules: \['caffeine'\] not in"):
        usable_molecules(DataConfig(path=path, molecules=("aspirin", "caffeine")))


def _folds_file(directory, groups, **settings):
    record = {"split_seed": 0, "num_clusters": 10, "num_folds": 5, "groups": groups, **settings}
    (directory / FOLDS_FILE).write_text(json.dumps(record))


def test_stored_folds_decide_a_cluster_split(tmp_path):
    groups = [IDS[k::5] for k in range(5)]  # deliberately unlike any UMAP clustering
    _folds_file(tmp_path, groups)
    for fold in range(5):
        s = make_split(IDS, SMILES, DataConfig(path=str(tmp_path), split="umap_cluster", fold=fold))
        assert s.test == tuple(sorted(groups[fold])) and s.val == tuple(sorted(groups[(fold + 1) % 5]))
        assert set(s.train) == set(IDS) - set(s.test) - set(s.val)


def test_stored_folds_for_other_settings_or_molecules_are_not_used(tmp_path, capsys):
    computed = make_split(IDS, SMILES, DataConfig(split="umap_cluster", fold=0))
    _folds_file(tmp_path, [IDS[k::5] for k in range(5)], split_seed=7)
    assert make_split(IDS, SMILES, DataConfig(path=str(tmp_path), split="umap_cluster", fold=0)) == computed
    assert "computing UMAP folds" in capsys.readouterr().out
    _folds_file(tmp_path, [IDS[1:][k::5] for k in range(5)])  # one molecule missing
    assert make_split(IDS, SMILES, DataConfig(path=str(tmp_path), split="umap_cluster", fold=0)) == computed
    assert "mol00" in capsys.readouterr().out


@pytest.mark.parametrize("text, key", [("{", "not valid JSON"), ('{"groups": "aspirin"}', "'groups'"),
                                       (json.dumps({"split_seed": 0, "num_clusters": 10, "num_folds": 5,
                                                    "groups": [IDS[:3]] * 5}), "twice")])
def test_a_malformed_folds_file_is_named(tmp_path, text, key):
    (tmp_path / FOLDS_FILE).write_text(text)
    with pytest.raises(DataError, match=f"{FOLDS_FILE}.*{key}"):
        make_split(IDS, SMILES, DataConfig(path=str(tmp_path), split="umap_cluster"))


def test_write_folds_stores_this_machines_umap_folds(tmp_path, repo_root):
    import shutil

    shutil.copy(repo_root / "data" / "tg80-mini" / "molecules.parquet", tmp_path / "molecules.parquet")
    cfg = DataConfig(path=str(tmp_path), split="umap_cluster")
    write_folds(cfg)
    table = usable_molecules(cfg)
    ids, smiles = table.column("molecule_id").to_pylist(), table.column("smiles").to_pylist()
    clusters = cluster_molecules(ids, smiles, 10, 0)
    for fold in range(5):
        stored = make_split(ids, smiles, dataclasses.replace(cfg, fold=fold))
        assert {clusters[m] for m in stored.test} == set(fold_clusters(fold, 10, 5)["test"])


def test_tg80_mini_ships_the_folds_its_figures_were_measured_on(repo_root):
    cfg = DataConfig(path=str(repo_root / "data" / "tg80-mini"), split="umap_cluster")
    table = usable_molecules(cfg)
    ids = table.column("molecule_id").to_pylist()
    assert stored_folds(cfg, ids) is not None  # the committed file matches the data set and cv.yaml
    s = make_split(ids, table.column("smiles").to_pylist(), cfg)
    assert s.test == ("aspirin", "benzene", "naphthalene", "toluene")


def test_ensure_folds_writes_once_then_keeps_them(tmp_path, repo_root):
    """A build stores its folds; a rebuild on another machine (other UMAP) must not move them."""
    import shutil

    shutil.copy(repo_root / "data" / "tg80-mini" / "molecules.parquet", tmp_path / "molecules.parquet")
    cfg = DataConfig(path=str(tmp_path), split="umap_cluster")
    groups = [["aspirin", "benzene", "naphthalene", "toluene"], ["lib-1483", "lib-2209", "nicotinamide", "paracetamol"],
              ["lib-2330", "lib-3785", "malonaldehyde"], ["lib-4139", "lib-4687"], ["salicylic_acid", "uracil"]]
    _folds_file(tmp_path, groups)
    before = (tmp_path / FOLDS_FILE).read_text()
    assert ensure_folds(cfg) == str(tmp_path / FOLDS_FILE)
    assert (tmp_path / FOLDS_FILE).read_text() == before
    (tmp_path / FOLDS_FILE).unlink()
    assert ensure_folds(cfg) == str(tmp_path / FOLDS_FILE)  # none stored: this machine's UMAP folds
    assert json.loads((tmp_path / FOLDS_FILE).read_text())["num_folds"] == 5
    few = DataConfig(path=str(tmp_path), split="umap_cluster", molecules=("aspirin", "benzene", "toluene"))
    assert ensure_folds(few) is None  # three molecules cannot make ten clusters
