"""The TG80 selection protocol (paper App. C.4) as pure functions over batches of SMILES.

A library compound is accepted when it passes, in order:

    1. its SMILES encodes a valid molecule
    2. it has no more heavy atoms than the corresponding seed molecule
    3. it contains only the allowed elements (C, H, O, N)
    4. it has at most `max_oxygen` (5) oxygen atoms
    5. it has at most `max_nitrogen` (3) nitrogen atoms
    6. it is one connected fragment (no salts or mixtures)
    7. its ECFP-4 Tanimoto similarity to a seed lies in (0.875, 0.925)
    8. its Tanimoto similarity to every previously accepted compound is ≤ 0.2
       (App. C.4; the main text, §3.3, says 0.80 — `max_similarity_to_selected` is a setting)

Criteria 1–7 look at one compound at a time (`screen`, which runs on any batch, in one
process or inside a Ray Data task); criterion 8 is sequential over the shuffled survivors
(`diversify`, run on the driver). The "corresponding seed" of criteria 2 and 7 is a seed
with at least as many heavy atoms as the compound: criterion 2 asks that one exists,
criterion 7 that one of those lies in the similarity window; the most similar such seed
becomes the compound's `seed_parent`.

The paper shuffles PubChem and walks it in order. Here the order is a seeded hash of each
compound's (id, SMILES), so the result does not depend on how the library is split into
files or batches, and the in-process and Ray Data scans select the same compounds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from rdkit import Chem, DataStructs, RDLogger
from rdkit.Chem import rdFingerprintGenerator

from atomray.tg80.seeds import Seed

CRITERIA = (
    "1_valid_smiles",
    "2_heavy_atoms_le_seed",
    "3_elements",
    "4_max_oxygen",
    "5_max_nitrogen",
    "6_single_fragment",
    "7_similarity_window",
    "8_diversity",
)

@dataclass(frozen=True)
class SelectionConfig:
    """Thresholds of the selection protocol (paper App. C.4); every one is a setting.

    Similarity bounds are exclusive ("greater than 0.875, less than 0.925");
    `max_similarity_to_selected` is inclusive ("no more than 0.2"). `n_select` stops the
    walk once that many compounds are accepted (0: accept every compound that passes).
    `elements` is a comma-separated list of element symbols.
    """

    elements: str = "C,H,O,N"
    max_oxygen: int = 5
    max_nitrogen: int = 3
    max_fragments: int = 1
    similarity_min: float = 0.875
    similarity_max: float = 0.925
    max_similarity_to_selected: float = 0.2
    fingerprint_radius: int = 2  # ECFP-4 = Morgan radius 2
    fingerprint_bits: int = 2048
    n_select: int = 40
    seed: int = 0


@dataclass
class Candidate:
    """A compound that passed criteria 1–7, with its seed parent and similarity to it."""

    compound_id: str
    smiles: str  # canonical
    heavy_atoms: int
    seed_parent: str
    similarity_to_seed: float
    order_key: int  # position in the seeded shuffle


INVALID_SHOWN = 10  # invalid SMILES named in a selection's note; the rest are counted


@dataclass
class ScreenResult:
    """Survivors of criteria 1–7 for one batch, how many compounds each criterion rejected,
    and where the first `INVALID_SHOWN` invalid SMILES came from ("lib.smi:12 'C1CC'")."""

    survivors: list[Candidate]
    screened: int
    rejected: dict[str, int] = field(default_factory=lambda: {c: 0 for c in CRITERIA})
    invalid: list[str] = field(default_factory=list)

    def merge(self, other: "ScreenResult") -> "ScreenResult":
        """Add another batch's result into this one (in place, so a 10⁸-compound scan
        does not copy the survivor list per batch); returns self."""
        self.survivors.extend(other.survivors)
        self.screened += other.screened
        for c in CRITERIA:
            self.rejected[c] += other.rejected[c]
        self.invalid.extend(other.invalid[: INVALID_SHOWN - len(self.invalid)])
        return self


@dataclass
class SelectionResult:
    """Accepted compounds in acceptance order, and the yield of every criterion.

    `yields` is one dict per criterion: criterion, rejected, remaining (compounds still in
    the running after it). `unexamined` counts survivors of 1–7 never reached by criterion 8
    because `n_select` compounds had already been accepted.
    """

    selected: list[Candidate]
    max_similarity_to_selected: list[float]
    yields: list[dict]
    screened: int
    unexamined: int
    invalid: list[str] = field(default_factory=list)  # the first invalid SMILES, where they came from

    def invalid_note(self) -> str:
        """'' when every SMILES parsed, else e.g. "2 library lines hold an invalid SMILES
        (skipped): lib.smi:4 'C1CC', lib.smi:9 'Xx'" (the first INVALID_SHOWN, then "and N more")."""
        n = sum(y["rejected"] for y in self.yields if y["criterion"] == "1_valid_smiles")
        if not n:
            return ""
        more = f" and {n - len(self.invalid)} more" if n > len(self.invalid) else ""
        return f"{n} library line(s) hold an invalid SMILES (skipped): {', '.join(self.invalid)}{more}"

    def rows(self) -> list[dict]:
        """One plain dict per accepted compound (for CSV / Parquet / the molecules table)."""
        return [
            dict(compound_id=c.compound_id, smiles=c.smiles, heavy_atoms=c.heavy_atoms,
                 seed_parent=c.seed_parent, similarity_to_seed=c.similarity_to_seed,
                 max_similarity_to_selected=s, rank=i)
            for i, (c, s) in enumerate(zip(self.selected, self.max_similarity_to_selected))
        ]


