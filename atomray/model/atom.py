"""ATOM: the Atomistic Transformer Operator for Molecules (paper §3.2, App. D).

    F_θ = P ∘ σ(K_L) ∘ … ∘ σ(K_1) ∘ Q        (§3.2: lifting Q, attention kernels K_l, projection P)

forward(x0, v0, z, lags_fs, mask, rwpe=None) → (B, P, N, 3) positions (Å) in the centred frame
of x0. Inputs are a padded batch (`atomray.data.windows.pad_windows`): x0 (B,N,3) Å, v0 (B,N,3)
Å/fs, z (B,N) int (0 = padding), lags_fs (B,P) fs, mask (B,N) bool, rwpe (B,N,K) or None.

Time slots. The lifted initial state is duplicated over S = P + 1 time slots (App. C.2):
slot 0 holds the initial state at t_0 and slot p the query for t_p = t_0 + lag_p. T-RoPE
is relative (it sees only t_{s'} − t_s), so slot 0 is what tells the model the absolute lag:
every query at t_p attends to the initial state at offset t_p − t_0, and to the other
queries at offsets t_{p'} − t_p ("ATOM takes a time lag Δt as input, to modulate T-RoPE
phase", §3.3). t_0 defaults to 0; shifting every timestamp, t_0 included, leaves the output
unchanged (tested). Slot 0's output is discarded; the output has P frames.

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
  delta_prediction   output = projection + x0 (App. D.4)
  output_heads   > 1: gated multi-head output, Σ_h softmax(g(scalars))_h · o3.Linear_h(vectors)
  latent_equivariance_weight > 0 builds a transip-style MLP (see `latent_equivariance_loss`).
Label noise (§3.2.3) is applied by the training loss (`atomray.train.loss`), not here.

Parameter count, MD17 config (d 128, 5 blocks, 8 heads, P 8, 1 output head, RWPE 8):
  lifting 1 856 (X 64, V 64, Z 1 728) + context RMSNorm 128 + 5 blocks × 148 740 − 1 (block 1
  has no value-residual α) + final RMSNorm 128 + head 32 = 745 843 (paper: 754 468, −1.1 %).
  Multitask (d 256, 6 blocks, 8 heads, 8 gated output heads): 3 571 871 (paper: 3 557 840,
  +0.4 %). `tests/model/test_atom.py` checks both within 10 %.

Velocities enter in units of Å per `velocity_scale_fs` (100 fs), so their size matches the
centred positions. The model follows the dtype and device of its parameters; inputs are cast
to the parameter dtype and the output is returned in x0's dtype. Under bf16 autocast the
canonical frame and time angles stay in float32.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn

from atomray.config import ModelConfig
from atomray.model.attention import Block
from atomray.model.canonical import canonicalise, decanonicalise
from atomray.model.lifting import EquivariantLifting, LinearLifting, chemistry_features, hidden_irreps
from atomray.model.time_encoding import SinusoidalTimeEmbedding, rope_tables


class OutputHead(nn.Module):
    """Equivariant projection of token features (…, d) to 3-vectors (…, 3).

    One head: o3.Linear(m×0e + n×1o → 1×1o) (a weighted sum of the n vector channels).
    H heads: o3.Linear(→ H×1o) gives H candidate vectors, mixed by softmax gates computed
    from the m scalar channels (gated multi-head output, Table 19 "No. output heads").
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        irreps = hidden_irreps(dim)
        self.heads, self.scalars = heads, irreps[0].mul
        self.vectors = o3.Linear(irreps, f"{heads}x1o")
        self.gate = nn.Linear(self.scalars, heads) if heads > 1 else None

    def forward(self, h: Tensor) -> Tensor:
        vec = self.vectors(h)  # (…, 3H)
        if self.gate is None:
            return vec
        g = torch.softmax(self.gate(h[..., : self.scalars]), dim=-1)  # (…, H)
        return (vec.unflatten(-1, (self.heads, 3)) * g[..., None]).sum(-2)  # (…, 3)


