"""Typed configs: YAML + dotted overrides, unknown keys, wrong types, YAML round trip, and
the promise that `import atomray` stays light."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings

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


# ---------------------------------------------------------------------------------------------
# value ranges and checks across values (atomray.config_ranges)


@pytest.mark.parametrize("override, key, expected, found", [
    ("model.embed_dim=2", "model.embed_dim", "an integer >= 4", "2"),
    ("model.num_layers=0", "model.num_layers", "an integer >= 1", "0"),
    ("model.num_heads=0", "model.num_heads", "an integer >= 1", "0"),
    ("model.output_heads=0", "model.output_heads", "an integer >= 1", "0"),
    ("model.attn_dropout=1.0", "model.attn_dropout", "a number in [0, 1)", "1.0"),
    ("model.mlp_dropout=-0.1", "model.mlp_dropout", "a number in [0, 1)", "-0.1"),
    ("model.rope_base=0", "model.rope_base", "a number > 0", "0.0"),
    ("model.tau_fs=-10", "model.tau_fs", "a number > 0", "-10.0"),
    ("model.velocity_scale_fs=0", "model.velocity_scale_fs", "a number > 0", "0.0"),
    ("model.max_atomic_number=0", "model.max_atomic_number", "an integer >= 1", "0"),
    ("model.latent_equivariance_weight=-1", "model.latent_equivariance_weight", "a number >= 0", "-1.0"),
    ("model.gnn_hidden_dim=0", "model.gnn_hidden_dim", "an integer >= 1", "0"),
    ("model.time_embed_dim=0", "model.time_embed_dim", "an integer >= 2", "0"),
    ("model.time_embed_dim=31", "model.time_embed_dim", "an even integer", "31"),
    ("model.fourier_modes=0", "model.fourier_modes", "an integer >= 1", "0"),
    ("model.radius=0", "model.radius", "a number > 0", "0.0"),
    ("model.embed_dim=20", "model.embed_dim", "a multiple of 2 × model.num_heads = 8", "20"),
    ("data.horizon_fs=0", "data.horizon_fs", "a number > 0", "0.0"),
    ("data.horizon_min_fs=0", "data.horizon_min_fs", "a number > 0", "0.0"),
    ("data.horizon_max_fs=-5", "data.horizon_max_fs", "a number > 0", "-5.0"),
    ("data.tail_offset_fs=-1", "data.tail_offset_fs", "a number >= 0", "-1.0"),
    ("data.rwpe_k=-1", "data.rwpe_k", "an integer >= 0", "-1"),
    ("data.radius=0", "data.radius", "a number > 0", "0.0"),
    ("data.time_split=[0.0, 0.9]", "data.time_split[0]", "a number in (0, 1)", "0.0"),
    ("data.time_split=[0.9, 0.8]", "data.time_split", "0 < train end < test start < 1", "[0.9, 0.8]"),
    ("data.fold=-1", "data.fold", "an integer >= 0", "-1"),
    ("data.fold=5", "data.fold", "an integer in [0, data.num_folds) = [0, 5)", "5"),
    ("data.num_folds=0", "data.num_folds", "an integer >= 1", "0"),
    ("data.num_clusters=0", "data.num_clusters", "an integer >= 1", "0"),
    ("data.train_windows=0", "data.train_windows", "an integer >= 1", "0"),
    ("data.train_windows=50", "data.train_windows", "an integer >= one global batch = 64", "50"),
    ("data.val_windows=0", "data.val_windows", "an integer >= 1", "0"),
    ("data.val_windows=1", "data.val_windows", "an integer >= scaling.num_workers = 2", "1"),
    ("data.test_windows=-1", "data.test_windows", "an integer >= 0", "-1"),
    ("data.test_windows=1", "data.test_windows", "0 or an integer >= scaling.num_workers = 2", "1"),
    ("data.batch_size=1", "data.batch_size", "an integer >= scaling.num_workers = 2", "1"),
    ("data.split_seed=-1", "data.split_seed", "an integer >= 0", "-1"),
    ("data.chunk_frames=0", "data.chunk_frames", "an integer >= 1", "0"),
    ("data.read_tasks=-1", "data.read_tasks", "an integer >= 0", "-1"),
    ("optim.lr=0", "optim.lr", "a number > 0", "0.0"),
    ("optim.lr=.nan", "optim.lr", "a number > 0", "nan"),
    ("optim.weight_decay=-1e-5", "optim.weight_decay", "a number >= 0", "-1e-05"),
    ("optim.betas=[0.9, 1.0]", "optim.betas[1]", "a number in [0, 1)", "1.0"),
    ("optim.eps=0", "optim.eps", "a number > 0", "0.0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps", "an integer >= 0", "-1"),
    ("optim.step_size=0", "optim.step_size", "an integer >= 1", "0"),
    ("optim.step_gamma=0", "optim.step_gamma", "a number > 0", "0.0"),
    ("optim.grad_clip=-1", "optim.grad_clip", "a number >= 0", "-1.0"),
    ("optim.name=sgd", "optim.name", "one of 'adamw_amsgrad', 'adamw', 'muon'", "'sgd'"),
    ("model.name=transformer", "model.name", "one of 'atom', 'egno', 'egnn_r', 'egnn_s'", "'transformer'"),
    ("train.epochs=0", "train.epochs", "an integer >= 1", "0"),
    ("train.label_noise_sigma=-0.1", "train.label_noise_sigma", "a number >= 0", "-0.1"),
    ("train.seed=-3", "train.seed", "an integer >= 0", "-3"),
    ("train.max_failures=-2", "train.max_failures", "an integer >= -1", "-2"),
    ("scaling.num_workers=0", "scaling.num_workers", "an integer >= 1", "0"),
    ("scaling.cpus_per_worker=-0.5", "scaling.cpus_per_worker", "a number >= 0", "-0.5"),
    ("scaling.gpus_per_worker=-1", "scaling.gpus_per_worker", "a number >= 0", "-1.0"),
])
def test_value_out_of_range_names_key_range_and_value(override, key, expected, found):
    with pytest.raises(ConfigError) as err:
        config_from_dict({}, [override])
    assert str(err.value).startswith(f"config key {key!r}: expected {expected}"), str(err.value)
    assert str(err.value).endswith(f"found {found}"), str(err.value)


@pytest.mark.parametrize("overrides, key", [
    (["data.split=umap_cluster", "data.num_clusters=3"], "data.num_clusters"),  # fewer clusters than folds
    (["data.split=umap_cluster", "data.num_clusters=4", "data.num_folds=2"], "data.num_clusters"),  # nothing to train on
    (["scaling.use_gpu=true", "scaling.gpus_per_worker=0"], "scaling.gpus_per_worker"),
    (["data.horizon_min_fs=100", "data.horizon_max_fs=50"], "data.horizon_min_fs"),
    (["model.prior=rotor", "model.relaxed_input=false", "model.prior_input=false", "model.vib_damping=false"],
     "model.prior"),  # only the harmonic prior vibrates
])
def test_inconsistent_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        config_from_dict({}, overrides)


def test_boundary_values_are_accepted():
    cfg = config_from_dict({}, ["model.attn_dropout=0", "data.rwpe_k=0", "data.test_windows=0", "optim.grad_clip=0",
                                "optim.weight_decay=0", "scaling.cpus_per_worker=0", "train.max_failures=-1",
                                "data.read_tasks=0", "data.horizon_min_fs=1000", "data.num_lags=1",
                                "scaling.num_workers=1", "data.batch_size=1", "data.train_windows=1",
                                "data.val_windows=1", "model.embed_dim=4", "model.num_heads=2",
                                "data.split=umap_cluster", "data.num_clusters=3", "data.num_folds=3"])
    assert cfg.data.horizon_min_fs == cfg.data.horizon_max_fs


def test_egno_ignores_atom_head_split():
    cfg = config_from_dict({}, ["model.name=egno", "model.embed_dim=20", "model.num_heads=8"])
    assert cfg.model.embed_dim == 20


def test_every_numeric_value_has_a_range():
    import typing

    from atomray.config_ranges import RANGES

    numeric = []
    for group in dataclasses.fields(RunConfig):
        cls = typing.get_type_hints(RunConfig)[group.name]
        if not dataclasses.is_dataclass(cls):
            continue
        for name, tp in typing.get_type_hints(cls).items():
            args = typing.get_args(tp) or (tp,)
            if any(a in (int, float) for a in args):
                numeric.append(f"{group.name}.{name}")
    assert numeric and sorted(set(numeric) - set(RANGES)) == []
    assert sorted(set(RANGES) - set(numeric)) == []


def test_known_model_and_optimiser_names_match_what_is_built():
    import typing

    import torch

    from atomray.config import OptimConfig
    from atomray.model.registry import MODELS
    from atomray.train.optim import build_optimizer

    assert set(typing.get_args(typing.get_type_hints(ModelConfig)["name"])) == set(MODELS)
    for name in typing.get_args(typing.get_type_hints(OptimConfig)["name"]):
        build_optimizer(torch.nn.Linear(2, 2), OptimConfig(name=name))


def test_checks_run_for_a_checkpoints_config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(RunConfig()).replace("batch_size: 64", "batch_size: 0"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "data.batch_size" in str(err.value)


@pytest.mark.parametrize("overrides, key", [
    (["data.context_atoms=heavy"], "data.context_atoms"),  # the default harmonic prior needs the hydrogens
    (["model.prior=rotor"], "model.prior"),  # the default relaxed and prior inputs read the harmonic prior
    (["model.prior=rotor", "model.relaxed_input=false", "model.prior_input=false", "model.anharmonic=true"],
     "model.prior"),
    (["model.prior=rotor", "model.relaxed_input=false", "model.prior_input=false", "data.context_atoms=heavy"],
     "data.context_atoms"),  # the default harmonic loss weighting reads the normal modes too
])
def test_the_harmonic_prior_refuses_configs_it_cannot_run_in(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert f"'{key}'" in str(err.value) and "harmonic" in str(err.value)
    load_config(None, ["model.prior=rotor", "model.relaxed_input=false", "model.prior_input=false"])  # consistent


@pytest.mark.parametrize("key, closest", [
    ("model.relaxed_prior", "model.relaxed_input"),
    ("model.relaxation", "model.relaxed_input"),
    ("model.correction_onset_fs", None),
    ("train.fail_at_epoch", "train.epochs"),
    ("train.fail_after_report", None),
])
def test_removed_switches_are_unknown_keys_that_suggest_the_closest(key, closest):
    """Superseded switches (docs/experiments.md) and the test-only fault hooks are gone from the
    user's config; a stale key is an error that still points at the nearest valid one."""
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'") as err:
        load_config(None, [f"{key}=1"])
    if closest:
        assert f"did you mean {closest}" in str(err.value) or closest in str(err.value).split("valid keys")[0]
    with pytest.raises(ConfigError, match="train.loss_weighting"):
        load_config(None, ["train.loss_weighting=rigid"])


def test_a_config_with_only_the_data_path_trains_the_recommended_model(repo_root):
    """The dataclass defaults are the measured best: the shipped pretrain.yaml's model and
    training settings (everything but the run's name, output and tracking places)."""
    shipped = load_config(repo_root / "jobs" / "configs" / "pretrain.yaml")
    bare = config_from_dict({"data": {"path": shipped.data.path}})
    for group in ("model", "data", "optim", "train", "scaling"):
        assert getattr(bare, group) == getattr(shipped, group), group


def test_label_noise_with_the_harmonic_prior_warns_and_loads():
    """Noise on x0 corrupts the harmonic prior's start displacement: the config says so (it
    still loads, for sweeps over σ), and without noise it stays quiet."""
    with pytest.warns(UserWarning, match="train.label_noise_sigma=0.1 with model.prior=harmonic"):
        cfg = load_config(None, ["model.prior=harmonic", "data.context_atoms=all", "train.label_noise_sigma=0.1"])
    assert cfg.train.label_noise_sigma == 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(None, ["model.prior=harmonic", "data.context_atoms=all"])
        load_config(None, ["model.prior=rotor", "model.relaxed_input=false", "model.prior_input=false",
                           "train.label_noise_sigma=0.1"])
