"""The TG80 seed molecules (paper §3.3): 8 MD17 compounds and 32 drug-like C/H/O/N compounds.

`data/tg80_seeds.csv` has one row per seed with columns `name` (a file-name-safe identifier,
also the molecule_id of the seed's trajectory), `smiles` and `group` (`md17` or `drug`).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from rdkit import Chem

DEFAULT_SEEDS_FILE = Path(__file__).resolve().parents[2] / "data" / "tg80_seeds.csv"
MD17_NAMES = (
    "aspirin", "benzene", "ethanol", "malonaldehyde", "naphthalene", "salicylic_acid", "toluene", "uracil",
)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class SeedError(ValueError):
    """The seed file is malformed; the message names the file, the row and the problem."""


@dataclass(frozen=True)
class Seed:
    """One seed molecule: identifier, SMILES and group (md17 / drug)."""

    name: str
    smiles: str
    group: str

    def mol(self) -> Chem.Mol:
        """The RDKit molecule (hydrogens implicit)."""
        return Chem.MolFromSmiles(self.smiles)

    @property
    def heavy_atoms(self) -> int:
        return self.mol().GetNumHeavyAtoms()


def read_seeds(path: str | Path | None = None) -> list[Seed]:
    """Read a seed CSV (default: the shipped `data/tg80_seeds.csv`), checking every row.

    Raises SeedError naming the file and row when a column is missing, a name is not
    file-name-safe or repeated, or a SMILES does not parse.
    """
    path = Path(path) if path else DEFAULT_SEEDS_FILE
    if not path.is_file():
        raise SeedError(f"{path}: seed file not found")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"name", "smiles"} - set(reader.fieldnames or [])
        if missing:
            raise SeedError(f"{path}: missing column(s) {sorted(missing)}; found {reader.fieldnames}")
        seeds: list[Seed] = []
        seen: set[str] = set()
        for line, row in enumerate(reader, start=2):
            name, smiles = (row["name"] or "").strip(), (row["smiles"] or "").strip()
            where = f"{path}:{line}"
            if not _NAME.match(name):
                raise SeedError(f"{where}: name {name!r} must match [A-Za-z0-9_.-]+ (it names files)")
            if name in seen:
                raise SeedError(f"{where}: seed name {name!r} appears twice")
            if Chem.MolFromSmiles(smiles) is None:
                raise SeedError(f"{where}: seed {name!r} has an invalid SMILES {smiles!r}")
            seen.add(name)
            seeds.append(Seed(name, smiles, (row.get("group") or "").strip()))
    if not seeds:
        raise SeedError(f"{path}: no seed rows")
    return seeds
