"""Checkpoint directories: weights_only loading, strict architecture match, atomic files, and
a clear error naming the file for a missing or damaged one."""

from __future__ import annotations

import os

import pytest
import torch

from model.symmetry import call, random_batch

from atomray.config import RunConfig, config_from_dict
from atomray.model import build_model
from atomray.checkpoint import (
    CheckpointError,
    TrainState,
    load_model,
    load_optimizer,
    load_weights,
    read_config,
    read_state,
    save_checkpoint,
)

CFG = config_from_dict({}, ["model.embed_dim=16", "model.num_layers=1", "model.num_heads=2", "data.rwpe_k=4"])


def model_of(cfg: RunConfig):
    return build_model(cfg.model, cfg.data.num_lags, cfg.data.rwpe_k)


def test_round_trip(tmp_path):
    torch.manual_seed(1)
    model = model_of(CFG)
    opt = torch.optim.AdamW(model.parameters(), amsgrad=True)
    call(model, random_batch(torch.Generator().manual_seed(1), b=1, n=4, p=8, rwpe_dim=4, dtype=torch.float32)
         ).sum().backward()
    opt.step()
    state = TrainState(epoch=3, step=40, history=[{"epoch": 3, "val_s2t": 0.5}], mlflow_run_id="abc")
    save_checkpoint(tmp_path, model, CFG, state, opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "model.pt", "optimizer.pt", "state.json"]

    loaded, cfg = load_model(tmp_path)
    assert cfg == CFG and read_config(tmp_path) == CFG
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(loaded.parameters(), amsgrad=True)
    assert load_optimizer(tmp_path, opt2)
    assert read_state(tmp_path) == state


@pytest.mark.parametrize("circles", [False, True])
def test_a_checkpoint_saved_before_a_model_key_existed_reads_what_it_was_trained_with(tmp_path, circles):
    """A config.yaml without `model.rotor_circles` (saved before the key existed, trained on the
    straight modes) reads it as false, though the default is now true; a saved value is kept."""
    import dataclasses

    import yaml

    from atomray.checkpoint import PREDATED_MODEL_KEYS

    cfg = dataclasses.replace(CFG, model=dataclasses.replace(CFG.model, rotor_circles=circles))
    save_checkpoint(tmp_path / "new", model_of(cfg), cfg, TrainState())
    assert read_config(tmp_path / "new").model.rotor_circles is circles
    old = yaml.safe_load((tmp_path / "new" / "config.yaml").read_text())
    del old["model"]["rotor_circles"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(old))
    assert read_config(tmp_path / "old").model.rotor_circles is False
    assert CFG.model.rotor_circles != PREDATED_MODEL_KEYS["rotor_circles"]  # the default moved since

def test_files_are_plain_tensors(tmp_path):
    save_checkpoint(tmp_path, model_of(CFG), CFG, TrainState())
    torch.load(tmp_path / "model.pt", weights_only=True)  # raises if anything is pickled


def test_architecture_mismatch_is_refused(tmp_path):
    save_checkpoint(tmp_path, model_of(CFG), CFG, TrainState())
    other = model_of(config_from_dict({}, ["model.embed_dim=32", "model.num_layers=1", "model.num_heads=2", "data.rwpe_k=4"]))
    with pytest.raises(RuntimeError):
        load_weights(tmp_path, other)


def test_unwraps_ddp_free_compiled_module(tmp_path):
    model = model_of(CFG)
    wrapped = torch.nn.Module()
    wrapped._orig_mod = model  # what torch.compile leaves; the checkpoint stores the plain module
    save_checkpoint(tmp_path, wrapped, CFG, TrainState())
    keys = torch.load(tmp_path / "model.pt", weights_only=True).keys()
    assert set(keys) == set(model.state_dict().keys())


@pytest.mark.parametrize("content", [os.urandom(256), b"", b"not a checkpoint\n"], ids=["random", "empty", "text"])
def test_damaged_weights_name_the_file_without_unsafe_advice(tmp_path, content):
    save_checkpoint(tmp_path, model_of(CFG), CFG, TrainState())
    (tmp_path / "model.pt").write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'model.pt'}: checkpoint file is not a valid PyTorch weights file (")
    assert "weights_only=False" not in msg and "weights_only" not in msg and "\n" not in msg


def test_damaged_optimizer_state_names_the_file(tmp_path):
    model = model_of(CFG)
    save_checkpoint(tmp_path, model, CFG, TrainState(), torch.optim.AdamW(model.parameters()))
    (tmp_path / "optimizer.pt").write_bytes(os.urandom(128))
    with pytest.raises(CheckpointError, match="optimizer.pt: checkpoint file is not a valid PyTorch weights file"):
        load_optimizer(tmp_path, torch.optim.AdamW(model.parameters()))


def test_weights_that_are_not_a_state_dict_are_refused(tmp_path):
    save_checkpoint(tmp_path, model_of(CFG), CFG, TrainState())
    torch.save(torch.zeros(3), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="model.pt: checkpoint file holds a Tensor"):
        load_model(tmp_path)


@pytest.mark.parametrize("name", ["model.pt", "config.yaml"])
def test_missing_file_is_named(tmp_path, name):
    save_checkpoint(tmp_path, model_of(CFG), CFG, TrainState())
    (tmp_path / name).unlink()
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / name}: checkpoint file not found")


def test_damaged_state_names_the_file(tmp_path):
    save_checkpoint(tmp_path, model_of(CFG), CFG, TrainState())
    (tmp_path / "state.json").write_text('{"epoch": 3,')
    with pytest.raises(CheckpointError, match="state.json: not a readable checkpoint state"):
        read_state(tmp_path)
