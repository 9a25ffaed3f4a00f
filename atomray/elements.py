"""Element data: standard atomic masses by atomic number, the one table every layer uses.

    atomic_masses(np.array([6, 1, 0]))   # array([12.011, 1.008, 0.], dtype=float32): u, 0 → 0

Masses are the IUPAC standard atomic weights as ASE tabulates them (`ase.data.atomic_masses`).
Atomic number 0 marks padding and gets mass 0, so padded atoms never move a centre of mass.
"""

from __future__ import annotations

import numpy as np


def atomic_masses(atomic_numbers: np.ndarray) -> np.ndarray:
    """Standard atomic masses (u, float32) of atomic numbers (any shape); 0 → 0."""
    from ase.data import atomic_masses as table

    z = np.asarray(atomic_numbers, dtype=np.int64)
    return np.where(z > 0, table[np.clip(z, 0, len(table) - 1)], 0.0).astype(np.float32)


def mass_table(max_atomic_number: int) -> np.ndarray:
    """(max_atomic_number + 1,) float64 masses indexed by atomic number, index 0 = padding (0)."""
    return atomic_masses(np.arange(max_atomic_number + 1)).astype(np.float64)
