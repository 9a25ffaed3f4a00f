"""The forward pass is tensor math on the batch's device: ATOM and EGNO with the default prior
compile forward and backward as ONE graph (`torch.compile(fullgraph=True)`: no RDKit, tblite
or NumPy, no host synchronisation, no data-dependent Python), and the compiled model gives the
eager outputs and gradients. Slow: ~40 s of tracing (e3nn) on 2 cores, ~1 min with inductor."""

from __future__ import annotations

import pytest
import torch
from symmetry import call, random_batch, randomise_parameters

from atomray.config import ModelConfig
from atomray.model import build_model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["atom", "egno"])
def test_default_model_compiles_forward_and_backward_as_one_graph(name):
    torch.set_num_threads(2)
    cfg = ModelConfig(name=name, embed_dim=16, num_layers=1, num_heads=2, gnn_hidden_dim=8)
    assert cfg.prior == "harmonic" and cfg.relaxed_input and cfg.prior_input  # the default prior and its inputs
    model = randomise_parameters(build_model(cfg, 4, 2))
    batch = random_batch(torch.Generator().manual_seed(0), b=2, n=5, p=4, rwpe_dim=2, dtype=torch.float32, pad=1)
    eager = call(model, batch)
    eager.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # a graph break raises here
    out = call(compiled, batch)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-4)
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], atol=1e-4, rtol=1e-3, msg=n)


@pytest.mark.slow
def test_compiled_atom_matches_eager_forward_and_backward():
    """The same with inductor, the backend `scaling.compile=true` uses (CPU C++ here; CUDA on a GPU)."""
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(30)
    batch = random_batch(g, b=3, n=6, p=4, rwpe_dim=2, pad=2, dtype=torch.float32)
    model = randomise_parameters(build_model(ModelConfig(embed_dim=32, num_layers=2, num_heads=4,
                                                         attn_dropout=0.0), 4, 2))
    eager = call(model, batch)
    eager.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model)
    out = call(compiled, batch)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-4)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-4, rtol=1e-3, msg=name)
