"""Rollout speed against the MD engine it would replace.

    python benchmarks/bench_rollout.py [--model CKPT] [--repeats 3] [--steps 10] [--md-steps 200]
                                       [--step-fs FS] [--thermostat csvr|none] [--lags 0 5]
                                       [--position-noise HEAVY H [--hydrogen-noise-axes across]
                                        [--no-group-hydrogen-noise]] [--rotor-radii]
                                       [--rotor-heights | --height-feedback FS] [--thermostat-groups hydrogens]
                                       [--proton-hops] [--rotor-turns [--turn-every N] [--turn-energy mmff] [--no-turn-jumps]]
                                       [--structure FILE --reference refs/reference-<hash>.npz]
    python benchmarks/bench_rollout.py --repeats 1 --steps 1 --md-steps 20      # runs it

ATOM: a rollout (`atomray.rollout.rollout`, velocities by the centred difference over four
extra lags, or from the model's velocity head when it has one: `--lags 1` then asks for ΔT
alone) of a batch of 64 start states of tg80-mini (its 16 molecules × 4 frames, every
atom; 9-28 atoms each) in steps of the model's ΔT (its longest training horizon), on 2 CPU
threads; `--model` a checkpoint directory (default: the architecture of
jobs/configs/pretrain.yaml, untrained: the speed is the same, and its zero correction keeps the
states physical). The timed rollout includes each step's prior paths, computed on the host
for the new states as the data path computes them (`atomray.predict.state_windows`: rigid-body
motion, basins through the machine's basin store `atomray.priors.store` — MMFF94 per state,
GFN2-xTB and a Hessian per basin not yet in the store —, normal-mode vibration, MMFF94 MD with
an anharmonic prior) and the velocity control between steps (`--thermostat csvr`, the default:
momentum conservation and the CSVR thermostat, as `jobs/rollout.py` runs by default; `none`:
neither; `--position-noise 0.005 0`, the rollout recipe's noise on the predicted positions, is
part of the control and of its share; so are `--rotor-radii`, `--rotor-heights`, `--height-feedback`,
`--thermostat-groups hydrogens`,
`--proton-hops`, whose GFN2-xTB single points fall only on molecules with an intramolecular
hydrogen bond: none of the batch's start frames has one, and `--rotor-turns`, whose GFN2-xTB
single points (one per state and one per terminal group every 10 steps) fall on every molecule
with a methyl, amino or hydroxyl group; `--structure FILE --reference NPZ` times
instead 64 states of one molecule, evenly spaced over the reference MD `jobs/rollout.py
--reference-cache` kept for it, e.g. the H-bonded enol of acetylacetone with its hops). A warm-up step first puts the start states' basins into the store
(atom_warmup_s: minutes when the store is empty, each new basin costing a GFN2-xTB refinement
and Hessian).
GFN2-xTB: NVE velocity Verlet (1 fs) of aspirin through the tg80 engines (tblite), one
molecule per core on 2 cores at once, for `--md-steps` steps.

Prints one JSON line (the last line of output) with
    atom_fs_per_s        simulated fs per wall-second, summed over the batch (median of repeats)
    gfn2_fs_per_s        simulated fs per wall-second, summed over the 2 cores (median of repeats)
    speedup_vs_gfn2      their ratio (target >= 1000)
    control_share        the velocity control's share of the rollout's wall time
and the raw timings; with several `--lags`, per number of lags per step its rate, speed-up and
its ratio to the first's, paired repeat by repeat. The figures in docs/benchmarks.md (206 061 fs/s, 1133×, 2026-12-01) came
from the code before the priors moved to the data path, when the prior's physics ran inside
the model's forward pass.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core per MD engine, before tblite loads

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
CORES = 2


def start_states(root: Path, n: int):
    """n start states: every molecule of the data set at evenly spaced frames."""
    from atomray.data.dataset import read_molecules
    from atomray.rollout import state_from_dataset

    table = read_molecules(root)
    ids, frames = table.column("molecule_id").to_pylist(), table.column("n_frames").to_pylist()
    per = -(-n // len(ids))
    states = [state_from_dataset(root, m, int(k * (f - 1) / per)) for m, f in zip(ids, frames) for k in range(per)]
    return states[:n]


def reference_states(structure: str, reference: str, n: int):
    """n states of the molecule in `structure` (its atoms, in the reference's order), evenly spaced
    over the frames of its cached reference MD (positions and velocities)."""
    import numpy as np
    from ase.io import read

    from atomray.predict import InitialState

    z = read(structure).numbers
    with np.load(reference) as ref:
        positions, velocities = ref["positions"], ref["velocities"]
    if positions.shape[1] != len(z):
        raise SystemExit(f"--reference {reference}: {positions.shape[1]} atoms, --structure {structure} {len(z)}")
    frames = np.linspace(0, len(positions) - 1, n).astype(int)
    return [InitialState(f"{Path(structure).stem}@{k}", z, positions[k].astype(np.float64),
                         velocities[k].astype(np.float64)) for k in frames]


def atom_rates(model_dir: str, steps: int, repeats: int, control, step_fs: float = 0.0, lags: tuple[int, ...] = (0,),
               states: list | None = None) -> tuple[dict[int, list[float]], float, int, float, float]:
    """Simulated fs per wall-second of each repeat for each number of lags per step (the lags
    timed in turn within each repeat, so their ratio is paired), the stride, the largest
    molecule, the warm-up seconds and the velocity control's median share."""
    import torch

    from atomray.checkpoint import load_model
    from atomray.config import load_config
    from atomray.model import build_model
    from atomray.rollout import default_step_fs, rollout

    torch.set_num_threads(CORES)
    if model_dir:
        model, cfg = load_model(model_dir)
    else:
        cfg = load_config(ROOT / "jobs" / "configs" / "pretrain.yaml")
        model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k).eval()
    states = states or start_states(ROOT / "data" / "tg80-mini", BATCH)
    step = step_fs or default_step_fs(cfg)
    t0 = time.perf_counter()
    rollout(model, cfg, states, total_fs=step, step_fs=step, control=control)  # warm-up: basins into the store
    warmup = time.perf_counter() - t0
    rates, shares = {p: [] for p in lags}, []
    for _ in range(repeats):
        for p in lags:
            traj = rollout(model, cfg, states, total_fs=steps * step, step_fs=step, control=control, lags=p)
            rates[p].append(traj.simulated_fs / traj.seconds)
            shares.append(traj.control_seconds / traj.seconds)
    return rates, step, max(len(s.atomic_numbers) for s in states), warmup, statistics.median(shares)


