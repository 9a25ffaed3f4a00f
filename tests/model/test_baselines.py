"""EGNO / EGNN-R / EGNN-S: exactly E(3)-equivariant, the start-frame graph is 1-hop ∪ 2-hop
within 1.6 Å, and the Fourier time convolution acts on the lowest modes only."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from symmetry import assert_equivariant_output, random_batch, random_reflection, random_rotation, randomise_parameters

from atomray.config import ModelConfig
from atomray.model import build_model
from atomray.model.egnn import radius_graph
from atomray.model.egno import SpectralConv

torch.set_num_threads(1)
TINY = ModelConfig(gnn_hidden_dim=16, num_layers=2)


@pytest.mark.parametrize("name", ["egno", "egnn_r", "egnn_s"])
@pytest.mark.parametrize("improper", [False, True], ids=["rotation", "reflection"])
def test_baselines_are_exactly_e3_equivariant(name, improper):
    g = torch.Generator().manual_seed(20)
    batch = random_batch(g, b=2, n=6, p=4, rwpe_dim=2, pad=1)
    batch["x0"] = batch["x0"] * 0.6  # bring atoms within 1.6 Å so the graph has edges
    model = randomise_parameters(build_model(replace(TINY, name=name), 4, 2).double(), scale=0.5).eval()
    r = random_reflection(g) if improper else random_rotation(g)
    shift = torch.randn(3, generator=g, dtype=torch.float64) * 5
    assert_equivariant_output(model, batch, r, shift, atol=1e-9, rtol=1e-9)


def test_radius_graph_has_one_and_two_hop_edges_only():
    # a chain 0-1-2-3 with 1.4 Å bonds, atom 4 far away, atom 5 padding
    x = torch.tensor([[[0.0, 0, 0], [1.4, 0, 0], [2.8, 0, 0], [4.2, 0, 0], [20.0, 0, 0], [0.5, 0, 0]]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    edges, attr = radius_graph(x, mask, 1.6)
    one = {(0, 1), (1, 2), (2, 3)}
    two = {(0, 2), (1, 3)}
    want = {(i, j) for a, b in one | two for i, j in ((a, b), (b, a))}
    got = {(i, j) for i, j in zip(*torch.nonzero(edges[0], as_tuple=True)) for i, j in [(int(i), int(j))]}
    assert got == want
    assert attr[0, 0, 1, 0] == 1 and attr[0, 0, 2, 1] == 1 and attr[0, 0, 3].abs().sum() == 0
    torch.testing.assert_close(attr[0, 0, 2, 2], torch.tensor(2.8))


def test_spectral_conv_keeps_only_the_lowest_modes():
    g = torch.Generator().manual_seed(21)
    conv = SpectralConv(3, 3, modes=2).double()
    u = torch.randn(2, 8, 5, 3, generator=g, dtype=torch.float64)
    out = conv(u)
    spec = torch.fft.rfft(out, dim=1)
    assert spec[:, 2:].abs().max() < 1e-12  # modes ≥ 2 are removed
    assert spec[:, :2].abs().max() > 1e-3
    # and it is linear and shift-equivariant along the lag axis (circularly), as a convolution
    torch.testing.assert_close(conv(torch.roll(u, 3, dims=1)), torch.roll(out, 3, dims=1))


def test_dense_graph_layer_equals_the_edge_list_layer():
    """The layer GPUs and torch.compile run (every atom pair, masked to the edges: static shapes)
    computes the same messages, coordinates and features as the CPU edge list."""
    from atomray.model.egnn import DenseGraph, EdgeList, EGNNLayer

    g = torch.Generator().manual_seed(22)
    batch = random_batch(g, b=3, n=7, p=2, pad=2)
    x = batch["x0"] * 0.6
    edges, attr = radius_graph(x, batch["mask"], 1.6)
    layer = randomise_parameters(EGNNLayer(8).double(), scale=0.5)
    h = torch.randn(3, 7, 8, generator=g, dtype=torch.float64)
    v = batch["v0"]
    sparse = layer(h, x, v, EdgeList.from_dense(edges, attr))
    dense = layer(h, x, v, DenseGraph.from_dense(edges, attr))
    assert edges.sum() > 4
    for a, b in zip(sparse, dense):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
