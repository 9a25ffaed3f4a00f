"""The shipped seed set: 40 molecules, the 8 MD17 compounds, 32 C/H/O/N drug-like ones."""

from __future__ import annotations

import pytest
from rdkit import Chem

from atomray.tg80.seeds import MD17_NAMES, SeedError, read_seeds


def test_seed_file_has_40_valid_chon_molecules_including_md17():
    seeds = read_seeds()
    assert len(seeds) == 40
    names = [s.name for s in seeds]
    assert set(MD17_NAMES) <= set(names)
    assert sum(s.group == "md17" for s in seeds) == 8 and sum(s.group == "drug" for s in seeds) == 32
    canonical = set()
    for s in seeds:
        mol = Chem.MolFromSmiles(s.smiles)
        assert mol is not None, s.name
        Chem.SanitizeMol(mol)
        counts = {}
        for atom in Chem.AddHs(mol).GetAtoms():
            counts[atom.GetSymbol()] = counts.get(atom.GetSymbol(), 0) + 1
        assert set(counts) <= {"C", "H", "O", "N"}, (s.name, counts)
        assert counts.get("O", 0) <= 5 and counts.get("N", 0) <= 3, (s.name, counts)
        assert len(Chem.GetMolFrags(mol)) == 1, s.name
        assert Chem.GetFormalCharge(mol) == 0, s.name
        assert mol.GetNumHeavyAtoms() <= 15, s.name  # paper §5: TG80 has no molecule above 15 heavy atoms
        canonical.add(Chem.MolToSmiles(mol))
    assert len(canonical) == 40  # no duplicates under another name


def test_bad_seed_file_names_the_row(tmp_path):
    path = tmp_path / "seeds.csv"
    path.write_text("name,smiles\nethanol,CCO\nbroken,C1CC\n")
    with pytest.raises(SeedError, match=r"seeds.csv:3: seed 'broken' has an invalid SMILES"):
        read_seeds(path)
    path.write_text("name,smi\nethanol,CCO\n")
    with pytest.raises(SeedError, match="missing column"):
        read_seeds(path)
