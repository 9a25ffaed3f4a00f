"""The one composition of a physics prior: rigid-body motion + vibration + anharmonic part.

A model predicts a correction to a physics prior; the physics floors are the same priors with
their fixed constants; the loss weights use the floors. All of them compose the prior here,
from the paths the data path attached to the batch (`atomray.priors.paths`), with tensor math
only — on any device, under `torch.compile`, with no host synchronisation.

Model priors (`ModelConfig.prior`):

    none      the model predicts absolute positions (the paper's setting)
    x0        the model predicts displacements from x0 (App. D.4, "delta prediction")
    rigid     corrections to the rigid-body motion at constant ω = I⁻¹L (rigid_path, rigid_rot)
    rotor     corrections to the exact torque-free rigid-body motion (L conserved, ω precessing;
              rotor_path, rotor_rot): the `rotor_all` floor
    harmonic  rotor plus each atom's normal-mode vibration about the molecule's nearest GFN2-xTB
              minimum, damped toward it: rotor + R(Δt) (exp(−Δt/τ) osc(Δt) − d0)
              (`atomray.priors.modes`; vib_osc, vib_d0); τ learned from `TAU_VIB_FS` = 1000 fs.
              At init, the `harmonic_all` floor
    + anharmonic (`ModelConfig.anharmonic`): the harmonic prior hands over from MMFF94 molecular
              dynamics of the start state, harmonic + exp(−Δt/τ) (md − harmonic)
              (`atomray.priors.anharmonic`; md_path, md_ok); τ learned from `TAU_MD_FS` = 150 fs.
              At init, the `anharmonic_all` floor

The rigid-body motion is that of every atom of the window, hydrogens included even when the
model sees heavy atoms only (the windows then carry them as context atoms): hydrogens hold much
of a molecule's angular momentum. The prior also hands the model the body's orientation R(Δt)
at each lag (identity for x0), so a model can express its correction in the frame that turns
with the molecule. Every model starts with a zero correction: at step 0 it predicts its prior.

Floors (`floor_predictions`), scored beside every model on the same windows and atoms:

    no_motion       x0
    linear          x0 + v0 Δt
    rigid_heavy     the rigid-body motion at constant ω from the heavy atoms alone
    rigid_all       the same from every atom
    rotor_all       the torque-free rigid-body motion of every atom
    relaxed_all     rotor_all + a(Δt) R(Δt) (−d0), a = 1 − exp(−Δt / 250 fs): a move toward the
                    basin's minimum, the shape the molecule vibrates about
    harmonic_all    rotor_all + the damped normal-mode vibration, τ = 1000 fs
    mmff_md         MMFF94 molecular dynamics of the whole molecule (harmonic_all where MMFF94
                    cannot type the molecule)
    anharmonic_all  harmonic_all handing over from mmff_md, τ = 150 fs
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from atomray.priors import rigid
from atomray.priors.anharmonic import TAU_MD_FS, blend_md
from atomray.priors.modes import TAU_VIB_FS, vibrate

KINDS = ("none", "x0", "rigid", "rotor", "harmonic")
# the parts of a prior the data path computes (`atomray.priors.paths`), and the batch keys of each
PARTS = ("rigid", "rotor", "vibration", "md")
KEYS = {"rigid": ("rigid_path", "rigid_rot"), "rotor": ("rotor_path", "rotor_rot"),
        "vibration": ("vib_osc", "vib_d0"), "md": ("md_path", "md_ok")}
VELOCITY_KEYS = ("vib_vel",)  # the vibration's time derivative: only a velocity head reads it
PATH_KEYS = tuple(k for part in PARTS for k in KEYS[part]) + VELOCITY_KEYS
FLOORS = ("no_motion", "linear", "rigid_heavy", "rigid_all", "rotor_all", "relaxed_all", "harmonic_all", "mmff_md",
          "anharmonic_all")
FLOOR_PARTS = {"no_motion": (), "linear": (), "rigid_heavy": (), "rigid_all": (), "rotor_all": ("rotor",),
               "relaxed_all": ("rotor", "vibration"), "harmonic_all": ("rotor", "vibration"),
               "mmff_md": ("rotor", "vibration", "md"), "anharmonic_all": ("rotor", "vibration", "md")}
TAU_RELAX_FS = 250.0  # relaxed_all: a(Δt) = 1 − exp(−Δt/τ), the blend toward the minimum


def prior_parts(kind: str, anharmonic: bool = False) -> frozenset[str]:
    """The path parts (`atomray.priors.paths.PARTS`) a model with this prior reads."""
    if kind not in KINDS:
        raise ValueError(f"prior must be one of {', '.join(KINDS)}, found {kind!r}")
    parts = {"rigid": {"rigid"}, "rotor": {"rotor"}, "harmonic": {"rotor", "vibration"}}.get(kind, set())
    return frozenset(parts | ({"md"} if anharmonic else set()))


def floor_parts(names: Sequence[str] = FLOORS) -> frozenset[str]:
    """The path parts the floors `names` read."""
    unknown = [n for n in names if n not in FLOOR_PARTS]
    if unknown:
        raise ValueError(f"unknown floor {unknown[0]!r}; known: {', '.join(FLOORS)}")
    return frozenset(p for n in names for p in FLOOR_PARTS[n])


class Prior(nn.Module):
    """prior(x0 (B, N, 3) Å, lags (B, P) fs, paths {key: tensor}) → (positions (B, P, N, 3) Å,
    orientation R (B, P, 3, 3)), or (None, None) for prior "none"; in x0's dtype, autocast off.
    Learnable: the vibration's dephasing time (harmonic) and the MD hand-over time (anharmonic)."""

    def __init__(self, kind: str, anharmonic: bool = False, damping: bool = True):
        super().__init__()
        if anharmonic and kind != "harmonic":
            raise ValueError(f"an anharmonic prior hands over to the harmonic one: it needs kind 'harmonic', found {kind!r}")
        self.parts = prior_parts(kind, anharmonic)
        self.kind, self.anharmonic = kind, anharmonic
        if kind == "harmonic" and damping:  # the modes' dephasing time, TAU_VIB_FS at init
            self.vib_log_tau = nn.Parameter(torch.tensor(math.log(TAU_VIB_FS)))
        elif kind == "harmonic":  # undamped (ModelConfig.vib_damping=false): τ = ∞, fixed
            self.register_buffer("vib_log_tau", torch.tensor(math.inf))
        if anharmonic:  # the hand-over time from MMFF94 MD to the harmonic prior, TAU_MD_FS at init
            self.md_log_tau = nn.Parameter(torch.tensor(math.log(TAU_MD_FS)))

    def check(self, paths: Mapping[str, Tensor] | None) -> None:
        """A clear error when the batch lacks this prior's keys (the data path did not attach them)."""
        missing = [k for part in sorted(self.parts) for k in KEYS[part] if paths is None or k not in paths]
        if missing:
            raise KeyError(f"the {self.kind} prior needs the batch keys {missing} (computed in the data path by "
                           "atomray.priors.paths.PriorPaths; see atomray.priors.compose)")

    def forward(self, x0: Tensor, lags: Tensor, paths: Mapping[str, Tensor] | None) -> tuple[Tensor | None, Tensor | None]:
        if self.kind == "none":
            return None, None
        b, p = lags.shape
        if self.kind == "x0":
            eye = torch.eye(3, dtype=x0.dtype, device=x0.device).expand(b, p, 3, 3)
            return rigid.no_motion(x0, lags), eye
        dtype = x0.dtype
        with torch.autocast(device_type=x0.device.type, enabled=False):
            name = "rigid" if self.kind == "rigid" else "rotor"
            base, rot = paths[f"{name}_path"].to(dtype), paths[f"{name}_rot"].to(dtype)
            if self.kind == "harmonic":
                base = base + self.vibration(paths, rot, lags)
            if self.anharmonic:
                base = blend_md(base, paths["md_path"], paths["md_ok"], lags, self.md_log_tau.exp().to(dtype))
        return base, rot

    def vibration(self, paths: Mapping[str, Tensor], rot: Tensor | None, lags: Tensor) -> Tensor:
        """(B, P, N, 3) R(Δt) (exp(−Δt/τ) osc − d0), or in x0's frame when rot is None; learnable τ."""
        dtype = paths["vib_osc"].dtype if rot is None else rot.dtype
        with torch.autocast(device_type=lags.device.type, enabled=False):
            return vibrate(paths["vib_osc"].to(dtype), paths["vib_d0"].to(dtype), rot, lags,
                           self.vib_log_tau.exp().to(dtype))

    def velocity(self, x0: Tensor, v0: Tensor, mass: Tensor, lags: Tensor, paths: Mapping[str, Tensor],
                 rot: Tensor | None) -> Tensor | None:
        """(B, P, N, 3) float64 Å/fs the time derivative of the prior's positions at each lag (what
        a velocity head corrects, `ModelConfig.predict_velocity`), or None for priors none and x0.
        With D(Δt) = exp(−Δt/τ) osc(Δt) − d0 the internal displacement (harmonic; 0 for rigid and
        rotor) the prior is c + uΔt + R(Δt)(x0 − c + D(Δt)), so

            v(Δt) = u + ω(Δt) × R(Δt)(x0 − c + D) + R(Δt) exp(−Δt/τ) (osc_v(Δt) − osc(Δt)/τ),

        ω(Δt) = R I⁻¹ Rᵀ L for the rotor (constant for rigid), osc_v the undamped oscillation's
        velocity (`vib_vel`). The anharmonic hand-over is not differentiated: with `anharmonic`
        this is the harmonic prior's velocity. c, u, L, I from the atoms of x0."""
        if self.kind in ("none", "x0"):
            return None
        if self.kind == "harmonic" and "vib_vel" not in paths:
            raise KeyError("the harmonic prior's velocity needs the batch key 'vib_vel' (computed in the data path "
                           "by atomray.priors.paths.PriorPaths with the vibration)")
        with torch.autocast(device_type=x0.device.type, enabled=False):
            r = rot.double()
            shift = ddot = None
            if self.kind == "harmonic":
                tau = self.vib_log_tau.exp().double()
                damp = torch.exp(-lags.double() / tau)[..., None, None]  # (B, P, 1, 1)
                osc = paths["vib_osc"].double()
                shift = damp * osc - paths["vib_d0"].double()[:, None]
                ddot = (damp * (paths["vib_vel"].double() - osc / tau)) @ r.transpose(-1, -2)
            vel = rigid.prior_velocity(x0, v0, mass, r, "rigid" if self.kind == "rigid" else "rotor", shift)
            return vel if ddot is None else vel + ddot * (mass > 0)[:, None, :, None]

    def md_departure(self, rot: Tensor, lags: Tensor, paths: Mapping[str, Tensor]) -> Tensor:
        """(B, P, N, 3) where MMFF94 MD departs from the harmonic path (rotor + vibration, the
        path `forward` blends MD into), turned back into x0's frame (0 where there is no MD); in
        rot's dtype."""
        harmonic = paths["rotor_path"].to(rot.dtype) + self.vibration(paths, rot, lags)
        ok = paths["md_ok"].to(harmonic.dtype)[:, None, None, None]
        return (paths["md_path"].to(harmonic.dtype) - harmonic) * ok @ rot


