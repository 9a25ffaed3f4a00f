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
    "read_molecules": "atomray.data.frames",
    "load_trajectories": "atomray.data.frames",
    "validate_dataset": "atomray.data.frames",
    "write_dataset": "atomray.data.frames",
    "ImportConfig": "atomray.data.importers",
    "import_dataset": "atomray.data.importers",
    "export_molecule": "atomray.data.exporters",
    # windows
    "pad_windows": "atomray.data.windows",
    "sample_windows": "atomray.data.windows",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'atomray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
