"""Potential-energy engines behind one interface, and the seeded starting geometry.

An engine maps positions (N, 3) in Å to (energy in eV, forces (N, 3) in eV/Å). Engines:

    gfn2   GFN2-xTB from tblite (the default; semi-empirical tight binding)
    gfn1   GFN1-xTB from tblite
    mmff   RDKit MMFF94 (classical, ~0.02 ms per gradient: for tests)
    orca   PBE/def2-SVP/D4 through ASE's ORCA calculator — the paper's level of theory
           (§3.3); needs an `orca` executable on PATH

`reset()` drops any state carried from one call to the next (tblite's previous wavefunction,
used as the SCF guess). The builder resets at the start of every trajectory segment, so a
run resumed at a segment boundary repeats exactly the calls of an uninterrupted run.
`n_evaluations` counts force calls (the builder logs it to prove what was recomputed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Protocol

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem, Descriptors

HARTREE_EV = 27.211386245988  # CODATA 2018
BOHR_A = 0.529177210903
KCAL_MOL_EV = 0.0433641043  # 1 kcal/mol in eV

ENGINES = ("gfn2", "gfn1", "mmff", "orca")


class EngineError(RuntimeError):
    """An engine cannot be built or failed to evaluate; the message names the molecule."""


class Engine(Protocol):
    """What the integrators need from a potential."""

    name: str
    theory: str
    n_evaluations: int

    def forces(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """(energy eV, forces (N, 3) eV/Å) at positions (N, 3) Å."""
        ...

    def reset(self) -> None:
        """Forget state carried between calls (e.g. an SCF guess)."""
        ...


def molecule_with_hydrogens(smiles: str, where: str) -> Chem.Mol:
    """RDKit molecule with explicit hydrogens; the atom order is fixed by the SMILES."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise EngineError(f"{where}: invalid SMILES {smiles!r}")
    return Chem.AddHs(mol)


def embed(mol: Chem.Mol, seed: int, where: str) -> np.ndarray:
    """A seeded ETKDG conformer (N, 3) in Å, MMFF-cleaned so every engine starts sane."""
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed) % (2**31 - 1)
    mol = Chem.Mol(mol)
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise EngineError(f"{where}: RDKit ETKDG embedding failed (seed {seed})")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    return np.array(mol.GetConformer().GetPositions(), dtype=np.float64)


