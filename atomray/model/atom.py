"""ATOM: the Atomistic Transformer Operator for Molecules (paper §3.2, App. D).

    F_θ = P ∘ σ(K_L) ∘ … ∘ σ(K_1) ∘ Q        (§3.2: lifting Q, attention kernels K_l, projection P)

forward(x0, v0, z, lags_fs, mask, rwpe=None, paths=None) → (B, P, N, 3) positions (Å) in the
centred frame of x0. Inputs are a padded batch (`atomray.data.windows.pad_windows`): x0 (B,N,3)
Å, v0 (B,N,3) Å/fs, z (B,N) int (0 = padding), lags_fs (B,P) fs, mask (B,N) bool, rwpe (B,N,K) or
None, and the prior paths the data path attached (`atomray.priors.paths`; {} for prior none
or x0). The forward is tensor math on the batch's device: no RDKit, tblite or NumPy, no host
synchronisation, so it compiles with `torch.compile(fullgraph=True)`.

Time slots. The lifted initial state is duplicated over S = P + 1 time slots (App. C.2):
slot 0 holds the initial state at t_0 and slot p the query for t_p = t_0 + lag_p. T-RoPE
is relative (it sees only t_{s'} − t_s), so slot 0 is what tells the model the absolute lag:
every query at t_p attends to the initial state at offset t_p − t_0, and to the other
queries at offsets t_{p'} − t_p ("ATOM takes a time lag Δt as input, to modulate T-RoPE
phase", §3.3). t_0 defaults to 0; shifting every timestamp, t_0 included, leaves the output
unchanged (tested). Slot 0's output is discarded; the output has P frames. The number of
lags is read from `lags_fs`, so a model trained with P lags predicts any number of lags at
any times (§4.3, ΔT and P invariance), except with `time_encoding=none`, whose learned slot
embeddings exist only for the trained P.

Output = prior + R(Δt) · correction (`ModelConfig.prior`, `atomray.priors.compose`): the
equivariant projection of the P lag tokens is a correction to a physics extrapolation — none
(absolute positions, the paper), x0 (delta prediction, App. D.4), or the rigid-body motion of
the molecule at constant ω (rigid) or exactly (rotor: L conserved, ω precessing), or rotor plus
each atom's damped normal-mode vibration about the nearest GFN2-xTB minimum (harmonic,
`atomray.priors.modes`; its start displacement d0 = −δ serves relaxed_input), optionally handed
over from MMFF94 molecular dynamics (`anharmonic`, `atomray.priors.anharmonic`).
The correction is a displacement in the body frame at t_0, turned with the body by the
prior's orientation R(Δt): what the model learns (vibrations, relaxation) is then the same
whichever way the molecule spins. The projection starts at zero, so at initialisation the
model predicts the prior exactly and training only has to learn what physics does not say.

Ablation switches (ModelConfig, paper §4.4 and App. D):
  lifting        equivariant (e3nn, §3.2.1) | linear (no equivariant lift) | canonical (App. D.1:
                 equivariant lift in the canonical frame Q of the molecule, output rotated back,
                 so the whole operator is exactly SE(3)-equivariant)
  attention      heterogeneous (§3.2.2) | self (standard self-attention on one stream that sums
                 the lifted X, V and Z, so it sees the same information)
  time_encoding  trope | sinusoidal (a learned projection of sin/cos features of t_s − t_0 added
                 to every token of slot s) | none (no time value at all: a learned embedding of
                 the slot index only, so the model cannot know ΔT)
  gamma          learned | fixed (1/3 each);  value_residual  learned | fixed | off (App. D.3)
  output_heads   > 1: gated multi-head output, Σ_h softmax(g(scalars))_h · o3.Linear_h(vectors)
  latent_equivariance_weight > 0 builds a transip-style MLP (see `latent_equivariance_loss`).
Label noise (§3.2.3) is applied by the training loss (`atomray.train.loss`), not here.

Additions to the paper, each a switch (measured in docs/experiments.md, "Ablations"):
  distance_bias  a per-head attention term b_h(d_ij) of the start frame's interatomic
                 distances (`DistanceBias`), shared by all blocks and streams. The paper's
                 trunk sees geometry only through dot products of lifted vectors; this gives
                 attention bond lengths directly. Invariant, so no symmetry is lost.
  lag_conditioned_output  the final token features of slot p are scaled channel-wise by
                 1 + g(Δt_p), g a zero-initialised linear map of sinusoidal features of the lag:
                 the lag itself can scale the output (displacements grow with Δt), where
                 T-RoPE alone only re-weights attention. Scalar and vector channels are scaled
                 by invariants, so the projection stays equivariant.
  prior          as above (the paper's delta prediction is prior=x0).
  relaxed_input  with the harmonic prior, the shift δ = −d0 to the basin's minimum (MMFF94,
                 refined with GFN2-xTB) is lifted like a position (o3.Linear of [δ, ‖δ‖], δ in
                 0.1 Å) and added to the X stream: attention sees how far each atom sits from
                 its equilibrium place, which the trunk cannot guess for a molecule it never saw.
  prior_input    with the harmonic prior, each lag's slot tokens also lift the prior's internal
                 displacement at that lag (exp(−Δt/τ) osc(Δt) − d0, o3.Linear of [·, ‖·‖] in
                 0.1 Å), as EGNO starts its coordinates from the prior trajectory: attention sees
                 where the vibration puts every atom at every lag, and corrects it. With
                 `anharmonic` a second lifting adds where MMFF94 molecular dynamics of the start
                 state departs from that harmonic path (`atomray.priors.anharmonic`, turned back into
                 x's frame, 0.1 Å): per atom and lag, attention can weigh the force field against
                 the normal modes, which the fixed hand-over exp(−Δt/τ) of the prior cannot.
  predict_velocity  a second output head: each atom's velocity at every lag (`ATOM.velocity`), the
                 prior's own velocity (its time derivative) plus a learned correction, for rollouts that start
                 each step from the state the model predicts (`atomray.rollout`).
  internal_velocity  with a rigid / rotor / harmonic prior the lifting reads each atom's velocity relative
                 to the rigid-body motion the prior already extrapolates (v − u − ω × r): what is
                 left to predict is the internal motion, and that is what the model sees.

Differences from the paper's Table 19 / App. D and the authors' code (docs/architecture.md) that remain
in every configuration: attention scale 1/√d_h (the authors' code: 1/d_h); the residual
stream is the phase stream Z, not X, and the value residual mixes attention values, not block
outputs; one pre-norm RMSNorm per sub-layer and a final RMSNorm; SwiGLU of width ≈ 5d/3 with no
dropout by default (the authors: width d, dropout 0.1); attention dropout on the probabilities;
the lifted X and V enter attention unnormalised (an RMSNorm there would keep only directions).

Parameter count, MD17 config (d 128, 5 blocks, 8 heads, P 8, 1 output head, RWPE 8): lifting
3 008 + 5 blocks 743 699 + lag conditioning 2 112 + final RMSNorm 128 + head 32 = 748 979
(paper: 754 468, −0.7 %); the distance bias and the prior have no parameters. Multitask (d 256,
6 blocks, 8 heads, 8 gated output heads): 3 578 143 (paper: 3 557 840, +0.6 %).
`tests/model/test_atom.py` checks both within 10 %.

Velocities enter in units of Å per `velocity_scale_fs` (100 fs), so their size matches the
centred positions. The model follows the dtype and device of its parameters; inputs are cast
to the parameter dtype and the output is returned in x0's dtype. Under bf16 autocast the
canonical frame, the prior and time angles stay in float32 or better. Atomic numbers are not
range-checked here (a host synchronisation): pretraining refuses a data set with atomic numbers
above `max_atomic_number`, evaluation, prediction and rollout refuse such a molecule
(`atomray.evaluate.check_elements`), and `ATOMRAY_DEBUG=1` checks them here too.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch
from e3nn import o3
from torch import Tensor, nn

from atomray.config import ModelConfig
from atomray.data.augment import rotate_batch
from atomray.elements import mass_table
from atomray.model.attention import AttentionBias, Block, DistanceBias
from atomray.model.canonical import canonicalise
from atomray.model.lifting import (EquivariantLifting, LinearLifting, check_atomic_numbers, chemistry_features,
                                   hidden_irreps, with_norm)
from atomray.model.time_encoding import SinusoidalTimeEmbedding, rope_tables, sinusoidal_embedding
from atomray.priors.compose import Prior
from atomray.priors.rigid import internal_velocity


RELAXED_INPUT_SCALE = 10.0  # relaxed_input: δ in units of 0.1 Å, the size of the lifted positions
DEBUG_ENV = "ATOMRAY_DEBUG"  # set (not "0") to check inputs inside forward too: host synchronisations


def debug_checks() -> bool:
    """Whether forward passes check their inputs' values (`ATOMRAY_DEBUG=1`), at the cost of host
    synchronisations; never while `torch.compile` traces."""
    return os.environ.get(DEBUG_ENV, "0") not in ("", "0") and not torch.compiler.is_compiling()


class OutputHead(nn.Module):
    """Equivariant projection of token features (…, d) to 3-vectors (…, 3), zero at init.

    One head: o3.Linear(m×0e + n×1o → 1×1o) (a weighted sum of the n vector channels).
    H heads: o3.Linear(→ H×1o) gives H candidate vectors, mixed by softmax gates computed
    from the m scalar channels (gated multi-head output, Table 19 "No. output heads").
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        irreps = hidden_irreps(dim)
        self.heads, self.scalars = heads, irreps[0].mul
        self.vectors = o3.Linear(irreps, f"{heads}x1o")
        with torch.no_grad():
            self.vectors.weight.zero_()  # the model starts at its prior
        self.gate = nn.Linear(self.scalars, heads) if heads > 1 else None

    def forward(self, h: Tensor) -> Tensor:
        vec = self.vectors(h)  # (…, 3H)
        if self.gate is None:
            return vec
        g = torch.softmax(self.gate(h[..., : self.scalars]), dim=-1)  # (…, H)
        return (vec.unflatten(-1, (self.heads, 3)) * g[..., None]).sum(-2)  # (…, 3)


