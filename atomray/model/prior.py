"""The physics prior a model corrects (`ModelConfig.prior`), shared by ATOM and the EGNN family.

    none    the model predicts absolute positions (the paper's setting)
    x0      the model predicts displacements from x0 (App. D.4, "delta prediction")
    rigid   the model predicts corrections to the rigid-body extrapolation of the atoms it
            sees: centre-of-mass drift plus rotation exp(ω Δt) about the centre of mass,
            ω = I⁻¹L from their x0, v0 and masses (`atomray.physics.rigid`)
    rotor   the same with the exact torque-free rigid-body motion (L conserved, ω precessing;
            `atomray.physics.rotor`)
    harmonic  rotor plus each atom's harmonic vibration about the molecule's nearest GFN2-xTB
            minimum, damped toward it (`atomray.vibration`): the `harmonic_all` floor

With `data.context_atoms=all` the rigid / rotor priors are the `rigid_all` / `rotor_all`
floors; with heavy atoms only, the rigid prior is the `rigid_heavy` floor. Every model
initialises its correction at zero, so at step 0 it predicts the prior exactly.

The prior also returns the body's orientation R(Δt) at each lag (identity for none and x0),
so a model can express its correction in the frame that turns with the molecule: the
internal motion it learns is then the same whichever way the molecule happens to spin.

Relaxed prior (`ModelConfig.relaxed_prior`): the prior also moves each atom toward the
molecule's nearest minimum (`atomray.relaxation`), turned with the body,

    prior(Δt) = rigid-body motion(Δt) + a(Δt) R(Δt) δ,     a(Δt) = s (1 − exp(−Δt / τ)),

δ the shift from x0 to the superposed minimum. At short lags the atoms keep their momentum;
at long lags, not knowing the vibrations' phases, the best guess is the average shape, which
the minimum estimates. s and τ are learned, starting at s = 1, τ = 250 fs: the per-ΔT-bin
blend weights `benchmarks/relaxed_floor.py` fits on each CV fold's training windows (0, 0.1,
0.2, 0.4–0.5, 0.5–0.8 in bins of 0–10, 10–30, 30–100, 100–200, 200–1000 fs) follow this
curve on all five folds.

Harmonic prior (`prior: harmonic`, every atom in the model): the rotor motion plus
R(Δt) (exp(−Δt/τ) osc(Δt) − d0), osc the undamped normal-mode motion of the start state's
displacement d0 from its superposed minimum (`atomray.vibration`). It contains the relaxation
(its modes decay toward the minimum), so it is not combined with `relaxed_prior`; τ is learned,
starting at `TAU_VIB_FS` = 1000 fs.

Anharmonic prior (`ModelConfig.anharmonic`, with the harmonic prior): the harmonic prior hands
over from MMFF94 molecular dynamics of the start state (`atomray.anharmonic`),
harmonic(Δt) + exp(−Δt/τ) (md(Δt) − harmonic(Δt)), τ learned from `TAU_MD_FS` = 150 fs: the
`anharmonic_all` floor at init.

Correction onset (`ModelConfig.correction_onset_fs` = t_c > 0, every model with a prior): the
network's correction is multiplied by r² / (1 + r²), r = Δt / t_c (`onset_gate`). A prior that
starts from x0 and v0 is exact to first order in Δt, so what it misses grows like Δt² (the
forces it gets wrong); the gate makes the correction obey that, vanishing at Δt → 0 and free at
Δt ≫ t_c, instead of adding a learned offset of the same size at every lag. 0 turns it off.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from atomray import physics
from atomray.anharmonic import TAU_MD_FS, blend_md, mmff_paths
from atomray.data.windows import atomic_masses
from atomray.model.lifting import check_atomic_numbers
from atomray.relaxation import TAU_FS, relaxed_shift, toward_minimum
from atomray.vibration import TAU_VIB_FS, harmonic_paths, vibrate


KINDS = ("none", "x0", "rigid", "rotor", "harmonic")


def onset_gate(correction: Tensor, lags_fs: Tensor, onset_fs: float) -> Tensor:
    """The correction (B, P, N, 3) times r² / (1 + r²) per lag, r = Δt / onset_fs; unchanged
    when onset_fs is 0 (no gate)."""
    if onset_fs <= 0:
        return correction
    r2 = (lags_fs.double() / onset_fs) ** 2
    return correction * (r2 / (1 + r2))[:, :, None, None].to(correction.dtype)


class Prior(nn.Module):
    """prior(x (B,N,3) Å, v (B,N,3) Å/fs, z (B,N), mask (B,N), lags (B,P) fs) → (positions
    (B,P,N,3) Å, orientation R (B,P,3,3)), or (None, None) for prior "none". Padded atoms get
    mass 0, so they never move the rigid body."""

    def __init__(self, kind: str, max_atomic_number: int, relaxed: bool = False, relaxation: str = "gfn2",
                 anharmonic: bool = False):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"prior must be one of {', '.join(KINDS)}, found {kind!r}")
        if anharmonic and kind != "harmonic":
            raise ValueError(f"an anharmonic prior hands over to the harmonic one: it needs kind 'harmonic', found {kind!r}")
        self.anharmonic = anharmonic
        if anharmonic:  # the hand-over time from MMFF94 MD to the harmonic prior, TAU_MD_FS at init
            self.md_log_tau = nn.Parameter(torch.tensor(float(np.log(TAU_MD_FS))))
        if relaxed and kind in ("none", "harmonic"):
            raise ValueError(f"a relaxed prior needs a prior to add the relaxation to (x0, rigid or rotor), found "
                             f"{kind!r}" + (" (it relaxes toward the minimum already)" if kind == "harmonic" else ""))
        self.kind = kind
        self.relaxation_method = relaxation  # atomray.relaxation.METHODS
        if relaxed:  # a(Δt) = s (1 − exp(−Δt/τ)), s = 1 and τ = TAU_FS at init
            self.relax_scale = nn.Parameter(torch.ones(()))
            self.relax_log_tau = nn.Parameter(torch.tensor(float(np.log(TAU_FS))))
        if kind == "harmonic":  # the modes' dephasing time, TAU_VIB_FS at init
            self.vib_log_tau = nn.Parameter(torch.tensor(float(np.log(TAU_VIB_FS))))
        masses = torch.from_numpy(atomic_masses(np.arange(max_atomic_number + 1)))
        self.register_buffer("masses", masses, persistent=False)  # (Zmax + 1,) u, index 0 = padding

    def _mass(self, z: Tensor, mask: Tensor) -> Tensor:
        """(B, N) float64 masses of atomic numbers z, 0 at padding."""
        check_atomic_numbers(z, len(self.masses) - 1)
        return self.masses[z.long()].to(torch.float64) * mask

    # Eager under torch.compile: float64 physics with a data-dependent number of RK4 steps
    # (the rotor) would be unrolled and recompiled for every step count.
    @torch.compiler.disable
    @torch.no_grad()
    def forward(self, x: Tensor, v: Tensor, z: Tensor, mask: Tensor, lags: Tensor) -> tuple[Tensor | None, Tensor | None]:
        if self.kind == "none":
            return None, None
        b, p = lags.shape
        if self.kind == "x0":
            eye = torch.eye(3, dtype=x.dtype, device=x.device).expand(b, p, 3, 3)
            return physics.no_motion(x, lags), eye
        mass = self._mass(z, mask)  # (B, N)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self.kind == "rigid":
                c, u, omega, _, _ = physics.rigid_motion(x, v, mass)
                theta = omega[:, None] * lags.double()[..., None]  # (B, P, 3)
                rot = physics.rotate(torch.eye(3, dtype=torch.float64, device=x.device).expand(b, p, 3, 3), theta)
                rot = rot.transpose(-1, -2)  # rotate() acted on the rows e_k; R has them as columns
            else:  # rotor; harmonic adds `vibration` to it
                c, u, rot = physics.rotor_motion(x, v, mass, lags)
            return physics.carry(x, c, u, rot, lags), rot.to(x.dtype)

    @torch.compiler.disable
    def shift(self, x: Tensor, z: Tensor, mask: Tensor) -> Tensor:
        """(B, N, 3) δ: superposed minimum − x, in x's dtype (`atomray.relaxation`). The
        model's atoms must be the whole molecule (`data.context_atoms=all`)."""
        return relaxed_shift(x, z, mask, self.relaxation_method).to(x.dtype)

    def relaxation(self, delta: Tensor, rot: Tensor, lags: Tensor) -> Tensor:
        """(B, P, N, 3) a(Δt) R(Δt) δ for δ (B, N, 3), R (B, P, 3, 3), lags (B, P) fs; learnable."""
        with torch.autocast(device_type=delta.device.type, enabled=False):  # float32 or better
            return toward_minimum(delta, rot, lags, self.relax_scale.to(rot.dtype), self.relax_log_tau.exp().to(rot.dtype))

    @torch.compiler.disable
    @torch.no_grad()
    def paths(self, x: Tensor, v: Tensor, z: Tensor, mask: Tensor, lags: Tensor) -> tuple[Tensor, Tensor]:
        """(osc (B, P, N, 3), d0 (B, N, 3)) in x's dtype: the harmonic prior's undamped vibration
        and start displacement from the minimum (`atomray.vibration.harmonic_paths`)."""
        osc, d0 = harmonic_paths(x, self.internal_velocity(x, v, z, mask), z, mask, lags, self.relaxation_method)
        return osc.to(x.dtype), d0.to(x.dtype)

    def vibration(self, paths: tuple[Tensor, Tensor], rot: Tensor | None, lags: Tensor) -> Tensor:
        """(B, P, N, 3) R(Δt) (exp(−Δt/τ) osc − d0) for `paths` (in x's frame, unturned, when rot
        is None); learnable τ."""
        with torch.autocast(device_type=lags.device.type, enabled=False):  # float32 or better
            return vibrate(*paths, rot, lags, self.vib_log_tau.exp())

    @torch.compiler.disable
    @torch.no_grad()
    def md(self, x: Tensor, v: Tensor, z: Tensor, mask: Tensor, lags: Tensor) -> Tensor:
        """(B, P, N, 3) float64: MMFF94 MD positions of the whole molecule at each lag (NaN for
        states MMFF94 cannot type; `atomray.anharmonic.mmff_paths`)."""
        return mmff_paths(x, v, z, mask, lags)

    def hand_over(self, harmonic: Tensor, md: Tensor, lags: Tensor) -> Tensor:
        """(B, P, N, 3) harmonic + exp(−Δt/τ) (md − harmonic) in harmonic's dtype; learnable τ."""
        with torch.autocast(device_type=lags.device.type, enabled=False):
            return blend_md(harmonic, md, lags, self.md_log_tau.exp().to(harmonic.dtype))

    @torch.compiler.disable
    @torch.no_grad()
    def internal_velocity(self, x: Tensor, v: Tensor, z: Tensor, mask: Tensor) -> Tensor:
        """(B, N, 3) v − (u + ω × (x − c)): each atom's velocity relative to the rigid-body
        motion the prior extrapolates (rigid / rotor / harmonic priors; v itself otherwise).
        Equivariant (`atomray.physics.internal_velocity`)."""
        if self.kind not in ("rigid", "rotor", "harmonic"):
            return v
        with torch.autocast(device_type=x.device.type, enabled=False):
            return physics.internal_velocity(x, v, self._mass(z, mask)).to(v.dtype)
