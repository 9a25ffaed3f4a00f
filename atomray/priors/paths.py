"""Per-window prior paths: computed in the data path, vectorised, attached to batches as named keys.

    transform = PriorPaths({"rotor", "vibration"}, DatasetBasins(physics))
    batch = transform(batch)          # a padded numpy window batch, returned with the keys below

A model's prior (`atomray.priors.compose`) is physics that depends on the window alone, so it is
computed where a GPU cluster has spare capacity — on the CPUs that cut the windows — and reaches
the model as data. Parts and their keys (model atoms, padded like x0; B windows, P lags, N atoms):

    rigid      rigid_path (B, P, N, 3) Å, rigid_rot (B, P, 3, 3): the rigid-body motion at constant
               ω = I⁻¹L (`atomray.priors.rigid.rigid`) and its rotation exp([ω]× Δt)
    rotor      rotor_path, rotor_rot: the exact torque-free rigid-body motion (L conserved, ω
               precessing; `atomray.priors.rigid.rotor_motion`) and its orientation R(Δt)
    vibration  vib_osc (B, P, N, 3) Å, vib_d0 (B, N, 3) Å: the undamped normal-mode displacement from
               the basin's minimum at each lag, in x0's frame, and at lag 0
               (`atomray.priors.modes.vibration_paths`); zero where the molecule has no basin;
               and vib_vel (B, P, N, 3) Å/fs, the undamped displacement's time derivative (what
               a velocity head starts from, `atomray.priors.compose.Prior.velocity`)
    md         md_path (B, P, N, 3) Å, md_ok (B,) bool: MMFF94 molecular dynamics of the whole
               molecule from the start state (`atomray.priors.anharmonic`)

Every key turns with its window under `atomray.data.augment.rotate_windows` (positions about the
centroid, vectors, rotations conjugated), so rotating a window and its paths equals computing
the paths of the rotated window.

The rigid-body motion comes from every atom of the window — the model's atoms plus its context
atoms (`ctx_*`, the hydrogens of a heavy-atom model) — and so do the vibration and the MD
(the force field and the normal modes need the whole molecule); the keys hold the model's atoms.

Where a window's basin comes from (`basins`): `DatasetBasins` looks it up in the data set's
stored per-frame physics by (molecule, segment, frame) — the training and evaluation windows of
a data set never minimise anything; `StateBasins` finds it for new states (a prediction, a
rollout step, a data set without stored physics) through the machine's basin store. Windows
are grouped by basin, and each group's vibration is a few matrix products.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from atomray.data.frames import DataError
from atomray.elements import atomic_masses
from atomray.priors import rigid
from atomray.priors.anharmonic import md_paths
from atomray.priors.compose import KEYS, PARTS, PATH_KEYS  # noqa: F401 (re-exported)
from atomray.priors.frames import FramePhysics
from atomray.priors.minima import machine_finder
from atomray.priors.modes import Basin, basin_modes, vibration_paths


# (molecule_id, segment (W,), frame (W,), x (W, n, 3), z (n,), n_model) → a Basin or None per window,
# atoms in the window's order (model atoms, then context atoms)
BasinSource = Callable[[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], list]


def window_order(z_molecule: np.ndarray, n_model: int, n_all: int) -> np.ndarray:
    """The molecule's atom indices in a window's order: all atoms when the window's model atoms
    are the whole molecule, else its heavy atoms then its hydrogens (the window sampler's
    model atoms and context atoms, `atomray.data.windows.cut_windows`)."""
    z = np.asarray(z_molecule)
    if n_model == n_all == len(z):
        return np.arange(len(z))
    return np.concatenate([np.flatnonzero(z > 1), np.flatnonzero(z <= 1)])


class DatasetBasins:
    """Basins of a data set's frames, read from its stored per-frame physics."""

    def __init__(self, physics: FramePhysics):
        self.physics = physics
        self._permuted: dict[tuple[str, int, int], Basin] = {}

    def __call__(self, molecule_id: str, segment: np.ndarray, frame: np.ndarray, x: np.ndarray, z: np.ndarray,
                 n_model: int) -> list[Basin | None]:
        mol = self.physics.molecules.get(molecule_id)
        if mol is None:
            raise DataError(f"{self.physics.root}: molecule {molecule_id!r} has no stored per-frame physics")
        index = np.empty(len(frame), np.int64)
        for seg in np.unique(segment):
            at = segment == seg
            index[at] = mol.basin_of(int(seg), frame[at])
        if not mol.basins:  # MMFF94 typed none of its frames: no vibration prior, the rigid-body motion alone
            return [None] * len(frame)
        order = window_order(mol.z, n_model, len(z))
        if len(order) != len(z) or not np.array_equal(mol.z[order], z):
            raise DataError(f"{self.physics.root}: molecule {molecule_id!r}: the windows' atoms {z.tolist()} are not "
                            f"the stored physics' atoms {mol.z.tolist()}")
        out = []
        for k in index:
            key = (molecule_id, int(k), n_model)
            if k >= 0 and key not in self._permuted:
                self._permuted[key] = mol.basins[k].permuted(order)
            out.append(None if k < 0 else self._permuted[key])
        return out


