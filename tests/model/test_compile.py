"""`torch.compile` is an optional switch that must not change the model: a compiled ATOM
gives the eager outputs and gradients (CPU inductor here; the same graph runs on CUDA).
Slow (~1 min of compilation on 2 cores)."""

from __future__ import annotations

import pytest
import torch
from symmetry import call, random_batch, randomise_parameters

from atomray.config import ModelConfig
from atomray.model import build_model


@pytest.mark.slow
def test_compiled_atom_matches_eager_forward_and_backward():
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(30)
    batch = random_batch(g, b=3, n=6, p=4, rwpe_dim=2, pad=2, dtype=torch.float32)
    model = randomise_parameters(build_model(ModelConfig(embed_dim=32, num_layers=2, num_heads=4,
                                                         attn_dropout=0.0), 4, 2))
    eager = call(model, batch)
    eager.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model)
    out = call(compiled, batch)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-4)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-4, rtol=1e-3, msg=name)