class LagConditioning(nn.Module):
    """Channel gains 1 + g(Δt) for the final token features of each lag (…, d), g linear in
    sinusoidal features of Δt (fs) and zero at init; a vector channel's three components share
    one gain, so scaling commutes with rotations of the lifted vectors."""

    def __init__(self, dim: int, features: int, base: float, tau_fs: float):
        super().__init__()
        irreps = hidden_irreps(dim)
        self.scalars, self.vectors = irreps[0].mul, irreps[1].mul
        self.features, self.base, self.tau_fs = features, base, tau_fs
        self.proj = nn.Linear(features, self.scalars + self.vectors)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: Tensor, lags_fs: Tensor) -> Tensor:
        """h (B, P, N, d), lags (B, P) → (B, P, N, d)."""
        feats = sinusoidal_embedding(lags_fs.float(), self.features, self.base, self.tau_fs)  # (B, P, F)
        g = self.proj(feats.to(self.proj.weight.dtype))  # (B, P, m + n)
        gains = 1 + torch.cat((g[..., : self.scalars], g[..., self.scalars:].repeat_interleave(3, dim=-1)), dim=-1)
        return h * gains[:, :, None].to(h.dtype)


class ATOM(nn.Module):
    """The ATOM operator; see the module docstring. Build it with `build_model(cfg, P, K)`;
    P is the number of lags it trains with (it predicts any number)."""

    def __init__(self, cfg: ModelConfig, num_lags: int, rwpe_dim: int = 0):
        super().__init__()
        self.cfg, self.num_lags, self.rwpe_dim = cfg, num_lags, rwpe_dim
        d = cfg.embed_dim
        chem_dim = cfg.max_atomic_number + rwpe_dim
        lift = LinearLifting if cfg.lifting == "linear" else EquivariantLifting
        self.lifting = lift(d, chem_dim)
        self.prior = Prior(cfg.prior, cfg.anharmonic, cfg.vib_damping)
        self.register_buffer("masses", torch.from_numpy(mass_table(cfg.max_atomic_number)), persistent=False)
        if cfg.relaxed_input and cfg.prior != "harmonic":
            raise ValueError(f"ATOM: relaxed_input lifts the harmonic prior's start displacement; it needs "
                             f"prior='harmonic', found {cfg.prior!r}")
        if cfg.relaxed_input:  # the shift to the minimum, lifted like a position
            self.lift_relaxed = (nn.Linear(4, d) if cfg.lifting == "linear"
                                 else o3.Linear("1x1o + 1x0e", hidden_irreps(d)))
        if cfg.prior_input and cfg.prior != "harmonic":
            raise ValueError(f"ATOM: prior_input lifts the harmonic prior's displacement; it needs prior='harmonic', "
                             f"found {cfg.prior!r}")
        if cfg.prior_input:  # the harmonic prior's displacement at each lag, lifted into its slot
            self.lift_prior = (nn.Linear(4, d) if cfg.lifting == "linear"
                               else o3.Linear("1x1o + 1x0e", hidden_irreps(d)))
        if cfg.prior_input and cfg.anharmonic:  # and where MMFF94 MD departs from it
            self.lift_md = (nn.Linear(4, d) if cfg.lifting == "linear"
                            else o3.Linear("1x1o + 1x0e", hidden_irreps(d)))
        self.heterogeneous = cfg.attention == "heterogeneous"
        if cfg.time_encoding == "sinusoidal":
            self.time_embed = SinusoidalTimeEmbedding(cfg.time_embed_dim, d, cfg.rope_base, cfg.tau_fs)
        elif cfg.time_encoding == "none":
            self.slot_embed = nn.Parameter(torch.randn(num_lags + 1, d) * 0.02)
        self.distance = DistanceBias(cfg.num_heads) if cfg.distance_bias else None
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, self.heterogeneous, cfg.gamma, cfg.value_residual,
                  first=(i == 0), attn_dropout=cfg.attn_dropout, mlp_dropout=cfg.mlp_dropout)
            for i in range(cfg.num_layers)
        )
        self.final_norm = nn.RMSNorm(d, eps=1e-6)
        self.lag_gain = (LagConditioning(d, cfg.time_embed_dim, cfg.rope_base, cfg.tau_fs)
                         if cfg.lag_conditioned_output else None)
        self.head = OutputHead(d, cfg.output_heads)
        if cfg.predict_velocity:  # each atom's internal velocity at every lag, zero at init
            self.velocity_head = OutputHead(d, cfg.output_heads)
        if cfg.latent_equivariance_weight > 0:
            # transip-style transformation network τ(embedding, vec(R)) → embedding of R·input
            self.latent_map = nn.Sequential(nn.Linear(d + 9, d), nn.SiLU(), nn.Linear(d, d))

    # -- pieces ---------------------------------------------------------------------------

    def _check(self, x0: Tensor, z: Tensor, lags_fs: Tensor, rwpe: Tensor | None) -> None:
        b = x0.shape[0]
        if lags_fs.dim() != 2 or lags_fs.shape[0] != b or lags_fs.shape[1] < 1:
            raise ValueError(f"ATOM: lags_fs must be (B, P) with B = {b} and P >= 1, found {tuple(lags_fs.shape)}")
        if self.cfg.time_encoding == "none" and lags_fs.shape[1] != self.num_lags:
            raise ValueError(f"ATOM with time_encoding=none learned one embedding per lag slot for P = "
                             f"{self.num_lags} lags; it cannot predict P = {lags_fs.shape[1]}")
        k = 0 if rwpe is None else rwpe.shape[-1]
        if k != self.rwpe_dim:
            raise ValueError(f"ATOM: built for RWPE length {self.rwpe_dim}, found rwpe with {k} features")
        if debug_checks():
            check_atomic_numbers(z, self.cfg.max_atomic_number)

    def embed(self, x0: Tensor, v0: Tensor, z: Tensor, lags_fs: Tensor, mask: Tensor,
              rwpe: Tensor | None = None, paths: Mapping[str, Tensor] | None = None,
              t0_fs: float | Tensor = 0.0) -> tuple[Tensor, dict]:
        """Run lifting and trunk: (B, P, N, d) final-normed token features of the P lag slots,
        plus the state needed to project them (canonical frame, mask, the prior)."""
        self._check(x0, z, lags_fs, rwpe)
        cfg, dtype = self.cfg, self.final_norm.weight.dtype
        b, n, _ = x0.shape
        s = lags_fs.shape[1] + 1
        mask = mask.bool()
        paths = paths if paths is not None else {}
        self.prior.check(paths)
        x, v = x0.to(dtype), v0.to(dtype) * cfg.velocity_scale_fs
        frame = None
        if cfg.lifting == "canonical":  # the frame's signs come from the lab velocities (App. D.1)
            x, v_frame, q, mu = canonicalise(x, v, mask)
            frame = (q, mu)
        m_frame = mask.to(dtype)[..., None]
        if cfg.internal_velocity and cfg.prior in ("rigid", "rotor", "harmonic"):
            with torch.autocast(device_type=x0.device.type, enabled=False):
                v = internal_velocity(x0, v0, self.masses[z.long()] * mask).to(dtype) * cfg.velocity_scale_fs
            v = (v @ frame[0]).to(dtype) * m_frame if frame is not None else v  # into the canonical frame, like x
        elif frame is not None:
            v = v_frame
        chem = chemistry_features(z, cfg.max_atomic_number, rwpe, dtype)
        lx, lv, lz = self.lifting(x, v, chem)  # (B, N, d) each
        if cfg.relaxed_input:  # δ = −d0 (~0.05 Å) in Å/10, in the frame x is in
            dl = -paths["vib_d0"].to(dtype) * RELAXED_INPUT_SCALE
            dl = ((dl @ frame[0].to(dtype)) * m_frame).to(dtype) if frame is not None else dl  # autocast: back to dtype
            lx = lx + self.lift_relaxed(with_norm(dl))
        m = mask.to(dtype)[..., None]
        lx, lv, lz = lx * m, lv * m, lz * m
        work = torch.float64 if dtype == torch.float64 else torch.float32  # time stays ≥ fp32
        lags = lags_fs.to(work)
        t0 = torch.as_tensor(t0_fs, dtype=work, device=lags.device).expand(b, 1)
        times = torch.cat((t0, t0 + lags), dim=1)  # (B, S) fs, slot 0 = initial state
        if self.heterogeneous:
            ctx = torch.stack((lx, lv), dim=1)  # (B, 2, N, d)
            tok = lz[:, None].expand(b, s, n, -1)  # (B, S, N, d)
        else:
            ctx, tok = None, (lx + lv + lz)[:, None].expand(b, s, n, -1)
        base, rot = self.prior(x0.to(dtype), lags_fs, paths)  # (B, P, N, 3), (B, P, 3, 3) or None
        if cfg.prior_input:  # slot p also reads exp(−Δt_p/τ) osc(Δt_p) − d0, in Å/10, in x's frame
            dp = self.prior.vibration(paths, None, lags_fs).to(dtype) * RELAXED_INPUT_SCALE  # (B, P, N, 3)
            dp = (dp @ frame[0][:, None].to(dtype)).to(dtype) if frame is not None else dp
            lifted = self.lift_prior(with_norm(dp))
            if cfg.anharmonic:  # MMFF94 MD's departure from the harmonic path, turned back into x's frame
                gap = self.prior.md_departure(rot, lags_fs, paths).to(dtype) * RELAXED_INPUT_SCALE
                gap = (gap @ frame[0][:, None].to(dtype)).to(dtype) if frame is not None else gap
                lifted = lifted + self.lift_md(with_norm(gap * m[:, None]))
            tok = torch.cat((tok[:, :1], tok[:, 1:] + lifted * m[:, None]), dim=1)
        rope = None
        if cfg.time_encoding == "trope":
            rope = rope_tables(times, cfg.embed_dim // cfg.num_heads, cfg.rope_base, cfg.tau_fs)  # (B, S, D/2)
        elif cfg.time_encoding == "sinusoidal":
            tok = tok + self.time_embed(times - t0)[:, :, None]  # (B, S, 1, d)
        else:
            tok = tok + self.slot_embed.to(dtype)[None, :, None]
        h = tok.reshape(b, s * n, -1)  # (B, T, d)
        pair = self.distance(x, mask) if self.distance is not None else None  # (B, H, N, N)
        bias = AttentionBias(s, mask, pair)
        v1 = None
        for i, blk in enumerate(self.blocks):
            h, values = blk(h, ctx, rope, bias, v1)
            if i == 0:
                v1 = values
        h = self.final_norm(h.view(b, s, n, -1)[:, 1:])  # (B, P, N, d)
        if self.lag_gain is not None:
            h = self.lag_gain(h, lags)
        return h, {"frame": frame, "mask": m, "base": base, "rot": rot, "paths": paths}

    def project(self, h: Tensor, state: dict, head: nn.Module | None = None) -> Tensor:
        """Token features (B, P, N, d) → correction (B, P, N, 3) in the input frame (a
        displacement; absolute positions in the centred frame when the prior is none). With
        `head` (the velocity head), that head's vectors: turned back, never translated."""
        y = (head or self.head)(h)  # (B, P, N, 3)
        if state["frame"] is not None:
            q, mu = state["frame"]
            y = y @ q.transpose(1, 2)[:, None].to(y.dtype)  # eq. 6, rotation back
            if self.cfg.prior == "none" and head is None:
                y = y + mu[:, None, None].to(y.dtype)  # absolute positions: translation back too
        return y * state["mask"][:, None]

    def velocity(self, h: Tensor, state: dict, x0: Tensor, v0: Tensor, z: Tensor, mask: Tensor,
                 lags_fs: Tensor) -> Tensor:
        """(B, P, N, 3) Å/fs velocities at the lags (`ModelConfig.predict_velocity`): the prior's own
        velocity (`atomray.priors.compose.Prior.velocity`, the time derivative of the rigid / rotor /
        harmonic prior's positions; none for priors none and x0) plus the velocity head's
        correction, predicted in the body frame at t_0 and turned with the body by R(Δt) like
        the position correction, in units of Å per `velocity_scale_fs`. The head starts at zero:
        at initialisation the velocity is the prior's."""
        y = self.project(h, state, self.velocity_head) / self.cfg.velocity_scale_fs
        rot = state["rot"]
        if rot is not None:
            y = y @ rot.transpose(-1, -2).to(y.dtype)
        base = self.prior.velocity(x0, v0, self.masses[z.long()] * mask.bool(), lags_fs, state["paths"], rot)
        if base is not None:
            y = base.to(y.dtype) + y
        return y * state["mask"][:, None]

    # -- public ---------------------------------------------------------------------------

    def forward(self, x0: Tensor, v0: Tensor, z: Tensor, lags_fs: Tensor, mask: Tensor,
                rwpe: Tensor | None = None, paths: Mapping[str, Tensor] | None = None,
                t0_fs: float | Tensor = 0.0, with_velocity: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, P, N, 3) predicted positions (Å, centred frame of x0); 0 at padded atoms. With
        `with_velocity` (a model built with `predict_velocity`), (positions, velocities (B, P, N, 3)
        Å/fs) from one trunk pass.

        `t0_fs` (scalar or (B, 1)) is the time of the initial state; the output depends only
        on lags_fs, so any t0 gives the same result with T-RoPE (a test checks it).
        """
        if with_velocity and not self.cfg.predict_velocity:
            raise ValueError("ATOM: with_velocity needs a model built with model.predict_velocity=true")
        h, state = self.embed(x0, v0, z, lags_fs, mask, rwpe, paths, t0_fs)
        y = self.project(h, state)
        base, rot = state["base"], state["rot"]
        if base is not None:  # the correction turns with the body: R(Δt) δ
            y = (base.to(y.dtype) + y @ rot.transpose(-1, -2).to(y.dtype)) * state["mask"][:, None]
        if with_velocity:
            return y.to(x0.dtype), self.velocity(h, state, x0, v0, z, mask, lags_fs).to(x0.dtype)
        return y.to(x0.dtype)

    def latent_equivariance_loss(self, x0: Tensor, v0: Tensor, z: Tensor, lags_fs: Tensor,
                                 mask: Tensor, rwpe: Tensor | None, rotation: Tensor,
                                 paths: Mapping[str, Tensor] | None = None) -> Tensor:
        """transip-style latent equivariance loss (scalar), weight `latent_equivariance_weight`.

        A small MLP τ predicts the trunk embedding of the rotated input from the embedding of
        the input and the rotation: L = mean over real tokens of ‖τ(E(x), vec R) − E(x Rᵀ)‖².
        `rotation` (3, 3) or (B, 3, 3) acts on row vectors as x Rᵀ. The training loop adds
        weight × L to the trajectory loss; it is off (and τ absent) when the weight is 0.
        """
        if not hasattr(self, "latent_map"):
            raise RuntimeError("latent_equivariance_loss needs ModelConfig.latent_equivariance_weight > 0")
        b = x0.shape[0]
        r = rotation.to(x0.dtype).expand(b, 3, 3)
        e, state = self.embed(x0, v0, z, lags_fs, mask, rwpe, paths)  # (B, P, N, d)
        turned = rotate_batch({"x0": x0, "v0": v0, "mask": mask, **(paths or {})}, r, about="origin")
        e_rot, _ = self.embed(turned["x0"], turned["v0"], z, lags_fs, mask, rwpe,
                              {k: turned[k] for k in (paths or {})})
        rvec = r.reshape(b, 1, 1, 9).to(e.dtype).expand(*e.shape[:3], 9)
        pred = self.latent_map(torch.cat((e, rvec), dim=-1))  # (B, P, N, d)
        m = state["mask"][:, None]  # (B, 1, N, 1)
        err = ((pred - e_rot) ** 2 * m).sum() / (m.sum() * e.shape[1] * e.shape[-1]).clamp_min(1)
        return err
