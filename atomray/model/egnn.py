"""EGNN layers on a dense, masked radius graph, and the EGNN-R / EGNN-S baselines (paper §4).

EGNN (Satorras et al. 2021) with velocity, as used by EGNO (docs/architecture.md):

    m_ij = φ_e(h_i, h_j, ‖x_i − x_j‖², e_ij)                         (edges of the graph only)
    x_i ← x_i + Σ_j (x_i − x_j) clamp(φ_x(m_ij)) / deg_i + φ_v(h_i) v_i
    h_i ← h_i + φ_h(h_i, Σ_j m_ij)

The graph is built once on the start frame: 1-hop edges between atoms closer than `radius`
(1.6 Å) plus 2-hop edges, padding excluded; e_ij = [1-hop, 2-hop, start-frame distance].
The graph is found densely ((B, N, N) distances; molecules here are small). On the CPU, in eager
mode, it is then turned into an edge list (`EdgeList`) so that messages are computed on edges
only: with hydrogens as nodes a molecule has far fewer edges than atom pairs. An edge list has
a data-dependent size (a host synchronisation, and a graph break under `torch.compile`), so on
a GPU and under compilation messages run on every atom pair, masked to the edges
(`DenseGraph`): the same numbers, static shapes.
Every update is built from differences x_i − x_j, velocities and invariants, so the layers
are exactly E(3)-equivariant and permutation-equivariant; padded atoms neither send nor
receive messages.

Baselines behind the ATOM interface, forward(x0, v0, z, lags_fs, mask, rwpe=None, paths=None) →
(B,P,N,3); with a prior, the output is prior + α (x̂ − prior), α learned from 0
(`atomray.priors.compose`):
  EGNNRollout (EGNN-R)     one step model (num_layers EGNN layers, shared by all steps) applied
                           P times; step p is told its step size t_p − t_{p−1} (sinusoidal
                           embedding), hidden features carry over between steps, and the next
                           step's velocity is the finite difference of the last two states.
  EGNNSequential (EGNN-S)  P EGNNs (num_layers layers each, separate weights) in sequence:
                           EGNN p starts from EGNN p−1's state (h, x, finite-difference v), is
                           told its lag t_p, and its coordinates are the prediction for frame p.
Parameters at the defaults (hidden 64, 5 layers, P 8, RWPE 8): EGNN-R 170 501, EGNN-S 1 344 296.
Node features: [‖v‖ (scaled), Z / Z_max] (+ RWPE). Velocities are scaled by
`velocity_scale_fs` as in ATOM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from typing import Mapping

from atomray.config import ModelConfig
from atomray.model.time_encoding import SinusoidalTimeEmbedding
from atomray.priors.compose import Prior

COORD_CLAMP = 100.0  # EGNN's clamp on the per-edge coordinate update weight


def radius_graph(x: Tensor, mask: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Dense start-frame graph: edges (B, N, N) bool (1-hop ∪ 2-hop, no self loops, padding
    excluded) and edge attributes (B, N, N, 3) = [1-hop, 2-hop, distance Å]."""
    n = x.shape[1]
    dist = torch.cdist(x, x)  # (B, N, N)
    pair = mask[:, :, None] & mask[:, None, :]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    one = (dist < radius) & pair & ~eye
    f = one.to(x.dtype)
    two = ((f @ f) > 0) & pair & ~eye & ~one
    edges = one | two
    attr = torch.stack((one.to(x.dtype), two.to(x.dtype), dist * edges.to(x.dtype)), dim=-1)
    return edges, attr


def node_features(v: Tensor, z: Tensor, rwpe: Tensor | None, cfg: ModelConfig) -> Tensor:
    """(B, N, 2 [+K]) invariant node features [‖v‖, Z/Z_max] (+ RWPE); v already scaled."""
    feats = [torch.linalg.vector_norm(v, dim=-1, keepdim=True), (z.to(v.dtype) / cfg.max_atomic_number)[..., None]]
    if rwpe is not None:
        feats.append(rwpe.to(v.dtype))
    return torch.cat(feats, dim=-1)