# ---------------------------------------------------------------------------------------------
# floors


def toward_minimum(shift: Tensor, rot: Tensor, lags: Tensor, tau_fs: float = TAU_RELAX_FS) -> Tensor:
    """(B, P, N, 3) a(Δt) R(Δt) δ: the move toward the minimum at each lag, δ (B, N, 3) turned
    with the body's orientation R (B, P, 3, 3), a(Δt) = 1 − exp(−Δt/τ), lags (B, P) fs."""
    a = -torch.expm1(-lags.to(rot.dtype) / tau_fs)  # (B, P)
    return a[..., None, None] * (shift[:, None].to(rot.dtype) @ rot.transpose(-1, -2))


def _context(batch: Mapping[str, Tensor]) -> tuple[Tensor, ...] | None:
    if "ctx_x0" not in batch or not batch["ctx_x0"].shape[1]:
        return None
    return batch["ctx_x0"].double(), batch["ctx_v0"].double(), batch["ctx_mass"].double()


def floor_predictions(batch: Mapping[str, Tensor], names: Sequence[str] = FLOORS) -> dict[str, Tensor]:
    """(B, P, N, 3) float64 prediction of each floor for a window batch carrying the paths of
    `floor_parts(names)` (rigid floors need none)."""
    x0, v0, lags = batch["x0"].double(), batch["v0"].double(), batch["lags_fs"].double()
    mass = batch["mass"].double()
    if "mask" in batch:
        mass = mass * batch["mask"].double()
    paths = {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()
             if k.startswith(("rotor_", "vib_", "md_"))}
    out: dict[str, Tensor] = {}

    def get(name: str) -> Tensor:
        if name in out:
            return out[name]
        if name not in FLOOR_PARTS:
            raise ValueError(f"unknown floor {name!r}; known: {', '.join(FLOORS)}")
        missing = [k for part in FLOOR_PARTS[name] for k in KEYS[part] if k not in paths]
        if missing:
            raise KeyError(f"floor {name!r} needs the batch keys {missing} (atomray.priors.paths.PriorPaths)")
        if name == "no_motion":
            value = rigid.no_motion(x0, lags)
        elif name == "linear":
            value = rigid.linear(x0, v0, lags)
        elif name == "rigid_heavy":
            value = rigid.rigid(x0, v0, mass * (batch["z"] > 1).double(), lags)
        elif name == "rigid_all":
            value = rigid.rigid(x0, v0, mass, lags, _context(batch))
        elif name == "rotor_all":
            value = paths["rotor_path"]
        elif name == "relaxed_all":
            value = get("rotor_all") + toward_minimum(-paths["vib_d0"], paths["rotor_rot"], lags)
        elif name == "harmonic_all":
            value = get("rotor_all") + vibrate(paths["vib_osc"], paths["vib_d0"], paths["rotor_rot"], lags, TAU_VIB_FS)
        elif name == "mmff_md":
            ok = paths["md_ok"].bool()[:, None, None, None]
            value = torch.where(ok, paths["md_path"], get("harmonic_all"))
        elif name == "anharmonic_all":
            value = blend_md(get("harmonic_all"), paths["md_path"], paths["md_ok"], lags, TAU_MD_FS)
        else:
            raise ValueError(f"unknown floor {name!r}; known: {', '.join(FLOORS)}")
        out[name] = value
        return value

    return {name: get(name) for name in names}