def _gfn2_worker(steps: int) -> tuple[float, float]:
    """(seconds, simulated fs) of `steps` GFN2-xTB NVE steps of aspirin in this process (after set-up)."""
    import numpy as np

    from atomray.tg80.dynamics import MDConfig, prepare_state, run_steps
    from atomray.tg80.engines import embed, make_engine, molecule_with_hydrogens

    mol = molecule_with_hydrogens("CC(=O)Oc1ccccc1C(=O)O", "aspirin")
    masses = np.array([a.GetMass() for a in mol.GetAtoms()])
    engine = make_engine("gfn2", mol, "aspirin")
    cfg = MDConfig(equilibration_fs=20.0, production_fs=float(steps), segment_fs=float(steps))
    state = prepare_state(engine, embed(mol, 0, "aspirin"), masses, cfg, seed=0)
    t0 = time.perf_counter()
    run_steps(state, engine, masses, cfg, steps, "nve", record=True)
    return time.perf_counter() - t0, steps * cfg.dt_fs


def gfn2_rates(steps: int, repeats: int) -> list[float]:
    rates = []
    with multiprocessing.get_context("spawn").Pool(CORES) as pool:
        for _ in range(repeats):
            runs = pool.map(_gfn2_worker, [steps] * CORES)
            rates.append(sum(fs for _, fs in runs) / max(s for s, _ in runs))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="checkpoint directory (default: untrained pretrain.yaml ATOM)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="rollout steps of ΔT per repeat")
    parser.add_argument("--md-steps", type=int, default=200, help="GFN2-xTB MD steps (1 fs) per repeat")
    parser.add_argument("--step-fs", type=float, default=0.0, help="rollout stride (default: the longest trained horizon)")
    parser.add_argument("--thermostat", default="csvr", choices=["csvr", "none"],
                        help="csvr: momentum control and the CSVR thermostat between steps (default)")
    parser.add_argument("--lags", nargs="+", type=int, default=[0],
                        help="lags per model call (0: the model's own; 5: one frame and the four difference lags); "
                             "several are timed in turn, paired, the first is the headline")
    parser.add_argument("--position-noise", type=float, nargs=2, default=(0.0, 0.0), metavar=("HEAVY", "H"),
                        help="Å per axis on each step's predicted positions (with --thermostat csvr)")
    parser.add_argument("--hydrogen-noise-axes", choices=("all", "across"), default="all",
                        help="the hydrogens' noise on every axis or across their bond (jobs/rollout.py's option)")
    parser.add_argument("--no-group-hydrogen-noise", action="store_true",
                        help="no noise on the hydrogens of terminal groups of two or more (jobs/rollout.py's option)")
    parser.add_argument("--rotor-radii", action="store_true",
                        help="terminal groups' hydrogens back on their circles after every step (with --thermostat csvr)")
    parser.add_argument("--rotor-heights", action="store_true",
                        help="with --rotor-radii, those hydrogens also at their minimum's height along the axis")
    parser.add_argument("--height-feedback", type=float, default=0.0, metavar="FS",
                        help="with --rotor-radii, steer each terminal group's mean height to its minimum's, this "
                             "time constant (fs; 0: off)")
    parser.add_argument("--thermostat-groups", choices=("molecule", "hydrogens"), default="molecule",
                        help="CSVR's coupling groups (with --thermostat csvr)")
    parser.add_argument("--proton-hops", action="store_true",
                        help="Metropolis hops of hydrogen-bonded protons on the GFN2-xTB energy (with --thermostat csvr)")
    parser.add_argument("--rotor-turns", action="store_true",
                        help="Metropolis turns of terminal groups on the GFN2-xTB energy (with --thermostat csvr)")
    parser.add_argument("--turn-every", type=int, default=10, metavar="STEPS",
                        help="steps between rotor-turn attempts (default 10; time >= that many --steps)")
    parser.add_argument("--turn-energy", choices=("gfn2", "mmff"), default="gfn2",
                        help="the energy rotor turns are accepted on (default gfn2)")
    parser.add_argument("--no-turn-jumps", dest="turn_jumps", action="store_false",
                        help="rotor turns without the jump by the group's symmetry (atomray.rollout.Control.turn_jumps)")
    parser.add_argument("--structure", default="", help="with --reference: time 64 states of this molecule instead")
    parser.add_argument("--reference", default="", help="its cached reference MD (jobs/rollout.py --reference-cache)")
    args = parser.parse_args()
    if bool(args.structure) != bool(args.reference):
        parser.error("--structure and --reference go together")
    if (args.proton_hops or args.rotor_turns or args.thermostat_groups != "molecule") and args.thermostat != "csvr":
        parser.error("--proton-hops, --rotor-turns and --thermostat-groups are part of the control: they need "
                     "--thermostat csvr")
    if any(args.position_noise) and args.thermostat != "csvr":
        parser.error("--position-noise is part of the control: it needs --thermostat csvr")
    if args.rotor_radii and args.thermostat != "csvr":
        parser.error("--rotor-radii is part of the control: it needs --thermostat csvr")
    from atomray.data.frames import DataError
    from atomray.rollout import Control

    try:  # Control says what goes with what (rotor heights and the feedback need the radii)
        control = (Control(momentum=True, thermostat="csvr", position_noise_a=tuple(args.position_noise),
                           hydrogen_noise_axes=args.hydrogen_noise_axes,
                           group_hydrogen_noise=not args.no_group_hydrogen_noise,
                           rotor_radii=args.rotor_radii, rotor_heights=args.rotor_heights,
                           groups=args.thermostat_groups, proton_hops=args.proton_hops,
                           height_feedback_fs=args.height_feedback, rotor_turns=args.rotor_turns,
                           turn_every=args.turn_every, turn_energy=args.turn_energy, turn_jumps=args.turn_jumps)
                   if args.thermostat == "csvr" else Control())
    except DataError as error:
        parser.error(str(error))

    states = reference_states(args.structure, args.reference, BATCH) if args.structure else None
    by_lags, step_fs, max_atoms, warmup_s, control_share = atom_rates(args.model, args.steps, args.repeats, control,
                                                                      args.step_fs, tuple(args.lags), states)
    atom = by_lags[args.lags[0]]
    gfn2 = gfn2_rates(args.md_steps, args.repeats)
    result = {
        "atom_fs_per_s": statistics.median(atom), "gfn2_fs_per_s": statistics.median(gfn2),
        "speedup_vs_gfn2": statistics.median(atom) / statistics.median(gfn2),
        "atom_runs_fs_per_s": atom, "gfn2_runs_fs_per_s": gfn2, "batch": BATCH, "max_atoms": max_atoms,
        "step_fs": step_fs, "thermostat": args.thermostat, "control_share": round(control_share, 4),
        "position_noise_a": list(args.position_noise), "rotor_radii": args.rotor_radii,
        "rotor_heights": args.rotor_heights, "height_feedback_fs": args.height_feedback,
        "thermostat_groups": args.thermostat_groups,
        "proton_hops": args.proton_hops, "rotor_turns": args.rotor_turns,
        "turn_every": args.turn_every if args.rotor_turns else None,
        "turn_energy": args.turn_energy if args.rotor_turns else None,
        "turn_jumps": args.turn_jumps if args.rotor_turns else None, "states": args.structure or "tg80-mini",
        "rotor_circles": bool(args.model) and _circles(args.model),
        "atom_warmup_s": round(warmup_s, 2), "cores": CORES, "model": args.model or "jobs/configs/pretrain.yaml (untrained)",
        "lags": args.lags[0],
    }
    if len(args.lags) > 1:
        result["by_lags"] = {str(p): {"atom_fs_per_s": statistics.median(r),
                                      "speedup_vs_gfn2": statistics.median(r) / statistics.median(gfn2),
                                      "paired_ratio_to_first": statistics.median(
                                          [a / b for a, b in zip(r, by_lags[args.lags[0]])])}
                             for p, r in by_lags.items()}
    print(json.dumps(result))


def _circles(model_dir: str) -> bool:
    from atomray.checkpoint import read_config

    return read_config(model_dir).model.rotor_circles


if __name__ == "__main__":
    main()
