"""The selection protocol (paper App. C.4): each criterion rejects a hand-made counterexample
and accepts a valid compound; the Ray Data scan agrees with the in-process one."""

from __future__ import annotations

import gzip
from dataclasses import replace

import pytest
from rdkit import Chem, DataStructs

from atomray.tg80.library import LibraryError, default_library, read_library, select_library
from atomray.tg80.seeds import Seed, read_seeds
from atomray.tg80.selection import CRITERIA, SelectionConfig, fingerprint_generator, screen, select

# For criteria 1–6 the similarity window is opened fully, so only the criterion under test acts.
OPEN = SelectionConfig(similarity_min=-1.0, similarity_max=2.0, max_similarity_to_selected=1.0, n_select=0)


def rejected_at(smiles: str, seeds: list[Seed], cfg: SelectionConfig = OPEN) -> str | None:
    """The criterion that rejects `smiles` (None: it survives 1–7)."""
    res = screen([smiles], ["x"], seeds, cfg)
    if res.survivors:
        return None
    (crit,) = [c for c, n in res.rejected.items() if n]
    return crit


BIG = [Seed("big", "C" * 14, "test")]


@pytest.mark.parametrize(
    "bad, good, criterion, seeds",
    [
        ("C1CC", "CCC", "1_valid_smiles", BIG),  # unclosed ring
        ("CCCO", "CO", "2_heavy_atoms_le_seed", [Seed("ethanol", "CCO", "test")]),
        ("CCS", "CCN", "3_elements", BIG),
        ("CCCl", "CCO", "3_elements", BIG),
        ("OCC(O)C(O)C(O)C(O)CO", "OCC(O)C(O)C(O)CO", "4_max_oxygen", BIG),  # 6 O vs 5 O
        ("NCC(N)C(N)CN", "NCC(N)CN", "5_max_nitrogen", BIG),  # 4 N vs 3 N
        ("CC(=O)[O-].[NH4+]", "CC(=O)O", "6_single_fragment", BIG),  # a salt
    ],
)
def test_criteria_1_to_6_reject_counterexample_accept_valid(bad, good, criterion, seeds):
    assert rejected_at(bad, seeds) == criterion
    assert rejected_at(good, seeds) is None


PAPER = SelectionConfig(n_select=0)  # 0.875 < T < 0.925, diversity ≤ 0.2
PENTYLPYRIDINE = Seed("pentylpyridine", "CCCCCc1ccccn1", "test")  # 11 heavy atoms


def tanimoto(a: str, b: str) -> float:
    gen = fingerprint_generator(PAPER)
    return DataStructs.TanimotoSimilarity(gen.GetFingerprint(Chem.MolFromSmiles(a)), gen.GetFingerprint(Chem.MolFromSmiles(b)))


def test_criterion_7_similarity_window():
    assert 0.875 < tanimoto("CCCCc1ccccn1", "CCCCCc1ccccn1") < 0.925
    res = screen(["CCCCc1ccccn1"], ["c1"], [PENTYLPYRIDINE], PAPER)
    (cand,) = res.survivors
    assert cand.seed_parent == "pentylpyridine" and 0.875 < cand.similarity_to_seed < 0.925
    assert rejected_at("CCCCCc1ccccn1", [PENTYLPYRIDINE], PAPER) == "7_similarity_window"  # T = 1: too similar
    assert rejected_at("Oc1ccccc1", [PENTYLPYRIDINE], PAPER) == "7_similarity_window"  # too different
    # the window edges are settings
    assert rejected_at("CCCCc1ccccn1", [PENTYLPYRIDINE], replace(PAPER, similarity_min=0.9)) == "7_similarity_window"


def test_criterion_2_uses_the_corresponding_seed():
    """Similar to a seed but larger than it: no seed can be its parent."""
    butyl = Seed("butylpyridine", "CCCCc1ccccn1", "test")  # 10 heavy atoms
    assert 0.875 < tanimoto("CCCCCc1ccccn1", butyl.smiles) < 0.925
    assert rejected_at("CCCCCc1ccccn1", [butyl], PAPER) == "2_heavy_atoms_le_seed"
    # a larger, dissimilar seed lets it pass criterion 2 but it still needs a parent in the window
    assert rejected_at("CCCCCc1ccccn1", [butyl, Seed("big", "C" * 14, "test")], PAPER) == "7_similarity_window"


def test_criterion_8_diversity_against_accepted_compounds():
    seeds = [PENTYLPYRIDINE, Seed("pentylpicoline", "CCCCCc1cccc(C)n1", "test"), Seed("tetraamine", "NCCNCCNCCN", "test")]
    library = ["CCCCc1ccccn1", "CCCCc1cccc(C)n1", "NCCNCCN"]
    assert tanimoto(library[0], library[1]) > 0.2 and tanimoto(library[0], library[2]) <= 0.2
    strict = select(library, ["a", "b", "c"], seeds, PAPER)
    assert len(strict.selected) == 2  # one pyridine (whichever the shuffle puts first) + the amine
    assert {c.compound_id for c in strict.selected} >= {"c"}
    assert dict((y["criterion"], y["rejected"]) for y in strict.yields)["8_diversity"] == 1
    assert all(s <= 0.2 for s in strict.max_similarity_to_selected)
    loose = select(library, ["a", "b", "c"], seeds, replace(PAPER, max_similarity_to_selected=0.8))  # §3.3's value
    assert len(loose.selected) == 3
    capped = select(library, ["a", "b", "c"], seeds, replace(PAPER, max_similarity_to_selected=0.8, n_select=2))
    assert len(capped.selected) == 2 and capped.unexamined == 1