class StateBasins:
    """Basins of arbitrary states, found through the machine's basin store
    (`atomray.priors.minima.machine_finder`): MMFF94 per state, GFN2-xTB per new basin.
    `bonds`: a bond graph (n_b, 2) per molecule id whose states must keep it (a rollout's, from
    its start); other molecules' bonds are perceived from each state."""

    def __init__(self, bonds: Mapping[str, np.ndarray] | None = None):
        self.bonds = dict(bonds or {})

    def __call__(self, molecule_id: str, segment: np.ndarray, frame: np.ndarray, x: np.ndarray, z: np.ndarray,
                 n_model: int) -> list[Basin | None]:
        finder = machine_finder(z)
        graph = self.bonds.get(molecule_id)
        out = []
        for state in x:
            k = finder.assign(state, bonds=graph)
            out.append(None if k < 0 else basin_modes(finder, k))
        return out


def parts_needed(parts: Iterable[str]) -> frozenset[str]:
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"prior paths: unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    return frozenset(parts)


class PriorPaths:
    """The data-path transform: a padded window batch (numpy) → the same batch plus the keys
    of `parts` (see the module docstring), as float32 (or `dtype`) arrays. `circles`: the
    vibration turns terminal groups' hydrogens on circles (`ModelConfig.rotor_circles`,
    `atomray.priors.modes.rotor_circles`). `match_torsions` (Å): a state farther than that from its
    basin's minimum vibrates about the minimum with the state's saturated torsions
    (`atomray.priors.modes.vibration_paths`; default never)."""

    def __init__(self, parts: Iterable[str], basins: BasinSource | None = None, dtype: Any = np.float32,
                 context: bool = False, circles: bool = False, match_torsions: float = math.inf):
        self.parts = parts_needed(parts)
        self.circles, self.match_torsions = circles, match_torsions
        if "vibration" in self.parts and basins is None:
            raise ValueError("prior paths: the vibration needs a basin source (DatasetBasins or StateBasins)")
        self.basins, self.dtype = basins, dtype
        self.context = context  # whether its windows must carry their context atoms (ctx_*)
        self.seconds: dict[str, float] = {}  # where this transform's time went, by part (summed over calls)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(batch)
        if not self.parts or not len(batch["x0"]):
            return out
        x0, v0 = np.asarray(batch["x0"], np.float64), np.asarray(batch["v0"], np.float64)
        mask = np.asarray(batch["mask"], bool) if "mask" in batch else np.ones(x0.shape[:2], bool)
        mass = np.asarray(batch["mass"], np.float64) * mask
        lags = np.asarray(batch["lags_fs"], np.float64)
        ctx = None
        if "ctx_x0" in batch and np.asarray(batch["ctx_x0"]).shape[1]:
            ctx = tuple(np.asarray(batch[k], np.float64) for k in ("ctx_x0", "ctx_v0", "ctx_mass"))
        t0 = time.perf_counter()
        t = {k: torch.from_numpy(a) for k, a in (("x", x0), ("v", v0), ("m", mass), ("lags", lags))}
        tctx = None if ctx is None else tuple(torch.from_numpy(a) for a in ctx)
        x_all, v_all, m_all = rigid._with_context(t["x"], t["v"], t["m"], tctx)
        c, u, omega, ang, inertia_inv = rigid.rigid_motion(x_all, v_all, m_all)
        if "rigid" in self.parts:
            theta = omega[:, None] * t["lags"][..., None]  # (B, P, 3)
            b, p = lags.shape
            rot = rigid.rotate(torch.eye(3, dtype=torch.float64).expand(b, p, 3, 3), theta).transpose(-1, -2)
            out["rigid_path"] = self._cast(rigid.carry(t["x"], c, u, rot, t["lags"]))
            out["rigid_rot"] = self._cast(rot)
        if "rotor" in self.parts:
            rot = rigid.rotor_rotations(ang, inertia_inv, t["lags"])  # (B, P, 3, 3)
            out["rotor_path"] = self._cast(rigid.carry(t["x"], c, u, rot, t["lags"]))
            out["rotor_rot"] = self._cast(rot)
        self._clock("rigid body", t0)
        if self.parts & {"vibration", "md"}:
            v_int = (v_all - rigid.rigid_velocity(x_all, c, u, omega)).numpy()
            out.update(self._internal(batch, x0, mask, ctx, x_all.numpy(), v_all.numpy(), v_int, lags))
        return out

    def _clock(self, part: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[part] = self.seconds.get(part, 0.0) + now - since
        return now

    def _cast(self, t: torch.Tensor) -> np.ndarray:
        return t.numpy().astype(self.dtype, copy=False)

    def _internal(self, batch: Mapping[str, Any], x0: np.ndarray, mask: np.ndarray, ctx: tuple | None,
                  x_all: np.ndarray, v_all: np.ndarray, v_int: np.ndarray, lags: np.ndarray) -> dict[str, np.ndarray]:
        """The vibration and MD keys, molecule by molecule (the atoms of one molecule's windows
        line up), basin by basin."""
        b, n = mask.shape
        p = lags.shape[1]
        nm = n  # model-atom block of the whole-molecule arrays
        ctx_real = (ctx[2] > 0) if ctx is not None else np.zeros((b, 0), bool)
        out: dict[str, np.ndarray] = {}
        if "vibration" in self.parts:
            out["vib_osc"] = np.zeros((b, p, n, 3), self.dtype)
            out["vib_d0"] = np.zeros((b, n, 3), self.dtype)
            out["vib_vel"] = np.zeros((b, p, n, 3), self.dtype)
        if "md" in self.parts:
            out["md_path"] = np.zeros((b, p, n, 3), self.dtype)
            out["md_ok"] = np.zeros(b, bool)
        if "molecule_id" not in batch:  # windows are grouped by molecule: their atoms line up
            raise KeyError("prior paths: the vibration and MD need each window's molecule_id (the window sampler "
                           "sets it; new states get their name)")
        ids = np.asarray(batch["molecule_id"], dtype=object)
        z_model = np.asarray(batch["z"], np.int64)
        segment = np.asarray(batch.get("segment", np.zeros(b, np.int64)), np.int64)
        frame = np.asarray(batch.get("frame", np.zeros(b, np.int64)), np.int64)
        for mid in dict.fromkeys(ids):
            rows = np.flatnonzero(ids == mid)
            k = int(mask[rows[0]].sum())
            j = int(ctx_real[rows[0]].sum())
            atoms = np.concatenate([np.arange(k), nm + np.arange(j)])  # real atoms in the whole-molecule arrays
            xs, vs, vi = x_all[rows][:, atoms], v_all[rows][:, atoms], v_int[rows][:, atoms]
            z = np.concatenate([z_model[rows[0], :k], np.ones(j, np.int64)])  # context atoms are hydrogens
            mass = atomic_masses(z).astype(np.float64)
            if "vibration" in self.parts:
                t0 = time.perf_counter()
                basins = self.basins(str(mid), segment[rows], frame[rows], xs, z, k)
                t0 = self._clock("basins", t0)
                groups: dict[int, list[int]] = {}
                for i, basin in enumerate(basins):
                    if basin is not None:
                        groups.setdefault(id(basin), []).append(i)
                for members in groups.values():
                    g = np.asarray(members)
                    osc, d0, osc_v = vibration_paths(xs[g], vi[g], mass, lags[rows[g]], basins[members[0]],
                                                     velocity=True, circles=self.circles,
                                                     match_torsions=self.match_torsions)
                    out["vib_osc"][rows[g], :, :k] = osc[:, :, :k]
                    out["vib_d0"][rows[g], :k] = d0[:, :k]
                    out["vib_vel"][rows[g], :, :k] = osc_v[:, :, :k]
                self._clock("vibration", t0)
            if "md" in self.parts:
                t0 = time.perf_counter()
                md, ok = md_paths(xs, vs, z, lags[rows])
                self._clock("MMFF94 MD", t0)
                out["md_path"][rows, :, :k] = md[:, :, :k]
                out["md_ok"][rows] = ok
        return out


def basin_source(physics: FramePhysics | None) -> BasinSource:
    """DatasetBasins over stored physics, or StateBasins when there is none."""
    return DatasetBasins(physics) if physics is not None else StateBasins()


def apply_in_chunks(transform: Callable[[dict], dict], windows: Mapping[str, Any], size: int = 1024) -> dict[str, Any]:
    """`transform` applied to a large padded window set in slices of `size` windows, joined."""
    n = len(windows["x0"])
    parts = [transform({k: v[s:s + size] for k, v in windows.items()}) for s in range(0, n, size)]
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


__all__: Sequence[str] = ("PARTS", "KEYS", "PATH_KEYS", "PriorPaths", "DatasetBasins", "StateBasins",
                          "basin_source", "apply_in_chunks", "window_order")
