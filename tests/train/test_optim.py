"""Optimisers of Table 19 and the pure learning-rate schedule."""

from __future__ import annotations

import pytest
import torch

from model.symmetry import call, random_batch

from atomray.config import ModelConfig, OptimConfig
from atomray.model import build_model
from atomray.train.optim import build_optimizer, is_hidden_matrix, lr_at


def test_cosine_schedule_with_warmup():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, schedule="cosine")
    assert lr_at(0, 100, cfg) == pytest.approx(1e-4)
    assert lr_at(9, 100, cfg) == pytest.approx(1e-3)
    assert lr_at(10, 100, cfg) == pytest.approx(1e-3)
    assert lr_at(55, 100, cfg) == pytest.approx(5e-4)
    assert lr_at(100, 100, cfg) == pytest.approx(0.0, abs=1e-12)
    lrs = [lr_at(s, 100, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_step_and_constant_schedules():
    step = OptimConfig(lr=1e-3, schedule="step", step_size=5, step_gamma=0.5, warmup_steps=0)
    assert [lr_at(s, 100, step) for s in (0, 4, 5, 10)] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])
    assert lr_at(77, 100, OptimConfig(lr=3e-4, schedule="constant")) == pytest.approx(3e-4)
    assert lr_at(0, 100, OptimConfig(lr=3e-4, schedule="constant")) == pytest.approx(3e-4 / 20)  # default warm-up


def _tiny_atom():
    return build_model(ModelConfig(embed_dim=16, num_layers=2, num_heads=2), num_lags=4, rwpe_dim=0)


@pytest.mark.parametrize("name", ["adamw_amsgrad", "adamw", "muon"])
def test_each_optimiser_takes_a_step(name):
    torch.manual_seed(0)
    model = _tiny_atom()
    opt = build_optimizer(model, OptimConfig(name=name, eps=1e-5 if name == "muon" else 1e-10))
    before = [p.detach().clone() for p in model.parameters()]
    out = call(model, random_batch(torch.Generator().manual_seed(0), b=2, n=5, p=4, dtype=torch.float32))
    out.pow(2).mean().backward()
    with_grad = [i for i, p in enumerate(model.parameters()) if p.grad is not None and p.grad.abs().sum() > 0]
    opt.step()
    after = list(model.parameters())
    assert with_grad, "no parameter received a gradient"
    assert all(not torch.equal(before[i], after[i]) for i in with_grad)


def test_muon_takes_only_hidden_block_matrices():
    model = _tiny_atom()
    opt = build_optimizer(model, OptimConfig(name="muon"))
    muon = [g for g in opt.param_groups if g["use_muon"]]
    adam = [g for g in opt.param_groups if not g["use_muon"]]
    assert muon and adam
    assert all(p.ndim >= 2 for g in muon for p in g["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(".blocks." in f".{names[id(p)]}" for g in muon for p in g["params"])
    adam_names = {names[id(p)] for g in adam for p in g["params"]}
    assert any(n.startswith("lifting.") for n in adam_names) and any(n.startswith("head.") for n in adam_names)
    assert not any(is_hidden_matrix(n, p) for n, p in model.named_parameters() if n in adam_names)
