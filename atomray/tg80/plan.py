"""What a TG80 build simulates: the build settings (`BuildConfig`, `BuildError`) and the
list of molecules (`MoleculeSpec`, `plan_molecules`).

A plan is the chosen seed molecules (paper §3.3: 8 MD17 + 32 drug-like) followed by the
library compounds accepted by the selection protocol (App. C.4), each with its seed parent
and similarity. Molecule ids name files, so they are restricted to [A-Za-z0-9_.-].

This is the bottom of the build's layers (plan -> simulate -> cluster -> build) and knows
nothing of Ray: a plan whose library selection runs with Ray Data gets the Ray scan passed
in (`select_ray`; `atomray.tg80.build` passes `atomray.tg80.cluster.select_library_ray`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal, Sequence

from atomray.tg80.dynamics import MDConfig
from atomray.tg80.engines import ENGINES
from atomray.tg80.library import default_library, library_files, library_label, select_library
from atomray.tg80.seeds import Seed, read_seeds
from atomray.tg80.selection import SelectionConfig, SelectionResult
from atomray.tg80.stability import StabilityConfig


class BuildError(RuntimeError):
    """A build cannot proceed; the message names the molecule, file or setting at fault."""


@dataclass(frozen=True)
class BuildConfig:
    """Settings of one TG80 build (see `atomray.tg80.presets` for tiny / mini / full).

    seeds: `seeds_file` ("" = data/tg80_seeds.csv), restricted to `seed_names`
    (comma-separated, "" = all) and to at most `max_heavy_atoms` heavy atoms, first
    `n_seeds` taken. Library: `library` ("" = RDKit's NCI first_5K.smi; a file, a directory
    of files, or several comma-separated), `n_selected` compounds accepted by `selection`
    (0 = seeds only); fewer found is an error. `selection_backend` "auto" scans libraries
    over 100 MB with Ray Data. `seed` seeds embedding, velocities, Langevin noise and the
    library shuffle.
    """

    engine: str = "gfn2"
    seed: int = 0
    seeds_file: str = ""
    seed_names: str = ""
    max_heavy_atoms: int = 15
    n_seeds: int = 40
    library: str = ""
    n_selected: int = 40
    selection_backend: Literal["auto", "local", "ray"] = "auto"
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    md: MDConfig = field(default_factory=MDConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)

    def check(self) -> "BuildConfig":
        """Raise BuildError on settings that cannot work; return self."""
        if self.engine not in ENGINES:
            raise BuildError(f"build.engine: expected one of {', '.join(ENGINES)}, found {self.engine!r}")
        try:
            self.md.n_segments
        except ValueError as err:
            raise BuildError(str(err)) from None
        if self.md.temperature_k <= 0 or self.md.dt_fs <= 0:
            raise BuildError(f"md: temperature_k and dt_fs must be positive, found {self.md.temperature_k}, {self.md.dt_fs}")
        return self


@dataclass(frozen=True)
class MoleculeSpec:
    """One molecule to simulate. role is "seed" or "selected"; a seed is its own parent."""

    molecule_id: str
    smiles: str
    role: str
    seed_parent: str
    similarity_to_seed: float
    heavy_atoms: int
    library_id: str = ""
    max_similarity_to_selected: float = 0.0

    def random_seed(self, build_seed: int) -> int:
        """This molecule's seed for embedding and velocities: a hash of (build seed, id)."""
        digest = hashlib.blake2b(f"{build_seed}:{self.molecule_id}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") & 0x7FFFFFFF


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

# (library paths, seeds, selection settings) -> result, e.g. `atomray.tg80.cluster.select_library_ray`
LibrarySelector = Callable[[Sequence[Path], Sequence[Seed], SelectionConfig], SelectionResult]


def library_paths(cfg: BuildConfig) -> list[Path]:
    """The library files of a build (default: RDKit's NCI list)."""
    if not cfg.library:
        return [default_library()]
    return library_files([p.strip() for p in cfg.library.split(",") if p.strip()])


def run_selection(cfg: BuildConfig, n_select: int, select_ray: LibrarySelector | None = None) -> SelectionResult:
    """Select `n_select` library compounds in this process or with Ray Data (large libraries).

    Every seed of the seed file within `max_heavy_atoms` may be a parent, so criterion 2
    keeps selected compounds within the cap too. The Ray Data scan is `select_ray` (the
    caller passes `atomray.tg80.cluster.select_library_ray`); without it a build whose
    selection backend is (or resolves to) "ray" is a BuildError.
    """
    paths = library_paths(cfg)
    scfg = replace(cfg.selection, n_select=n_select, seed=cfg.seed)
    seeds = [s for s in read_seeds(cfg.seeds_file or None) if s.heavy_atoms <= cfg.max_heavy_atoms]
    backend = cfg.selection_backend
    if backend == "auto":
        backend = "ray" if sum(p.stat().st_size for p in paths) > 100e6 else "local"
    if backend == "ray":
        if select_ray is None:
            raise BuildError(
                f"build.selection_backend {cfg.selection_backend!r} scans this library with Ray Data, but no Ray "
                "selector was given: build with atomray.tg80.build.build, or pass "
                "select_ray=atomray.tg80.cluster.select_library_ray"
            )
        return select_ray(paths, seeds, scfg)
    return select_library(paths, seeds, scfg)


def plan_molecules(cfg: BuildConfig, select_ray: LibrarySelector | None = None) -> tuple[list[MoleculeSpec], SelectionResult | None]:
    """The molecules a build simulates (seeds first, then selected compounds) and the
    selection result (None when `n_selected` is 0). `select_ray`: see `run_selection`."""
    cfg.check()
    seeds = read_seeds(cfg.seeds_file or None)
    if cfg.seed_names:
        wanted = [n.strip() for n in cfg.seed_names.split(",") if n.strip()]
        by_name = {s.name: s for s in seeds}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise BuildError(f"build.seed_names: {missing} not in the seed file; known: {sorted(by_name)}")
        seeds = [by_name[n] for n in wanted]
    seeds = [s for s in seeds if s.heavy_atoms <= cfg.max_heavy_atoms][: cfg.n_seeds]
    specs = [MoleculeSpec(s.name, s.smiles, "seed", s.name, 1.0, s.heavy_atoms) for s in seeds]
    if cfg.n_selected <= 0:
        return specs, None
    result = run_selection(cfg, cfg.n_selected, select_ray)
    if len(result.selected) < cfg.n_selected:
        raise BuildError(
            f"library {library_label(cfg.library or default_library())}: only {len(result.selected)} of "
            f"{cfg.n_selected} requested compounds pass the selection protocol (yield per criterion: "
            + ", ".join(f"{y['criterion']} -{y['rejected']}" for y in result.yields)
            + "). Use a larger library (--library, e.g. a PubChem CID-SMILES dump), lower "
            "build.n_selected, or widen build.selection.similarity_min"
            + (f". {result.invalid_note()}" if result.invalid_note() else "")
        )
    taken = {s.molecule_id for s in specs}
    for row in result.rows():
        mid = "lib-" + _UNSAFE.sub("_", row["compound_id"])
        base, k = mid, 2
        while mid in taken:  # libraries may repeat an id
            mid, k = f"{base}-{k}", k + 1
        taken.add(mid)
        specs.append(MoleculeSpec(mid, row["smiles"], "selected", row["seed_parent"], row["similarity_to_seed"],
                                  row["heavy_atoms"], row["compound_id"], row["max_similarity_to_selected"]))
    return specs, result