def fingerprint_generator(cfg: SelectionConfig):
    """The ECFP generator (Morgan, radius `fingerprint_radius`, `fingerprint_bits` bits)."""
    return rdFingerprintGenerator.GetMorganGenerator(radius=cfg.fingerprint_radius, fpSize=cfg.fingerprint_bits)


def order_key(compound_id: str, smiles: str, seed: int) -> int:
    """The compound's place in the seeded shuffle: a 63-bit hash of (seed, id, SMILES)."""
    digest = hashlib.blake2b(f"{seed}\x00{compound_id}\x00{smiles}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _allowed_elements(cfg: SelectionConfig) -> set[int]:
    out = set()
    for sym in cfg.elements.split(","):
        sym = sym.strip()
        z = Chem.GetPeriodicTable().GetAtomicNumber(sym) if sym else 0
        if z <= 0:
            raise ValueError(f"selection.elements: {sym!r} is not an element symbol")
        out.add(z)
    return out


def screen(
    smiles: Sequence[str],
    ids: Sequence[str],
    seeds: Sequence[Seed],
    cfg: SelectionConfig,
    where: Sequence[str] | None = None,
) -> ScreenResult:
    """Apply criteria 1–7 to a batch of library compounds.

    Inputs: parallel lists of SMILES strings and compound ids; the seed molecules; the
    thresholds; optionally where each compound came from (e.g. "lib.smi:12"; default its id).
    Output: the survivors (canonical SMILES, heavy-atom count, seed parent, ECFP Tanimoto
    similarity to it, shuffle key), the number rejected by each criterion (a compound counts
    once, at the first criterion it fails) and the first invalid SMILES with their origin.
    """
    if len(smiles) != len(ids):
        raise ValueError(f"screen: {len(smiles)} SMILES but {len(ids)} ids")
    where = where if where is not None else [f"compound {cid}" for cid in ids]
    RDLogger.DisableLog("rdApp.*")  # library files hold many bad SMILES; they are counted, the first named
    gen = fingerprint_generator(cfg)
    seed_mols = [s.mol() for s in seeds]
    seed_fps = [gen.GetFingerprint(m) for m in seed_mols]
    seed_heavy = np.array([m.GetNumHeavyAtoms() for m in seed_mols])
    allowed = _allowed_elements(cfg)
    out = ScreenResult([], len(smiles))
    for smi, cid, origin in zip(smiles, ids, where):
        mol = Chem.MolFromSmiles(smi) if smi else None
        if mol is None or mol.GetNumAtoms() == 0:
            out.rejected["1_valid_smiles"] += 1
            if len(out.invalid) < INVALID_SHOWN:
                out.invalid.append(f"{origin} {smi!r}")
            continue
        heavy = mol.GetNumHeavyAtoms()
        eligible = seed_heavy >= heavy
        if not eligible.any():
            out.rejected["2_heavy_atoms_le_seed"] += 1
            continue
        counts: dict[int, int] = {}
        for atom in mol.GetAtoms():  # implicit hydrogens counted without AddHs (cheaper at 10^8)
            counts[atom.GetAtomicNum()] = counts.get(atom.GetAtomicNum(), 0) + 1
            if atom.GetTotalNumHs():
                counts[1] = counts.get(1, 0) + atom.GetTotalNumHs()
        if not set(counts) <= allowed:
            out.rejected["3_elements"] += 1
            continue
        if counts.get(8, 0) > cfg.max_oxygen:
            out.rejected["4_max_oxygen"] += 1
            continue
        if counts.get(7, 0) > cfg.max_nitrogen:
            out.rejected["5_max_nitrogen"] += 1
            continue
        if len(Chem.GetMolFrags(mol)) > cfg.max_fragments:
            out.rejected["6_single_fragment"] += 1
            continue
        sims = np.array(DataStructs.BulkTanimotoSimilarity(gen.GetFingerprint(mol), seed_fps))
        ok = eligible & (sims > cfg.similarity_min) & (sims < cfg.similarity_max)
        if not ok.any():
            out.rejected["7_similarity_window"] += 1
            continue
        parent = int(np.flatnonzero(ok)[np.argmax(sims[ok])])
        canonical = Chem.MolToSmiles(mol)
        out.survivors.append(
            Candidate(str(cid), canonical, heavy, seeds[parent].name, float(sims[parent]),
                      order_key(str(cid), canonical, cfg.seed))
        )
    return out


def diversify(screened: ScreenResult, cfg: SelectionConfig) -> SelectionResult:
    """Criterion 8 over the survivors of 1–7 in shuffle order; stop at `n_select` accepted.

    Returns the accepted compounds (each with its largest similarity to the compounds
    accepted before it) and the per-criterion yield of the whole selection.
    """
    gen = fingerprint_generator(cfg)
    order = sorted(screened.survivors, key=lambda c: (c.order_key, c.compound_id, c.smiles))
    selected: list[Candidate] = []
    fps: list = []
    max_sims: list[float] = []
    rejected_div = 0
    examined = 0
    for cand in order:
        if cfg.n_select and len(selected) >= cfg.n_select:
            break
        examined += 1
        fp = gen.GetFingerprint(Chem.MolFromSmiles(cand.smiles))
        top = max(DataStructs.BulkTanimotoSimilarity(fp, fps), default=0.0)
        if top > cfg.max_similarity_to_selected:
            rejected_div += 1
            continue
        selected.append(cand)
        fps.append(fp)
        max_sims.append(float(top))
    rejected = dict(screened.rejected, **{"8_diversity": rejected_div})
    yields, remaining = [], screened.screened
    for crit in CRITERIA:
        remaining -= rejected[crit]
        yields.append(dict(criterion=crit, rejected=rejected[crit], remaining=remaining))
    return SelectionResult(selected, max_sims, yields, screened.screened, len(order) - examined, list(screened.invalid))


def select(smiles: Sequence[str], ids: Sequence[str], seeds: Sequence[Seed], cfg: SelectionConfig) -> SelectionResult:
    """The whole protocol (criteria 1–8) over an in-memory list of compounds."""
    return diversify(screen(smiles, ids, seeds, cfg), cfg)