@dataclass
class EdgeList:
    """A batch of G graphs of N nodes as an edge list over the G·N flattened nodes: messages go
    from `send` to `recv` (E,), with edge attributes `attr` (E, A) and the receivers' degrees
    `deg` (G·N, 1, at least 1). Only real edges are computed: a dense (G, N, N) pass spends
    most of its time on pairs that are not edges."""

    recv: Tensor
    send: Tensor
    attr: Tensor
    deg: Tensor

    @classmethod
    def from_dense(cls, edges: Tensor, attr: Tensor, copies: int = 1) -> "EdgeList":
        """Edges (B, N, N) bool and attributes (B, N, N, A) of B graphs, each graph repeated
        `copies` times (graph b, copy p is graph b·copies + p, as `reshape(B·P, …)` orders it)."""
        b, n, _ = edges.shape
        gb, i, j = edges.nonzero(as_tuple=True)  # (E,) graph, receiver, sender
        offsets = (gb[:, None] * copies + torch.arange(copies, device=edges.device)) * n  # (E, copies)
        recv = (offsets + i[:, None]).T.reshape(-1)  # copy-major blocks of E edges
        send = (offsets + j[:, None]).T.reshape(-1)
        feats = attr[gb, i, j].repeat(copies, 1)  # (E·copies, A)
        deg = torch.zeros(b * copies * n, 1, dtype=attr.dtype, device=attr.device)
        deg.index_add_(0, recv, torch.ones(len(recv), 1, dtype=attr.dtype, device=attr.device))
        return cls(recv, send, feats, deg.clamp_min(1.0))


@dataclass
class DenseGraph:
    """A batch of G graphs of N nodes as a dense (G, N, N) edge mask with attributes (G, N, N, A)
    and the receivers' degrees (G, N, 1, at least 1): static shapes for GPUs and `torch.compile`."""

    edges: Tensor
    attr: Tensor
    deg: Tensor

    @classmethod
    def from_dense(cls, edges: Tensor, attr: Tensor, copies: int = 1) -> "DenseGraph":
        """As `EdgeList.from_dense`: graph b repeated `copies` times (b·copies + p)."""
        if copies > 1:
            edges = edges.repeat_interleave(copies, dim=0)
            attr = attr.repeat_interleave(copies, dim=0)
        deg = edges.to(attr.dtype).sum(-1, keepdim=True).clamp_min(1.0)
        return cls(edges, attr, deg)


def make_graph(edges: Tensor, attr: Tensor, copies: int = 1) -> "EdgeList | DenseGraph":
    """The edge list on the CPU in eager mode; the dense graph on a GPU or under torch.compile."""
    if edges.device.type == "cpu" and not torch.compiler.is_compiling():
        return EdgeList.from_dense(edges, attr, copies)
    return DenseGraph.from_dense(edges, attr, copies)


