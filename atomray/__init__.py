"""atomray: distributed multitask pretraining of ATOM on Ray.

Importing the package is cheap and has no side effects: it never imports Ray or MLflow and
never touches CUDA. Public names are re-exported lazily (PEP 562) from their home modules.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # configuration
    "RunConfig": "atomray.config",
    "ModelConfig": "atomray.config",
    "DataConfig": "atomray.config",
    "OptimConfig": "atomray.config",
    "TrainConfig": "atomray.config",
    "ScalingConfig": "atomray.config",
    "TrackingConfig": "atomray.config",
    "ConfigError": "atomray.config",
    "load_config": "atomray.config",
    "dump_config": "atomray.config",
    # data format
    "DataError": "atomray.data.frames",
    "Molecule": "atomray.data.frames",
    "Segment": "atomray.data.frames",
    "Trajectory": "atomray.data.frames",
    "read_molecules": "atomray.data.dataset",
    "load_trajectories": "atomray.data.dataset",
    "validate_dataset": "atomray.data.dataset",
    "write_dataset": "atomray.data.frames",
    "ImportConfig": "atomray.data.sources",
    "import_dataset": "atomray.data.importers",
    "export_molecule": "atomray.data.exporters",
    # TG80 builder
    "preset_config": "atomray.tg80.presets",
    "build_tg80": "atomray.tg80.build:build",
    "BuildConfig": "atomray.tg80.plan",
    # model
    "build_model": "atomray.model",
    # training, tracking, prediction
    "pretrain": "atomray.train.pretrain",
    "resolve": "atomray.train.pretrain",
    "load_best": "atomray.tracking",
    "register_best": "atomray.tracking",
    "load_model_uri": "atomray.tracking",
    "CheckpointError": "atomray.checkpoint",
    "OutputError": "atomray.outputs",
    "state_from_smiles": "atomray.predict",
    "state_from_file": "atomray.predict",
    "predict": "atomray.predict",
    "evaluate_dataset": "atomray.evaluate",
    "score_windows": "atomray.evaluate",
    "run_cv": "atomray.tune.cv",
    "run_sweep": "atomray.tune.sweep",
    # windows
    "pad_windows": "atomray.data.windows",
    "sample_windows": "atomray.data.windows",
    # physical validity and symmetry
    "stability": "atomray.structure",
    "stability_coefficient": "atomray.structure",
    "structure_distances": "atomray.structure",
    "equivariance_error": "atomray.equivariance",
    "noise_floor": "atomray.equivariance",
    "frame_average": "atomray.equivariance",
    "FrameAveraged": "atomray.equivariance",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'atomray' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
