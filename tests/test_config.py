"""Typed configs: YAML + dotted overrides, unknown keys, wrong types, YAML round trip, and
the promise that `import atomray` stays light."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from atomray.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    config_from_dict,
    dump_config,
    flatten,
    load_config,
)


def test_defaults_are_frozen_dataclasses():
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.num_layers = 3  # type: ignore[misc]
    assert isinstance(cfg.model, ModelConfig) and isinstance(cfg.data, DataConfig)


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  embed_dim: 64\noptim:\n  lr: 1e-3\n  betas: [0.9, 0.95]\n")
    cfg = load_config(path, ["model.num_layers=6", "optim.lr=3e-4", "data.context_atoms=all"])
    assert cfg.model.embed_dim == 64
    assert cfg.model.num_layers == 6
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.data.context_atoms == "all"


def test_int_accepted_for_float_field():
    cfg = config_from_dict({"optim": {"lr": 1}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


def test_unknown_key_names_key_and_closest_match():
    with pytest.raises(ConfigError) as err:
        config_from_dict({}, ["model.num_layer=6"])
    msg = str(err.value)
    assert "model.num_layer" in msg and "model.num_layers" in msg


def test_unknown_key_in_yaml_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  horizn_fs: 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "data.horizn_fs" in msg and "data.horizon_fs" in msg


def test_unknown_group():
    with pytest.raises(ConfigError, match="modle"):
        config_from_dict({"modle": {"embed_dim": 3}})


def test_wrong_type_names_key_expected_and_found():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": {"num_layers": "six"}})
    msg = str(err.value)
    assert "model.num_layers" in msg and "int" in msg and "six" in msg


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="model.num_heads"):
        config_from_dict({"model": {"num_heads": True}})


def test_choice_outside_literal():
    with pytest.raises(ConfigError) as err:
        config_from_dict({}, ["model.lifting=quantum"])
    assert "model.lifting" in str(err.value) and "'equivariant'" in str(err.value)


def test_round_trip_through_yaml(tmp_path):
    cfg = config_from_dict({}, ["model.embed_dim=256", "data.horizon=fixed", "optim.betas=[0.8, 0.9]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_flatten_gives_dotted_keys():
    flat = flatten(RunConfig())
    assert flat["model.num_layers"] == RunConfig().model.num_layers
    assert "data.path" in flat and "scaling.num_workers" in flat


def test_import_atomray_is_light():
    code = (
        "import sys, atomray, atomray.config, atomray.data.frames, atomray.data.windows\n"
        "atomray.RunConfig; atomray.sample_windows\n"
        "heavy = [m for m in ('ray', 'mlflow', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_model_does_not_initialise_cuda_or_ray():
    code = (
        "import sys, atomray, torch\n"
        "import atomray.model\n"
        "assert 'ray' not in sys.modules and 'mlflow' not in sys.modules\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_variable_length_tuple_field():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Names:
        names: tuple[str, ...] = ()

    assert config_from_dict({"names": ["a", "b", "c"]}, cls=Names).names == ("a", "b", "c")
    with pytest.raises(ConfigError, match="names\\[1\\]"):
        config_from_dict({"names": ["a", 2]}, cls=Names)


def test_every_public_name_resolves():
    import atomray

    for name in atomray.__all__:
        assert getattr(atomray, name) is not None, name