class EGNNLayer(nn.Module):
    """One E(n)-equivariant layer with velocity, messages on the edges of an `EdgeList`.

    forward(h (G,N,H), x (G,N,3), v (G,N,3), graph: EdgeList) → (h, x) updated. G is any batch
    of graphs (e.g. B·P time slices).
    """

    def __init__(self, hidden: int, edge_dim: int = 3):
        super().__init__()
        # φ_e's first layer on [h_i, h_j, d², e_ij] split by input so that the per-node parts
        # are computed once per node instead of once per edge.
        self.e_src = nn.Linear(hidden, hidden)
        self.e_dst = nn.Linear(hidden, hidden, bias=False)
        self.e_geo = nn.Linear(1 + edge_dim, hidden, bias=False)
        self.e_out = nn.Linear(hidden, hidden)
        self.phi_x = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1, bias=False))
        nn.init.xavier_uniform_(self.phi_x[2].weight, gain=0.001)  # small initial moves, as EGNN
        self.phi_v = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.phi_h = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, x: Tensor, v: Tensor, graph: "EdgeList | DenseGraph") -> tuple[Tensor, Tensor]:
        if isinstance(graph, DenseGraph):
            return self._dense(h, x, v, graph)
        shape = h.shape
        hf, xf = h.reshape(-1, shape[-1]), x.reshape(-1, 3)  # (G·N, H), (G·N, 3)
        diff = xf[graph.recv] - xf[graph.send]  # (E, 3) x_i − x_j
        d2 = diff.square().sum(-1, keepdim=True)  # (E, 1)
        geo = torch.cat((d2, graph.attr.to(d2.dtype)), -1)  # (E, 1 + A)
        pre = self.e_src(hf)[graph.recv] + self.e_dst(hf)[graph.send] + self.e_geo(geo)
        m = F.silu(self.e_out(F.silu(pre)))  # (E, H)
        moves = diff * self.phi_x(m).clamp(-COORD_CLAMP, COORD_CLAMP)  # (E, 3)
        # scatter in the messages' dtype (bf16 under autocast), back to the stream's after
        trans = moves.new_zeros(xf.shape).index_add_(0, graph.recv, moves).to(xf.dtype) / graph.deg.to(xf.dtype)
        agg = m.new_zeros(hf.shape).index_add_(0, graph.recv, m).to(hf.dtype)  # (G·N, H)
        x = x + trans.view(x.shape) + self.phi_v(h) * v
        h = h + self.phi_h(torch.cat((h, agg.view(shape)), dim=-1))
        return h, x

    def _dense(self, h: Tensor, x: Tensor, v: Tensor, graph: DenseGraph) -> tuple[Tensor, Tensor]:
        """The same layer on every (receiver i, sender j) pair, masked to the graph's edges."""
        diff = x[:, :, None] - x[:, None, :]  # (G, N, N, 3) x_i − x_j
        d2 = diff.square().sum(-1, keepdim=True)  # (G, N, N, 1)
        geo = torch.cat((d2, graph.attr.to(d2.dtype)), -1)  # (G, N, N, 1 + A)
        pre = self.e_src(h)[:, :, None] + self.e_dst(h)[:, None, :] + self.e_geo(geo)
        e = graph.edges[..., None].to(h.dtype)  # (G, N, N, 1)
        m = F.silu(self.e_out(F.silu(pre))) * e  # (G, N, N, H), zero off the edges
        moves = diff * self.phi_x(m).clamp(-COORD_CLAMP, COORD_CLAMP) * e  # (G, N, N, 3)
        trans = moves.sum(2).to(x.dtype) / graph.deg.to(x.dtype)  # (G, N, 3)
        x = x + trans + self.phi_v(h) * v
        h = h + self.phi_h(torch.cat((h, m.sum(2).to(h.dtype)), dim=-1))
        return h, x


class EGNNBaseline(nn.Module):
    """Shared input handling for the EGNN-family baselines."""

    def __init__(self, cfg: ModelConfig, num_lags: int, rwpe_dim: int):
        super().__init__()
        self.cfg, self.num_lags, self.rwpe_dim = cfg, num_lags, rwpe_dim
        hid = cfg.gnn_hidden_dim
        self.node_embed = nn.Linear(2 + rwpe_dim, hid)
        self.time_embed = SinusoidalTimeEmbedding(cfg.time_embed_dim, hid, cfg.rope_base, cfg.tau_fs)
        self.prior = Prior(cfg.prior, cfg.anharmonic, cfg.vib_damping)
        if cfg.prior != "none":
            self.alpha = nn.Parameter(torch.zeros(()))  # prior + α (x̂ − prior): the prior at init

    def _inputs(self, x0: Tensor, v0: Tensor, z: Tensor, lags_fs: Tensor, mask: Tensor, rwpe: Tensor | None):
        b = x0.shape[0]
        if lags_fs.dim() != 2 or lags_fs.shape[0] != b:
            raise ValueError(f"{type(self).__name__}: lags_fs must be (B, P) with B = {b}, found {tuple(lags_fs.shape)}")
        if lags_fs.shape[1] != self.num_lags:
            raise ValueError(f"{type(self).__name__} was built for P = {self.num_lags} lags (its layers are tied to "
                             f"the lag count) and cannot predict P = {lags_fs.shape[1]}; evaluate it with "
                             f"{self.num_lags} lags, or use ATOM, which predicts any number")
        k = 0 if rwpe is None else rwpe.shape[-1]
        if k != self.rwpe_dim:
            raise ValueError(f"{type(self).__name__}: built for RWPE length {self.rwpe_dim}, found {k}")
        dtype = self.node_embed.weight.dtype
        mask = mask.bool()
        m = mask.to(dtype)[..., None]
        x, v = x0.to(dtype) * m, v0.to(dtype) * m * self.cfg.velocity_scale_fs
        edges, attr = radius_graph(x, mask, self.cfg.radius)
        h = self.node_embed(node_features(v, z, rwpe, self.cfg)) * m  # (B, N, H)
        return x, v, h, edges, attr, m

    def _finish(self, pred: Tensor, base: Tensor | None, m: Tensor, dtype: torch.dtype) -> Tensor:
        """The output (B, P, N, 3): the network's positions, or prior + α (x̂ − prior)."""
        if base is not None:
            pred = (base + self.alpha * (pred - base)) * m[:, None]
        return pred.to(dtype)

    def _prior(self, x0: Tensor, lags_fs: Tensor, paths: Mapping[str, Tensor] | None, m: Tensor) -> Tensor | None:
        """The prior's positions (B, P, N, 3) in the stream's dtype (`atomray.priors.compose`), or None."""
        self.prior.check(paths)
        base, _ = self.prior(x0.to(m.dtype), lags_fs, paths)
        return None if base is None else base.to(m.dtype) * m[:, None]