class MMFFEngine:
    """RDKit MMFF94 (kcal/mol and kcal/mol/Å converted to eV and eV/Å)."""

    name = "mmff"
    theory = "MMFF94"

    def __init__(self, mol: Chem.Mol, where: str):
        props = AllChem.MMFFGetMoleculeProperties(mol)
        if props is None:
            raise EngineError(f"{where}: MMFF94 has no parameters for this molecule")
        if mol.GetNumConformers() == 0:  # RDKit builds the force field around a conformer
            mol = Chem.Mol(mol)
            mol.AddConformer(Chem.Conformer(mol.GetNumAtoms()), assignId=True)
        self._mol = mol
        self._ff = AllChem.MMFFGetMoleculeForceField(mol, props, nonBondedThresh=100.0)
        self.n_evaluations = 0

    def forces(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        flat = np.asarray(positions, dtype=np.float64).ravel().tolist()
        energy = self._ff.CalcEnergy(flat) * KCAL_MOL_EV
        grad = np.asarray(self._ff.CalcGrad(flat), dtype=np.float64).reshape(-1, 3)
        self.n_evaluations += 1
        return energy, -grad * KCAL_MOL_EV

    def reset(self) -> None:
        pass


class TBLiteEngine:
    """GFN2-xTB / GFN1-xTB from tblite (atomic units converted to eV, Å). Neutral or charged
    closed/open shell from the SMILES' formal charge and radical electrons."""

    def __init__(self, mol: Chem.Mol, method: str, where: str):
        from tblite.interface import Calculator

        self.name = {"GFN2-xTB": "gfn2", "GFN1-xTB": "gfn1"}[method]
        self.theory = method
        self._where = where
        self._z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
        self._method = method
        self._charge = Chem.GetFormalCharge(mol)
        self._uhf = Descriptors.NumRadicalElectrons(mol)
        self._calc_cls = Calculator
        self._calc = None
        self._result = None
        self.n_evaluations = 0

    def forces(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        bohr = np.asarray(positions, dtype=np.float64) / BOHR_A
        try:
            if self._calc is None:
                self._calc = self._calc_cls(self._method, self._z, bohr, charge=float(self._charge), uhf=self._uhf)
                self._calc.set("verbosity", 0)
            else:
                self._calc.update(bohr)
            # the previous wavefunction is the SCF guess: ~2x fewer iterations per MD step
            self._result = self._calc.singlepoint(self._result)
        except (RuntimeError, ValueError) as err:  # tblite's TBLiteRuntimeError / TBLiteValueError
            raise EngineError(f"{self._where}: {self._method} failed: {err}") from None
        self.n_evaluations += 1
        energy = float(self._result.get("energy")) * HARTREE_EV
        grad = np.asarray(self._result.get("gradient"), dtype=np.float64)
        return energy, -grad * (HARTREE_EV / BOHR_A)

    def reset(self) -> None:
        self._calc = None
        self._result = None


class OrcaEngine:
    """PBE/def2-SVP/D4 single points (energy + gradient) through ASE's ORCA calculator."""

    name = "orca"
    theory = "PBE/def2-SVP/D4"

    def __init__(self, mol: Chem.Mol, where: str, executable: str):
        from ase import Atoms
        from ase.calculators.orca import ORCA, OrcaProfile

        self._workdir = tempfile.mkdtemp(prefix="atomray-orca-")
        mult = Descriptors.NumRadicalElectrons(mol) + 1
        self._atoms = Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()])
        self._atoms.calc = ORCA(
            profile=OrcaProfile(command=executable),
            directory=self._workdir,
            charge=Chem.GetFormalCharge(mol),
            mult=mult,
            orcasimpleinput="PBE def2-SVP D4 EnGrad TightSCF",
            orcablocks="%pal nprocs 1 end",
        )
        self._where = where
        self.n_evaluations = 0

    def forces(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        self._atoms.positions = np.asarray(positions, dtype=np.float64)
        try:
            energy = float(self._atoms.get_potential_energy())
            forces = np.asarray(self._atoms.get_forces(), dtype=np.float64)
        except Exception as err:  # ASE raises calculator-specific errors
            raise EngineError(f"{self._where}: ORCA failed in {self._workdir}: {err}") from None
        self.n_evaluations += 1
        return energy, forces

    def reset(self) -> None:
        pass


def orca_executable() -> str:
    """Path of the `orca` executable, or EngineError naming what is missing and the choices."""
    path = shutil.which("orca")
    if path is None:
        others = ", ".join(e for e in ENGINES if e != "orca")
        raise EngineError(
            "engine 'orca' needs the ORCA quantum-chemistry program: no executable named 'orca' "
            f"on PATH ({os.environ.get('PATH', '')}). Install ORCA and put it on PATH, or choose "
            f"one of the engines available here: {others}"
        )
    return path


def make_engine(name: str, mol: Chem.Mol, where: str = "molecule") -> Engine:
    """The engine called `name` for an RDKit molecule with explicit hydrogens."""
    if name == "mmff":
        return MMFFEngine(mol, where)
    if name in ("gfn2", "gfn1"):
        return TBLiteEngine(mol, "GFN2-xTB" if name == "gfn2" else "GFN1-xTB", where)
    if name == "orca":
        return OrcaEngine(mol, where, orca_executable())
    raise EngineError(f"{where}: unknown engine {name!r}; expected one of {', '.join(ENGINES)}")


def engine_theory(name: str) -> str:
    """Level of theory of an engine name, for the molecules table."""
    return {"gfn2": "GFN2-xTB", "gfn1": "GFN1-xTB", "mmff": "MMFF94", "orca": "PBE/def2-SVP/D4"}[name]


def engine_version(name: str) -> str:
    """Package providing the engine and its version, for provenance."""
    from importlib.metadata import PackageNotFoundError, version

    package = {"gfn2": "tblite", "gfn1": "tblite", "mmff": "rdkit", "orca": "ase"}[name]
    try:
        return f"{package} {version(package)}"
    except PackageNotFoundError:
        return package
