"""How far each molecule's harmonic prior puts a mode's own minimum from the refined minimum.

    python benchmarks/soft_mode_offsets.py "CC(=O)NC" "CC(O)=CC(C)=O" "CCCCCC" "COc1ccccc1"

For each SMILES (RDKit embedding, seed 0): the MMFF94 minimum refined with GFN2-xTB
(`atomray.priors.minima`), its normal modes and the residual force on each
(`atomray.priors.modes.normal_modes`). The harmonic prior oscillates mode k about
c_k = f_k / ω_k² (`atomray.priors.modes`): a residual force on a soft mode puts that centre far
from the minimum. Prints one JSON line per molecule, then one with all of them last: the four
lowest wavenumbers (cm⁻¹), the three largest |c_k| (Å √u) with their wavenumbers, and the largest
Cartesian displacement of any atom that the centres imply (Å). A few seconds per molecule.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def offsets(smiles: str) -> dict:
    from atomray.elements import atomic_masses
    from atomray.predict import state_from_smiles
    from atomray.priors.minima import gfn2_minimum, mmff_minimum
    from atomray.priors.modes import CM_TO_OMEGA, normal_modes

    state = state_from_smiles(smiles, 300.0, 0)
    z = state.atomic_numbers
    minimum = gfn2_minimum(mmff_minimum(state.positions, z), z)
    omega, modes, force = normal_modes(minimum, z)
    wavenumber, centre = omega / CM_TO_OMEGA, force / omega**2
    mass = atomic_masses(z).astype(np.float64)
    shift = (modes @ centre).reshape(len(z), 3) / np.sqrt(mass)[:, None]  # Å, all centres at once
    top = np.argsort(-np.abs(centre))[:3]
    return {"smiles": smiles, "lowest_cm1": np.round(np.sort(wavenumber)[:4], 1).tolist(),
            "largest_centre_a_sqrt_u": np.round(np.abs(centre[top]), 3).tolist(),
            "at_cm1": np.round(wavenumber[top], 0).tolist(),
            "largest_atom_shift_a": round(float(np.linalg.norm(shift, axis=1).max()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("smiles", nargs="+")
    args = parser.parse_args()
    rows = [offsets(s) for s in args.smiles]
    for row in rows:
        print(json.dumps(row))
    print(json.dumps({"molecules": rows}))


if __name__ == "__main__":
    main()
