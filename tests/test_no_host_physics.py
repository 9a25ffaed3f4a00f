"""On a data set whose per-frame physics is stored, neither a training step nor a prediction
from one of its frames calls RDKit or tblite: the priors come from the stored basins, computed
in the data path, and the model's forward is tensor math (issue 30). RDKit's force field and
bond perception and tblite's calculator are patched to raise, so any call fails the test."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "tg80-mini"


@pytest.fixture
def no_host_physics(monkeypatch):
    """RDKit's MMFF94 and bond perception, tblite's calculator and the per-frame computation
    itself all raise; the basin store is empty and off, so nothing cached can stand in."""
    import tblite.ase
    from rdkit.Chem import AllChem, rdDetermineBonds

    from atomray.priors import frames, minima

    def refuse(*args, **kwargs):
        raise AssertionError("host physics (RDKit / tblite) was called")

    monkeypatch.setattr(AllChem, "MMFFGetMoleculeForceField", refuse)
    monkeypatch.setattr(AllChem, "MMFFGetMoleculeProperties", refuse)
    monkeypatch.setattr(rdDetermineBonds, "DetermineBonds", refuse)
    monkeypatch.setattr(tblite.ase, "TBLite", refuse)
    monkeypatch.setattr(frames, "compute_molecule", refuse)
    monkeypatch.setenv("ATOMRAY_CACHE_DIR", "off")
    monkeypatch.setattr(minima, "_MACHINE", {})
    monkeypatch.setattr(minima, "_RECENT", minima.Recent(max_items=1))


def test_the_physics_is_real_where_it_is_not_patched():
    """The guard is meaningful: without the patch, a new state does reach RDKit."""
    from atomray.priors.minima import mmff_minimum
    from atomray.rollout import state_from_dataset

    state = state_from_dataset(DATA, "aspirin", 10)
    assert mmff_minimum(state.positions, state.atomic_numbers) is not None


def test_the_patches_catch_the_host_physics_a_new_state_needs(no_host_physics):
    """The guard is meaningful: with the patch, the minimisation a new state goes through raises."""
    from atomray.priors.minima import mmff_minimum
    from atomray.rollout import state_from_dataset

    state = state_from_dataset(DATA, "aspirin", 10)
    with pytest.raises(AssertionError, match="host physics"):
        mmff_minimum(state.positions, state.atomic_numbers)


def test_a_training_step_and_a_prediction_never_call_rdkit_or_tblite(no_host_physics):
    from atomray.config import load_config
    from atomray.data.pipeline import fixed_windows, to_torch
    from atomray.model import build_model
    from atomray.predict import predict
    from atomray.priors.frames import FramePhysics
    from atomray.rollout import state_from_dataset
    from atomray.train.loss import training_transform
    from atomray.train.optim import build_optimizer, train_step

    cfg = load_config(ROOT / "jobs" / "configs" / "pretrain.yaml", [f"data.path={DATA}", "model.embed_dim=16",
                                                                    "model.num_layers=1", "model.num_heads=2"])
    assert cfg.model.prior == "harmonic" and cfg.train.loss_weighting == "harmonic"  # the default needs basins
    molecules = ["aspirin", "paracetamol", "lib-2330"]
    assert FramePhysics.load(DATA, molecules) is not None  # shipped with the data set
    transform, _ = training_transform(cfg, molecules)
    batch = to_torch(transform(fixed_windows(str(DATA), molecules, 6, cfg.data, 0)))
    assert batch["vib_osc"].abs().max() > 0  # the vibration comes from stored basins
    model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k)
    optimizer = build_optimizer(model, cfg.optim)
    gen = torch.Generator().manual_seed(0)
    loss = train_step(model, optimizer, batch, cfg, 0, 10, gen, gen, nullcontext())
    assert torch.isfinite(loss)

    state = state_from_dataset(DATA, "aspirin", 1234)
    frames = predict(model.eval(), cfg, state, [10.0, 50.0, 200.0])
    assert frames.positions.shape == (3, len(state.atomic_numbers), 3)