def test_shuffle_is_seeded_and_yields_add_up():
    seeds = [PENTYLPYRIDINE, Seed("pentylpicoline", "CCCCCc1cccc(C)n1", "test")]
    library = ["CCCCc1ccccn1", "CCCCc1cccc(C)n1", "C1CC", "CCS", "c1ccccc1"]
    ids = [f"m{i}" for i in range(len(library))]
    firsts = {select(library, ids, seeds, replace(PAPER, seed=s)).selected[0].compound_id for s in range(16)}
    assert firsts == {"m0", "m1"}  # the seed decides which pyridine wins, both happen
    a = select(library, ids, seeds, replace(PAPER, seed=3))
    b = select(library[::-1], ids[::-1], seeds, replace(PAPER, seed=3))  # library order does not matter
    assert [c.compound_id for c in a.selected] == [c.compound_id for c in b.selected]
    assert [y["criterion"] for y in a.yields] == list(CRITERIA)
    assert a.yields[-1]["remaining"] == len(a.selected)
    assert sum(y["rejected"] for y in a.yields) + len(a.selected) == a.screened == 5


def write_library(tmp_path):
    """The same compounds as .smi.gz (RDKit order), PubChem-style 'CID SMILES' .smi, and .csv."""
    rows = [("1", "CCCCc1ccccn1"), ("2", "CCCCc1cccc(C)n1"), ("3", "NCCNCCN"), ("4", "C1CC"), ("5", "CCS"),
            ("6", "OCC(O)C(O)C(O)C(O)CO"), ("7", "CC(=O)[O-].[NH4+]"), ("8", "CCCCCCCCCCCCCCCCCCC")]
    with gzip.open(tmp_path / "part-a.smi.gz", "wt") as fh:
        fh.write("SMILES Name\n" + "".join(f"{s} {i}\n" for i, s in rows[:4]))
    (tmp_path / "part-b.smi").write_text("".join(f"{i}\t{s}\n" for i, s in rows[4:6]))
    (tmp_path / "part-c.csv").write_text("CID,SMILES\n" + "".join(f"{i},{s}\n" for i, s in rows[6:]))
    return rows


SEEDS3 = [PENTYLPYRIDINE, Seed("pentylpicoline", "CCCCCc1cccc(C)n1", "test"), Seed("tetraamine", "NCCNCCNCCN", "test")]


def test_library_formats_are_read_alike(tmp_path):
    rows = write_library(tmp_path)
    got = [pair for f in sorted(tmp_path.iterdir()) for pair in read_library(f)]
    assert sorted(got) == sorted(rows)
    with pytest.raises(LibraryError, match="no SMILES column"):
        (tmp_path / "bad.csv").write_text("id,structure\n1,CCO\n")
        list(read_library(tmp_path / "bad.csv"))


def test_ray_data_scan_matches_in_process_scan(tmp_path, ray_local):
    from atomray.tg80.cluster import select_library_ray

    write_library(tmp_path)
    local = select_library(tmp_path, SEEDS3, PAPER)
    distributed = select_library_ray(tmp_path, SEEDS3, PAPER, batch_size=2)
    assert local.rows() == distributed.rows()
    assert local.yields == distributed.yields
    assert local.screened == distributed.screened == 8
    assert len(local.selected) == 2


def test_nci_library_yields_no_compound_in_the_paper_window_but_mini_window_works():
    seeds = read_seeds()
    paper = select_library(default_library(), seeds, SelectionConfig())
    n_lines = sum(1 for line in default_library().read_text().splitlines() if line.strip())
    assert paper.screened == n_lines > 4900 and paper.selected == []
    mini = select_library(default_library(), seeds, SelectionConfig(similarity_min=0.5, n_select=6))
    assert len(mini.selected) == 6
    gen = fingerprint_generator(SelectionConfig())
    fps = [gen.GetFingerprint(Chem.MolFromSmiles(c.smiles)) for c in mini.selected]
    for i, c in enumerate(mini.selected):
        assert 0.5 < c.similarity_to_seed < 0.925
        assert max(DataStructs.BulkTanimotoSimilarity(fps[i], fps[:i]), default=0) <= 0.2


def test_invalid_smiles_are_named_by_file_and_line(tmp_path):
    write_library(tmp_path)  # "C1CC" is line 5 of part-a.smi.gz, after its header
    (tmp_path / "part-d.csv").write_text("CID,SMILES\n9,CCO\n10,C(C\n")
    result = select_library(tmp_path, SEEDS3, PAPER)
    assert result.invalid == [f"{tmp_path / 'part-a.smi.gz'}:5 'C1CC'", f"{tmp_path / 'part-d.csv'}:3 'C(C'"]
    assert result.invalid_note() == ("2 library line(s) hold an invalid SMILES (skipped): "
                                     f"{tmp_path / 'part-a.smi.gz'}:5 'C1CC', {tmp_path / 'part-d.csv'}:3 'C(C'")


def test_only_the_first_invalid_smiles_are_listed():
    bad = [f"C{i}(" for i in range(13)]
    result = select(bad + ["CCO"], [str(i) for i in range(14)], [PENTYLPYRIDINE], OPEN)
    assert result.invalid == [f"compound {i} 'C{i}('" for i in range(10)]
    assert result.invalid_note().endswith("compound 9 'C9(' and 3 more")
    assert select(["CCO"], ["1"], [PENTYLPYRIDINE], OPEN).invalid_note() == ""
