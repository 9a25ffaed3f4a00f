"""Checkpoints are directories that carry their own architecture (docs/architecture.md).

    model.pt       state_dict of the unwrapped, uncompiled module (tensors only)
    optimizer.pt   optimiser state (tensors and plain numbers only), absent for exports
    state.json     epoch, global step, metric history, MLflow run id
    config.yaml    the resolved RunConfig

Everything loads with `torch.load(weights_only=True)`; no object is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from atomray.config import RunConfig, dump_config, load_config

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"


@dataclass
class TrainState:
    """Progress that travels with a checkpoint. `epoch` is the last finished epoch."""

    epoch: int = -1
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    mlflow_run_id: str = ""
    best_val_s2s: float = float("inf")
    elements: list[int] = field(default_factory=list)  # atomic numbers the model trained on
    resumed_at: list[int] = field(default_factory=list)  # first epoch of each attempt that resumed


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_checkpoint(directory: str | Path, model: torch.nn.Module, cfg: RunConfig, state: TrainState,
                    optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write a checkpoint directory (files written then renamed, so a kill leaves no half file)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def put(name: str, write) -> None:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, directory / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    put(MODEL_FILE, lambda p: torch.save(unwrap(model).state_dict(), p))
    if optimizer is not None:
        put(OPTIMIZER_FILE, lambda p: torch.save(optimizer.state_dict(), p))
    put(STATE_FILE, lambda p: Path(p).write_text(json.dumps(state.__dict__, indent=1)))
    put(CONFIG_FILE, lambda p: Path(p).write_text(dump_config(cfg)))
    return directory


class CheckpointError(ValueError):
    """A checkpoint file is missing or unreadable; the message names the file."""


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found (expected {what})")


# Model keys whose default is not what a checkpoint saved before the key existed was trained
# with: such a checkpoint reads the value here (it predates them, so it had that behaviour).
PREDATED_MODEL_KEYS = {"rotor_circles": False}


def read_config(directory: str | Path) -> RunConfig:
    """The RunConfig a checkpoint was trained with (checked like any config file); a key of
    `PREDATED_MODEL_KEYS` missing from it takes the value it was trained with."""
    path = Path(directory) / CONFIG_FILE
    _require(path, "the run's resolved config")
    cfg = load_config(path)
    saved = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
    missing = {k: v for k, v in PREDATED_MODEL_KEYS.items() if k not in saved}
    return replace(cfg, model=replace(cfg.model, **missing)) if missing else cfg


def read_state(directory: str | Path) -> TrainState:
    path = Path(directory) / STATE_FILE
    try:
        return TrainState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint state ({err})") from None


def _torch_load(path: Path, what: str, map_location: Any) -> dict:
    """`torch.load(weights_only=True)` of a checkpoint file that must hold a dict, or a
    CheckpointError naming the file (never torch's advice to load with weights_only=False)."""
    _require(path, what)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways (pickle, zip, EOF, key)
        raise CheckpointError(f"{path}: checkpoint file is not a valid PyTorch weights file "
                              f"({_load_failure(err)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint file holds a {type(state).__name__}, expected {what} (a dict)")
    return state


def _load_failure(err: Exception) -> str:
    """What went wrong in a failed torch.load, without torch's generic advice."""
    text = str(err)
    if "WeightsUnpickler error:" in text:  # weights_only refused the content
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    first = " ".join(text.split()).split(". ")[0]
    if not first or "weights_only" in first:
        first = "the file may be truncated or damaged"
    return f"{type(err).__name__}: {first}"


def load_weights(directory: str | Path, model: torch.nn.Module, map_location: Any = "cpu") -> None:
    """Load model.pt into `model` strictly, with weights_only=True. A missing or damaged file
    is a CheckpointError naming it; weights of another architecture a RuntimeError."""
    state = _torch_load(Path(directory) / MODEL_FILE, "the model's state_dict", map_location)
    unwrap(model).load_state_dict(state, strict=True)


def load_optimizer(directory: str | Path, optimizer: torch.optim.Optimizer, map_location: Any = "cpu") -> bool:
    """Load optimizer.pt into `optimizer` (weights_only=True); False when there is none
    (an exported checkpoint)."""
    path = Path(directory) / OPTIMIZER_FILE
    if not path.exists():
        return False
    optimizer.load_state_dict(_torch_load(path, "the optimiser's state_dict", map_location))
    return True


def load_model(directory: str | Path, map_location: Any = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """Rebuild the model a checkpoint describes and load its weights (inference mode)."""
    from atomray.model import build_model

    cfg = read_config(directory)
    model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k)
    load_weights(directory, model, map_location)
    return model.eval(), cfg


def prior_model(cfg: RunConfig) -> torch.nn.Module:
    """The architecture `cfg` describes, untrained (inference mode): ATOM's output projections
    start at zero and the EGNN family's α (prior + α (x̂ − prior)) at 0, so with a prior
    (`model.prior` other than "none") it predicts its prior alone, the floor a trained model of
    `cfg` must beat (`jobs/rollout.py` rolls it out beside the model; `--prior-only` instead)."""
    from atomray.model import build_model

    return build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k).eval()


def export_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Copy the inference part of a checkpoint (model, config, state; no optimiser)."""
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, STATE_FILE, CONFIG_FILE):
        shutil.copy2(source / name, target / name)
    return target
