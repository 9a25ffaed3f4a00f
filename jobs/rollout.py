"""Roll a trained model out to long times and check the result against reference MD.

    python jobs/rollout.py --model ray_results/<run>/best --test-molecules --starts 10 --total-ps 50
    python jobs/rollout.py --model models:/atom@champion --data data/tg80-mini --molecules aspirin ethanol
    python jobs/rollout.py --model CKPT --smiles "CC(=O)Nc1ccc(O)cc1" --reference-engine gfn2 --total-ps 20
    python jobs/rollout.py --model CKPT --test-molecules --momentum --thermostat csvr --temperature 300

Start states are `--starts` frames of each molecule of `--data` (default: the model's own data
set), evenly spaced over its trajectory, for `--molecules` or the test molecules of the model's
own split (`--test-molecules`, e.g. a CV fold's); or for a SMILES (3-D embedding) or a structure
file (--structure), frames evenly spaced over fresh reference MD equilibrated at --temperature
(--equilibrate-fs; with 0, the structure itself with Maxwell–Boltzmann velocities, or the file's,
one rollout per seed). A SMILES starts from its first ETKDG embedding, or with `--conformers K`
from the lowest GFN2-xTB minimum of K embeddings of the same stereoisomer (a reference from a
rotamer kcal/mol above another measures its decay, not the molecule at --temperature). All
rollouts run as one batch in steps of `--step-fs` (default: the longest horizon the model trained
on; `atomray.rollout`).
Between steps, `--momentum` keeps each start's linear and angular momentum exactly and
`--thermostat csvr` holds the internal motion at --temperature (NVT, `atomray.rollout.Control`);
`--thermostat langevin` does so atom by atom, so no atom group runs hotter than another;
`--thermostat-groups hydrogens` couples CSVR to the hydrogens and the heavy atoms apart;
`--thermostat-target reference` holds each molecule at its reference MD's internal temperature;
`--position-noise HEAVY H` adds Gaussian noise (Å per axis) to each step's predicted positions
(`--position-noise 0.005 0` at 50 fs is the measured choice: docs/experiments.md);
`--rotor-radii` puts terminal groups' hydrogens back on their circles (`--height-feedback FS`:
and steers each group's mean height along its axis to the minimum's); `--proton-hops` lets a
molecule with an intramolecular hydrogen bond hop to its other tautomer (Metropolis on the
GFN2-xTB energy, every `--hop-every` steps; `atomray.proton_hops`); `--rotor-turns` turns each
terminal group about its bond the same way (every `--turn-every` steps; `atomray.rotor_turns`;
on GFN2-xTB's energy half the rollout's time on methyl-rich batches, `--turn-energy mmff` a
tenth); `--torsion-turns` turns the smaller side of each rotatable heavy-atom bond by ±120° or
180° on the same steps (on `--torsion-energy`, default GFN2-xTB's; `atomray.rotor_turns.TorsionTurns`;
measured and off in the recipe); `--match-torsions R` vibrates a state more than R Å RMS from its
basin's minimum, in its step's prior, about the minimum with the state's saturated torsions
(`atomray.rollout.Control.match_torsions_a`; measured and off in the recipe). Each step's prior keeps the start's bond graph
(`--basin-bonds start`), the proton's bond moved with each hop.
`--recipe` sets the measured rollout recipe in one flag (`RECIPE`: momentum, CSVR at τ 20 fs with
the hydrogens coupled apart, 50 fs steps, one lag for a velocity head, 0.005 Å of noise on the
heavy atoms and 0.02 Å across the bonds of the hydrogens outside methyl-like groups, rotor radii
with their mean heights steered to the minimum's over 1 ps, proton hops, rotor turns on MMFF94's
energy, each methyl also jumping by a third of a turn unless `--no-turn-jumps`); any of those
options given on the command line wins (one given at its default value counts as not given, except `--no-momentum`, `--height-feedback 0`, `--no-rotor-turns`,
`--turn-energy gfn2`, `--hydrogen-noise-axes all`, `--group-hydrogen-noise` and an explicit
`--position-noise`, which are kept).
`--stride-sweep` first rolls out at each of several strides (stride_sweep.csv / .png) and runs the
main rollout at the largest that holds; `--energy-drift` evaluates the total energy of every step
start with --reference-engine and reports its drift. The floor a trained model must beat rolls
out beside it by default: the checkpoint's prior with a zero correction from the same starts, with
the same seed and controls (`prior_*` columns, the plots' dashed line, and a second verdict line
naming each molecule and figure where the prior alone is as close or closer: a defect, whatever
the targets say; `--no-prior-floor` skips it); `--prior-only` rolls out the prior instead.

Reference MD: the molecule's trajectory in the data set, or for a SMILES fresh NVE MD through
the tg80 engines after --equilibrate-fs of Langevin dynamics (--reference-engine gfn2 | gfn1 |
mmff; for --structure the bonds are perceived from the geometry; with a --thermostat, or with
`--reference-ensemble nvt`, Langevin MD at --temperature instead of NVE, which holds one small
molecule at the temperature an NVT rollout is held at; `--reference-cache DIR` keeps it for the
next run with the same molecule, engine, ensemble, length and temperature; `--reference-runs K`
runs K such references, each equilibrated from its own seed, joins them, and spaces the starts
over all of them: one 100-ps run cannot pin a flexible molecule's conformer populations, and its
two halves say so; `--reference-workers W` runs W of them at once, one process each, by default
one per core). Writes to --out
one extxyz per rollout (every atom the model predicts), rollouts.csv, rollouts.md (the table and the verdicts), failures.csv
(per rollout: whether it holds and, where it breaks, when, how, and which two atoms; printed too)
and a structure plot per molecule, and logs an MLflow run (experiment --experiment) with the
per-molecule and mean figures: stability coefficient, time to first failure, Wasserstein-1 of
bond lengths / angles / dihedrals / radius of gyration beside the same distances between the
reference's two halves (the reference's own noise), rotamer transitions per 100 ps of the
saturated rotatable bonds beside the reference's (a rollout that keeps its start's conformers
shows 0), temperatures (with the rotation, and of the internal motion alone: the verdict judges
the internal one, which is what a thermostat holds; a rollout with momentum control keeps its
start's rotation), and the prior alone's stability and W1 beside the model's (`prior_*`,
`molecules_beating_prior`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time


# `--recipe`: the rollout controls measured best (docs/results.md, "The recipe", "Proton hops", "Rotor turns",
# "Methyl heights steered" and "The recipe now"); every
# option the command line sets itself wins over the recipe's.
RECIPE = {"momentum": True, "thermostat": "csvr", "tau_fs": 20.0, "step_fs": 50.0, "position_noise": [0.005, 0.02],
          "hydrogen_noise_axes": "across", "group_hydrogen_noise": False, "rotor_radii": True,
          "height_feedback": 1000.0, "thermostat_groups": "hydrogens", "proton_hops": True, "rotor_turns": True,
          "turn_energy": "mmff"}


def apply_recipe(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """Set every `RECIPE` option the command line left at its default; returns the options set."""
    changed = []
    for key, value in RECIPE.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)
            changed.append(key)
    return changed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint dir/URI, runs:/ID/checkpoint or models:/NAME@ALIAS")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--molecules", nargs="+", help="molecules of --data to roll out")
    source.add_argument("--test-molecules", action="store_true", help="the test molecules of the model's split")
    source.add_argument("--smiles", help="a new molecule as SMILES (reference: fresh MD)")
    source.add_argument("--structure", help="a start structure ase.io.read reads (reference: fresh MD; velocities "
                                            "from the file, else drawn at --temperature)")
    parser.add_argument("--data", default="", help="data set (default: the model's data.path)")
    parser.add_argument("--starts", type=int, default=10, help="rollouts per molecule (default 10)")
    parser.add_argument("--total-ps", type=float, default=50.0, help="length of each rollout, ps (default 50)")
    parser.add_argument("--step-fs", type=float, default=0.0, help="ΔT per step (default: longest trained horizon)")
    parser.add_argument("--delta-fs", type=float, default=1.0,
                        help="spacing of the lags whose difference gives the next velocities (default 1 fs)")
    parser.add_argument("--reference-engine", default="gfn2", choices=["gfn2", "gfn1", "mmff"],
                        help="engine of the fresh reference MD for --smiles / --structure and of --energy-drift "
                             "(default gfn2)")
    parser.add_argument("--equilibrate-fs", type=float, default=1000.0,
                        help="--smiles / --structure: Langevin dynamics at --temperature before the reference NVE "
                             "MD, whose frames are then the starts (default 1000 fs; 0: start from the structure "
                             "with drawn velocities, one start per seed)")
    parser.add_argument("--conformers", type=int, default=1, metavar="K",
                        help="--smiles: start from the lowest GFN2-xTB minimum of K embeddings with the first one's "
                             "stereochemistry instead of the first embedding (default 1: the first embedding)")
    parser.add_argument("--reference-ensemble", choices=("auto", "nve", "nvt"), default="auto",
                        help="--smiles / --structure: the fresh reference MD after equilibration: NVE, or NVT "
                             "(Langevin at --temperature), whose distributions are those an NVT rollout is held "
                             "at; auto: NVT when a --thermostat runs, else NVE (default auto)")
    parser.add_argument("--reference-runs", type=int, default=1, metavar="K",
                        help="--smiles / --structure with --equilibrate-fs > 0: K independent reference runs of "
                             "--total-ps each (each equilibrated afresh, seeds 0..K-1), joined; the starts are spaced "
                             "evenly over the joined frames. One 100-ps run cannot pin a flexible molecule's "
                             "conformer populations (default 1)")
    parser.add_argument("--reference-workers", type=int, default=0, metavar="W",
                        help="--reference-runs K > 1: compute W runs at once, each in its own process with an equal "
                             "share of the cores (0: one per core, at most K; 1: one after another in this process; "
                             "default 0, measured in docs/benchmarks.md)")
    parser.add_argument("--reference-cache", default=None, metavar="DIR",
                        help="--smiles / --structure: keep the fresh reference MD in DIR and reuse it when the same "
                             "molecule, engine, ensemble, length and temperature come again (e.g. another model; "
                             "default: none)")
    parser.add_argument("--temperature", type=float, default=300.0,
                        help="K: velocities drawn for --smiles / --structure, and the thermostat's target (default 300)")
    parser.add_argument("--momentum", action=argparse.BooleanOptionalAction, default=None,
                        help="keep each start's linear and angular momentum exactly (default off)")
    parser.add_argument("--thermostat", default="none", choices=["none", "csvr", "langevin"],
                        help="csvr: CSVR (Bussi) thermostat on the internal motion, NVT at --temperature; "
                             "langevin: a Langevin update of each atom's internal velocity (equipartition); "
                             "both need --momentum (default none)")
    parser.add_argument("--thermostat-target", choices=("temperature", "reference"), default="temperature",
                        help="the thermostat's temperature: --temperature for every molecule, or each molecule's "
                             "reference MD mean internal temperature (compare at the reference's own temperature; "
                             "default temperature)")
    parser.add_argument("--thermostat-groups", choices=("molecule", "hydrogens"), default="molecule",
                        help="CSVR's coupling groups: the molecule's internal motion as one, or the hydrogens and "
                             "the heavy atoms apart, each held at --temperature (default molecule)")
    parser.add_argument("--basin-bonds", choices=("start", "perceived"), default="start",
                        help="the bonds each step's prior minimises with: the start state's bond graph, or "
                             "perceived afresh from every predicted state (before 2026-12-06; a distorted state "
                             "can then turn into another molecule; default start)")
    parser.add_argument("--velocity", choices=("auto", "head", "difference"), default="auto",
                        help="each step's velocity at ΔT: the model's velocity head (model.predict_velocity), the "
                             "difference of four extra lags, or auto (the head when the model has one)")
    parser.add_argument("--lags", type=int, default=0,
                        help="lags per model call (default 0: the model's own; 5: the frame at ΔT and the four "
                             "difference lags only, one recorded frame per step)")
    parser.add_argument("--position-noise", type=float, nargs=2, default=(0.0, 0.0), metavar=("HEAVY", "H"),
                        help="Å: Gaussian noise per axis on each step's predicted positions (heavy atoms, hydrogens)")
    parser.add_argument("--hydrogen-noise-axes", choices=("all", "across"), default=None,
                        help="the hydrogens' position noise on every axis, or across their X-H bond only (their "
                             "bends, not their bond lengths; default all)")
    parser.add_argument("--group-hydrogen-noise", action=argparse.BooleanOptionalAction, default=None,
                        help="--no-group-hydrogen-noise: no position noise on the hydrogens of a terminal group of "
                             "two or more (a methyl, amino or =CH2 group), which drawn apart can meet on their "
                             "circle (default: they get the hydrogens' noise)")
    parser.add_argument("--rotor-radii", action="store_true",
                        help="after every step, put each methyl's, hydroxyl's and amino group's hydrogens back at "
                             "their basin minimum's distance from the group's axis (the conditional mean the "
                             "model predicts shortens a fast methyl's C-H; atomray.rollout.Control)")
    parser.add_argument("--rotor-heights", action="store_true",
                        help="with --rotor-radii, also put those hydrogens at their basin minimum's height along the "
                             "group's axis (the plane of their circle)")
    parser.add_argument("--height-feedback", type=float, default=None, metavar="FS",
                        help="with --rotor-radii, steer each terminal group's mean height along its axis towards "
                             "the basin minimum's with this time constant, fs (default and 0: off, also with "
                             "--recipe); each hydrogen keeps its own motion about that mean")
    parser.add_argument("--proton-hops", action="store_true",
                        help="between steps, try carrying each molecule with an intramolecular hydrogen bond over "
                             "to its other tautomer (the proton on the acceptor), accepted on the GFN2-xTB energy "
                             "(Metropolis; needs --momentum; atomray.proton_hops)")
    parser.add_argument("--hop-every", type=int, default=10, metavar="STEPS",
                        help="steps between proton-hop attempts (default 10: as close as every step on the "
                             "H-bonded enol at a tenth of the GFN2-xTB calls; docs/experiments.md)")
    parser.add_argument("--rotor-turns", action=argparse.BooleanOptionalAction, default=None,
                        help="between steps, try turning each methyl's, amino and hydroxyl group's hydrogens about "
                             "their bond by up to 60 degrees, accepted on the GFN2-xTB energy (Metropolis; needs "
                             "--momentum; atomray.rotor_turns)")
    parser.add_argument("--torsion-turns", action=argparse.BooleanOptionalAction, default=False,
                        help="on the rotor turns' steps, try turning the smaller side of each rotatable "
                             "heavy-atom bond by 120, -120 or 180 degrees (Metropolis; s-cis/s-trans, "
                             "gauche/anti; needs --momentum; atomray.rotor_turns.TorsionTurns)")
    parser.add_argument("--torsion-energy", choices=("gfn2", "mmff"), default="gfn2",
                        help="the energy torsion turns are accepted on (default gfn2, the reference's)")
    parser.add_argument("--match-torsions", type=float, default=math.inf, metavar="R",
                        help="a state more than R Å RMS from its basin's minimum vibrates, in its step's prior, "
                             "about the minimum with each saturated rotatable bond turned to the state's dihedral "
                             "(default never; atomray.rollout.Control.match_torsions_a)")
    parser.add_argument("--turn-every", type=int, default=10, metavar="STEPS",
                        help="steps between rotor-turn attempts (default 10)")
    parser.add_argument("--no-turn-jumps", dest="turn_jumps", action="store_false",
                        help="rotor turns only by an angle drawn in +-60 deg, without the jump by the group's symmetry "
                             "(120 deg for a methyl, 180 for an NH2) that lets a methyl reach its next rotamer")
    parser.add_argument("--turn-energy", choices=("gfn2", "mmff"), default=None,
                        help="the energy rotor turns are accepted on (default gfn2, the reference's, also with "
                             "--recipe when given; mmff: MMFF94 on the start's bond graph, far cheaper)")
    parser.add_argument("--tau-fs", type=float, default=100.0, help="the thermostat's relaxation time (default 100 fs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the thermostat's draws (default 0)")
    parser.add_argument("--stride-sweep", nargs="+", type=float, default=[], metavar="FS",
                        help="first roll out at each of these strides (e.g. 10 25 50 100 200 400): "
                             "stride_sweep.csv / .png; the main rollout then uses the largest that holds")
    parser.add_argument("--energy-drift", action="store_true",
                        help="evaluate each step start's total energy with --reference-engine and report its drift "
                             "(eV/ps; a model that predicts every atom)")
    parser.add_argument("--prior-floor", action=argparse.BooleanOptionalAction, default=True,
                        help="also roll out the checkpoint's prior with a zero correction from the same starts, "
                             "with the same seed and controls, and judge the model against it: the floor a trained "
                             "model must beat (prior_* columns, the plots' dashed line, a verdict line; "
                             "--no-prior-floor: the model alone, half the rollout time; default on)")
    parser.add_argument("--prior-only", action="store_true",
                        help="roll out the checkpoint's prior with a zero correction (the untrained network of its "
                             "config): the floor a model must beat")
    parser.add_argument("--recipe", action="store_true",
                        help="the measured rollout recipe: --momentum --thermostat csvr --tau-fs 20 --step-fs 50 "
                             "--position-noise 0.005 0 --rotor-radii --height-feedback 1000 --thermostat-groups hydrogens "
                             "--proton-hops --rotor-turns --turn-energy mmff, and "
                             "--lags 1 for a model with a velocity head; options given on the command line win")
    parser.add_argument("--out", required=True, help="output directory (a path or URI)")
    parser.add_argument("--experiment", default="atomray-rollout", help="MLflow experiment")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with `--recipe` applied."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.recipe:
        apply_recipe(args, parser)
    args.momentum = bool(args.momentum)
    args.height_feedback = args.height_feedback or 0.0  # None: not given
    args.turn_energy = args.turn_energy or "gfn2"
    args.rotor_turns = bool(args.rotor_turns)
    args.group_hydrogen_noise = args.group_hydrogen_noise is not False  # None: not given
    args.hydrogen_noise_axes = args.hydrogen_noise_axes or "all"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from atomray import tracking
    from atomray.checkpoint import CheckpointError
    from atomray.config import ConfigError, TrackingConfig
    from atomray.data.frames import DataError
    from atomray.outputs import OutputError, check_output_dir
    from atomray.storage import StorageError

    try:
        out = check_output_dir(args.out)
        if args.starts < 1 or args.total_ps <= 0 or args.step_fs < 0:
            raise ConfigError(f"--starts must be >= 1 and --total-ps > 0, found {args.starts} and {args.total_ps}")
        if args.thermostat_target == "reference" and args.thermostat == "none":
            raise ConfigError("--thermostat-target reference sets the thermostat's temperature; choose a --thermostat")
        if args.reference_ensemble == "nvt" and not (args.smiles or args.structure):
            raise ConfigError("--reference-ensemble nvt is for the fresh reference MD of --smiles / --structure; "
                              "a data set's molecules are judged against their own trajectories")
        if args.conformers < 1 or (args.conformers > 1 and not args.smiles):
            raise ConfigError(f"--conformers K (K >= 1, found {args.conformers}) picks the start of a --smiles; "
                              "a --structure or a data set's frames are their own starts")
        if args.reference_runs < 1:
            raise ConfigError(f"--reference-runs must be >= 1, found {args.reference_runs}")
        if args.reference_workers < 0:
            raise ConfigError(f"--reference-workers must be >= 0 (0: one per core), found {args.reference_workers}")
        if args.reference_runs > 1 and not ((args.smiles or args.structure) and args.equilibrate_fs > 0):
            raise ConfigError("--reference-runs > 1 is for the fresh reference MD of --smiles / --structure with "
                              "--equilibrate-fs > 0 (each run is equilibrated afresh from its own seed)")
        if args.reference_ensemble == "auto":  # judge an NVT rollout against MD at the thermostat's temperature
            args.reference_ensemble = "nvt" if args.thermostat != "none" else "nve"
        if any(not 0 < s <= 1000.0 * args.total_ps for s in args.stride_sweep):
            raise ConfigError(f"--stride-sweep: every stride must be in (0, --total-ps], found {args.stride_sweep}")
        uri = tracking.resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri))
        from atomray.rollout import Control

        control = Control(momentum=args.momentum, thermostat=args.thermostat, temperature_k=args.temperature,
                          tau_fs=args.tau_fs, seed=args.seed, groups=args.thermostat_groups,
                          position_noise_a=tuple(args.position_noise), hydrogen_noise_axes=args.hydrogen_noise_axes,
                          group_hydrogen_noise=args.group_hydrogen_noise, rotor_radii=args.rotor_radii,
                          rotor_heights=args.rotor_heights,
                          height_feedback_fs=args.height_feedback, proton_hops=args.proton_hops,
                          rotor_turns=args.rotor_turns, turn_every=args.turn_every, turn_energy=args.turn_energy,
                          turn_jumps=args.turn_jumps,
                          torsion_turns=args.torsion_turns, torsion_energy=args.torsion_energy,
                          match_torsions_a=args.match_torsions,
                          hop_every=args.hop_every)
        model, cfg, state = tracking.load_model_uri(uri, args.model, prior_only=args.prior_only)
        if args.recipe and args.lags == 0 and cfg.model.predict_velocity:
            args.lags = 1  # the velocity head needs no difference lags: one lag per step
        elements = state.elements
        from atomray.rollout import default_step_fs

        step = args.step_fs or default_step_fs(cfg)
        if step > 1000.0 * args.total_ps:
            raise ConfigError(f"--total-ps {args.total_ps:g} is shorter than one step of {step:g} fs"
                              + ("" if args.step_fs else " (the model's longest horizon; set --step-fs)"))
        states, molecule_of, references = start_states(args, cfg)
    except (DataError, ConfigError, CheckpointError, OutputError, StorageError, LookupError, OSError) as err:
        print(f"rollout: error: {err}", file=sys.stderr)
        return 2
    from atomray.outputs import staged

    with staged(out) as local:  # a URI --out: written locally, then copied there
        return run(args, model, cfg, elements, states, molecule_of, references, local, uri, control)


def start_states(args, cfg):
    """(states, molecule of each, {molecule: Reference or None until computed})."""
    import numpy as np

    from atomray.data.dataset import read_molecules
    from atomray.data.frames import DataError
    from atomray.predict import state_from_smiles
    from atomray.rollout import state_from_dataset

    if args.smiles or args.structure:
        from atomray.predict import state_from_file

        def draw(seed):
            if args.smiles:
                return state_from_smiles(args.smiles, args.temperature, seed, args.conformers)
            return state_from_file(args.structure, args.temperature, seed)

        first = draw(0)
        label = args.smiles or first.name
        if args.equilibrate_fs > 0:  # the starts come from the equilibrated reference MD (`run`)
            return [first], [label], {"__equilibrate__": first}
        states = [first] + [draw(seed) for seed in range(1, args.starts)]
        for seed, s in enumerate(states):
            s.name = f"{'smiles' if args.smiles else s.name}-seed{seed}"
        return states, [label] * len(states), {}
    root = args.data or cfg.data.path
    table = read_molecules(root)
    ids, n_frames = table.column("molecule_id").to_pylist(), dict(zip(table.column("molecule_id").to_pylist(),
                                                                      table.column("n_frames").to_pylist()))
    if args.test_molecules:
        from atomray.data.splits import run_split

        molecules = run_split(cfg.data).test
    else:
        molecules = args.molecules or ids
    unknown = [m for m in molecules if m not in n_frames]
    if unknown:
        raise DataError(f"{root}: no molecule(s) {unknown} (it holds {', '.join(ids[:20])})")
    states, molecule_of = [], []
    for m in molecules:
        for frame in np.linspace(0, n_frames[m] - 1, args.starts + 1)[:-1].astype(int):
            states.append(state_from_dataset(root, m, int(frame)))
            molecule_of.append(m)
    return states, molecule_of, {"__data__": root}


def run(args, model, cfg, elements, states, molecule_of, references, out, uri, control) -> int:
    import csv

    import numpy as np

    from atomray import tracking
    from atomray.predict import model_atoms
    from atomray.rollout import default_step_fs, rollout, write_rollout_extxyz
    from atomray.rollout_check import (behind_prior, check_rollouts, dataset_reference, describe_failures,
                                       fresh_reference, holds, model_reference, pooled_md, prior_verdict,
                                       reference_temperature, rollout_failures, states_from_md)

    step = args.step_fs or default_step_fs(cfg)
    total = 1000.0 * args.total_ps
    out.mkdir(parents=True, exist_ok=True)
    root = references.get("__data__")
    refs = {}
    if "__equilibrate__" in references:
        seed_state, label = references["__equilibrate__"], molecule_of[0]
        print(f"reference: {args.reference_engine} MD of {label}: {args.equilibrate_fs:g} fs of Langevin dynamics at "
              f"{args.temperature:g} K, then {args.total_ps:g} ps {args.reference_ensemble.upper()}"
              + (f", {args.reference_runs} independent runs joined" if args.reference_runs > 1 else "")
              + f"; {args.starts} starts spaced over it ...", flush=True)
        workers = args.reference_workers or min(args.reference_runs, os.cpu_count() or 1)
        md = pooled_md(seed_state, args.smiles or "", total, args.reference_runs, args.reference_engine,
                       workers=workers, equilibrate_fs=args.equilibrate_fs, temperature_k=args.temperature,
                       cache_dir=args.reference_cache, progress=True, ensemble=args.reference_ensemble)
        states = states_from_md(md, seed_state.atomic_numbers, "smiles" if args.smiles else seed_state.name, args.starts)
        molecule_of = [label] * len(states)
        refs[label] = model_reference(md, seed_state.atomic_numbers, cfg)
    for molecule in dict.fromkeys(molecule_of):
        if molecule in refs:
            continue
        if root:
            refs[molecule] = dataset_reference(root, molecule, cfg)
        else:
            first = states[molecule_of.index(molecule)]
            print(f"reference: {args.reference_engine} {args.reference_ensemble.upper()} MD of {molecule} for "
                  f"{args.total_ps:g} ps ...", flush=True)
            refs[molecule] = fresh_reference(first, args.smiles or "", cfg, total, args.reference_engine,
                                             cache_dir=args.reference_cache, progress=True,
                                             ensemble=args.reference_ensemble)
    if args.thermostat_target == "reference" and control.thermostat != "none":
        import dataclasses

        ref_k = {}  # each reference's mean internal temperature (the model's atoms): the motion a thermostat holds
        for m, r in refs.items():
            z = states[molecule_of.index(m)].atomic_numbers
            ref_k[m] = reference_temperature(r, z[model_atoms(cfg, z)], internal=True)
        control = dataclasses.replace(control, temperature_k=tuple(ref_k[m] for m in molecule_of))
        print("thermostat at each molecule's reference temperature: "
              + ", ".join(f"{m} {t:.0f} K" for m, t in ref_k.items()), flush=True)
    # the temperature a rollout must hold: the thermostat's (None: each molecule's reference)
    target_k = control.temperature_k if control.thermostat != "none" and np.ndim(control.temperature_k) == 0 else None
    sweep = []
    if args.stride_sweep:
        sweep = stride_sweep(args, model, cfg, elements, states, molecule_of, refs, out, control, target_k)
        held = [r["stride_fs"] for r in sweep if not r["misses"]]
        if held and not args.step_fs:
            step = max(held)
        print(f"stride sweep: {'the largest stride that holds is ' + format(max(held), 'g') + ' fs' if held else 'no stride holds'}"
              f"; the rollout below runs in steps of {step:g} fs", flush=True)
    print(f"rollout: {len(states)} start state(s) of {len(set(molecule_of))} molecule(s), {args.total_ps:g} ps in "
          f"steps of {step:g} fs, {cfg.model.name} from {args.model}" + _describe(control, args.prior_only), flush=True)
    traj = rollout(model, cfg, states, total_fs=total, step_fs=step, elements=elements, progress=True,
                   delta_fs=args.delta_fs, control=control, lags=args.lags,
                   velocity=args.velocity, keep_bonds=args.basin_bonds == "start")
    print(f"rolled out {traj.simulated_fs / 1000:.0f} ps in {traj.seconds:.1f} s "
          f"({traj.simulated_fs / max(traj.seconds, 1e-9):.0f} fs per second; velocity control "
          f"{traj.control_seconds:.2f} s)", flush=True)
    for i, name in enumerate(traj.names):
        write_rollout_extxyz(out / f"{_safe(name)}.extxyz", traj, i)
    floor = None
    if args.prior_floor and not args.prior_only and cfg.model.prior == "none":
        print("the floor: none (model.prior is 'none': the untrained network is no physics floor)", flush=True)
    elif args.prior_floor and not args.prior_only:
        from atomray.checkpoint import prior_model

        print("the floor: the prior alone (zero correction) from the same starts, with the same seed and controls "
              "(--no-prior-floor skips it)", flush=True)
        floor = rollout(prior_model(cfg), cfg, states, total_fs=total, step_fs=step, elements=elements, progress=True,
                        delta_fs=args.delta_fs, control=control, lags=args.lags,
                        velocity=args.velocity, keep_bonds=args.basin_bonds == "start")
        print(f"the floor rolled out in {floor.seconds:.1f} s", flush=True)
    rows = check_rollouts(traj, refs, molecule_of, out, floor=floor)
    for taken, tried, key, what in ((traj.hops, traj.hop_attempts, "proton_hops", "proton hop(s)"),
                                    (traj.turns, traj.turn_attempts, "rotor_turns", "rotor turn(s)"),
                                    (traj.torsions, traj.torsion_attempts, "torsion_turns", "torsion turn(s)")):
        if taken is None:
            continue
        for r in rows:  # the Metropolis moves' counts, per molecule
            idx = [i for i, m in enumerate(molecule_of) if m == r["molecule"]]
            r[key] = int(taken[idx].sum())
            print(f"{r['molecule']}: {r[key]} {what} accepted of {int(tried[idx].sum())} attempted in {len(idx)} "
                  "rollout(s)", flush=True)
    if args.energy_drift:
        add_energy_drift(args, traj, states, molecule_of, rows, root)
    keys = [k for k in rows[0] if k not in ("molecule", "reference", "plot")]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    with open(out / "rollouts.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(markdown(rows, mean, keys))
    failures = rollout_failures(traj, molecule_of)
    with open(out / "failures.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(failures[0]))
        writer.writeheader()
        writer.writerows(failures)
    for line in describe_failures(failures):
        print(line, flush=True)
    misses = {r["molecule"]: holds(r, target_k) for r in rows}
    failing = {m: v for m, v in misses.items() if v}
    verdicts = ["verdict: every molecule holds (stability 1.0, W1 within targets, internal temperature within 10 %)"
                if not failing else "verdict: " + "; ".join(f"{m} misses {', '.join(v)}" for m, v in failing.items())]
    behind = {r["molecule"]: behind_prior(r) for r in rows} if floor is not None else {}
    if floor is not None:
        verdicts.append(prior_verdict(rows, cfg.model.name))
    print("\n".join(verdicts), flush=True)
    (out / "rollouts.md").write_text(markdown(rows, mean, keys) + "\n" + "\n\n".join(verdicts) + "\n")

    c = tracking.client(uri)
    run_id = c.create_run(tracking.experiment_id(c, args.experiment), run_name=f"rollout-{time.strftime('%Y%m%d-%H%M%S')}",
                          tags={tracking.TAG_KIND: "rollout", "model": args.model}).info.run_id
    try:
        tracking.log_params(c, run_id, {"model": args.model, "total_ps": args.total_ps, "step_fs": step,
                                        "momentum": control.momentum, "thermostat": control.thermostat,
                                        "temperature_k": args.temperature if args.thermostat_target == "temperature"
                                        else "reference", "tau_fs": control.tau_fs,
                                        "thermostat_groups": control.groups, "basin_bonds": args.basin_bonds,
                                        "position_noise_a": ",".join(f"{a:g}" for a in control.position_noise_a),
                                        "hydrogen_noise_axes": control.hydrogen_noise_axes,
                                        "group_hydrogen_noise": control.group_hydrogen_noise,
                                        "rotor_radii": control.rotor_radii,
                                        "rotor_heights": control.rotor_heights,
                                        "height_feedback_fs": control.height_feedback_fs, "proton_hops": control.proton_hops,
                                        "rotor_turns": control.rotor_turns, "turn_every": control.turn_every, "turn_jumps": control.turn_jumps,
                                        "turn_energy": control.turn_energy, "torsion_turns": control.torsion_turns,
                                        "torsion_energy": control.torsion_energy,
                                        "match_torsions_a": control.match_torsions_a,
                                        "hop_every": control.hop_every,
                                        "prior_floor": floor is not None, "prior_only": args.prior_only,
                                        "reference_ensemble": args.reference_ensemble if not root else "data set",
                                        "reference_runs": args.reference_runs if not root else 1,
                                        "conformers": args.conformers,
                                        "starts": args.starts, "delta_fs": args.delta_fs,
                                        "lags": args.lags or cfg.data.num_lags, "velocity": args.velocity, "molecules": ",".join(dict.fromkeys(molecule_of)),
                                        "reference": str(root) if root else rows[0]["reference"]})
        for k, v in mean.items():
            c.log_metric(run_id, f"mean_{k}", float(v))
        for r in rows:
            for k in keys:
                c.log_metric(run_id, f"{_safe(r['molecule'])}.{k}", float(r[k]))
        c.log_metric(run_id, "rollout_fs_per_s", traj.simulated_fs / max(traj.seconds, 1e-9))
        c.log_metric(run_id, "molecules_holding", float(len(rows) - len(failing)))
        if floor is not None:
            c.log_metric(run_id, "molecules_beating_prior", float(sum(not v for v in behind.values())))
        for r in sweep:
            for k in ("mean_time_to_failure_ps", "stability", "w1_bond_length_a", "w1_bond_angle_deg", "w1_dihedral_deg",
                      "temperature_k", "internal_temperature_k"):
                c.log_metric(run_id, f"sweep.{k}", float(r[k]), step=int(r["stride_fs"]))
        c.log_artifacts(run_id, str(out), "rollout")
        tracking.finish_run(uri, run_id)
    except BaseException as err:
        tracking.fail_run(uri, run_id, err)
        raise
    print(f"MLflow run id: {run_id} ({uri}); files in {args.out}")
    return 0


def add_energy_drift(args, traj, states, molecule_of, rows, root) -> None:
    """Put each molecule's energy drift (mean over its rollouts, eV/ps and meV/atom/ps) in its row."""
    import numpy as np

    from atomray.rollout_check import energy_drift, molecule_of_state

    smiles = {}
    if root:
        from atomray.data.dataset import read_molecules

        table = read_molecules(root)
        smiles = dict(zip(table.column("molecule_id").to_pylist(), table.column("smiles").to_pylist()))
    for row in rows:
        idx = [i for i, m in enumerate(molecule_of) if m == row["molecule"]]
        mol = molecule_of_state(states[idx[0]], args.smiles or smiles.get(row["molecule"], ""))
        drift = energy_drift(traj, idx, mol, args.reference_engine)
        n = len(traj.atomic_numbers[idx[0]])
        row["energy_drift_ev_per_ps"] = float(np.nanmean(drift.drift_ev_per_ps))
        row["energy_drift_mev_per_atom_ps"] = 1000.0 * float(np.nanmean(np.abs(drift.drift_ev_per_ps))) / n
        print(f"energy drift of {row['molecule']} ({args.reference_engine}): {row['energy_drift_ev_per_ps']:+.4f} eV/ps "
              f"(|drift| {row['energy_drift_mev_per_atom_ps']:.3f} meV/atom/ps; {drift.calls} energy calls, "
              f"{drift.seconds:.1f} s)", flush=True)