class EGNNRollout(EGNNBaseline):
    """EGNN-R: one EGNN step model rolled out autoregressively over the P lags."""

    def __init__(self, cfg: ModelConfig, num_lags: int, rwpe_dim: int = 0):
        super().__init__(cfg, num_lags, rwpe_dim)
        self.layers = nn.ModuleList(EGNNLayer(cfg.gnn_hidden_dim) for _ in range(cfg.num_layers))

    def forward(self, x0: Tensor, v0: Tensor, z: Tensor, lags_fs: Tensor, mask: Tensor,
                rwpe: Tensor | None = None, paths: Mapping[str, Tensor] | None = None) -> Tensor:
        x, v, h0, edges, attr, m = self._inputs(x0, v0, z, lags_fs, mask, rwpe)
        graph = make_graph(edges, attr)
        lags = lags_fs.to(x.dtype)
        steps = torch.diff(lags, dim=1, prepend=torch.zeros_like(lags[:, :1]))  # (B, P) fs
        temb = self.time_embed(steps)  # (B, P, H)
        out, h = [], h0
        for p in range(self.num_lags):  # autoregressive by definition: step p needs step p−1
            h, xp = h + temb[:, p, None] * m, x
            for layer in self.layers:
                h, xp = layer(h, xp, v, graph)
            step = steps[:, p, None, None].clamp_min(1e-6)
            v = (xp - x) / step * self.cfg.velocity_scale_fs * m  # finite-difference velocity
            x, h = xp * m, h * m
            out.append(x)
        base = self._prior(x0, lags_fs, paths, m)
        return self._finish(torch.stack(out, dim=1), base, m, x0.dtype)  # (B, P, N, 3)


class EGNNSequential(EGNNBaseline):
    """EGNN-S: a chain of P EGNNs; EGNN p's coordinates are the prediction at lag p."""

    def __init__(self, cfg: ModelConfig, num_lags: int, rwpe_dim: int = 0):
        super().__init__(cfg, num_lags, rwpe_dim)
        self.frames = nn.ModuleList(
            nn.ModuleList(EGNNLayer(cfg.gnn_hidden_dim) for _ in range(cfg.num_layers)) for _ in range(num_lags)
        )

    def forward(self, x0: Tensor, v0: Tensor, z: Tensor, lags_fs: Tensor, mask: Tensor,
                rwpe: Tensor | None = None, paths: Mapping[str, Tensor] | None = None) -> Tensor:
        x, v, h, edges, attr, m = self._inputs(x0, v0, z, lags_fs, mask, rwpe)
        graph = make_graph(edges, attr)
        lags = lags_fs.to(x.dtype)
        steps = torch.diff(lags, dim=1, prepend=torch.zeros_like(lags[:, :1]))  # (B, P) fs
        temb = self.time_embed(lags)  # (B, P, H)
        out = []
        for p, layers in enumerate(self.frames):  # one EGNN per frame, in sequence
            h, xp = h + temb[:, p, None] * m, x
            for layer in layers:
                h, xp = layer(h, xp, v, graph)
            v = (xp - x) / steps[:, p, None, None].clamp_min(1e-6) * self.cfg.velocity_scale_fs * m
            h, x = h * m, xp * m
            out.append(x)
        base = self._prior(x0, lags_fs, paths, m)
        return self._finish(torch.stack(out, dim=1), base, m, x0.dtype)  # (B, P, N, 3)
