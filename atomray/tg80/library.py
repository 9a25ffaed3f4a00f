"""SMILES compound libraries: reading .smi / .csv files (optionally gzipped) and running the
TG80 selection over them in one process.

File formats
    .smi / .txt   whitespace-separated, one compound per line. "SMILES id" (RDKit / NCI
                  convention) or "id SMILES" when the first token is all digits (the PubChem
                  CID-SMILES dump: a SMILES is never all digits). Blank lines, lines starting
                  with '#', and a header line whose first token is "smiles" are skipped.
    .csv          a header row with a SMILES column (smiles / canonical_smiles /
                  isomeric_smiles / smi, any case) and optionally an id column (id / name /
                  cid / compound_id / molecule_id).
    *.gz          either of the above, gzip-compressed.

A compound without an id gets "h" + 12 hex digits of a hash of its SMILES, so ids are the
same however the file is read. For a library too large for one process (10⁸ compounds) use
`atomray.tg80.cluster.select_library_ray`, which runs the same parser and `screen` as Ray
Data tasks over the files.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from atomray.tg80.seeds import Seed
from atomray.tg80.selection import ScreenResult, SelectionConfig, SelectionResult, diversify, screen

SMILES_COLUMNS = ("smiles", "canonical_smiles", "isomeric_smiles", "smi")
ID_COLUMNS = ("id", "name", "cid", "compound_id", "molecule_id")


class LibraryError(ValueError):
    """A library file cannot be read; the message names the file and what is wrong."""


def default_library() -> Path:
    """The NCI compound list that RDKit ships (5,000 compounds)."""
    from rdkit.Chem import RDConfig

    return Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"


def hashed_id(smiles: str) -> str:
    """The id of a compound that has none: 'h' + 12 hex digits of a hash of its SMILES."""
    return "h" + hashlib.blake2b(smiles.encode(), digest_size=6).hexdigest()


def library_kind(path: str | Path) -> str:
    """'smi' or 'csv' from the file name (a trailing .gz is ignored)."""
    name = str(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith((".smi", ".smiles", ".txt")):
        return "smi"
    if name.endswith(".csv"):
        return "csv"
    raise LibraryError(f"{path}: unknown library format; expected .smi, .txt or .csv (optionally .gz)")


def parse_smi_line(line: str) -> tuple[str, str] | None:
    """(id, SMILES) of one .smi line, or None for a blank, comment or header line."""
    tokens = line.split()
    if not tokens or tokens[0].startswith("#") or tokens[0].lower() in SMILES_COLUMNS:
        return None
    if len(tokens) >= 2 and tokens[0].isdigit():
        return tokens[0], tokens[1]
    smiles = tokens[0]
    return (tokens[1] if len(tokens) >= 2 else hashed_id(smiles)), smiles


def csv_columns(fieldnames: Sequence[str], where: str) -> tuple[str, str | None]:
    """Names of the SMILES column and the id column (None if absent) of a CSV header."""
    lower = {name.strip().lower(): name for name in fieldnames}
    smiles = next((lower[c] for c in SMILES_COLUMNS if c in lower), None)
    if smiles is None:
        raise LibraryError(
            f"{where}: no SMILES column; expected one of {list(SMILES_COLUMNS)}, found {list(fieldnames)}"
        )
    return smiles, next((lower[c] for c in ID_COLUMNS if c in lower), None)


def _open_text(path: Path) -> io.TextIOBase:
    if str(path).lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def read_library_lines(path: str | Path) -> Iterator[tuple[int, str, str]]:
    """Stream (line number, compound id, SMILES) from one library file, never holding it in
    memory; the line number (1-based, of the decompressed text) says where a bad SMILES is."""
    path = Path(path)
    if not path.is_file():
        raise LibraryError(f"{path}: library file not found")
    kind = library_kind(path)
    try:
        with _open_text(path) as fh:
            if kind == "smi":
                for number, line in enumerate(fh, 1):
                    parsed = parse_smi_line(line)
                    if parsed is not None:
                        yield number, *parsed
            else:
                reader = csv.DictReader(fh)
                smiles_col, id_col = csv_columns(reader.fieldnames or [], str(path))
                for row in reader:
                    smiles = (row.get(smiles_col) or "").strip()
                    cid = (row.get(id_col) or "").strip() if id_col else ""
                    yield reader.line_num, (cid or hashed_id(smiles)), smiles
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise LibraryError(f"{path}: cannot read library ({err})") from None


def read_library(path: str | Path) -> Iterator[tuple[str, str]]:
    """Stream (compound id, SMILES) pairs from one library file, never holding it in memory."""
    for _, cid, smiles in read_library_lines(path):
        yield cid, smiles


def library_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expand a file, a directory (all .smi/.txt/.csv[.gz] files in it) or a list of either."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and _is_library(f))
            if not found:
                raise LibraryError(f"{p}: directory holds no .smi/.txt/.csv(.gz) library files")
            out.extend(found)
        elif p.is_file():
            library_kind(p)
            out.append(p)
        else:
            raise LibraryError(f"{p}: library file or directory not found")
    return out


def _is_library(path: Path) -> bool:
    try:
        library_kind(path)
        return True
    except LibraryError:
        return False


def select_library(
    paths: str | Path | Iterable[str | Path],
    seeds: Sequence[Seed],
    cfg: SelectionConfig,
    batch_size: int = 5000,
) -> SelectionResult:
    """Run the whole selection protocol over library files in this process, streaming.

    Memory holds one batch plus the survivors of criteria 1–7 (few). Returns the accepted
    compounds, the per-criterion yield (see `atomray.tg80.selection`) and the file:line of the
    first invalid SMILES (`SelectionResult.invalid_note`).
    """
    total = ScreenResult([], 0)
    for path in library_files(paths):
        ids: list[str] = []
        smiles: list[str] = []
        where: list[str] = []  # file:line of each compound, to name invalid SMILES
        for line, cid, smi in read_library_lines(path):
            ids.append(cid)
            smiles.append(smi)
            where.append(f"{path}:{line}")
            if len(ids) >= batch_size:
                total = total.merge(screen(smiles, ids, seeds, cfg, where))
                ids, smiles, where = [], [], []
        if ids:
            total = total.merge(screen(smiles, ids, seeds, cfg, where))
    return diversify(total, cfg)


def library_label(paths: str | Path | Iterable[str | Path]) -> str:
    """A short human-readable name of a library for provenance."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return ",".join(os.path.basename(str(p).rstrip("/")) for p in items)