class ATOM(nn.Module):
    """The ATOM operator; see the module docstring. Build it with `build_model(cfg, P, K)`."""

    def __init__(self, cfg: ModelConfig, num_lags: int, rwpe_dim: int = 0):
        super().__init__()
        self.cfg, self.num_lags, self.rwpe_dim = cfg, num_lags, rwpe_dim
        d = cfg.embed_dim
        self.slots = num_lags + 1
        chem_dim = cfg.max_atomic_number + rwpe_dim
        lift = LinearLifting if cfg.lifting == "linear" else EquivariantLifting
        self.lifting = lift(d, chem_dim)
        self.heterogeneous = cfg.attention == "heterogeneous"
        self.ctx_norm = nn.RMSNorm(d, eps=1e-6) if self.heterogeneous else None
        if cfg.time_encoding == "sinusoidal":
            self.time_embed = SinusoidalTimeEmbedding(cfg.time_embed_dim, d, cfg.rope_base, cfg.tau_fs)
        elif cfg.time_encoding == "none":
            self.slot_embed = nn.Parameter(torch.randn(self.slots, d) * 0.02)
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, self.slots, self.heterogeneous, cfg.gamma, cfg.value_residual,
                  first=(i == 0), attn_dropout=cfg.attn_dropout, mlp_dropout=cfg.mlp_dropout)
            for i in range(cfg.num_layers)
        )
        self.final_norm = nn.RMSNorm(d, eps=1e-6)
        self.head = OutputHead(d, cfg.output_heads)
        if cfg.latent_equivariance_weight > 0:
            # transip-style transformation network τ(embedding, vec(R)) → embedding of R·input
            self.latent_map = nn.Sequential(nn.Linear(d + 9, d), nn.SiLU(), nn.Linear(d, d))

    # -- pieces ---------------------------------------------------------------------------

    def _check(self, x0: Tensor, lags_fs: Tensor, rwpe: Tensor | None) -> None:
        b, n, _ = x0.shape
        if lags_fs.shape != (b, self.num_lags):
            raise ValueError(f"ATOM: lags_fs must be (B, P) = ({b}, {self.num_lags}), found {tuple(lags_fs.shape)}")
        k = 0 if rwpe is None else rwpe.shape[-1]
        if k != self.rwpe_dim:
            raise ValueError(f"ATOM: built for RWPE length {self.rwpe_dim}, found rwpe with {k} features")

    def embed(self, x0: Tensor, v0: Tensor, z: Tensor, lags_fs: Tensor, mask: Tensor,
              rwpe: Tensor | None = None, t0_fs: float | Tensor = 0.0) -> tuple[Tensor, dict]:
        """Run lifting and trunk: (B, P, N, d) final-normed token features of the P lag slots,
        plus the state needed to project them (canonical frame, x0)."""
        self._check(x0, lags_fs, rwpe)
        cfg, dtype = self.cfg, self.final_norm.weight.dtype
        b, n, _ = x0.shape
        s = self.slots
        x, v, mask = x0.to(dtype), v0.to(dtype) * cfg.velocity_scale_fs, mask.bool()
        frame = None
        if cfg.lifting == "canonical":
            x, v, q, mu = canonicalise(x, v, mask)
            frame = (q, mu)
        chem = chemistry_features(z, cfg.max_atomic_number, rwpe, dtype)
        lx, lv, lz = self.lifting(x, v, chem)  # (B, N, d) each
        m = mask.to(dtype)[..., None]
        lx, lv, lz = lx * m, lv * m, lz * m
        work = torch.float64 if dtype == torch.float64 else torch.float32  # time stays ≥ fp32
        lags = lags_fs.to(work)
        t0 = torch.as_tensor(t0_fs, dtype=work, device=lags.device).expand(b, 1)
        times = torch.cat((t0, t0 + lags), dim=1)  # (B, S) fs, slot 0 = initial state
        if self.heterogeneous:
            ctx = self.ctx_norm(torch.stack((lx, lv), dim=1))  # (B, 2, N, d)
            tok = lz[:, None].expand(b, s, n, -1)  # (B, S, N, d)
        else:
            ctx, tok = None, (lx + lv + lz)[:, None].expand(b, s, n, -1)
        rope = None
        if cfg.time_encoding == "trope":
            rope = rope_tables(times, cfg.embed_dim // cfg.num_heads, cfg.rope_base, cfg.tau_fs)  # (B, S, D/2)
        elif cfg.time_encoding == "sinusoidal":
            tok = tok + self.time_embed(times - t0)[:, :, None]  # (B, S, 1, d)
        else:
            tok = tok + self.slot_embed.to(dtype)[None, :, None]
        h = tok.reshape(b, s * n, -1)  # (B, T, d)
        key_mask = None
        if torch.compiler.is_compiling() or not bool(mask.all()):
            key_mask = mask[:, None, :].expand(b, s, n).reshape(b, 1, 1, s * n)  # (B, 1, 1, T)
        v1 = None
        for i, blk in enumerate(self.blocks):
            h, values = blk(h, ctx, rope, key_mask, v1)
            if i == 0:
                v1 = values
        h = self.final_norm(h.view(b, s, n, -1)[:, 1:])  # (B, P, N, d)
        return h, {"frame": frame, "x": x, "mask": m}

    def project(self, h: Tensor, state: dict) -> Tensor:
        """Token features (B, P, N, d) → positions (B, P, N, 3) in the input frame."""
        y = self.head(h)  # (B, P, N, 3)
        if self.cfg.delta_prediction:
            y = y + state["x"][:, None]
        if state["frame"] is not None:
            y = decanonicalise(y, *state["frame"])
        return y * state["mask"][:, None]

    # -- public ---------------------------------------------------------------------------

    def forward(self, x0: Tensor, v0: Tensor, z: Tensor, lags_fs: Tensor, mask: Tensor,
                rwpe: Tensor | None = None, t0_fs: float | Tensor = 0.0) -> Tensor:
        """(B, P, N, 3) predicted positions (Å, centred frame of x0); 0 at padded atoms.

        `t0_fs` (scalar or (B, 1)) is the time of the initial state; the output depends only
        on lags_fs, so any t0 gives the same result with T-RoPE (a test checks it).
        """
        h, state = self.embed(x0, v0, z, lags_fs, mask, rwpe, t0_fs)
        return self.project(h, state).to(x0.dtype)

    def latent_equivariance_loss(self, x0: Tensor, v0: Tensor, z: Tensor, lags_fs: Tensor,
                                 mask: Tensor, rwpe: Tensor | None, rotation: Tensor) -> Tensor:
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
        e, state = self.embed(x0, v0, z, lags_fs, mask, rwpe)  # (B, P, N, d)
        e_rot, _ = self.embed(x0 @ r.transpose(1, 2), v0 @ r.transpose(1, 2), z, lags_fs, mask, rwpe)
        rvec = r.reshape(b, 1, 1, 9).to(e.dtype).expand(*e.shape[:3], 9)
        pred = self.latent_map(torch.cat((e, rvec), dim=-1))  # (B, P, N, d)
        m = state["mask"][:, None]  # (B, 1, N, 1)
        err = ((pred - e_rot) ** 2 * m).sum() / (m.sum() * e.shape[1] * e.shape[-1]).clamp_min(1)
        return err