def stride_sweep(args, model, cfg, elements, states, molecule_of, refs, out, control, target_k) -> list[dict]:
    """Roll every state out at each stride of --stride-sweep: one mean row per stride (with the
    targets it misses), stride_sweep.csv / .md and stride_sweep.png in `out`."""
    import csv

    from atomray.rollout import rollout
    from atomray.rollout_check import check_rollouts, holds, mean_row, plot_stride_sweep

    sweep = []
    for stride in sorted(args.stride_sweep):
        traj = rollout(model, cfg, states, total_fs=1000.0 * args.total_ps, step_fs=stride, elements=elements,
                       delta_fs=min(args.delta_fs, stride / 4), control=control, lags=args.lags,
                       velocity=args.velocity, keep_bonds=args.basin_bonds == "start")
        rows = check_rollouts(traj, refs, molecule_of)
        mean = {"stride_fs": stride, **mean_row(rows), "seconds": traj.seconds}
        mean["misses"] = "; ".join(f"{r['molecule']}: {', '.join(m)}" for r in rows if (m := holds(r, target_k)))
        sweep.append(mean)
        print(f"stride {stride:g} fs: stability {mean['stability']:.2f}, first failure {mean['mean_time_to_failure_ps']:.1f} ps, "
              f"W1 bonds {mean['w1_bond_length_a']:.4f} A, angles {mean['w1_bond_angle_deg']:.2f} deg, dihedrals "
              f"{mean['w1_dihedral_deg']:.1f} deg, T {mean['temperature_k']:.0f} K (model's own "
              f"{mean['model_temperature_k']:.0f} K, reference {mean['reference_temperature_k']:.0f} K; internal "
              f"{mean['internal_temperature_k']:.0f} K, reference {mean['reference_internal_temperature_k']:.0f} K) -> "
              + ("holds" if not mean["misses"] else "misses " + mean["misses"]), flush=True)
    with open(out / "stride_sweep.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(sweep[0]))
        writer.writeheader()
        writer.writerows(sweep)
    plot_stride_sweep(sweep, out / "stride_sweep.png",
                      title=f"{cfg.model.name}{_describe(control, args.prior_only)}: {len(states)} rollouts of {args.total_ps:g} ps")
    return sweep


def _describe(control, prior_only: bool = False) -> str:
    text = " (prior only: zero correction)" if prior_only else ""
    noise = ("; position noise {:g} / {:g} A (heavy atoms / hydrogens{})".format(
        *control.position_noise_a, (", across their bonds" if control.hydrogen_noise_axes == "across" else "")
        + ("" if control.group_hydrogen_noise else ", none on terminal groups of two or more"))
        if any(control.position_noise_a) else "")
    if control.rotor_radii:
        noise += "; terminal groups' hydrogens kept on their circles" + (" (radius and height)"
                                                                          if control.rotor_heights else "")
        if control.height_feedback_fs:
            noise += f", their mean heights steered to the minimum's (time constant {control.height_feedback_fs:g} fs)"
    if control.proton_hops:
        noise += f"; proton hops (Metropolis, GFN2-xTB, every {control.hop_every} step(s))"
    if control.rotor_turns:
        noise += (f"; rotor turns (Metropolis, {'GFN2-xTB' if control.turn_energy == 'gfn2' else 'MMFF94'}, "
                  f"every {control.turn_every} step(s){', with symmetry jumps' if control.turn_jumps else ''})")
    if control.torsion_turns:
        noise += (f"; torsion turns (Metropolis, {'GFN2-xTB' if control.torsion_energy == 'gfn2' else 'MMFF94'}, "
                  f"every {control.turn_every} step(s))")
    if math.isfinite(control.match_torsions_a):
        noise += f"; priors about the minimum with the state's torsions beyond {control.match_torsions_a:g} A RMS from it"
    at = (f"{control.temperature_k:g} K" if isinstance(control.temperature_k, (int, float))
          else "each molecule's reference temperature")
    if control.thermostat == "csvr":
        groups = "" if control.groups == "molecule" else ", hydrogens and heavy atoms coupled apart"
        return text + f"; momenta kept, CSVR thermostat at {at} (tau {control.tau_fs:g} fs{groups})" + noise
    if control.thermostat == "langevin":
        return text + f"; momenta kept, Langevin thermostat at {at} (tau {control.tau_fs:g} fs)" + noise
    return text + ("; momenta kept" if control.momentum else "") + noise


def markdown(rows: list[dict], mean: dict, keys: list[str]) -> str:
    head = "| molecule | " + " | ".join(keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 1)]
    for r in [*rows, {"molecule": "**mean**", **mean}]:
        lines.append(f"| {r['molecule']} | " + " | ".join(f"{r[k]:.4g}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _safe(name: str) -> str:
    # no "@": ase.io.read takes "file@index" as a frame selection
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


if __name__ == "__main__":
    sys.exit(main())
